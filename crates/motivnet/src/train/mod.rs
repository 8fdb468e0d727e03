//! The training step: forward in train mode, cross-entropy, backward, gradient accumulation
//! over micro-batches, and the AdamW update at the end of each accumulation cycle.
//!
//! Accumulated gradients are averaged over the micro-batches of a cycle, as Lightning's
//! `accumulate_grad_batches` does (it scales each micro-batch loss by 1/K): K micro-batches of
//! size B give the update of one batch of size K x B. The caller sets the learning rates of
//! each step, so any schedule lives outside the core.

pub mod optim;

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use crate::error::{input_err, Error, Result};
use crate::io::weights;
use crate::keys::{
    TRAINER_ACCUMULATED as ACCUM_PREFIX, TRAINER_ACCUMULATED_COUNT as ACCUM_COUNT_KEY, TRAINER_EXTRA as EXTRA_KEY,
    TRAINER_RNG_POSITION, TRAINER_RNG_SEED,
};
use crate::model::{ModelInput, MotivNet};
use crate::nn::layers::{Mode, RecordedMasks};
use crate::nn::loss::cross_entropy;
use optim::{AdamW, AdamWConfig, Groups};

#[derive(Debug, Clone, Default)]
pub struct TrainerConfig {
    pub optimizer: AdamWConfig,
    /// Seeds the dropout masks.
    pub seed: u64,
}

#[derive(Debug, Clone)]
pub struct StepOutput {
    /// Mean cross-entropy of this micro-batch.
    pub loss: f32,
    /// Train-mode logits (B, num_classes), row-major.
    pub logits: Vec<f32>,
    /// Whether this call ended an accumulation cycle and updated the weights.
    pub stepped: bool,
    /// Global gradient norm of the update (before clipping), when one was made.
    pub grad_norm: Option<f64>,
}

pub struct Trainer {
    pub model: MotivNet,
    pub optimizer: AdamW,
    rng: ChaCha8Rng,
    /// Sum of the gradients of the micro-batches since the last update, by parameter name.
    accumulated: HashMap<String, Tensor>,
    micro_batches: usize,
}

impl Trainer {
    pub fn new(model: MotivNet, config: TrainerConfig) -> Self {
        Self {
            model,
            optimizer: AdamW::new(config.optimizer),
            rng: ChaCha8Rng::seed_from_u64(config.seed),
            accumulated: HashMap::new(),
            micro_batches: 0,
        }
    }

    /// The gradients summed since the last optimizer step, by parameter name.
    pub fn accumulated_gradients(&self) -> impl Iterator<Item = (&String, &Tensor)> {
        self.accumulated.iter()
    }

    /// Micro-batches accumulated since the last optimizer step.
    pub fn pending_micro_batches(&self) -> usize {
        self.micro_batches
    }

    /// One micro-batch: forward (dropout on), loss, backward, accumulate; when
    /// `end_of_cycle`, average the accumulated gradients, clip and update with `lr`.
    pub fn train_step(
        &mut self,
        input: &ModelInput,
        labels: &[u32],
        lr: Groups<f64>,
        end_of_cycle: bool,
    ) -> Result<StepOutput> {
        self.step_with(input, labels, lr, end_of_cycle, None)
    }

    /// [`Trainer::train_step`] with the dropout masks given instead of drawn: the parity tests
    /// replay the masks PyTorch drew. Every mask must be used.
    pub fn train_step_replaying(
        &mut self,
        input: &ModelInput,
        labels: &[u32],
        lr: Groups<f64>,
        end_of_cycle: bool,
        masks: &mut RecordedMasks,
    ) -> Result<StepOutput> {
        let out = self.step_with(input, labels, lr, end_of_cycle, Some(masks))?;
        if masks.remaining() > 0 {
            return Err(input_err!("{} recorded dropout masks were left unused", masks.remaining()));
        }
        Ok(out)
    }

    fn step_with(
        &mut self,
        input: &ModelInput,
        labels: &[u32],
        lr: Groups<f64>,
        end_of_cycle: bool,
        replay: Option<&mut RecordedMasks>,
    ) -> Result<StepOutput> {
        // Checked before any work, so a bad call leaves the accumulated gradients intact.
        AdamW::check_learning_rates(lr)?;
        let x = self.model.input_tensor(input)?;
        let mut mode = match replay {
            Some(masks) => Mode::Replay(masks),
            None => Mode::Train(&mut self.rng),
        };
        let (logits, pass) = self.model.forward_train(&x, &mut mode)?;
        let loss = cross_entropy(&logits, labels)?;
        let loss_value = loss.to_scalar::<f32>()?;
        if !loss_value.is_finite() {
            // Keep the weights and the accumulated gradients of the good micro-batches untouched.
            return Err(Error::NonFinite(format!(
                "loss is not finite ({loss_value}): the micro-batch was not applied"
            )));
        }
        let mut grads = self.model.backward(&loss, pass)?;
        for p in self.model.params.trainable() {
            // backward also records gradients of non-Var leaves (the input): only Vars are kept.
            let g = grads.remove(p.var.as_tensor()).ok_or_else(|| {
                Error::Internal(format!("parameter {} received no gradient: the graph is cut somewhere", p.name))
            })?;
            // Detached: kept across calls, it must not hold this step's graph (see optim.rs).
            let sum = match self.accumulated.remove(&p.name) {
                Some(prev) => (prev + g)?.detach(),
                None => g.detach(),
            };
            self.accumulated.insert(p.name.clone(), sum);
        }
        self.micro_batches += 1;
        let logits = logits.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
        if !end_of_cycle {
            return Ok(StepOutput { loss: loss_value, logits, stepped: false, grad_norm: None });
        }
        let scale = 1.0 / self.micro_batches as f64;
        let mean_grads = std::mem::take(&mut self.accumulated)
            .into_iter()
            .map(|(k, g)| Ok((k, if scale == 1.0 { g } else { (g * scale)? })))
            .collect::<Result<HashMap<_, _>>>()?;
        self.micro_batches = 0;
        let norm = self.optimizer.step(&self.model.params, &mean_grads, lr)?;
        Ok(StepOutput { loss: loss_value, logits, stepped: true, grad_norm: Some(norm) })
    }

    /// Weights (reference names), optimizer moments and step, dropout RNG position and any
    /// gradients accumulated mid-cycle: everything needed to continue exactly. `extra` is the
    /// caller's own bookkeeping (epoch, schedule, data order), stored in the same file so the
    /// two can never disagree.
    pub fn save_state(&self, path: &Path, extra: Option<&str>) -> Result<()> {
        self.model.params.check_all_held("save a training state")?;
        let mut tensors = self.model.params.tensors();
        tensors.extend(self.optimizer.state_tensors()?);
        let seed: Vec<u8> = self.rng.get_seed().to_vec();
        let pos = self.rng.get_word_pos();
        let stream = self.rng.get_stream();
        let words: Vec<u32> = [
            (pos >> 96) as u32,
            (pos >> 64) as u32,
            (pos >> 32) as u32,
            pos as u32,
            (stream >> 32) as u32,
            stream as u32,
        ]
        .to_vec();
        tensors.insert(TRAINER_RNG_SEED.to_string(), Tensor::from_vec(seed, 32, &Device::Cpu)?);
        tensors.insert(TRAINER_RNG_POSITION.to_string(), Tensor::from_vec(words, 6, &Device::Cpu)?);
        tensors.insert(ACCUM_COUNT_KEY.into(), Tensor::new(&[self.micro_batches as i64], &Device::Cpu)?);
        for (name, g) in &self.accumulated {
            tensors.insert(format!("{ACCUM_PREFIX}{name}"), g.clone());
        }
        let metadata = extra.map(|e| [(EXTRA_KEY.to_string(), e.to_string())].into_iter().collect());
        weights::save_tensors_with_metadata(&tensors, metadata, path)
    }

    /// Restores what [`Trainer::save_state`] wrote and returns its `extra`. The model's config
    /// must be the one saved. All or nothing: every part of the file is checked before any of
    /// the trainer changes.
    pub fn load_state(&mut self, path: &Path) -> Result<Option<String>> {
        self.model.params.check_all_held("load a training state")?;
        let file = path.display().to_string();
        let tensors = weights::read_tensors(path)?;
        let bad = |what: String| Error::State(format!("{file}: {what}"));
        let get =
            |key: &str| tensors.get(key).ok_or_else(|| bad(format!("not a training state: key {key} is missing")));
        let seed: [u8; 32] = get(TRAINER_RNG_SEED)?
            .flatten_all()?
            .to_vec1::<u8>()
            .ok()
            .and_then(|v| v.try_into().ok())
            .ok_or_else(|| bad(format!("{TRAINER_RNG_SEED} must hold 32 bytes")))?;
        let w = get(TRAINER_RNG_POSITION)?.flatten_all()?.to_vec1::<u32>().unwrap_or_default();
        if w.len() != 6 {
            return Err(bad(format!("{TRAINER_RNG_POSITION} must hold 6 32-bit words, got {}", w.len())));
        }
        let count = match get(ACCUM_COUNT_KEY)?.flatten_all()?.to_vec1::<i64>().ok().as_deref() {
            Some(&[n]) if n >= 0 => n as usize,
            _ => return Err(bad(format!("{ACCUM_COUNT_KEY} must hold one count of at least 0"))),
        };
        let mut accumulated = HashMap::new();
        if count > 0 {
            for p in self.model.params.trainable() {
                let key = format!("{ACCUM_PREFIX}{}", p.name);
                let g = get(&key)?;
                if g.dims() != p.var.dims() {
                    return Err(bad(format!("{key} has shape {:?}, expected {:?}", g.dims(), p.var.dims())));
                }
                accumulated.insert(p.name.clone(), g.to_dtype(DType::F32)?.to_device(self.model.device())?);
            }
        }
        let optimizer = self.optimizer.read_state(&self.model.params, &tensors, &file)?;
        let extra = weights::read_metadata(path)?.remove(EXTRA_KEY);
        // Everything is read and checked: the weights (all or nothing too), then the rest.
        let opts = weights::LoadOptions { encoder_only: false, grid: Some(self.model.config.encoder.grid()) };
        weights::load_into(&self.model.params, &tensors, &opts, &file)?;
        self.optimizer.restore(optimizer);
        let pos = (w[0] as u128) << 96 | (w[1] as u128) << 64 | (w[2] as u128) << 32 | w[3] as u128;
        let mut rng = ChaCha8Rng::from_seed(seed);
        rng.set_stream((w[4] as u64) << 32 | w[5] as u64);
        rng.set_word_pos(pos);
        self.rng = rng;
        self.micro_batches = count;
        self.accumulated = accumulated;
        Ok(extra)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ModelConfig;
    use crate::runtime::precision::Precision;

    fn model() -> MotivNet {
        let config = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/config.json");
        MotivNet::new(&ModelConfig::from_file(&config).unwrap(), &Device::Cpu, 3).unwrap()
    }

    fn max_abs(t: &Tensor) -> f32 {
        t.to_dtype(DType::F32)
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    }

    /// bf16 compute (run on the CPU here, where candle widens its matmuls) against f32: the
    /// same logits to bf16's precision, f32 gradients and weights, and a loss that falls.
    #[test]
    fn bf16_compute_tracks_f32_and_keeps_f32_master_weights() {
        let x = Tensor::randn(0f32, 1.0, (4, 3, 64, 48), &Device::Cpu).unwrap();
        let input = ModelInput::Tensor(&x);
        let f32_model = model();
        let mut bf16_model = model();
        bf16_model.force_precision(Precision::Bf16);
        assert_eq!(bf16_model.input_tensor(&input).unwrap().dtype(), DType::BF16);
        let (a, b) = (f32_model.predict(&input).unwrap(), bf16_model.predict(&input).unwrap());
        assert_eq!(b.dtype(), DType::BF16);
        let diff = max_abs(&(a - b.to_dtype(DType::F32).unwrap()).unwrap());
        assert!(diff < 0.05 * max_abs(&f32_model.predict(&input).unwrap()).max(1.0), "logits differ by {diff}");

        let labels = [0u32, 3, 5, 7];
        let lr = Groups { encoder: 1e-3, decoder: 1e-3 };
        let mut trainer = Trainer::new(bf16_model, TrainerConfig::default());
        let first = trainer.train_step(&input, &labels, lr, false).unwrap().loss;
        for (name, g) in trainer.accumulated_gradients() {
            assert_eq!(g.dtype(), DType::F32, "gradient of {name}");
        }
        trainer.train_step(&input, &labels, lr, true).unwrap();
        for p in trainer.model.params.iter() {
            assert_eq!(p.var.dtype(), DType::F32, "{} stays f32", p.name);
        }
        let last = (0..20).map(|_| trainer.train_step(&input, &labels, lr, true).unwrap().loss).last().unwrap();
        assert!(last < 0.5 * first, "loss {first} -> {last}: bf16 training does not learn");
    }
}
