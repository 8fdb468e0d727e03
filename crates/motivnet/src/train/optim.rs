//! AdamW with the reference's two parameter groups (encoder, decoder), optional global-norm
//! gradient clipping, and a state that saves and restores exactly.
//!
//! The update is PyTorch's `torch.optim.AdamW` (decoupled weight decay, bias-corrected moments):
//!   p <- p (1 - lr wd);  m <- b1 m + (1 - b1) g;  v <- b2 v + (1 - b2) g^2
//!   p <- p - lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)
//! candle_nn's AdamW has one learning rate, private moments and no clipping.

use std::collections::HashMap;

use candle_core::{CpuStorage, DType, Device, InplaceOp2, InplaceOp3, Layout, Tensor, Var};
use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::keys::{OPTIMIZER_EXP_AVG, OPTIMIZER_EXP_AVG_SQ, OPTIMIZER_STEP};
use crate::nn::params::{Group, Param, ParamStore};
use crate::ops::f32_slice;

/// A value per optimizer group.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Groups<T> {
    pub encoder: T,
    pub decoder: T,
}

impl<T: Copy> Groups<T> {
    pub fn get(&self, group: Group) -> T {
        match group {
            Group::Encoder => self.encoder,
            Group::Decoder => self.decoder,
        }
    }
}

/// Per-group settings fixed for a run (learning rates come with each step).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GroupConfig {
    pub weight_decay: f64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct AdamWConfig {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub encoder: GroupConfig,
    pub decoder: GroupConfig,
    /// Sapiens' recipe: no weight decay on biases, norm weights and the position embedding.
    pub exclude_norm_bias_pos_from_decay: bool,
    /// Clip the global L2 norm of all gradients to this value before the update.
    pub max_grad_norm: Option<f64>,
    /// Layer-wise learning-rate decay for the encoder (Sapiens: 0.85): block i of L gets
    /// lr x decay^(L - i), the patch embedding and position embedding decay^(L + 1), the final
    /// norm and the head the full rate (mmpretrain's LearningRateDecayOptimWrapperConstructor).
    pub encoder_layer_decay: Option<f64>,
}

impl Default for AdamWConfig {
    /// PyTorch's AdamW defaults, as the reference uses them (docs/REFERENCE_MODEL.md, section 4).
    fn default() -> Self {
        Self {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            encoder: GroupConfig { weight_decay: 0.01 },
            decoder: GroupConfig { weight_decay: 0.01 },
            exclude_norm_bias_pos_from_decay: false,
            max_grad_norm: None,
            encoder_layer_decay: None,
        }
    }
}

pub struct AdamW {
    pub config: AdamWConfig,
    /// First and second moments by parameter name.
    moments: HashMap<String, (Tensor, Tensor)>,
    step: u64,
}

/// One parameter's AdamW update, with the step's constants.
struct Step {
    lr: f64,
    wd: f64,
    beta1: f64,
    beta2: f64,
    eps: f64,
    bias1: f64,
    bias2_sqrt: f64,
}

impl Step {
    /// Candle ops, for any device. The moments come back detached: a tensor computed from
    /// gradients carries the op graph that made it, and one kept across steps would keep every
    /// step's graph alive (memory growing without bound over a run).
    fn apply_composed(&self, var: &Var, g: &Tensor, m: &Tensor, v: &Tensor) -> Result<(Tensor, Tensor)> {
        let m = ((m * self.beta1)? + (g * (1.0 - self.beta1))?)?.detach();
        let v = ((v * self.beta2)? + (g.sqr()? * (1.0 - self.beta2))?)?.detach();
        let mut value = var.as_detached_tensor();
        if self.wd != 0.0 {
            value = (value * (1.0 - self.lr * self.wd))?;
        }
        let denom = ((v.sqrt()? / self.bias2_sqrt)? + self.eps)?;
        let value = (value - ((&m / denom)? * (self.lr / self.bias1))?)?;
        var.set(&value)?;
        Ok((m, v))
    }

    /// The same arithmetic in place on the CPU buffers, multi-threaded: the moments, then the
    /// parameter, each in one pass, with no copies or allocations (the composed form makes a
    /// dozen single-threaded passes and as many allocations per parameter). `grad_scale` is
    /// the clipping factor, applied to each gradient value as it is read.
    fn apply_cpu(&self, var: &Var, g: &Tensor, grad_scale: f32, m: &Tensor, v: &Tensor) -> Result<()> {
        let (b1, b2) = (self.beta1 as f32, self.beta2 as f32);
        m.inplace_op2(g, &MomentUpdate { beta: b1, grad_scale, squared: false })?;
        v.inplace_op2(g, &MomentUpdate { beta: b2, grad_scale, squared: true })?;
        let update = ParamUpdate {
            decay: (1.0 - self.lr * self.wd) as f32,
            inv_bias2_sqrt: (1.0 / self.bias2_sqrt) as f32,
            eps: self.eps as f32,
            step_size: (self.lr / self.bias1) as f32,
        };
        var.as_tensor().inplace_op3(m, v, &update)?;
        Ok(())
    }
}

/// Elements per rayon task of the in-place updates.
const CHUNK: usize = 16 * 1024;

/// The contiguous f32 values of a CPU storage, mutably, or an error naming the op.
fn f32_slice_mut<'a>(storage: &'a mut CpuStorage, layout: &Layout, op: &str) -> candle_core::Result<&'a mut [f32]> {
    let CpuStorage::F32(values) = storage else { candle_core::bail!("{op}: expected f32") };
    let Some((start, end)) = layout.contiguous_offsets() else { candle_core::bail!("{op}: must be contiguous") };
    Ok(&mut values[start..end])
}

/// m <- beta m + (1 - beta) g, or v <- beta v + (1 - beta) g^2, in place.
struct MomentUpdate {
    beta: f32,
    grad_scale: f32,
    squared: bool,
}

impl InplaceOp2 for MomentUpdate {
    fn name(&self) -> &'static str {
        "adamw-moment"
    }

    fn cpu_fwd(&self, dst: &mut CpuStorage, dst_l: &Layout, g: &CpuStorage, g_l: &Layout) -> candle_core::Result<()> {
        let g = f32_slice(g, g_l, self.name())?;
        let dst = f32_slice_mut(dst, dst_l, self.name())?;
        if dst.len() != g.len() {
            candle_core::bail!("{}: moment has {} values, gradient {}", self.name(), dst.len(), g.len());
        }
        dst.par_chunks_mut(CHUNK)
            .zip(g.par_chunks(CHUNK))
            .for_each(|(d, g)| moment_chunk(d, g, [self.beta, self.grad_scale], self.squared));
        Ok(())
    }
}

/// p <- p (1 - lr wd) - lr / bias1 * m / (sqrt(v) / sqrt(bias2) + eps), in place.
struct ParamUpdate {
    decay: f32,
    inv_bias2_sqrt: f32,
    eps: f32,
    step_size: f32,
}

impl InplaceOp3 for ParamUpdate {
    fn name(&self) -> &'static str {
        "adamw-param"
    }

    fn cpu_fwd(
        &self,
        dst: &mut CpuStorage,
        dst_l: &Layout,
        m: &CpuStorage,
        m_l: &Layout,
        v: &CpuStorage,
        v_l: &Layout,
    ) -> candle_core::Result<()> {
        let (m, v) = (f32_slice(m, m_l, self.name())?, f32_slice(v, v_l, self.name())?);
        let p = f32_slice_mut(dst, dst_l, self.name())?;
        if p.len() != m.len() || p.len() != v.len() {
            candle_core::bail!(
                "{}: parameter has {} values, moments {} and {}",
                self.name(),
                p.len(),
                m.len(),
                v.len()
            );
        }
        let k = [self.decay, self.inv_bias2_sqrt, self.eps, self.step_size];
        p.par_chunks_mut(CHUNK)
            .zip(m.par_chunks(CHUNK))
            .zip(v.par_chunks(CHUNK))
            .for_each(|((p, m), v)| param_chunk(p, m, v, k));
        Ok(())
    }
}

crate::simd_dispatch! {
    /// One moment update of a chunk; `k` = [beta, gradient scale].
    fn moment_chunk(dst: &mut [f32], g: &[f32], k: [f32; 2], squared: bool) {
        let [beta, scale] = k;
        if squared {
            for (d, &g) in dst.iter_mut().zip(g) {
                let g = g * scale;
                *d = *d * beta + g * g * (1.0 - beta);
            }
        } else {
            for (d, &g) in dst.iter_mut().zip(g) {
                *d = *d * beta + g * scale * (1.0 - beta);
            }
        }
    }
}

crate::simd_dispatch! {
    /// One parameter update of a chunk; `k` = [1 - lr * weight decay,
    /// 1 / sqrt(bias correction 2), eps, lr / bias correction 1].
    fn param_chunk(p: &mut [f32], m: &[f32], v: &[f32], k: [f32; 4]) {
        let [decay, inv_bias2_sqrt, eps, step_size] = k;
        for i in 0..p.len() {
            let denom = v[i].sqrt() * inv_bias2_sqrt + eps;
            p[i] = p[i] * decay - m[i] / denom * step_size;
        }
    }
}

/// The sum of squares of a tensor's values, in f64: one parallel pass over CPU f32 data,
/// candle ops elsewhere.
fn sum_of_squares(g: &Tensor) -> Result<f64> {
    if crate::ops::dispatch::fused(&[g]) && g.is_contiguous() {
        let (storage, layout) = g.storage_and_layout();
        let candle_core::Storage::Cpu(cpu) = &*storage else { unreachable!("checked: a CPU tensor") };
        let values = f32_slice(cpu, layout, "sum of squares")?;
        return Ok(values.par_chunks(CHUNK).map(|c| crate::kernels::math::lane_sum([c], |[v]| v * v) as f64).sum());
    }
    Ok(g.sqr()?.sum_all()?.to_dtype(DType::F64)?.to_scalar::<f64>()?)
}

/// The learning-rate factor under layer-wise decay (1 without it) of a parameter at encoder
/// depth `layer` (as the model placed it; None in the head) in an encoder of `depth` blocks.
pub fn layer_decay_scale(layer: Option<usize>, depth: usize, decay: Option<f64>) -> f64 {
    match (decay, layer) {
        (Some(decay), Some(layer)) => decay.powi((depth + 1 - layer.min(depth + 1)) as i32),
        _ => 1.0,
    }
}

impl AdamW {
    pub fn new(config: AdamWConfig) -> Self {
        Self { config, moments: HashMap::new(), step: 0 }
    }

    /// Optimizer steps taken so far.
    pub fn step_count(&self) -> u64 {
        self.step
    }

    fn weight_decay(&self, p: &Param) -> f64 {
        if self.config.exclude_norm_bias_pos_from_decay && !p.decays {
            return 0.0;
        }
        match p.group {
            Group::Encoder => self.config.encoder.weight_decay,
            Group::Decoder => self.config.decoder.weight_decay,
        }
    }

    /// One update of every trainable parameter from `grads` (by name), each at its group's
    /// rate (times its layer-decay factor). Returns the global
    /// gradient norm before clipping.
    pub fn check_learning_rates(lr: Groups<f64>) -> Result<()> {
        for (name, value) in [("encoder", lr.encoder), ("decoder", lr.decoder)] {
            if !value.is_finite() || value < 0.0 {
                return Err(Error::Input(format!("{name} learning rate must be a finite number >= 0, got {value}")));
            }
        }
        Ok(())
    }

    pub fn step(&mut self, params: &ParamStore, grads: &HashMap<String, Tensor>, lr: Groups<f64>) -> Result<f64> {
        Self::check_learning_rates(lr)?;
        let mut sum_sq = 0f64;
        for p in params.trainable() {
            let g =
                grads.get(&p.name).ok_or_else(|| Error::Internal(format!("no gradient for parameter {}", p.name)))?;
            sum_sq += sum_of_squares(g)?;
        }
        let norm = sum_sq.sqrt();
        // torch.nn.utils.clip_grad_norm_: scale = max_norm / (norm + 1e-6), capped at 1.
        let clip = self.config.max_grad_norm.map(|max| (max / (norm + 1e-6)).min(1.0)).unwrap_or(1.0);

        self.step += 1;
        let c = &self.config;
        let t = self.step as i32;
        let bias1 = 1.0 - c.beta1.powi(t);
        let bias2_sqrt = (1.0 - c.beta2.powi(t)).sqrt();
        let depth = params.encoder_depth();
        crate::nn::params::note_weights_changed();
        for p in params.trainable() {
            let lr = lr.get(p.group) * layer_decay_scale(p.layer, depth, c.encoder_layer_decay);
            let wd = self.weight_decay(p);
            let g = &grads[&p.name];
            let (m, v) = match self.moments.remove(&p.name) {
                Some(mv) => mv,
                None => (g.zeros_like()?, g.zeros_like()?),
            };
            let step = Step { lr, wd, beta1: c.beta1, beta2: c.beta2, eps: c.eps, bias1, bias2_sqrt };
            let tensors = [p.var.as_tensor(), g, &m, &v];
            let fusable = crate::ops::dispatch::fused(&tensors) && tensors.iter().all(|t| t.is_contiguous());
            let (m, v) = if fusable {
                step.apply_cpu(&p.var, g, clip as f32, &m, &v)?;
                (m, v)
            } else {
                let g = if clip < 1.0 { (g * clip)? } else { g.clone() };
                step.apply_composed(&p.var, &g, &m, &v)?
            };
            self.moments.insert(p.name.clone(), (m, v));
        }
        // Once more after the last write: a copy derived while the step ran is stale too.
        crate::nn::params::note_weights_changed();
        Ok(norm)
    }

    /// The moments and step as named tensors (`optimizer.exp_avg.<param>`, ...). The moments
    /// share storage with the live ones, which the next step updates in place: write them
    /// out before stepping again.
    pub fn state_tensors(&self) -> Result<HashMap<String, Tensor>> {
        let mut out = HashMap::new();
        for (name, (m, v)) in &self.moments {
            out.insert(format!("{OPTIMIZER_EXP_AVG}{name}"), m.clone());
            out.insert(format!("{OPTIMIZER_EXP_AVG_SQ}{name}"), v.clone());
        }
        out.insert(OPTIMIZER_STEP.to_string(), Tensor::new(&[self.step as i64], &Device::Cpu)?);
        Ok(out)
    }

    /// Reads and checks what [`AdamW::state_tensors`] wrote, every name and shape, without
    /// changing the optimizer: [`AdamW::restore`] applies it.
    pub fn read_state(&self, params: &ParamStore, tensors: &HashMap<String, Tensor>, file: &str) -> Result<SavedState> {
        let bad = |what: String| Error::State(format!("{file}: {what}"));
        let key = OPTIMIZER_STEP;
        let step = tensors.get(key).ok_or_else(|| bad(format!("not a training state: key {key} is missing")))?;
        let step = match step.to_dtype(DType::I64)?.flatten_all()?.to_vec1::<i64>()?.as_slice() {
            &[n] if n >= 0 => n as u64,
            other => return Err(bad(format!("{key} must hold one step count of at least 0, got {other:?}"))),
        };
        let mut moments = HashMap::new();
        if step > 0 {
            for p in params.trainable() {
                let get = |prefix: &str| -> Result<Tensor> {
                    let key = format!("{prefix}{}", p.name);
                    let t = tensors.get(&key).ok_or_else(|| bad(format!("optimizer state key {key} is missing")))?;
                    if t.dims() != p.var.dims() {
                        return Err(bad(format!(
                            "optimizer state {key} has shape {:?}, expected {:?}",
                            t.dims(),
                            p.var.dims()
                        )));
                    }
                    // A copy of its own: the update writes the moments in place.
                    Ok(t.to_dtype(DType::F32)?.to_device(p.var.device())?.copy()?)
                };
                moments.insert(p.name.clone(), (get(OPTIMIZER_EXP_AVG)?, get(OPTIMIZER_EXP_AVG_SQ)?));
            }
        }
        Ok(SavedState { step, moments })
    }

    /// Takes the state [`AdamW::read_state`] read.
    pub fn restore(&mut self, state: SavedState) {
        self.moments = state.moments;
        self.step = state.step;
    }
}

/// An optimizer state read from a file and checked, not yet applied.
pub struct SavedState {
    step: u64,
    moments: HashMap<String, (Tensor, Tensor)>,
}

#[cfg(test)]
mod tests {
    use super::{layer_decay_scale, Step};
    use candle_core::{Device, Tensor, Var};

    #[test]
    fn fused_cpu_update_matches_the_composed_one() {
        let dev = Device::Cpu;
        let rand = |s: f32| (Tensor::randn(0f32, 1.0, (70, 300), &dev).unwrap() * s as f64).unwrap();
        let (p0, g, m, v) = (rand(1.0), rand(0.1), rand(0.01), rand(0.001).abs().unwrap());
        let step = Step {
            lr: 3e-3,
            wd: 0.05,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            bias1: 1.0 - 0.9f64.powi(3),
            bias2_sqrt: (1.0 - 0.999f64.powi(3)).sqrt(),
        };
        let (a, b) = (Var::from_tensor(&p0).unwrap(), Var::from_tensor(&p0).unwrap());
        // The fused update works in place: on copies, so the composed one sees the same inputs.
        let (ma, va) = (m.copy().unwrap(), v.copy().unwrap());
        let clip = 0.5;
        step.apply_cpu(&a, &g, clip, &ma, &va).unwrap();
        let (mb, vb) = step.apply_composed(&b, &(&g * clip as f64).unwrap(), &m, &v).unwrap();
        let diff = |x: &Tensor, y: &Tensor| {
            (x - y).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap()
        };
        assert!(diff(a.as_tensor(), b.as_tensor()) < 1e-6);
        assert!(diff(&ma, &mb) < 1e-7);
        assert!(diff(&va, &vb) < 1e-8);
        assert!(diff(a.as_tensor(), &p0) > 1e-4, "the update changed nothing");
    }

    #[test]
    fn layer_decay_follows_depth() {
        let d = Some(0.5);
        // A 2-block encoder as the model places it: embeddings 0, blocks 1 and 2, final norm 3.
        assert_eq!(layer_decay_scale(Some(0), 2, d), 0.125);
        assert_eq!(layer_decay_scale(Some(1), 2, d), 0.25);
        assert_eq!(layer_decay_scale(Some(2), 2, d), 0.5);
        assert_eq!(layer_decay_scale(Some(3), 2, d), 1.0);
        assert_eq!(layer_decay_scale(None, 2, d), 1.0);
        assert_eq!(layer_decay_scale(Some(2), 2, None), 1.0);
    }

    #[test]
    fn the_model_places_each_parameter_for_the_optimizer() {
        let config = crate::config::ModelConfig::preset("tiny").unwrap();
        let model = crate::model::MotivNet::new(&config, &Device::Cpu, 0).unwrap();
        let find = |name: &str| model.params.get(name).unwrap_or_else(|| panic!("{name}"));
        let place = |name: &str| (find(name).group, find(name).layer, find(name).decays);
        use crate::nn::params::Group::{Decoder, Encoder};
        assert_eq!(place("pose_encoder.projection.weight"), (Encoder, Some(0), true));
        assert_eq!(place("pose_encoder.pos_embed"), (Encoder, Some(0), false));
        assert_eq!(place("pose_encoder.layers.0.attn.qkv.weight"), (Encoder, Some(1), true));
        assert_eq!(place("pose_encoder.layers.3.ln2.bias"), (Encoder, Some(4), false));
        assert_eq!(place("pose_encoder.ln1.weight"), (Encoder, Some(5), false));
        assert_eq!(place("decoder.decoder.duplicate_pooling"), (Decoder, None, true));
        assert_eq!(place("decoder.decoder.layers.1.linear1.bias"), (Decoder, None, false));
        assert_eq!(model.params.encoder_depth(), 4);
    }
}
