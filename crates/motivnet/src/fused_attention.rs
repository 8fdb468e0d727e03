//! Multi-head self-attention as one CPU op on the packed qkv projection, with its own backward.
//!
//! Composed from candle ops, attention costs three `contiguous` copies to split q, k and v into
//! heads, one more to merge the heads back, a batched matmul that threads each small per-head
//! product on its own, and it keeps every head's N x N probabilities alive for backward (for
//! sapiens-0.3b at 1024 x 768: 16 heads x 3072^2 floats, 0.6 GB a layer). This op reads each
//! head's q, k and v in place from the (B, N, 3D) qkv tensor through strides, runs the
//! (batch, head) pairs in parallel, and writes the merged (B, N, D) output directly. Backward
//! writes dq, dk and dv straight into a (B, N, 3D) gradient. It reuses the forward's
//! probabilities when they are small enough to keep ([`KEEP_PROBABILITIES_BYTES`]: the `tiny`
//! and `small` presets), and otherwise recomputes them one head at a time.

use std::cell::RefCell;
use std::sync::{Arc, OnceLock};

use candle_core::{CpuStorage, CustomOp1, CustomOp3, Layout, Shape, Tensor};
use gemm::Parallelism;
use rayon::prelude::*;

use crate::fused::f32_slice;
use crate::strided_gemm::{matmul, threads_for_one_product, View, ViewMut, Write};

/// The most memory one call keeps for backward as probabilities (all its heads' N x N
/// matrices). Below it, backward skips recomputing q k^T and the softmax (a tenth of the
/// `tiny` train step); above it (sapiens at 1024 x 768: 0.6 GB a layer per image) the
/// probabilities are recomputed, so memory stays linear in N.
pub const KEEP_PROBABILITIES_BYTES: usize = 32 << 20;

/// softmax(q k^T / sqrt(hd)) v for every head. `qkv` is (B, N, 3D) with the reference's
/// column order (q, k, v, each split into `heads` blocks of hd = D / heads); the result is
/// (B, N, D), heads merged. No dropout on the probabilities (the encoder uses none).
///
/// `for_backward`: whether this forward will be backpropagated (train mode); only then are the
/// probabilities kept. Without it a backward still works, recomputing them.
pub fn self_attention(qkv: &Tensor, heads: usize, for_backward: bool) -> candle_core::Result<Tensor> {
    let (b, n, three_d) = qkv.dims3()?;
    if three_d % (3 * heads) != 0 {
        candle_core::bail!("self-attention: qkv width {three_d} is not 3 x heads ({heads}) x head size");
    }
    if crate::dispatch::fused(&[qkv]) {
        return fused_self_attention(qkv, heads, for_backward && keeps_probabilities(qkv, heads)?);
    }
    self_attention_composed(qkv, heads, b, n, three_d / 3)
}

/// Whether the op keeps its probabilities: only for a result that backward will reach
/// (`track_op`: candle keeps its graph) and within [`KEEP_PROBABILITIES_BYTES`].
fn keeps_probabilities(qkv: &Tensor, heads: usize) -> candle_core::Result<bool> {
    let (b, n, _) = qkv.dims3()?;
    Ok(qkv.track_op() && b * heads * n * n * std::mem::size_of::<f32>() <= KEEP_PROBABILITIES_BYTES)
}

/// The CPU op, keeping the probabilities for backward or not.
fn fused_self_attention(qkv: &Tensor, heads: usize, keep: bool) -> candle_core::Result<Tensor> {
    qkv.contiguous()?.apply_op1(SelfAttention { heads, keep, kept: OnceLock::new() })
}

/// The same attention from candle's primitive ops, for other devices and for the tests.
pub fn self_attention_composed(
    qkv: &Tensor,
    heads: usize,
    b: usize,
    n: usize,
    d: usize,
) -> candle_core::Result<Tensor> {
    let qkv = qkv.reshape((b, n, 3, heads, d / heads))?.permute((2, 0, 3, 1, 4))?;
    let (q, k, v) = (qkv.get(0)?.contiguous()?, qkv.get(1)?.contiguous()?, qkv.get(2)?.contiguous()?);
    let out = crate::layers::attention(&q, &k, &v, 0.0, &mut crate::layers::Mode::Eval)
        .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
    crate::layers::merge_heads(&out)
}

/// Shapes of one call, and where a (batch, head) pair's blocks start.
#[derive(Clone, Copy)]
struct Geometry {
    batch: usize,
    tokens: usize,
    dim: usize,
    heads: usize,
}

impl Geometry {
    fn head_dim(&self) -> usize {
        self.dim / self.heads
    }

    fn pairs(&self) -> usize {
        self.batch * self.heads
    }

    /// Offset of q (part 0), k (1) or v (2) of `pair` in the (B, N, 3D) tensor.
    fn qkv_offset(&self, pair: usize, part: usize) -> usize {
        let (b, h) = (pair / self.heads, pair % self.heads);
        b * self.tokens * 3 * self.dim + part * self.dim + h * self.head_dim()
    }

    /// Offset of `pair`'s block in the merged (B, N, D) tensor.
    fn merged_offset(&self, pair: usize) -> usize {
        let (b, h) = (pair / self.heads, pair % self.heads);
        b * self.tokens * self.dim + h * self.head_dim()
    }

    fn scale(&self) -> f32 {
        1.0 / (self.head_dim() as f32).sqrt()
    }

    /// Pairs run in parallel with single-threaded products; when there are fewer pairs than
    /// threads, each product is threaded instead.
    fn inner_parallelism(&self) -> Parallelism {
        if self.pairs() >= rayon::current_num_threads() {
            Parallelism::None
        } else {
            threads_for_one_product()
        }
    }
}

thread_local! {
    /// Per-thread N x N buffers (scores, then their gradient), reused across calls.
    static SCRATCH: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// Runs `f` with this thread's scratch buffer grown to at least `len` floats. The buffer is
/// taken out of its cell while `f` runs: a threaded product inside `f` may have this thread
/// run another pair's task while it waits, and that task then gets a buffer of its own
/// instead of finding this one borrowed.
fn with_scratch<R>(len: usize, f: impl FnOnce(&mut [f32]) -> R) -> R {
    let mut buf = SCRATCH.with(|cell| cell.take());
    if buf.len() < len {
        buf.resize(len, 0.0);
    }
    let out = f(&mut buf[..len]);
    SCRATCH.with(|cell| {
        // Keep the larger of the two when a nested task left one behind.
        if cell.borrow().len() < buf.len() {
            cell.replace(buf);
        }
    });
    out
}

/// A pointer that may cross into rayon tasks; each task writes only its own pair's block.
#[derive(Clone, Copy)]
struct SharedOut(*mut f32);
// SAFETY: the tasks write disjoint (batch, head) blocks; see the callers.
unsafe impl Send for SharedOut {}
unsafe impl Sync for SharedOut {}

impl SharedOut {
    fn rows(self, offset: usize, row_stride: usize) -> ViewMut {
        // SAFETY: callers pass offsets inside the buffer this pointer was taken from.
        ViewMut { ptr: unsafe { self.0.add(offset) }, row_stride: row_stride as isize, col_stride: 1 }
    }
}

/// Scores (n x n, row-major) = scale q k^T, then softmax over each row, in place.
///
/// # Safety
/// `qkv` holds the whole (B, N, 3D) tensor described by `g`.
unsafe fn probabilities(g: &Geometry, qkv: &[f32], pair: usize, p: &mut [f32], par: Parallelism) {
    let (n, hd, row) = (g.tokens, g.head_dim(), 3 * g.dim);
    let q = View::rows(qkv, g.qkv_offset(pair, 0), row);
    let k = View::rows(qkv, g.qkv_offset(pair, 1), row);
    matmul((n, n, hd), ViewMut::rows(p, 0, n), q, k.t(), g.scale(), Write::Overwrite, par);
    crate::fused::softmax_rows(p, n);
}

crate::simd_dispatch! {
    /// dS = P * (dP - delta) in place over `ds` (holding dP), n x n, with delta_i = do_i . o_i
    /// (the rows of do and o are `row_stride` apart, `hd` long): softmax's backward per row.
    fn score_grad(ds: &mut [f32], p: &[f32], n: usize, d_out: &[f32], out: &[f32], row_stride: usize, hd: usize) {
        for i in 0..n {
            let (go, o) = (&d_out[i * row_stride..][..hd], &out[i * row_stride..][..hd]);
            let delta = crate::fused::lane_sum(hd, |c| go[c] * o[c]);
            let (ds, p) = (&mut ds[i * n..][..n], &p[i * n..][..n]);
            for j in 0..n {
                ds[j] = p[j] * (ds[j] - delta);
            }
        }
    }
}

/// The attention output (B, N, D) of a packed (B, N, 3D) qkv slice, and the probabilities of
/// every (batch, head) pair when `keep` asks for them.
pub(crate) fn attention_forward(
    qkv: &[f32],
    (batch, tokens, dim): (usize, usize, usize),
    heads: usize,
    keep: bool,
) -> candle_core::Result<(Vec<f32>, Option<Vec<f32>>)> {
    let g = Geometry { batch, tokens, dim, heads };
    if qkv.len() != batch * tokens * 3 * dim || heads == 0 || dim % heads != 0 {
        candle_core::bail!(
            "self-attention: qkv holds {} values, expected {batch} x {tokens} x 3 x {dim} in {heads} heads",
            qkv.len()
        );
    }
    let (n, hd, d) = (g.tokens, g.head_dim(), g.dim);
    let par = g.inner_parallelism();
    let len = g.batch * n * d;
    let mut out: Vec<f32> = Vec::with_capacity(len);
    let shared = SharedOut(out.as_mut_ptr());
    let mut kept = if keep { vec![0f32; g.pairs() * n * n] } else { Vec::new() };
    let attend = |pair: usize, p: &mut [f32]| {
        // SAFETY: every view lies inside `qkv`, `p` or `out` (offsets from `g`), and
        // this pair's output block is written by this task alone.
        unsafe {
            probabilities(&g, qkv, pair, p, par);
            let v = View::rows(qkv, g.qkv_offset(pair, 2), 3 * d);
            let dst = shared.rows(g.merged_offset(pair), d);
            matmul((n, hd, n), dst, View::rows(p, 0, n), v, 1.0, Write::Overwrite, par);
        }
    };
    if keep {
        kept.par_chunks_mut((n * n).max(1)).enumerate().for_each(|(pair, p)| attend(pair, p));
    } else {
        (0..g.pairs()).into_par_iter().for_each(|pair| with_scratch(n * n, |p| attend(pair, p)));
    }
    // SAFETY: the pairs' blocks tile the (B, N, D) output: every element was written.
    unsafe { out.set_len(len) };
    Ok((out, keep.then_some(kept)))
}

struct SelfAttention {
    heads: usize,
    /// Keep the probabilities for backward (see [`self_attention`]).
    keep: bool,
    /// The kept probabilities, pair after pair, once the forward has run.
    kept: OnceLock<Arc<Vec<f32>>>,
}

impl CustomOp1 for SelfAttention {
    fn name(&self) -> &'static str {
        "fused-self-attention"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let qkv = f32_slice(storage, layout, self.name())?;
        let (batch, tokens, three_d) = layout.shape().dims3()?;
        let (out, kept) = attention_forward(qkv, (batch, tokens, three_d / 3), self.heads, self.keep)?;
        if let Some(kept) = kept {
            // A second forward of the same op value cannot happen: candle runs each once.
            let _ = self.kept.set(Arc::new(kept));
        }
        Ok((CpuStorage::F32(out), Shape::from((batch, tokens, three_d / 3))))
    }

    fn bwd(&self, qkv: &Tensor, out: &Tensor, grad_out: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let op = SelfAttentionGrad { heads: self.heads, probabilities: self.kept.get().cloned() };
        let grad = qkv.apply_op3_no_bwd(out, &grad_out.contiguous()?, &op)?;
        Ok(Some(grad))
    }
}

/// The gradient (B, N, 3D) of the packed qkv from the attention output o, its gradient do
/// and, when the forward kept them, the probabilities (recomputed otherwise).
pub(crate) fn attention_backward(
    qkv: &[f32],
    out: &[f32],
    grad_out: &[f32],
    (batch, tokens, dim): (usize, usize, usize),
    heads: usize,
    kept: Option<&[f32]>,
) -> candle_core::Result<Vec<f32>> {
    const NAME: &str = "fused-self-attention-grad";
    let g = Geometry { batch, tokens, dim, heads };
    if qkv.len() != batch * tokens * 3 * dim || heads == 0 || dim % heads != 0 {
        candle_core::bail!(
            "{NAME}: qkv holds {} values, expected {batch} x {tokens} x 3 x {dim} in {heads} heads",
            qkv.len()
        );
    }
    let (n, hd, d) = (g.tokens, g.head_dim(), g.dim);
    if out.len() != g.batch * n * d || grad_out.len() != out.len() {
        candle_core::bail!("{}: output and its gradient must be {} x {n} x {d}", NAME, g.batch);
    }
    if let Some(kept) = kept {
        if kept.len() != g.pairs() * n * n {
            candle_core::bail!("{}: kept probabilities do not fit the input", NAME);
        }
    }
    let par = g.inner_parallelism();
    let mut grad: Vec<f32> = Vec::with_capacity(qkv.len());
    let shared = SharedOut(grad.as_mut_ptr());
    (0..g.pairs()).into_par_iter().for_each(|pair| {
        let kept = kept.map(|all| &all[pair * n * n..][..n * n]);
        let scratch_len = if kept.is_some() { n * n } else { 2 * n * n };
        with_scratch(scratch_len, |scratch| {
            let (ds, recomputed) = scratch.split_at_mut(n * n);
            let merged = g.merged_offset(pair);
            let d_out = View::rows(grad_out, merged, d);
            let p: &[f32] = match kept {
                Some(p) => p,
                None => {
                    // SAFETY: `qkv` is the whole tensor `g` describes.
                    unsafe { probabilities(&g, qkv, pair, recomputed, par) };
                    recomputed
                }
            };
            // SAFETY: every view lies inside `qkv`, `out`, `grad_out`, the scratch or
            // `grad` (offsets from `g`); this pair's blocks of `grad` are written by this
            // task alone.
            unsafe {
                let v = View::rows(qkv, g.qkv_offset(pair, 2), 3 * d);
                matmul((n, n, hd), ViewMut::rows(ds, 0, n), d_out, v.t(), 1.0, Write::Overwrite, par);
            }
            score_grad(ds, p, n, &grad_out[merged..], &out[merged..], d, hd);
            let (ds, p) = (View::rows(ds, 0, n), View::rows(p, 0, n));
            let q = View::rows(qkv, g.qkv_offset(pair, 0), 3 * d);
            let k = View::rows(qkv, g.qkv_offset(pair, 1), 3 * d);
            // SAFETY: as above.
            unsafe {
                let dq = shared.rows(g.qkv_offset(pair, 0), 3 * d);
                matmul((n, hd, n), dq, ds, k, g.scale(), Write::Overwrite, par);
                let dk = shared.rows(g.qkv_offset(pair, 1), 3 * d);
                matmul((n, hd, n), dk, ds.t(), q, g.scale(), Write::Overwrite, par);
                let dv = shared.rows(g.qkv_offset(pair, 2), 3 * d);
                matmul((n, hd, n), dv, p.t(), d_out, 1.0, Write::Overwrite, par);
            }
        })
    });
    // SAFETY: the pairs' dq, dk and dv blocks tile the (B, N, 3D) gradient.
    unsafe { grad.set_len(qkv.len()) };
    Ok(grad)
}

/// From qkv, the output o and its gradient do, per head with P kept or recomputed:
/// dP = do v^T, dS = P * (dP - rowsum(do * o)), dq = scale dS k, dk = scale dS^T q, dv = P^T do.
struct SelfAttentionGrad {
    heads: usize,
    /// The forward's probabilities, pair after pair, when it kept them.
    probabilities: Option<Arc<Vec<f32>>>,
}

impl CustomOp3 for SelfAttentionGrad {
    fn name(&self) -> &'static str {
        "fused-self-attention-grad"
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
        let qkv = f32_slice(s1, l1, self.name())?;
        let out = f32_slice(s2, l2, self.name())?;
        let grad_out = f32_slice(s3, l3, self.name())?;
        let (batch, tokens, three_d) = l1.shape().dims3()?;
        let kept = self.probabilities.as_deref().map(|p| p.as_slice());
        let grad = attention_backward(qkv, out, grad_out, (batch, tokens, three_d / 3), self.heads, kept)?;
        Ok((CpuStorage::F32(grad), l1.shape().clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap()
    }

    fn compare(batch: usize, tokens: usize, heads: usize, head_dim: usize) {
        let dev = Device::Cpu;
        let d = heads * head_dim;
        let qkv = Var::from_tensor(&Tensor::randn(0f32, 1.0, (batch, tokens, 3 * d), &dev).unwrap()).unwrap();
        let up = Tensor::randn(0f32, 1.0, (batch, tokens, d), &dev).unwrap();
        let composed = self_attention_composed(&qkv, heads, batch, tokens, d).unwrap();
        let gb = (&composed * &up).unwrap().sum_all().unwrap().backward().unwrap();
        let b = gb.get(qkv.as_tensor()).unwrap();
        for keep in [true, false] {
            let fused = fused_self_attention(&qkv, heads, keep).unwrap();
            let diff = max_diff(&fused, &composed);
            assert!(diff < 1e-5, "forward (keep {keep}) differs by {diff}");
            let ga = (fused * &up).unwrap().sum_all().unwrap().backward().unwrap();
            let a = ga.get(qkv.as_tensor()).unwrap();
            assert!(max_diff(a, b) < 1e-5, "qkv gradient (keep {keep}) differs by {}", max_diff(a, b));
        }
    }

    #[test]
    fn probabilities_are_kept_only_for_backward_and_within_budget() {
        let dev = Device::Cpu;
        let tracked = Var::zeros((1, 8, 12), candle_core::DType::F32, &dev).unwrap();
        assert!(keeps_probabilities(tracked.as_tensor(), 2).unwrap());
        assert!(!keeps_probabilities(&tracked.as_tensor().detach(), 2).unwrap());
        // 2 heads of n x n floats just over the budget.
        let n = 1 + (KEEP_PROBABILITIES_BYTES / 8).isqrt();
        let big = Var::zeros((1, n, 12), candle_core::DType::F32, &dev).unwrap();
        assert!(!keeps_probabilities(big.as_tensor(), 2).unwrap());
        assert!(keeps_probabilities(big.as_tensor(), 1).unwrap());
    }

    #[test]
    fn fused_attention_matches_composed_forward_and_qkv_gradient() {
        compare(2, 7, 3, 5);
        compare(3, 33, 2, 16);
    }

    #[test]
    fn fewer_pairs_than_threads_thread_each_product() {
        // One batch, one head: the products take rayon's threads instead of the pairs.
        compare(1, 40, 1, 8);
    }

    #[test]
    fn qkv_width_must_split_into_heads() {
        let qkv = Tensor::zeros((1, 4, 10), candle_core::DType::F32, &Device::Cpu).unwrap();
        let err = self_attention(&qkv, 3, false).unwrap_err().to_string();
        assert!(err.contains("qkv width 10"), "{err}");
    }
}
