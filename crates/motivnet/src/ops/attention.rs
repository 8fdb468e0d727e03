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
//! preset), and otherwise recomputes them one head at a time.

use std::sync::{Arc, OnceLock};

use candle_core::{CpuStorage, CustomOp1, CustomOp3, Layout, Shape, Tensor};

use super::{f32_slice, kernel_err};
use crate::kernels::attention::{
    attention_backward, attention_forward, attention_forward_bf16, attention_forward_int8,
};
use crate::kernels::{flash_attention_int8, KernelResult};

/// The most memory one call keeps for backward as probabilities (all its heads' N x N
/// matrices). Below it, backward skips recomputing q k^T and the softmax (a tenth of the
/// `tiny` train step; 3.5 MB a layer at batch 8); above it (sapiens at 1024 x 768: 0.6 GB a
/// layer per image) the probabilities are recomputed, so memory stays linear in N. `small` at
/// batch 2 (28 MB a layer) recomputes them: kept, they were 226 MB of a train step at 850-880
/// MB above baseline, level with PyTorch's (859-948 MB; its fused attention keeps none);
/// recomputed, the step holds 650-664 MB and takes about 6% longer (2079 against 1966 ms,
/// medians of six alternating rounds).
pub const KEEP_PROBABILITIES_BYTES: usize = 16 << 20;

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
    if super::dispatch::fused(&[qkv]) {
        if super::dispatch::bf16_matmuls_on() {
            // Inside `bf16_matmuls` no backward follows (its contract).
            return qkv.contiguous()?.apply_op1_no_bwd(&SelfAttentionLowered::bf16(heads));
        }
        if super::dispatch::int8_matmuls_on() && flash_attention_int8::supported(three_d / 3 / heads) {
            // Inside `int8_matmuls` no backward follows either.
            return qkv.contiguous()?.apply_op1_no_bwd(&SelfAttentionLowered::int8(heads));
        }
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

/// The same attention from candle's primitive ops (device-generic), for other devices and for
/// the tests: softmax(q k^T / sqrt(hd)) v per head, the heads merged back.
pub fn self_attention_composed(
    qkv: &Tensor,
    heads: usize,
    b: usize,
    n: usize,
    d: usize,
) -> candle_core::Result<Tensor> {
    let hd = d / heads;
    let qkv = qkv.reshape((b, n, 3, heads, hd))?.permute((2, 0, 3, 1, 4))?;
    let (q, k, v) = (qkv.get(0)?.contiguous()?, qkv.get(1)?.contiguous()?, qkv.get(2)?.contiguous()?);
    let scores = (q * (1.0 / (hd as f64).sqrt()))?.matmul(&k.t()?)?;
    let out = super::softmax::softmax_last_dim(&scores)?.matmul(&v)?; // (B, heads, N, hd)
    out.transpose(1, 2)?.reshape((b, n, d))
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
        let (out, kept) =
            attention_forward(qkv, (batch, tokens, three_d / 3), self.heads, self.keep).map_err(kernel_err)?;
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

/// An inference-only attention kernel: a (B, N, 3D) qkv slice, (B, N, D) and the heads ->
/// the (B, N, D) output.
type AttentionKernel = fn(&[f32], (usize, usize, usize), usize) -> KernelResult<Vec<f32>>;

/// The CPU op with its products in a lower precision (inference: no backward): on AMX tiles
/// in bf16, or in integers on VNNI.
struct SelfAttentionLowered {
    heads: usize,
    name: &'static str,
    kernel: AttentionKernel,
}

impl SelfAttentionLowered {
    fn bf16(heads: usize) -> Self {
        Self { heads, name: "fused-self-attention-bf16", kernel: attention_forward_bf16 }
    }

    fn int8(heads: usize) -> Self {
        Self { heads, name: "fused-self-attention-int8", kernel: attention_forward_int8 }
    }
}

impl CustomOp1 for SelfAttentionLowered {
    fn name(&self) -> &'static str {
        self.name
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let qkv = f32_slice(storage, layout, self.name())?;
        let (batch, tokens, three_d) = layout.shape().dims3()?;
        let out = (self.kernel)(qkv, (batch, tokens, three_d / 3), self.heads).map_err(kernel_err)?;
        Ok((CpuStorage::F32(out), Shape::from((batch, tokens, three_d / 3))))
    }
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
        let grad = attention_backward(qkv, out, grad_out, (batch, tokens, three_d / 3), self.heads, kept)
            .map_err(kernel_err)?;
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
    fn query_rows_in_blocks_with_a_short_last_one_match_composed() {
        // 1800 tokens: without kept probabilities, a task takes the query rows whose scores fit
        // 12 MiB, 1747, then the last 53.
        compare(1, 1800, 1, 4);
    }

    #[test]
    fn fewer_pairs_than_threads_thread_each_product() {
        // One batch, one head: the products take rayon's threads instead of the pairs.
        compare(1, 40, 1, 8);
    }

    /// Inside `bf16_matmuls` on a CPU with AMX: the output tracks f32 to bf16's precision, at
    /// sizes that do and do not fill the tiles, with pairs in parallel and products threaded.
    #[test]
    fn bf16_attention_tracks_f32() {
        if !crate::kernels::amx::checkable_here("the bf16 attention") {
            return;
        }
        let dev = Device::Cpu;
        for (batch, tokens, heads, head_dim) in [(2, 45, 3, 12), (1, 64, 1, 64), (2, 130, 2, 64)] {
            let d = heads * head_dim;
            let qkv = Tensor::randn(0f32, 1.0, (batch, tokens, 3 * d), &dev).unwrap();
            let want = self_attention_composed(&qkv, heads, batch, tokens, d).unwrap();
            let got = crate::ops::dispatch::bf16_matmuls(|| self_attention(&qkv, heads, false)).unwrap();
            let diff = max_diff(&got, &want);
            // Operands off by up to 2^-9 relative; outputs are averages of v (|v| ~ 1).
            assert!(diff < 0.03, "{batch} x {tokens} x {heads} x {head_dim}: bf16 differs by {diff}");
            assert!(diff > 0.0, "the bf16 path did not run");
        }
    }

    /// Inside `int8_matmuls` on a CPU with VNNI: the int8 kernel runs for the head sizes it
    /// takes, at token counts below and above the f32 key blocks' threshold, and tracks f32;
    /// for other head sizes the f32 attention runs, and outside `int8_matmuls` too.
    #[test]
    fn int8_attention_runs_inside_int8_matmuls_only_and_tracks_f32() {
        if !crate::kernels::int8::checkable_here("the int8 attention") {
            return;
        }
        let dev = Device::Cpu;
        for (batch, tokens, heads, head_dim) in [(2, 45, 3, 64), (1, 600, 2, 80), (2, 30, 2, 12), (1, 20, 1, 96)] {
            let d = heads * head_dim;
            let qkv = Tensor::randn(0f32, 1.0, (batch, tokens, 3 * d), &dev).unwrap();
            let f32_out = self_attention(&qkv, heads, false).unwrap();
            let composed = self_attention_composed(&qkv, heads, batch, tokens, d).unwrap();
            assert!(max_diff(&f32_out, &composed) < 1e-5, "outside int8_matmuls the f32 attention runs");
            let got = crate::ops::dispatch::int8_matmuls(|| self_attention(&qkv, heads, false)).unwrap();
            let diff = max_diff(&got, &f32_out);
            if crate::kernels::flash_attention_int8::supported(head_dim) {
                // Outputs are averages of v (|v| up to about 4): a few hundredths at most.
                assert!(diff < 0.05, "{batch} x {tokens} x {heads} x {head_dim}: int8 differs by {diff}");
                assert!(diff > 0.0, "{batch} x {tokens} x {heads} x {head_dim}: the int8 path did not run");
            } else {
                assert!(diff < 1e-5, "a head of {head_dim} values keeps the f32 attention: differs by {diff}");
            }
        }
    }

    #[test]
    fn qkv_width_must_split_into_heads() {
        let qkv = Tensor::zeros((1, 4, 10), candle_core::DType::F32, &Device::Cpu).unwrap();
        let err = self_attention(&qkv, 3, false).unwrap_err().to_string();
        assert!(err.contains("qkv width 10"), "{err}");
    }
}
