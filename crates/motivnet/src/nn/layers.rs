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
use crate::kernels::int8::PackedI8;
use crate::ops::linear::{Normalize, Packed, PackedEnd};

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
/// tiles from a packed copy of the weight; inside [`crate::ops::dispatch::int8_matmuls`] on a
/// CPU with AVX512-VNNI, on int8 from a quantized copy. Each copy is made on first use and
/// remade after any parameter changes (a load, an optimizer step). A model that only infers in
/// one of them keeps that copy alone ([`Linear::keep_packing_only`]): half the weight's memory
/// in bf16, a quarter in int8, and no f32 product left.
pub struct Linear {
    pub weight: Tensor,
    pub bias: Tensor,
    bf16: PackedWeight<PackedB>,
    int8: PackedWeight<PackedI8>,
}

/// The lower precisions a Linear's product can run in on the CPU, from a packed copy of its
/// weight.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PackedKind {
    /// bf16 operands on AMX tiles, f32 sums.
    Bf16,
    /// u8 inputs by i8 weights on VNNI, exact sums.
    Int8,
}

impl PackedKind {
    pub fn name(self) -> &'static str {
        match self {
            Self::Bf16 => "bf16",
            Self::Int8 => "int8",
        }
    }
}

/// A weight packing that a Linear can make from its f32 weight (out x in).
trait PackFrom: Sized {
    fn pack(values: &[f32], out_dim: usize, in_dim: usize) -> Self;
}

impl PackFrom for PackedB {
    fn pack(values: &[f32], out_dim: usize, in_dim: usize) -> Self {
        PackedB::from_weight(values, out_dim, in_dim)
    }
}

impl PackFrom for PackedI8 {
    fn pack(values: &[f32], out_dim: usize, in_dim: usize) -> Self {
        PackedI8::from_weight(values, out_dim, in_dim)
    }
}

/// The weight packed for one lower-precision product.
struct PackedWeight<P>(Mutex<Packing<P>>);

impl<P> Default for PackedWeight<P> {
    fn default() -> Self {
        Self(Mutex::new(Packing::None))
    }
}

enum Packing<P> {
    None,
    /// Packed from the f32 weight at this weights generation: stale once it moves on.
    At(u64, Arc<P>),
    /// The weight's only copy: the f32 values were freed, so no generation makes it stale.
    Only(Arc<P>),
}

impl<P: PackFrom> PackedWeight<P> {
    /// The packing of `weight` (out x everything else) current at this weights generation.
    fn get(&self, weight: &Tensor) -> candle_core::Result<Arc<P>> {
        let generation = weights_generation();
        let mut slot = self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        match &*slot {
            Packing::Only(packed) => return Ok(packed.clone()),
            Packing::At(packed_at, packed) if *packed_at == generation => return Ok(packed.clone()),
            _ => {}
        }
        let out_dim = weight.dim(0)?;
        let values = weight.flatten_all()?.to_vec1::<f32>()?;
        let packed = Arc::new(P::pack(&values, out_dim, values.len() / out_dim.max(1)));
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

/// A Linear's packed weight for this call's product.
enum Lowered {
    Bf16(Arc<PackedB>),
    Int8(Arc<PackedI8>),
}

impl Lowered {
    fn as_packed(&self) -> Packed<'_> {
        match self {
            Self::Bf16(packed) => Packed::Bf16(packed),
            Self::Int8(packed) => Packed::Int8(packed),
        }
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
        Self { weight, bias, bf16: PackedWeight::default(), int8: PackedWeight::default() }
    }

    /// This layer of `ln`(x): the first Linear of a pre-norm branch. Under the bf16 products
    /// each task normalizes its rows of x as it reads them, so no normalized copy of x is
    /// written and read back (the same values); elsewhere `ln`, then the layer.
    pub fn forward_normed(&self, ln: &LayerNorm, x: &Tensor, for_backward: bool) -> candle_core::Result<Tensor> {
        if let Some(Lowered::Bf16(packed)) = self.lowered(x, for_backward)? {
            return crate::ops::linear::linear_bf16_normalized(x, ln.normalize(), &packed, &self.bias);
        }
        self.forward(&cut_graph_unless(for_backward, ln.forward(x)?))
    }

    /// x W^T + b over plain f32 rows (`x`: rows of this layer's inputs, back to back), the
    /// product on the tiles from this layer's bf16 packing: for a hand-written inference pass
    /// under `precision: 'bf16'`, where the weight may live only as that packing. The values of
    /// [`Linear::forward`] inside `bf16_matmuls` on the same rows.
    pub fn forward_rows_bf16(&self, x: &[f32]) -> candle_core::Result<Vec<f32>> {
        let Lowered::Bf16(packed) = self.packed(PackedKind::Bf16)? else { unreachable!("asked for bf16") };
        if packed.k == 0 || !x.len().is_multiple_of(packed.k) {
            candle_core::bail!("linear: {} values are not rows of this layer's {} inputs", x.len(), packed.k);
        }
        let rows = crate::kernels::amx::Rows::contiguous(x, packed.k);
        let bias = self.bias.to_vec1::<f32>()?;
        let lhs = crate::kernels::amx::Lhs::F32 { rows, scale: 1.0 };
        Ok(crate::kernels::amx::linear_rows_bf16(lhs, &packed, &bias, crate::kernels::amx::Finish::None))
    }

    /// GELU (exact, erf form, as PyTorch's `nn.GELU()`) of this layer's output, as one op;
    /// `for_backward` as in [`crate::ops::linear::linear_gelu`].
    pub fn forward_gelu(&self, x: &Tensor, for_backward: bool) -> candle_core::Result<Tensor> {
        if let Some(lowered) = self.lowered(x, for_backward)? {
            return crate::ops::linear::linear_packed(x, lowered.as_packed(), &self.bias, PackedEnd::Gelu);
        }
        crate::ops::linear::linear_gelu(x, &self.weight_matrix()?, &self.bias, for_backward)
    }

    /// `residual` plus this layer's output: the Linear that ends a residual branch. Under the
    /// packed products the residual is added as each block of the product finishes (the same
    /// bits as adding it after); in f32 where no backward follows the product accumulates onto
    /// the bias plus the residual (the same terms in another order, and no buffer for the sum);
    /// elsewhere it is `residual + forward(x)`.
    pub fn forward_plus(&self, x: &Tensor, residual: &Tensor, for_backward: bool) -> candle_core::Result<Tensor> {
        if crate::ops::dispatch::fused(&[residual]) {
            if let Some(lowered) = self.lowered(x, for_backward)? {
                return crate::ops::linear::linear_packed(
                    x,
                    lowered.as_packed(),
                    &self.bias,
                    PackedEnd::Plus(residual),
                );
            }
            if !for_backward && crate::ops::dispatch::fused(&[x]) {
                return crate::ops::linear::linear_plus_f32(x, &self.weight_matrix()?, &self.bias, residual);
            }
        }
        residual + self.forward(x)?
    }

    /// Packs the weight for the `kind` product (if not already current) and makes that
    /// packing its only copy: `self.weight` becomes a stand-in of the same shape that holds one
    /// value, so once the parameter store lets go of it too (see
    /// [`crate::model::MotivNet::keep_linear_weights_packed_only`]) the f32 values are freed.
    /// From then on the layer computes only inside that precision's scope (`bf16_matmuls`,
    /// `int8_matmuls`); anywhere else it is an error.
    pub fn keep_packing_only(&mut self, kind: PackedKind) -> candle_core::Result<()> {
        if let Some(held) = self.packing_held_only() {
            if held != kind {
                candle_core::bail!("this Linear's weight is held only in {}, not {}", held.name(), kind.name());
            }
            return Ok(());
        }
        match kind {
            PackedKind::Bf16 => self.bf16.pin(&self.weight)?,
            PackedKind::Int8 => self.int8.pin(&self.weight)?,
        }
        let stand_in = Tensor::zeros(1, self.weight.dtype(), self.weight.device())?;
        let shape = self.weight.shape().clone();
        self.weight = stand_in.broadcast_as(shape)?;
        Ok(())
    }

    /// The packing the weight lives in alone, if its f32 values were let go.
    pub fn packing_held_only(&self) -> Option<PackedKind> {
        if self.bf16.is_only_copy() {
            Some(PackedKind::Bf16)
        } else if self.int8.is_only_copy() {
            Some(PackedKind::Int8)
        } else {
            None
        }
    }

    /// The packed weight this call's product runs on: a lower precision asked for (int8 before
    /// bf16), an f32 input on the CPU, and no backward to follow (the packed products record no
    /// graph); None for the f32 product.
    fn lowered(&self, x: &Tensor, for_backward: bool) -> candle_core::Result<Option<Lowered>> {
        use crate::ops::dispatch;
        if for_backward || !dispatch::fused(&[x]) {
            return Ok(None);
        }
        let kind = if dispatch::int8_matmuls_on() {
            PackedKind::Int8
        } else if dispatch::bf16_matmuls_on() {
            PackedKind::Bf16
        } else {
            return Ok(None);
        };
        self.packed(kind).map(Some)
    }

    /// The weight packed for a `kind` product: current, or made now from the f32 values; an
    /// error where the weight lives only in the other packing (the stand-in holds no values to
    /// pack from).
    fn packed(&self, kind: PackedKind) -> candle_core::Result<Lowered> {
        if let Some(held) = self.packing_held_only().filter(|held| *held != kind) {
            candle_core::bail!(
                "this model holds its Linear weights only in {}: a product in {} needs the model loaded with that precision",
                held.name(),
                kind.name()
            );
        }
        Ok(match kind {
            PackedKind::Bf16 => Lowered::Bf16(self.bf16.get(&self.weight)?),
            PackedKind::Int8 => Lowered::Int8(self.int8.get(&self.weight)?),
        })
    }

    /// The weight as the (out, in) matrix it multiplies by (a convolution kernel flattened;
    /// a matrix as it is, adding no node to the graph). An error once the weight lives only
    /// as a packing: the stand-in left in its place holds no values.
    fn weight_matrix(&self) -> candle_core::Result<Tensor> {
        if let Some(held) = self.packing_held_only() {
            let precision = held.name();
            candle_core::bail!(
                "this model holds its Linear weights only in {precision}, for inference on the CPU (precision \
                 '{precision}'): an f32 or differentiable product needs the model loaded with precision 'f32'"
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
        // Inside the packed precisions' scopes no backward follows (their contract), whatever
        // x records.
        if let Some(lowered) = self.lowered(x, false)? {
            return crate::ops::linear::linear_packed(x, lowered.as_packed(), &self.bias, PackedEnd::Plain);
        }
        crate::ops::linear::linear(x, &self.weight_matrix()?, &self.bias)
    }
}

/// x + fc2(GELU(fc1(`ln`(x)))), a pre-norm transformer block's MLP branch and its residual,
/// as one op where no backward follows. Packed, the hidden activations are never stored whole
/// in f32: in bf16 they stay bf16 between the products and fc1 normalizes x's rows as it reads
/// them ([`crate::ops::linear::mlp_bf16`]), in int8 they are quantized as fc1's tasks finish
/// them ([`crate::ops::linear::mlp_int8`]). In f32 (inference on the CPU) they are made a
/// block of rows at a time and fc2 adds onto the residual ([`crate::ops::linear::mlp_f32`]).
/// `None` for training and on another device, for the caller to compose.
pub fn mlp_plus_fused(
    ln: &LayerNorm,
    fc1: &Linear,
    fc2: &Linear,
    x: &Tensor,
    for_backward: bool,
) -> candle_core::Result<Option<Tensor>> {
    if for_backward || !crate::ops::dispatch::fused(&[x]) {
        return Ok(None);
    }
    match fc1.lowered(x, false)? {
        None => {
            let (w1, w2) = (fc1.weight_matrix()?, fc2.weight_matrix()?);
            crate::ops::linear::mlp_f32(&ln.forward(x)?, (&w1, &fc1.bias), (&w2, &fc2.bias), x).map(Some)
        }
        Some(Lowered::Bf16(p1)) => {
            let Lowered::Bf16(p2) = fc2.packed(PackedKind::Bf16)? else { unreachable!("asked for bf16") };
            crate::ops::linear::mlp_bf16(x, Some(ln.normalize()), (&p1, &fc1.bias), (&p2, &fc2.bias), x).map(Some)
        }
        Some(Lowered::Int8(p1)) => {
            let Lowered::Int8(p2) = fc2.packed(PackedKind::Int8)? else { unreachable!("asked for int8") };
            crate::ops::linear::mlp_int8(&ln.forward(x)?, (&p1, &fc1.bias), (&p2, &fc2.bias), x).map(Some)
        }
    }
}

/// x + proj(self-attention(qkv(`ln`(x)))), a pre-norm block's attention branch and its
/// residual, as one op for inference on the CPU: under bf16 where the shape fills whole panels
/// ([`crate::kernels::attention::bf16_panels_supported`]), q, k, v and the attention's output
/// stay in bf16 panels between the products ([`crate::ops::linear::attention_branch_bf16`]);
/// in f32, qkv's rows go into a buffer kept from block to block
/// ([`crate::ops::linear::attention_branch_f32`]). `None` elsewhere (training, int8, bf16 on
/// another shape, another device), for the caller to compose.
pub fn attention_branch_fused(
    ln: &LayerNorm,
    qkv: &Linear,
    proj: &Linear,
    heads: usize,
    x: &Tensor,
    for_backward: bool,
) -> candle_core::Result<Option<Tensor>> {
    if for_backward || !crate::ops::dispatch::fused(&[x]) || x.rank() != 3 {
        return Ok(None);
    }
    let (_, tokens, dim) = x.dims3()?;
    if heads == 0 || dim % heads != 0 {
        return Ok(None);
    }
    let lowered = qkv.lowered(x, false)?;
    let lowered_attention = crate::ops::dispatch::bf16_matmuls_on() || crate::ops::dispatch::int8_matmuls_on();
    if lowered.is_none() && !lowered_attention && x.dtype() == DType::F32 {
        let (w_qkv, w_proj) = (qkv.weight_matrix()?, proj.weight_matrix()?);
        let normed = ln.forward(x)?;
        return crate::ops::linear::attention_branch_f32(x, &normed, heads, (&w_qkv, &qkv.bias), (&w_proj, &proj.bias))
            .map(Some);
    }
    if !crate::kernels::attention::bf16_panels_supported(tokens, dim / heads) {
        return Ok(None);
    }
    let Some(Lowered::Bf16(packed_qkv)) = lowered else { return Ok(None) };
    let Lowered::Bf16(packed_proj) = proj.packed(PackedKind::Bf16)? else { unreachable!("asked for bf16") };
    crate::ops::linear::attention_branch_bf16(
        x,
        ln.normalize(),
        heads,
        (&packed_qkv, &qkv.bias),
        (&packed_proj, &proj.bias),
    )
    .map(Some)
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

    /// This LayerNorm as a bf16 Linear applies it to the rows it reads.
    pub fn normalize(&self) -> Normalize<'_> {
        Normalize { weight: &self.weight, bias: &self.bias, eps: self.eps }
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
