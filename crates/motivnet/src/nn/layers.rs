//! The differentiable building blocks shared by the encoder and the head.
//!
//! Written on candle's primitive ops on purpose: candle_nn's fused `LayerNorm` and
//! `softmax_last_dim` have no backward, so a model built on them trains nothing while looking
//! fine (docs/ARCHITECTURE.md). Each block here keeps the graph intact;
//! `tests/training.rs` checks that every parameter receives a gradient.

use std::sync::{Arc, Mutex};

use candle_core::{DType, Device, Module, Tensor, D};
use rand::Rng;
use rand_chacha::ChaCha8Rng;

use super::params::{weights_generation, Init, ParamStore};
use crate::error::Result;
use crate::kernels::amx::PackedB;
use crate::ops::linear::Bf16End;

/// Train mode carries the RNG that draws dropout masks (candle's CPU RNG cannot be seeded).
pub enum Mode<'a> {
    Eval,
    Train(&'a mut ChaCha8Rng),
    /// Train mode with given dropout masks instead of drawn ones: how the parity tests run the
    /// model on the masks PyTorch drew.
    Replay(&'a mut RecordedMasks),
}

impl Mode<'_> {
    pub fn is_train(&self) -> bool {
        matches!(self, Mode::Train(_) | Mode::Replay(_))
    }
}

/// Dropout keep-masks (1 kept, 0 dropped) in the order the model applies dropout, each of the
/// shape of the tensor it applies to. The 1/(1-p) scaling is the model's own.
#[derive(Debug, Default)]
pub struct RecordedMasks {
    masks: std::collections::VecDeque<Tensor>,
    taken: usize,
}

impl RecordedMasks {
    pub fn new(masks: Vec<Tensor>) -> Self {
        Self { masks: masks.into(), taken: 0 }
    }

    /// Masks not used yet: a replay that ends with some left over drew fewer than recorded.
    pub fn remaining(&self) -> usize {
        self.masks.len()
    }

    fn next(&mut self, shape: &[usize]) -> Result<Tensor> {
        let n = self.taken;
        let mask = self.masks.pop_front().ok_or_else(|| {
            crate::error::Error::Input(format!("dropout {n} has no recorded mask: only {n} were given"))
        })?;
        if mask.dims() != shape {
            return Err(crate::error::Error::Input(format!(
                "recorded dropout mask {n} has shape {:?}, but the model applies dropout {n} to {shape:?}",
                mask.dims()
            )));
        }
        self.taken += 1;
        Ok(mask)
    }
}

/// In eval mode, drops the op graph behind `x`. Parameters are candle `Var`s, so every op on
/// them records its inputs for backward; without a cut, inference would keep every layer's
/// activations (for sapiens-0.3b at 1024 x 768, the attention matrices alone are 0.6 GB a
/// layer) until the logits are dropped. Cutting between layers frees each layer's as it ends.
pub fn cut_graph_in_eval(x: Tensor, mode: &Mode) -> Tensor {
    cut_graph_unless(mode.is_train(), x)
}

/// `x` as it is when backward will follow (`training`), cut from the op graph otherwise. Cut
/// after each op inside a layer, an activation is freed after its last use instead of when the
/// layer ends: in a sapiens-0.3b block at 1024 x 768, the qkv projection's 38 MB would
/// otherwise still be held beside the MLP's 50 MB.
pub fn cut_graph_unless(training: bool, x: Tensor) -> Tensor {
    if training {
        x
    } else {
        x.detach()
    }
}

/// `nn.Linear`: y = x W^T + b over the last dimension, any leading dimensions.
///
/// Inside [`crate::ops::dispatch::bf16_matmuls`] on a CPU with AMX, the product runs on bf16
/// tiles from a packed copy of the weight, made on first use and remade after any parameter
/// changes (a load, an optimizer step). A model that only infers in bf16 keeps that copy alone
/// ([`Linear::keep_bf16_packing_only`]): half the weight's memory, and no f32 product left.
pub struct Linear {
    pub weight: Tensor,
    pub bias: Tensor,
    packed: PackedWeight,
}

/// The weight packed for the AMX product.
#[derive(Default)]
struct PackedWeight(Mutex<Packing>);

#[derive(Default)]
enum Packing {
    #[default]
    None,
    /// Packed from the f32 weight at this weights generation: stale once it moves on.
    At(u64, Arc<PackedB>),
    /// The weight's only copy: the f32 values were freed, so no generation makes it stale.
    Only(Arc<PackedB>),
}

impl PackedWeight {
    /// The packing of `weight` (out x everything else) current at this weights generation.
    fn get(&self, weight: &Tensor) -> candle_core::Result<Arc<PackedB>> {
        let generation = weights_generation();
        let mut slot = self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        match &*slot {
            Packing::Only(packed) => return Ok(packed.clone()),
            Packing::At(packed_at, packed) if *packed_at == generation => return Ok(packed.clone()),
            _ => {}
        }
        let out_dim = weight.dim(0)?;
        let values = weight.flatten_all()?.to_vec1::<f32>()?;
        let packed = Arc::new(PackedB::from_weight(&values, out_dim, values.len() / out_dim.max(1)));
        *slot = Packing::At(generation, packed.clone());
        Ok(packed)
    }

    fn is_only_copy(&self) -> bool {
        matches!(*self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner()), Packing::Only(_))
    }

    /// Makes the packing of `weight` its only copy, to be kept whatever changes after.
    fn pin(&self, weight: &Tensor) -> candle_core::Result<()> {
        let packed = self.get(weight)?;
        *self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) = Packing::Only(packed);
        Ok(())
    }
}

impl Linear {
    pub fn new(
        store: &mut ParamStore,
        prefix: &str,
        in_dim: usize,
        out_dim: usize,
        weight: Init,
        bias: Init,
    ) -> Result<Self> {
        Ok(Self::from_parts(
            store.add(&format!("{prefix}.weight"), (out_dim, in_dim), weight)?,
            store.add(&format!("{prefix}.bias"), out_dim, bias)?,
        ))
    }

    /// A layer over these parameters; a weight of more than two dimensions (a convolution's
    /// kernel) multiplies as (out, everything else).
    pub fn from_parts(weight: Tensor, bias: Tensor) -> Self {
        Self { weight, bias, packed: PackedWeight::default() }
    }

    /// GELU (exact, erf form, as PyTorch's `nn.GELU()`) of this layer's output, as one op;
    /// `for_backward` as in [`crate::ops::linear::linear_gelu`].
    pub fn forward_gelu(&self, x: &Tensor, for_backward: bool) -> candle_core::Result<Tensor> {
        if self.takes_bf16(x, for_backward) {
            return crate::ops::linear::linear_bf16(x, &*self.packed.get(&self.weight)?, &self.bias, Bf16End::Gelu);
        }
        crate::ops::linear::linear_gelu(x, &self.weight_matrix()?, &self.bias, for_backward)
    }

    /// `residual` plus this layer's output: the Linear that ends a residual branch. Under the
    /// bf16 products the residual is added as each block of the product finishes (the same
    /// bits as adding it after); elsewhere it is `residual + forward(x)`.
    pub fn forward_plus(&self, x: &Tensor, residual: &Tensor, for_backward: bool) -> candle_core::Result<Tensor> {
        if self.takes_bf16(x, for_backward) && crate::ops::dispatch::fused(&[residual]) {
            let packed = self.packed.get(&self.weight)?;
            return crate::ops::linear::linear_bf16(x, &packed, &self.bias, Bf16End::Plus(residual));
        }
        residual + self.forward(x)?
    }

    /// Packs the weight for the bf16 product (if not already current) and makes that packing
    /// its only copy: `self.weight` becomes a stand-in of the same shape that holds one value,
    /// so once the parameter store lets go of it too (see
    /// [`crate::model::MotivNet::keep_linear_weights_in_bf16_only`]) the f32 values are freed.
    /// From then on the layer computes only inside `bf16_matmuls`; anywhere else it is an error.
    pub fn keep_bf16_packing_only(&mut self) -> candle_core::Result<()> {
        if self.packed.is_only_copy() {
            return Ok(());
        }
        self.packed.pin(&self.weight)?;
        let stand_in = Tensor::zeros(1, self.weight.dtype(), self.weight.device())?;
        let shape = self.weight.shape().clone();
        self.weight = stand_in.broadcast_as(shape)?;
        Ok(())
    }

    /// Whether the weight lives only as its bf16 packing.
    pub fn holds_bf16_only(&self) -> bool {
        self.packed.is_only_copy()
    }

    /// Whether this call's product runs in bf16: asked for, an f32 input on the CPU, and no
    /// backward to follow (the bf16 product records no graph).
    fn takes_bf16(&self, x: &Tensor, for_backward: bool) -> bool {
        !for_backward && crate::ops::dispatch::bf16_matmuls_on() && crate::ops::dispatch::fused(&[x])
    }

    /// The weight as the (out, in) matrix it multiplies by (a convolution kernel flattened;
    /// a matrix as it is, adding no node to the graph). An error once the weight lives only
    /// as its bf16 packing: the stand-in left in its place holds no values.
    fn weight_matrix(&self) -> candle_core::Result<Tensor> {
        if self.holds_bf16_only() {
            candle_core::bail!(
                "this model holds its Linear weights only in bf16, for inference on the CPU's AMX tiles \
                 (precision 'bf16'): an f32 or differentiable product needs the model loaded with precision 'f32'"
            );
        }
        if self.weight.rank() == 2 {
            return Ok(self.weight.clone());
        }
        let out_dim = self.weight.dim(0)?;
        self.weight.reshape((out_dim, self.weight.elem_count() / out_dim.max(1)))
    }
}

impl Module for Linear {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        // Inside `bf16_matmuls` no backward follows (its contract), whatever x records.
        if self.takes_bf16(x, false) {
            return crate::ops::linear::linear_bf16(x, &*self.packed.get(&self.weight)?, &self.bias, Bf16End::Plain);
        }
        crate::ops::linear::linear(x, &self.weight_matrix()?, &self.bias)
    }
}

/// `residual` + fc2(GELU(fc1(x))), a transformer block's MLP branch and its residual, with
/// both products in bf16 and the hidden activations kept in bf16 between them
/// ([`crate::ops::linear::mlp_bf16`]); `None` where the products do not run in bf16 (f32,
/// training, another device), for the caller to compose.
pub fn mlp_plus_bf16(
    fc1: &Linear,
    fc2: &Linear,
    x: &Tensor,
    residual: &Tensor,
    for_backward: bool,
) -> candle_core::Result<Option<Tensor>> {
    if !fc1.takes_bf16(x, for_backward) || !crate::ops::dispatch::fused(&[residual]) {
        return Ok(None);
    }
    let (p1, p2) = (fc1.packed.get(&fc1.weight)?, fc2.packed.get(&fc2.weight)?);
    crate::ops::linear::mlp_bf16(x, (&p1, &fc1.bias), (&p2, &fc2.bias), residual).map(Some)
}

/// `nn.LayerNorm` over the last dimension with the biased variance, as PyTorch.
pub struct LayerNorm {
    pub weight: Tensor,
    pub bias: Tensor,
    pub eps: f64,
}

impl LayerNorm {
    pub fn new(store: &mut ParamStore, prefix: &str, dim: usize, eps: f64) -> Result<Self> {
        Ok(Self {
            weight: store.add(&format!("{prefix}.weight"), dim, Init::Ones)?,
            bias: store.add(&format!("{prefix}.bias"), dim, Init::Zeros)?,
            eps,
        })
    }
}

impl Module for LayerNorm {
    /// In f32 whatever x's dtype (its mean and variance lose too much in bf16), returned in x's.
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        if x.dtype() != DType::F32 {
            let y = crate::ops::layer_norm::layer_norm(&x.to_dtype(DType::F32)?, &self.weight, &self.bias, self.eps)?;
            return y.to_dtype(x.dtype());
        }
        crate::ops::layer_norm::layer_norm(x, &self.weight, &self.bias, self.eps)
    }
}

/// ReLU as PyTorch computes it: NaN kept, gradient 0 at 0 (crate::ops::relu).
pub fn relu(x: &Tensor) -> candle_core::Result<Tensor> {
    crate::ops::relu::relu(x)
}

/// Softmax over the last dimension (crate::ops::softmax).
pub fn softmax(x: &Tensor) -> candle_core::Result<Tensor> {
    crate::ops::softmax::softmax_last_dim(x)
}

pub fn log_softmax(x: &Tensor) -> candle_core::Result<Tensor> {
    let max = x.max_keepdim(D::Minus1)?.detach();
    let shifted = x.broadcast_sub(&max)?;
    let lse = shifted.exp()?.sum_keepdim(D::Minus1)?.log()?;
    shifted.broadcast_sub(&lse)
}

/// Inverted dropout (`nn.Dropout`): in train mode zero each element with probability p and
/// scale the rest by 1/(1-p); identity in eval mode or when p is 0.
pub fn dropout(x: &Tensor, p: f64, mode: &mut Mode) -> Result<Tensor> {
    match dropout_mask(x.dims(), p, mode)? {
        Some(mask) => {
            let mask = Tensor::from_vec(mask, x.shape(), &Device::Cpu)?.to_device(x.device())?.to_dtype(x.dtype())?;
            Ok(x.mul(&mask)?)
        }
        None => Ok(x.clone()),
    }
}

/// The factors [`dropout`] multiplies a tensor of this shape by, row-major: 0 where an
/// element is dropped, 1/(1-p) where it is kept; `None` where nothing is dropped (eval mode,
/// p = 0). Train mode draws from its RNG, in order (below); replay takes the next recorded
/// mask. The head's hand-written training pass draws through here too, so both
/// paths see the same masks from the same seed.
///
/// Each element takes one 32-bit word of the RNG and is dropped when the word is below
/// p x 2^32. The words are drawn in bulk: a 64-bit float per element, drawn one at a time,
/// took 1.2 ms of each of the `tiny` head's layers (its masks cover 230 thousand values a
/// layer at a batch of 8).
pub fn dropout_mask(shape: &[usize], p: f64, mode: &mut Mode) -> Result<Option<Vec<f32>>> {
    let keep = (1.0 / (1.0 - p)) as f32;
    let count = shape.iter().product::<usize>();
    match mode {
        Mode::Train(rng) if p > 0.0 => {
            let below = (p * 4_294_967_296.0).round() as u64;
            let mut words = vec![0u32; count];
            rng.fill(&mut words[..]);
            Ok(Some(words.into_iter().map(|w| if u64::from(w) < below { 0.0 } else { keep }).collect()))
        }
        Mode::Replay(masks) if p > 0.0 => {
            let mask = masks.next(shape)?.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
            Ok(Some(mask.into_iter().map(|m| m * keep).collect()))
        }
        _ => Ok(None),
    }
}

/// Splits (B, N, heads * hd) into (B, heads, N, hd), contiguous for the batched matmul
/// (crate::ops::heads).
pub fn split_heads(x: &Tensor, heads: usize) -> candle_core::Result<Tensor> {
    crate::ops::heads::split_heads(x, heads)
}

/// The inverse of [`split_heads`].
pub fn merge_heads(x: &Tensor) -> candle_core::Result<Tensor> {
    let (b, h, n, hd) = x.dims4()?;
    x.transpose(1, 2)?.reshape((b, n, h * hd))
}

/// Scaled dot-product attention, no mask: softmax(q k^T / sqrt(hd)) v, with optional dropout
/// on the probabilities (PyTorch's MultiheadAttention applies it in training).
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor, dropout_p: f64, mode: &mut Mode) -> Result<Tensor> {
    attend(&attention_probabilities(q, k)?, v, dropout_p, mode)
}

/// The attention probabilities softmax(q k^T / sqrt(hd)) of q (.., Nq, hd) over k (.., Nk, hd),
/// (.., Nq, Nk), in f32 whatever q's dtype: under bf16 compute the softmax runs in f32, as
/// autocast runs it, and these are the values [`attend`] rounds back to bf16.
pub fn attention_probabilities(q: &Tensor, k: &Tensor) -> Result<Tensor> {
    let hd = q.dim(D::Minus1)?;
    let q = (q * (1.0 / (hd as f64).sqrt()))?;
    let scores = q.matmul(&k.t()?)?;
    Ok(softmax(&scores.to_dtype(DType::F32)?)?)
}

/// The second half of [`attention`]: the probabilities in v's dtype, dropped out, times v.
/// Split from the first so a caller can keep the probabilities (the head's attention maps).
pub fn attend(probs: &Tensor, v: &Tensor, dropout_p: f64, mode: &mut Mode) -> Result<Tensor> {
    let probs = dropout(&probs.to_dtype(v.dtype())?, dropout_p, mode)?;
    Ok(probs.matmul(v)?)
}
