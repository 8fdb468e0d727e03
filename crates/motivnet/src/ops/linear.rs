//! `nn.Linear` (y = x W^T + b) as one CPU op with its own backward.
//!
//! Composed, candle adds the bias in a second pass over y, and its backward sums the bias
//! gradient with a single-threaded strided reduction over every row (a tenth of a train step
//! on the `tiny` preset) and accumulates the weight gradient through a transposed view. Here
//! the forward starts the product from the broadcast bias, and one backward op writes dx, dW
//! (already in W's layout) and db, the last with all threads.
//!
//! [`linear_gelu`] is the MLP's first layer, GELU(x W^T + b), as one op: the activation runs
//! in place on the product, and its backward folds GELU's derivative into the Linear's.
//! Composed, the GELU is a graph node of its own over the block's widest activation (4 D
//! wide), which candle's backward zero-fills and adds into once more.

use std::sync::OnceLock;

use candle_core::{CpuStorage, CustomOp3, Layout, Shape, Tensor};
use rayon::prelude::*;

use super::f32_slice;
use crate::kernels::amx::{self, Bf16Rows, Finish, Lhs, PackedB, Rows};
use crate::kernels::attention::attention_forward;
use crate::kernels::gelu::{gelu_backward, gelu_forward, gelu_in_place};
use crate::kernels::int8::{self, PackedI8};
use crate::kernels::linear::{linear_grads, linear_rows, linear_rows_into, mlp_rows};
use crate::kernels::CHUNK;

/// x (..., in) W^T (out, in) + b (out) -> (..., out).
///
/// The weight and bias are cast to x's dtype (the f32 parameters under bf16 compute).
pub fn linear(x: &Tensor, weight: &Tensor, bias: &Tensor) -> candle_core::Result<Tensor> {
    let out_dims = check_shapes(x, weight, bias)?;
    let (weight, bias) = (&weight.to_dtype(x.dtype())?, &bias.to_dtype(x.dtype())?);
    if fusable(&[x, weight, bias]) {
        // Applied to x as it is: a reshape to 2-D and back would add two graph nodes, and
        // candle's backward spends a zero-fill and an add over the whole activation on each.
        return x.contiguous()?.apply_op3(&weight.contiguous()?, &bias.contiguous()?, LinearOp);
    }
    let (rows, in_dim) = (x.elem_count() / weight.dim(1)?.max(1), weight.dim(1)?);
    linear_composed(&x.reshape((rows, in_dim))?, weight, bias)?.reshape(out_dims)
}

/// GELU (exact, erf form) of x (..., in) W^T (out, in) + b (out): the MLP's first layer.
/// `for_backward`: whether this forward will be backpropagated (train mode); only then is the
/// pre-activation kept, and a backward through a forward without it is an error.
pub fn linear_gelu(x: &Tensor, weight: &Tensor, bias: &Tensor, for_backward: bool) -> candle_core::Result<Tensor> {
    check_shapes(x, weight, bias)?;
    let (weight, bias) = (&weight.to_dtype(x.dtype())?, &bias.to_dtype(x.dtype())?);
    if fusable(&[x, weight, bias]) {
        // Only a result that backward will reach needs the pre-activation kept.
        let keep = for_backward && [x, weight, bias].iter().any(|t| t.track_op());
        let op = LinearGeluOp { keep, pre_activation: OnceLock::new() };
        return x.contiguous()?.apply_op3(&weight.contiguous()?, &bias.contiguous()?, op);
    }
    super::gelu::gelu_erf(&linear(x, weight, bias)?)
}

/// What a packed Linear product does to its output before it is stored.
pub enum PackedEnd<'a> {
    /// Nothing: x W^T + b.
    Plain,
    /// GELU (exact, erf form) of x W^T + b.
    Gelu,
    /// x W^T + b plus this tensor of the output's shape: a branch that ends a residual
    /// connection, added while each block of the product is in cache.
    Plus(&'a Tensor),
}

/// A Linear's weight packed for a lower-precision product on the CPU.
#[derive(Clone, Copy)]
pub enum Packed<'a> {
    /// For AMX's bf16 tiles.
    Bf16(&'a PackedB),
    /// Quantized to int8 for VNNI.
    Int8(&'a PackedI8),
}

impl Packed<'_> {
    /// (k, n): the weight's inputs and outputs.
    fn shape(self) -> (usize, usize) {
        match self {
            Self::Bf16(p) => (p.k, p.n),
            Self::Int8(p) => (p.k, p.n),
        }
    }
}

/// x (..., in) W^T + b with the product packed as `packed`, then `end`: the Linear layers
/// under `precision: 'bf16'` (x rounded to bf16 as it is read, f32 sums) or `'int8'` (x's rows
/// quantized to u8, exact sums) on the CPU. The bias and the result are f32. Inference only:
/// the result records no graph.
pub fn linear_packed(x: &Tensor, packed: Packed, bias: &Tensor, end: PackedEnd) -> candle_core::Result<Tensor> {
    let out_dims = packed_output_dims(x, packed.shape(), bias)?;
    let x = x.contiguous()?;
    let (storage, layout) = x.storage_and_layout();
    let x_values = cpu_f32(&storage, layout, "linear_packed")?;
    let b = bias.to_vec1::<f32>()?;
    let product = |finish: Finish| match packed {
        Packed::Bf16(p) => {
            amx::linear_rows_bf16(Lhs::F32 { rows: Rows::contiguous(x_values, p.k), scale: 1.0 }, p, &b, finish)
        }
        Packed::Int8(p) => int8::linear_rows(int8::Input::F32(x_values), p, &b, finish),
    };
    let y = match end {
        PackedEnd::Plain => product(Finish::None),
        PackedEnd::Gelu => product(Finish::Gelu),
        PackedEnd::Plus(residual) => with_residual_values(residual, &out_dims, |addend| product(Finish::Add(addend)))?,
    };
    Tensor::from_vec(y, out_dims, x.device())
}

/// A LayerNorm over the last dimension that a bf16 Linear applies to its input rows as it reads
/// them (see [`linear_bf16_normalized`]).
#[derive(Clone, Copy)]
pub struct Normalize<'a> {
    pub weight: &'a Tensor,
    pub bias: &'a Tensor,
    pub eps: f64,
}

impl Normalize<'_> {
    /// The weight and bias as f32 values, and eps.
    fn values(&self) -> candle_core::Result<(Vec<f32>, Vec<f32>, f32)> {
        Ok((self.weight.to_vec1::<f32>()?, self.bias.to_vec1::<f32>()?, self.eps as f32))
    }
}

/// LayerNorm(x) (..., in) W^T + b with the product packed in bf16, each task normalizing its
/// rows of x as it rounds them for the tiles ([`Lhs::Normalized`]): the same values as
/// [`linear_packed`] of the normalized x, without writing that x and reading it back. A
/// pre-norm block's first Linear of a branch under `precision: 'bf16'`; inference only.
pub fn linear_bf16_normalized(
    x: &Tensor,
    ln: Normalize,
    packed: &PackedB,
    bias: &Tensor,
) -> candle_core::Result<Tensor> {
    let out_dims = packed_output_dims(x, (packed.k, packed.n), bias)?;
    let x = x.contiguous()?;
    let (storage, layout) = x.storage_and_layout();
    let x_values = cpu_f32(&storage, layout, "linear_bf16_normalized")?;
    let (weight, ln_bias, eps) = ln.values()?;
    let lhs = Lhs::Normalized { rows: Rows::contiguous(x_values, packed.k), weight: &weight, bias: &ln_bias, eps };
    let y = amx::linear_rows_bf16(lhs, packed, &bias.to_vec1::<f32>()?, Finish::None);
    Tensor::from_vec(y, out_dims, x.device())
}

/// residual + x (..., in) W^T + b in f32, the product accumulated onto the bias plus the
/// residual: a Linear that ends a residual branch, for inference. Composed, the sum is one
/// more output-sized buffer and a pass over it. The result records no graph.
pub fn linear_plus_f32(x: &Tensor, weight: &Tensor, bias: &Tensor, residual: &Tensor) -> candle_core::Result<Tensor> {
    let out_dims = check_shapes(x, weight, bias)?;
    let in_dim = weight.dim(1)?;
    let y = with_f32_values([x, weight, bias], "linear_plus_f32", |[x, w, b]| {
        with_residual_values(residual, &out_dims, |r| linear_rows(x, w, b, in_dim, Some(r)))
    })??;
    Tensor::from_vec(y, out_dims, x.device())
}

/// residual + fc2(GELU(fc1(x))) in f32 for inference: the hidden activations in blocks
/// ([`mlp_rows`]), fc2 accumulated onto its bias plus the residual. The result records no graph.
pub fn mlp_f32(
    x: &Tensor,
    (w1, b1): (&Tensor, &Tensor),
    (w2, b2): (&Tensor, &Tensor),
    residual: &Tensor,
) -> candle_core::Result<Tensor> {
    let out_dims = mlp_output_dims(x, ((w1.dim(1)?, w1.dim(0)?), b1), ((w2.dim(1)?, w2.dim(0)?), b2))?;
    let y = with_f32_values([x, w1, b1, w2, b2], "mlp_f32", |[x, w1, b1, w2, b2]| {
        with_residual_values(residual, &out_dims, |addend| mlp_rows(x, (w1, b1), (w2, b2), addend))
    })??;
    Tensor::from_vec(y, out_dims, x.device())
}

/// x + proj(self-attention(qkv(normed))) in f32 for inference, `normed` the block's LayerNorm
/// of x: the attention branch of a block and its residual. qkv's rows go into a buffer of the
/// calling thread, kept from call to call: at sapiens-0.3b's 3072 tokens they are 38 MB, above
/// glibc's largest heap block (32 MiB), so a fresh buffer was mapped, and paged in and zeroed
/// by the kernel, at every block. The same values as the layers one after the other. The
/// result records no graph.
pub fn attention_branch_f32(
    x: &Tensor,
    normed: &Tensor,
    heads: usize,
    (w_qkv, b_qkv): (&Tensor, &Tensor),
    (w_proj, b_proj): (&Tensor, &Tensor),
) -> candle_core::Result<Tensor> {
    let (batch, tokens, dim) = x.dims3()?;
    if normed.dims() != x.dims() {
        candle_core::bail!("attention_branch_f32: normed tokens {:?} for tokens {:?}", normed.dims(), x.dims());
    }
    let qkv_width = check_shapes(normed, w_qkv, b_qkv)?[2];
    let out_dims = check_shapes(x, w_proj, b_proj)?;
    if qkv_width != 3 * dim || out_dims != x.dims() {
        candle_core::bail!(
            "attention_branch_f32: qkv {:?} and proj {:?} do not fit tokens of {dim}",
            w_qkv.dims(),
            w_proj.dims()
        );
    }
    let y = with_f32_values([x, normed, w_qkv, b_qkv, w_proj, b_proj], "attention_branch_f32", |values| {
        let [x, normed, w_qkv, b_qkv, w_proj, b_proj] = values;
        let mut qkv = QKV_ROWS.with(|cell| cell.take());
        linear_rows_into(normed, w_qkv, b_qkv, dim, None, &mut qkv);
        let attended = attention_forward(&qkv, (batch, tokens, dim), heads, false);
        QKV_ROWS.with(|cell| cell.replace(qkv));
        let (attended, _) = attended.map_err(super::kernel_err)?;
        Ok::<_, candle_core::Error>(linear_rows(&attended, w_proj, b_proj, dim, Some(x)))
    })??;
    Tensor::from_vec(y, out_dims, x.device())
}

/// fc2(GELU(fc1(x))) + residual with both products on the tiles: the MLP of a block under
/// `precision: 'bf16'` on the CPU. fc1's blocks go through GELU and are rounded to bf16 into
/// the panels fc2 reads, so the hidden activations (four times x's width) are never stored
/// in f32, read back and rounded in a pass of their own. The result is the same bits as
/// [`linear_packed`] with GELU, then with the residual. Inference only.
pub fn mlp_bf16(
    x: &Tensor,
    ln: Option<Normalize>,
    (fc1, b1): (&PackedB, &Tensor),
    (fc2, b2): (&PackedB, &Tensor),
    residual: &Tensor,
) -> candle_core::Result<Tensor> {
    let out_dims = mlp_output_dims(x, ((fc1.k, fc1.n), b1), ((fc2.k, fc2.n), b2))?;
    let x = x.contiguous()?;
    let (storage, layout) = x.storage_and_layout();
    let x_values = cpu_f32(&storage, layout, "mlp_bf16")?;
    // The calling thread's buffer for the hidden rows, kept from call to call: a fresh one was
    // a zero-filled allocation of four times x's size at every block, which fc1 then overwrote.
    let mut hidden = MLP_HIDDEN.with(|cell| cell.take());
    let rows = Rows::contiguous(x_values, fc1.k);
    let ln = ln.map(|ln| ln.values()).transpose()?;
    let lhs = match &ln {
        Some((weight, bias, eps)) => Lhs::Normalized { rows, weight, bias, eps: *eps },
        None => Lhs::F32 { rows, scale: 1.0 },
    };
    amx::linear_rows_to_bf16(lhs, fc1, &b1.to_vec1::<f32>()?, Finish::Gelu, &mut hidden);
    let b2 = b2.to_vec1::<f32>()?;
    let y = with_residual_values(residual, &out_dims, |addend| {
        amx::linear_rows_bf16(Lhs::Bf16(&hidden), fc2, &b2, Finish::Add(addend))
    });
    MLP_HIDDEN.with(|cell| cell.replace(hidden));
    Tensor::from_vec(y?, out_dims, x.device())
}

thread_local! {
    /// The f32 attention branch's qkv rows ([`attention_branch_f32`]).
    static QKV_ROWS: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
    static MLP_HIDDEN: std::cell::RefCell<Bf16Rows> = std::cell::RefCell::new(Bf16Rows::default());
    /// The attention branch's q, k and v, and the attention's output, in bf16 panels.
    static ATTENTION_PANELS: std::cell::RefCell<(Bf16Rows, Bf16Rows)> = std::cell::RefCell::new(Default::default());
}

/// x + proj(attention(qkv(LayerNorm(x)))) with every product on the tiles: the attention branch
/// of a block under `precision: 'bf16'` for inference, where [`bf16_panels_supported`] holds.
/// qkv normalizes x's rows as it reads them and rounds its output to bf16 panels, which the
/// attention reads in place (q) or packs (k, v) without a pass over f32; the attention writes
/// its output rounded to bf16 as the projection's left operand; the projection adds x as its
/// blocks finish. The same values as qkv in f32, the attention rounding its operands, then the
/// projection rounding its input, for a head whose scale is a power of two (every preset's head
/// of 64 values). Both panel buffers are the calling thread's, kept from call to call (at
/// sapiens-0.3b's 3072 tokens the f32 qkv was 38 MB, freshly mapped and zeroed each layer).
///
/// [`bf16_panels_supported`]: crate::kernels::attention::bf16_panels_supported
pub fn attention_branch_bf16(
    x: &Tensor,
    ln: Normalize,
    heads: usize,
    (qkv, qkv_bias): (&PackedB, &Tensor),
    (proj, proj_bias): (&PackedB, &Tensor),
) -> candle_core::Result<Tensor> {
    let (batch, tokens, dim) = x.dims3()?;
    let qkv_dims = packed_output_dims(x, (qkv.k, qkv.n), qkv_bias)?;
    if qkv_dims[2] != 3 * dim || (proj.k, proj.n) != (dim, dim) || proj_bias.dims1()? != dim {
        candle_core::bail!(
            "attention_branch_bf16: qkv {} x {} and proj {} x {} (bias {:?}) do not fit tokens of {dim}",
            qkv.n,
            qkv.k,
            proj.n,
            proj.k,
            proj_bias.dims()
        );
    }
    let x = x.contiguous()?;
    let (storage, layout) = x.storage_and_layout();
    let x_values = cpu_f32(&storage, layout, "attention_branch_bf16")?;
    let (weight, bias, eps) = ln.values()?;
    let (qkv_bias, proj_bias) = (qkv_bias.to_vec1::<f32>()?, proj_bias.to_vec1::<f32>()?);
    let (mut qkv_rows, mut attended) = ATTENTION_PANELS.with(|cell| cell.take());
    let rows = Rows::contiguous(x_values, dim);
    let lhs = Lhs::Normalized { rows, weight: &weight, bias: &bias, eps };
    amx::linear_rows_to_bf16(lhs, qkv, &qkv_bias, Finish::None, &mut qkv_rows);
    let attention =
        crate::kernels::attention::attention_forward_bf16_panels(&qkv_rows, (batch, tokens, dim), heads, &mut attended);
    let y = attention.map(|()| amx::linear_rows_bf16(Lhs::Bf16(&attended), proj, &proj_bias, Finish::Add(x_values)));
    ATTENTION_PANELS.with(|cell| cell.replace((qkv_rows, attended)));
    let y = y.map_err(super::kernel_err)?;
    Tensor::from_vec(y, (batch, tokens, dim), x.device())
}

/// fc2(GELU(fc1(x))) + residual with both products in int8: the MLP of a block under
/// `precision: 'int8'` on the CPU. fc1's rows go through GELU and are quantized for fc2 as its
/// tasks finish them ([`int8::linear_gelu_rows_quantized`]), so the hidden activations (four
/// times x's width) are stored in f32 only a task's rows at a time (whole only where the rows
/// are too few to give every thread a task); fc2 adds the residual as its blocks finish.
/// Inference only.
pub fn mlp_int8(
    x: &Tensor,
    (fc1, b1): (&PackedI8, &Tensor),
    (fc2, b2): (&PackedI8, &Tensor),
    residual: &Tensor,
) -> candle_core::Result<Tensor> {
    let out_dims = mlp_output_dims(x, ((fc1.k, fc1.n), b1), ((fc2.k, fc2.n), b2))?;
    let x = x.contiguous()?;
    let (storage, layout) = x.storage_and_layout();
    let x_values = cpu_f32(&storage, layout, "mlp_int8")?;
    let hidden = int8::linear_gelu_rows_quantized(x_values, fc1, &b1.to_vec1::<f32>()?);
    let b2 = b2.to_vec1::<f32>()?;
    let y = with_residual_values(residual, &out_dims, |addend| {
        int8::linear_rows(int8::Input::Quantized(&hidden), fc2, &b2, Finish::Add(addend))
    })?;
    Tensor::from_vec(y, out_dims, x.device())
}

/// The output dims of an MLP's two packed products ((k, n) each, with their biases) on x, or an
/// error naming the shapes that do not fit.
fn mlp_output_dims(
    x: &Tensor,
    (fc1, b1): ((usize, usize), &Tensor),
    (fc2, b2): ((usize, usize), &Tensor),
) -> candle_core::Result<Vec<usize>> {
    let mut dims = packed_output_dims(x, fc1, b1)?;
    if fc2.0 != fc1.1 {
        candle_core::bail!("mlp: fc1 gives {} values a row, fc2 takes {}", fc1.1, fc2.0);
    }
    if b2.dims1()? != fc2.1 {
        candle_core::bail!("mlp: fc2's bias {:?} does not fit its {} outputs", b2.dims(), fc2.1);
    }
    *dims.last_mut().unwrap() = fc2.1;
    Ok(dims)
}

/// The output dims of x times a packed weight (n x k) with its bias, or an error naming the
/// shapes that do not fit.
fn packed_output_dims(x: &Tensor, (k, n): (usize, usize), bias: &Tensor) -> candle_core::Result<Vec<usize>> {
    let dims = x.dims();
    let in_dim = dims.last().copied().unwrap_or(0);
    let out_dim = bias.dims1()?;
    if dims.is_empty() || in_dim != k || out_dim != n {
        candle_core::bail!("linear: input {dims:?} and a packed weight of {n} x {k} with bias ({out_dim}) do not fit");
    }
    let mut out_dims = dims.to_vec();
    *out_dims.last_mut().unwrap() = out_dim;
    Ok(out_dims)
}

/// `product` given the f32 values of a Linear's residual, or an error when the residual is not
/// an f32 CPU tensor of the output's shape.
fn with_residual_values<R>(
    residual: &Tensor,
    out_dims: &[usize],
    product: impl FnOnce(&[f32]) -> R,
) -> candle_core::Result<R> {
    if residual.dims() != out_dims || residual.dtype() != candle_core::DType::F32 {
        candle_core::bail!(
            "linear: a residual {:?} of {:?} does not fit the f32 output {out_dims:?}",
            residual.dims(),
            residual.dtype()
        );
    }
    let residual = residual.contiguous()?;
    let (storage, layout) = residual.storage_and_layout();
    Ok(product(cpu_f32(&storage, layout, "linear: the residual")?))
}

/// `f` given the f32 values of f32 CPU tensors (made contiguous first), or an error naming `op`
/// when one is not.
fn with_f32_values<const N: usize, R>(
    tensors: [&Tensor; N],
    op: &str,
    f: impl FnOnce([&[f32]; N]) -> R,
) -> candle_core::Result<R> {
    let held = tensors.iter().map(|t| t.contiguous()).collect::<candle_core::Result<Vec<_>>>()?;
    let guards: Vec<_> = held.iter().map(|t| t.storage_and_layout()).collect();
    let values = guards.iter().map(|(s, l)| cpu_f32(s, l, op)).collect::<candle_core::Result<Vec<_>>>()?;
    let values: [&[f32]; N] = values.try_into().unwrap_or_else(|_| unreachable!("one slice per tensor"));
    Ok(f(values))
}

/// The f32 values of a contiguous CPU tensor's storage.
fn cpu_f32<'a>(storage: &'a candle_core::Storage, layout: &Layout, op: &str) -> candle_core::Result<&'a [f32]> {
    let candle_core::Storage::Cpu(storage) = storage else { candle_core::bail!("{op}: the input is not on the CPU") };
    f32_slice(storage, layout, op)
}

/// The output dims of x W^T, or an error naming the shapes that do not fit.
fn check_shapes(x: &Tensor, weight: &Tensor, bias: &Tensor) -> candle_core::Result<Vec<usize>> {
    let dims = x.dims();
    let in_dim = dims.last().copied().unwrap_or(0);
    let (out_dim, weight_in) = weight.dims2()?;
    if dims.is_empty() {
        candle_core::bail!("linear: the input is a scalar, expected (..., {weight_in})");
    }
    if weight_in != in_dim || bias.dims1()? != out_dim {
        candle_core::bail!(
            "linear: input width {in_dim}, weight {:?} and bias {:?} do not fit (expected weight ({out_dim}, {in_dim}))",
            weight.dims(),
            bias.dims()
        );
    }
    let mut out_dims = dims.to_vec();
    *out_dims.last_mut().unwrap() = out_dim;
    Ok(out_dims)
}

fn fusable(tensors: &[&Tensor]) -> bool {
    super::dispatch::fused(tensors)
}

/// The same from candle's primitive ops (2-D x), for other devices and for the tests.
pub fn linear_composed(x: &Tensor, weight: &Tensor, bias: &Tensor) -> candle_core::Result<Tensor> {
    x.matmul(&weight.t()?)?.broadcast_add(bias)
}

struct LinearOp;

impl CustomOp3 for LinearOp {
    fn name(&self) -> &'static str {
        "fused-linear"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (y, shape) = linear_forward(self.name(), (s1, l1), (s2, l2), (s3, l3))?;
        Ok((CpuStorage::F32(y), shape))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        linear_backward(x, w, &grad.contiguous()?)
    }
}

/// x W^T + b over CPU storages: the product starts from the broadcast bias.
fn linear_forward(
    name: &str,
    (s1, l1): (&CpuStorage, &Layout),
    (s2, l2): (&CpuStorage, &Layout),
    (s3, l3): (&CpuStorage, &Layout),
) -> candle_core::Result<(Vec<f32>, Shape)> {
    let x = f32_slice(s1, l1, name)?;
    let w = f32_slice(s2, l2, name)?;
    let b = f32_slice(s3, l3, name)?;
    let in_dim = l1.dims().last().copied().unwrap_or(0);
    let mut out_dims = l1.dims().to_vec();
    *out_dims.last_mut().unwrap() = b.len();
    Ok((linear_rows(x, w, b, in_dim, None), Shape::from(out_dims)))
}

/// dx, dW and db of y = x W^T + b from the output gradient `grad` (contiguous).
fn linear_backward(
    x: &Tensor,
    w: &Tensor,
    grad: &Tensor,
) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
    let (out_dim, in_dim) = w.dims2()?;
    let rows = x.elem_count() / in_dim.max(1);
    // One op computes all three into one buffer: dx, then dW, then db.
    let all = x.apply_op3_no_bwd(w, grad, &LinearGrad)?;
    let dx = all.narrow(0, 0, rows * in_dim)?.reshape(x.shape())?;
    let dw = all.narrow(0, rows * in_dim, out_dim * in_dim)?.reshape((out_dim, in_dim))?;
    let db = all.narrow(0, (rows + out_dim) * in_dim, out_dim)?;
    Ok((Some(dx), Some(dw), Some(db)))
}

/// GELU(x W^T + b), keeping the pre-activation for backward when asked.
struct LinearGeluOp {
    keep: bool,
    /// x W^T + b, once the forward has run with `keep`.
    pre_activation: OnceLock<Tensor>,
}

impl CustomOp3 for LinearGeluOp {
    fn name(&self) -> &'static str {
        "fused-linear-gelu"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (mut z, shape) = linear_forward(self.name(), (s1, l1), (s2, l2), (s3, l3))?;
        if !self.keep {
            z.par_chunks_mut(CHUNK).for_each(gelu_in_place);
            return Ok((CpuStorage::F32(z), shape));
        }
        let y = gelu_forward(&z);
        // Candle runs an op value's forward once; a second `set` could not happen.
        let _ = self.pre_activation.set(Tensor::from_vec(z, shape.clone(), &candle_core::Device::Cpu)?);
        Ok((CpuStorage::F32(y), shape))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        // Backward reaches only ops whose inputs were tracked, and those kept it.
        let Some(z) = self.pre_activation.get() else {
            candle_core::bail!("{}: backward through a forward that kept no pre-activation", self.name())
        };
        let grad = grad.contiguous()?;
        let dz = {
            let (z_storage, z_layout) = z.storage_and_layout();
            let (g_storage, g_layout) = grad.storage_and_layout();
            let (candle_core::Storage::Cpu(zs), candle_core::Storage::Cpu(gs)) = (&*z_storage, &*g_storage) else {
                candle_core::bail!("{}: expected CPU tensors", self.name())
            };
            let (z_values, g_values) = (f32_slice(zs, z_layout, self.name())?, f32_slice(gs, g_layout, self.name())?);
            if z_values.len() != g_values.len() {
                candle_core::bail!(
                    "{}: gradient has {} values, output {}",
                    self.name(),
                    g_values.len(),
                    z_values.len()
                );
            }
            Tensor::from_vec(gelu_backward(z_values, g_values), z.shape(), &candle_core::Device::Cpu)?
        };
        linear_backward(x, w, &dz)
    }
}

/// From x, W and the output gradient g: dx = g W, dW = g^T x, db = column sums of g, flat.
struct LinearGrad;

impl CustomOp3 for LinearGrad {
    fn name(&self) -> &'static str {
        "fused-linear-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = f32_slice(s1, l1, self.name())?;
        let w = f32_slice(s2, l2, self.name())?;
        let g = f32_slice(s3, l3, self.name())?;
        let (out_dim, in_dim) = l2.shape().dims2()?;
        let rows = x.len() / in_dim.max(1);
        if x.len() != rows * in_dim || g.len() != rows * out_dim {
            candle_core::bail!("{}: x, W and the gradient do not fit", self.name());
        }
        let all = linear_grads(x, w, g, (out_dim, in_dim));
        let total = all.len();
        Ok((CpuStorage::F32(all), Shape::from(total)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap()
    }

    /// The attention branch as one op under bf16 gives the bits of its three ops one after
    /// another (qkv on normalized rows, the bf16 attention, the projection plus x) where a head's
    /// scale is a power of two (64 values, with several query blocks, images and heads); for a
    /// head of 32 values, whose scale joins the scores instead of q, it stays within bf16's
    /// precision of them.
    #[test]
    fn the_bf16_attention_branch_gives_the_bits_of_its_parts() {
        if !amx::checkable_here("the bf16 attention branch") {
            return;
        }
        let dev = Device::Cpu;
        let randn = |mean: f32, std: f32, shape: &[usize]| Tensor::randn(mean, std, shape, &dev).unwrap();
        for (batch, tokens, heads, head_dim) in [(2, 64, 2, 64), (1, 96, 3, 64), (2, 32, 2, 32)] {
            let d = heads * head_dim;
            let x = randn(0.0, 1.0, &[batch, tokens, d]);
            let (ln_weight, ln_bias) = (randn(1.0, 0.1, &[d]), randn(0.0, 0.1, &[d]));
            let ln = || Normalize { weight: &ln_weight, bias: &ln_bias, eps: 1e-6 };
            let (wq, bq) = (randn(0.0, 0.1, &[3 * d, d]), randn(0.0, 0.1, &[3 * d]));
            let (wp, bp) = (randn(0.0, 0.1, &[d, d]), randn(0.0, 0.1, &[d]));
            let pack = |w: &Tensor, n: usize| PackedB::from_weight(&w.flatten_all().unwrap().to_vec1().unwrap(), n, d);
            let (pq, pp) = (pack(&wq, 3 * d), pack(&wp, d));
            let fused = attention_branch_bf16(&x, ln(), heads, (&pq, &bq), (&pp, &bp)).unwrap();
            let qkv = linear_bf16_normalized(&x, ln(), &pq, &bq).unwrap();
            let attended =
                crate::ops::dispatch::bf16_matmuls(|| crate::ops::attention::self_attention(&qkv, heads, false))
                    .unwrap();
            let parts = linear_packed(&attended, Packed::Bf16(&pp), &bp, PackedEnd::Plus(&x)).unwrap();
            let shape = format!("{batch} x {tokens}, {heads} heads of {head_dim}");
            if head_dim == 64 {
                let bits = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
                assert!(bits(&fused) == bits(&parts), "{shape}: the branch differs from its parts");
            } else {
                let diff = max_diff(&fused, &parts);
                assert!(diff < 0.02, "{shape}: the branch differs from its parts by {diff}");
            }
        }
        let x = randn(0.0, 1.0, &[1, 45, 64]);
        let (w, b) = (randn(1.0, 0.1, &[64]), randn(0.0, 0.1, &[64]));
        let (q, p) =
            (PackedB::from_weight(&vec![0.1; 192 * 64], 192, 64), PackedB::from_weight(&vec![0.1; 4096], 64, 64));
        let (bq, bp) = (randn(0.0, 0.1, &[192]), randn(0.0, 0.1, &[64]));
        let ln = Normalize { weight: &w, bias: &b, eps: 1e-6 };
        let err = attention_branch_bf16(&x, ln, 1, (&q, &bq), (&p, &bp)).unwrap_err().to_string();
        assert!(err.contains("45 tokens"), "a batch of 45 tokens does not fill panels: {err}");
    }

    /// The f32 attention branch gives the bits of its three ops one after another (qkv, the
    /// attention, the projection plus x), through the attention in key blocks (from
    /// `MIN_TOKENS` on) and through `gemm`, in calls one after another of other sizes, which
    /// reuse the thread's qkv buffer; shapes that do not fit are named.
    #[test]
    fn the_f32_attention_branch_gives_the_bits_of_its_parts() {
        let dev = Device::Cpu;
        let randn = |mean: f32, std: f32, shape: &[usize]| Tensor::randn(mean, std, shape, &dev).unwrap();
        let blocked = crate::kernels::flash_attention::MIN_TOKENS + 20;
        for (batch, tokens, heads, head_dim) in [(1, blocked, 2, 64), (2, 50, 3, 32), (1, blocked, 1, 64), (2, 7, 2, 8)]
        {
            let d = heads * head_dim;
            let (x, normed) = (randn(0.0, 1.0, &[batch, tokens, d]), randn(0.0, 1.0, &[batch, tokens, d]));
            let (wq, bq) = (randn(0.0, 0.1, &[3 * d, d]), randn(0.0, 0.1, &[3 * d]));
            let (wp, bp) = (randn(0.0, 0.1, &[d, d]), randn(0.0, 0.1, &[d]));
            let fused = attention_branch_f32(&x, &normed, heads, (&wq, &bq), (&wp, &bp)).unwrap();
            let qkv = linear(&normed, &wq, &bq).unwrap();
            let attended = crate::ops::attention::self_attention(&qkv, heads, false).unwrap();
            let parts = linear_plus_f32(&attended, &wp, &bp, &x).unwrap();
            let bits = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            assert!(bits(&fused) == bits(&parts), "{batch} x {tokens}, {heads} heads of {head_dim}: differs");
        }
        let (x, w, b) = (randn(0.0, 1.0, &[1, 5, 8]), randn(0.0, 0.1, &[24, 8]), randn(0.0, 0.1, &[24]));
        let (wp, bp) = (randn(0.0, 0.1, &[8, 8]), randn(0.0, 0.1, &[8]));
        let err = attention_branch_f32(&x, &x, 2, (&wp, &bp), (&wp, &bp)).unwrap_err().to_string();
        assert!(err.contains("do not fit tokens of 8"), "{err}");
        let other = randn(0.0, 1.0, &[1, 6, 8]);
        let err = attention_branch_f32(&x, &other, 2, (&w, &b), (&wp, &bp)).unwrap_err().to_string();
        assert!(err.contains("normed tokens [1, 6, 8]"), "{err}");
    }

    #[test]
    fn fused_linear_matches_composed_forward_and_all_three_gradients() {
        let dev = Device::Cpu;
        let var = |t: Tensor| Var::from_tensor(&t).unwrap();
        // 600 rows: more than one band of the bias-gradient sum.
        let x = var(Tensor::randn(0f32, 1.0, (3, 200, 37), &dev).unwrap());
        let w = var(Tensor::randn(0f32, 0.2, (29, 37), &dev).unwrap());
        let b = var(Tensor::randn(0f32, 0.2, 29, &dev).unwrap());
        let up = Tensor::randn(0f32, 1.0, (3, 200, 29), &dev).unwrap();
        let fused = linear(&x, &w, &b).unwrap();
        let composed = linear_composed(&x.reshape((600, 37)).unwrap(), &w, &b).unwrap().reshape((3, 200, 29)).unwrap();
        assert!(max_diff(&fused, &composed) < 1e-5, "forward differs by {}", max_diff(&fused, &composed));
        let ga = (fused * &up).unwrap().sum_all().unwrap().backward().unwrap();
        let gb = (composed * &up).unwrap().sum_all().unwrap().backward().unwrap();
        for (name, v) in [("x", &x), ("weight", &w), ("bias", &b)] {
            let (a, c) = (ga.get(v.as_tensor()).unwrap(), gb.get(v.as_tensor()).unwrap());
            assert_eq!(a.dims(), v.dims(), "gradient of {name} has the parameter's shape");
            assert!(max_diff(a, c) < 1e-4, "gradient of {name} differs by {}", max_diff(a, c));
        }
    }

    #[test]
    fn fused_linear_gelu_matches_composed_forward_and_all_three_gradients() {
        let dev = Device::Cpu;
        let var = |t: Tensor| Var::from_tensor(&t).unwrap();
        let x = var(Tensor::randn(0f32, 1.0, (2, 150, 23), &dev).unwrap());
        let w = var(Tensor::randn(0f32, 0.4, (41, 23), &dev).unwrap());
        let b = var(Tensor::randn(0f32, 0.4, 41, &dev).unwrap());
        let up = Tensor::randn(0f32, 1.0, (2, 150, 41), &dev).unwrap();
        let fused = linear_gelu(&x, &w, &b, true).unwrap();
        let composed = linear_composed(&x.reshape((300, 23)).unwrap(), &w, &b).unwrap().gelu_erf().unwrap();
        let composed = composed.reshape((2, 150, 41)).unwrap();
        assert!(max_diff(&fused, &composed) < 1e-5, "forward differs by {}", max_diff(&fused, &composed));
        let ga = (fused * &up).unwrap().sum_all().unwrap().backward().unwrap();
        let gb = (&composed * &up).unwrap().sum_all().unwrap().backward().unwrap();
        for (name, v) in [("x", &x), ("weight", &w), ("bias", &b)] {
            let (a, c) = (ga.get(v.as_tensor()).unwrap(), gb.get(v.as_tensor()).unwrap());
            assert_eq!(a.dims(), v.dims(), "gradient of {name} has the parameter's shape");
            assert!(max_diff(a, c) < 1e-4, "gradient of {name} differs by {}", max_diff(a, c));
        }
        // Untracked inputs, or a forward not for backward, take the in-place path, to the same
        // values; a backward through the latter is refused, not wrong.
        let (xd, wd, bd) = (x.as_detached_tensor(), w.as_detached_tensor(), b.as_detached_tensor());
        let untracked = linear_gelu(&xd, &wd, &bd, true).unwrap();
        assert!(!untracked.track_op());
        assert!(max_diff(&untracked, &composed) < 1e-5);
        let inference = linear_gelu(&x, &w, &b, false).unwrap();
        assert!(max_diff(&inference, &composed) < 1e-5);
        let err = (inference * &up).unwrap().sum_all().unwrap().backward().unwrap_err().to_string();
        assert!(err.contains("kept no pre-activation"), "{err}");
    }

    #[test]
    fn inference_residual_linear_and_mlp_match_their_composed_layers() {
        let dev = Device::Cpu;
        let randn = |shape: &[usize], std: f32| Tensor::randn(0f32, std, shape, &dev).unwrap();
        let (x, w, b, residual) =
            (randn(&[2, 30, 12], 1.0), randn(&[20, 12], 0.3), randn(&[20], 0.3), randn(&[2, 30, 20], 1.0));
        let fused = linear_plus_f32(&x, &w, &b, &residual).unwrap();
        let composed = (&residual
            + linear_composed(&x.reshape((60, 12)).unwrap(), &w, &b).unwrap().reshape((2, 30, 20)).unwrap())
        .unwrap();
        assert_eq!(fused.dims(), &[2, 30, 20]);
        assert!(max_diff(&fused, &composed) < 1e-5, "linear plus residual differs by {}", max_diff(&fused, &composed));

        let (w1, b1, w2, b2) = (randn(&[40, 12], 0.4), randn(&[40], 0.4), randn(&[12, 40], 0.4), randn(&[12], 0.4));
        let mlp_residual = randn(&[2, 30, 12], 1.0);
        let fused = mlp_f32(&x, (&w1, &b1), (&w2, &b2), &mlp_residual).unwrap();
        let rows = x.reshape((60, 12)).unwrap();
        let hidden = linear_composed(&rows, &w1, &b1).unwrap().gelu_erf().unwrap();
        let composed =
            (&mlp_residual + linear_composed(&hidden, &w2, &b2).unwrap().reshape((2, 30, 12)).unwrap()).unwrap();
        assert!(max_diff(&fused, &composed) < 1e-5, "mlp differs by {}", max_diff(&fused, &composed));

        // A residual of another shape, or an fc2 that does not take fc1's outputs, is named.
        let err = linear_plus_f32(&x, &w, &b, &mlp_residual).unwrap_err().to_string();
        assert!(err.contains("residual") && err.contains("[2, 30, 12]"), "{err}");
        let err = mlp_f32(&x, (&w1, &b1), (&w, &b), &mlp_residual).unwrap_err().to_string();
        assert!(err.contains("fc1 gives 40") && err.contains("fc2 takes 12"), "{err}");
    }

    /// On a CPU with AMX: the bf16 Linear and MLP that normalize x's rows as they read them
    /// give the same bits as LayerNorm first, then the plain bf16 products.
    #[test]
    fn normalizing_as_the_rows_are_read_gives_the_bits_of_normalizing_first() {
        if !crate::kernels::amx::checkable_here("the normalizing bf16 Linear") {
            return;
        }
        let dev = Device::Cpu;
        let randn = |shape: &[usize], std: f32| Tensor::randn(0f32, std, shape, &dev).unwrap();
        let (d, hidden) = (48, 100);
        let (x, ln_w, ln_b) = ((randn(&[2, 37, d], 2.0) + 0.5).unwrap(), randn(&[d], 1.0), randn(&[d], 0.5));
        let ln = Normalize { weight: &ln_w, bias: &ln_b, eps: 1e-6 };
        let normalized = crate::ops::layer_norm::layer_norm(&x, &ln_w, &ln_b, 1e-6).unwrap();
        let (w1, b1, w2, b2) =
            (randn(&[hidden, d], 0.3), randn(&[hidden], 0.3), randn(&[d, hidden], 0.3), randn(&[d], 0.3));
        let pack = |w: &Tensor| {
            let (n, k) = w.dims2().unwrap();
            PackedB::from_weight(&w.flatten_all().unwrap().to_vec1::<f32>().unwrap(), n, k)
        };
        let (p1, p2) = (pack(&w1), pack(&w2));
        let bits = |t: &Tensor| {
            t.flatten_all().unwrap().to_vec1::<f32>().unwrap().iter().map(|v| v.to_bits()).collect::<Vec<_>>()
        };

        let fused = linear_bf16_normalized(&x, ln, &p1, &b1).unwrap();
        let first = linear_packed(&normalized, Packed::Bf16(&p1), &b1, PackedEnd::Plain).unwrap();
        assert_eq!(fused.dims(), &[2, 37, hidden]);
        assert_eq!(bits(&fused), bits(&first), "the normalizing Linear");

        let fused = mlp_bf16(&x, Some(ln), (&p1, &b1), (&p2, &b2), &x).unwrap();
        let first = mlp_bf16(&normalized, None, (&p1, &b1), (&p2, &b2), &x).unwrap();
        assert_eq!(bits(&fused), bits(&first), "the normalizing MLP");
    }

    #[test]
    fn mismatched_weight_is_named() {
        let dev = Device::Cpu;
        let x = Tensor::zeros((2, 5), candle_core::DType::F32, &dev).unwrap();
        let w = Tensor::zeros((3, 4), candle_core::DType::F32, &dev).unwrap();
        let b = Tensor::zeros(3, candle_core::DType::F32, &dev).unwrap();
        let err = linear(&x, &w, &b).unwrap_err().to_string();
        assert!(err.contains("input width 5") && err.contains("[3, 4]"), "{err}");
    }
}
