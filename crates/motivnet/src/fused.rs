//! Fused, multi-threaded CPU kernels with their own backward, for the element-wise work that
//! candle runs as chains of single-threaded ops (docs/ARCHITECTURE.md): exact GELU, the
//! last-dimension softmax and LayerNorm. Each is a candle custom op, so autograd flows through it; on other
//! devices, other dtypes or strided inputs the composed candle ops run instead. Gradients are
//! checked against the composed versions in this file's tests.

use std::mem::MaybeUninit;

use candle_core::{CpuStorage, CustomOp1, CustomOp2, CustomOp3, Layout, Shape, Tensor};
use rayon::prelude::*;

use crate::strided_gemm::filled_vec;

/// Elements per rayon task: large enough to amortise scheduling, small enough to balance.
pub(crate) const CHUNK: usize = 16 * 1024;

/// The f32 values of a contiguous CPU tensor, or an error naming the op.
pub(crate) fn f32_slice<'a>(storage: &'a CpuStorage, layout: &Layout, op: &str) -> candle_core::Result<&'a [f32]> {
    let CpuStorage::F32(values) = storage else { candle_core::bail!("{op}: expected f32 input") };
    let Some((start, end)) = layout.contiguous_offsets() else { candle_core::bail!("{op}: input must be contiguous") };
    Ok(&values[start..end])
}

pub(crate) fn fusable(x: &Tensor) -> bool {
    crate::dispatch::fused(&[x])
}

const FRAC_1_SQRT_2PI: f32 = 0.398_942_3;

/// exp(x) in f32 without a library call, so the loops around it vectorise: exp(x) =
/// 2^n exp(r) with n = round(x / ln 2) and |r| <= ln 2 / 2, exp(r) by its degree-6 Taylor
/// polynomial (truncation error r^7 / 7! < 1.2e-7, about one ulp). Inputs are clamped to the
/// range where 2^n stays a normal float.
#[inline(always)]
pub fn exp_fast(x: f32) -> f32 {
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    // Adding 1.5 * 2^23 rounds to the nearest integer in the float unit, branch-free.
    const ROUND: f32 = 12_582_912.0;
    let x = x.clamp(-87.0, 88.0);
    let n = (x * std::f32::consts::LOG2_E + ROUND) - ROUND;
    let r = x - n * LN2_HI - n * LN2_LO;
    let p = 1.0 + r * (1.0 + r * (0.5 + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0))))));
    p * f32::from_bits(((n as i32 + 127) as u32) << 23)
}

/// Softmax of each `n`-long row of `rows`, in place. The loops are written in 16 lanes (max
/// and sum as sixteen partial results) so they vectorise, as wide as the CPU allows
/// (crate::simd): one AVX-512 register or two AVX2 ones.
pub fn softmax_rows(rows: &mut [f32], n: usize) {
    softmax_rows_dispatched(rows, n);
}

crate::simd_dispatch! {
    fn softmax_rows_dispatched(rows: &mut [f32], n: usize) {
        softmax_rows_portable(rows, n)
    }
}

#[inline(always)]
fn softmax_rows_portable(rows: &mut [f32], n: usize) {
    const LANES: usize = 16;
    for row in rows.chunks_mut(n.max(1)) {
        let mut max = [f32::NEG_INFINITY; LANES];
        let mut blocks = row.chunks_exact(LANES);
        for block in &mut blocks {
            for l in 0..LANES {
                max[l] = if block[l] > max[l] { block[l] } else { max[l] };
            }
        }
        let max = blocks.remainder().iter().chain(max.iter()).copied().fold(f32::NEG_INFINITY, f32::max);
        let mut sum = [0f32; LANES];
        let mut blocks = row.chunks_exact_mut(LANES);
        for block in &mut blocks {
            for l in 0..LANES {
                block[l] = exp_fast(block[l] - max);
                sum[l] += block[l];
            }
        }
        let mut total: f32 = sum.iter().sum();
        for v in blocks.into_remainder() {
            *v = exp_fast(*v - max);
            total += *v;
        }
        let inv = 1.0 / total;
        row.iter_mut().for_each(|v| *v *= inv);
    }
}

/// erf(x) in f32 as a rational function of x^2 on [-4, 4] (erf is +-1 to f32 precision
/// outside), the approximation Eigen and XLA use: a few ulp from the exact value, with no
/// branches, so the GELU loops vectorise (plain multiply-adds: `mul_add` without a target
/// FMA feature is a library call). libm's `erff`, which candle calls, took a tenth of
/// the `tiny` forward.
#[inline(always)]
fn erf_fast(x: f32) -> f32 {
    let x = x.clamp(-4.0, 4.0);
    let x2 = x * x;
    let mut p = -2.726_142_3e-10_f32;
    p = p * x2 + 2.770_681_4e-8;
    p = p * x2 - 2.101_024e-6;
    p = p * x2 - 5.692_506_4e-5;
    p = p * x2 - 7.349_906_3e-4;
    p = p * x2 - 2.954_6e-3;
    p = p * x2 - 1.609_603_3e-2;
    let mut q = -1.456_607_2e-5_f32;
    q = q * x2 - 2.133_740_6e-4;
    q = q * x2 - 1.682_827e-3;
    q = q * x2 - 7.373_329e-3;
    q = q * x2 - 1.426_474e-2;
    x * p / q
}

/// GELU, exact (erf) form, as PyTorch's `nn.GELU()`: x * Phi(x).
pub fn gelu_erf(x: &Tensor) -> candle_core::Result<Tensor> {
    if !fusable(x) {
        return x.gelu_erf();
    }
    x.contiguous()?.apply_op1(GeluErf)
}

struct GeluErf;

#[inline(always)]
fn gelu_value(v: f32) -> f32 {
    0.5 * v * (1.0 + erf_fast(v * std::f32::consts::FRAC_1_SQRT_2))
}

crate::simd_dispatch! {
    /// GELU of each value of `x` into `out` (which may be fresh, unwritten memory).
    fn gelu_chunk(out: &mut [MaybeUninit<f32>], x: &[f32]) {
        for (o, &v) in out.iter_mut().zip(x) {
            o.write(gelu_value(v));
        }
    }
}

crate::simd_dispatch! {
    /// GELU of each value, in place.
    pub(crate) fn gelu_in_place(x: &mut [f32]) {
        for v in x.iter_mut() {
            *v = gelu_value(*v);
        }
    }
}

crate::simd_dispatch! {
    /// The gradient through GELU: `grad` times GELU's derivative at `x`, into `out`.
    pub(crate) fn gelu_grad_chunk(out: &mut [MaybeUninit<f32>], x: &[f32], grad: &[f32]) {
        for ((o, &v), &g) in out.iter_mut().zip(x).zip(grad) {
            let cdf = 0.5 * (1.0 + erf_fast(v * std::f32::consts::FRAC_1_SQRT_2));
            let pdf = FRAC_1_SQRT_2PI * exp_fast(-0.5 * v * v);
            o.write(g * (cdf + v * pdf));
        }
    }
}

/// GELU of each value, on all threads.
pub(crate) fn gelu_forward(x: &[f32]) -> Vec<f32> {
    // SAFETY: the chunks of `out` pair up with those of `x`, which has len() elements.
    unsafe {
        filled_vec(x.len(), |out| {
            out.par_chunks_mut(CHUNK).zip(x.par_chunks(CHUNK)).for_each(|(o, x)| gelu_chunk(o, x))
        })
    }
}

/// `grad` times GELU's derivative at `x`, element-wise, on all threads. Panics when the two
/// differ in length (the output is filled only where both reach).
pub(crate) fn gelu_backward(x: &[f32], grad: &[f32]) -> Vec<f32> {
    assert_eq!(x.len(), grad.len(), "gelu_backward: input and gradient lengths differ");
    // SAFETY: the chunks of `out` pair up with those of `x`, which has len() elements.
    unsafe {
        filled_vec(x.len(), |out| {
            out.par_chunks_mut(CHUNK)
                .zip(x.par_chunks(CHUNK).zip(grad.par_chunks(CHUNK)))
                .for_each(|(o, (x, g))| gelu_grad_chunk(o, x, g))
        })
    }
}

impl CustomOp1 for GeluErf {
    fn name(&self) -> &'static str {
        "fused-gelu-erf"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = f32_slice(storage, layout, self.name())?;
        Ok((CpuStorage::F32(gelu_forward(x)), layout.shape().clone()))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> candle_core::Result<Option<Tensor>> {
        Ok(Some(arg.contiguous()?.apply_op2_no_bwd(&grad_res.contiguous()?, &GeluErfGrad)?))
    }
}

/// d/dx [x Phi(x)] = Phi(x) + x phi(x), times the incoming gradient.
struct GeluErfGrad;

impl CustomOp2 for GeluErfGrad {
    fn name(&self) -> &'static str {
        "fused-gelu-erf-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (x, g) = (f32_slice(s1, l1, self.name())?, f32_slice(s2, l2, self.name())?);
        if x.len() != g.len() {
            candle_core::bail!("{}: input has {} values, gradient {}", self.name(), x.len(), g.len());
        }
        Ok((CpuStorage::F32(gelu_backward(x, g)), l1.shape().clone()))
    }
}

/// Softmax over the last dimension.
pub fn softmax_last_dim(x: &Tensor) -> candle_core::Result<Tensor> {
    if !fusable(x) {
        return crate::layers::softmax_composed(x);
    }
    x.contiguous()?.apply_op1(SoftmaxLastDim)
}

struct SoftmaxLastDim;

fn last_dim(layout: &Layout) -> usize {
    layout.dims().last().copied().unwrap_or(1).max(1)
}

impl CustomOp1 for SoftmaxLastDim {
    fn name(&self) -> &'static str {
        "fused-softmax-last-dim"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = f32_slice(storage, layout, self.name())?;
        let n = last_dim(layout);
        let rows_per_task = (CHUNK / n).max(1);
        let mut out = vec![0f32; x.len()];
        out.par_chunks_mut(n * rows_per_task).zip(x.par_chunks(n * rows_per_task)).for_each(|(o, x)| {
            o.copy_from_slice(x);
            softmax_rows(o, n);
        });
        Ok((CpuStorage::F32(out), layout.shape().clone()))
    }

    fn bwd(&self, _arg: &Tensor, res: &Tensor, grad_res: &Tensor) -> candle_core::Result<Option<Tensor>> {
        Ok(Some(res.contiguous()?.apply_op2_no_bwd(&grad_res.contiguous()?, &SoftmaxGrad)?))
    }
}

/// dx = y * (g - sum(g * y)) per row, from the softmax output y and the incoming gradient g.
struct SoftmaxGrad;

impl CustomOp2 for SoftmaxGrad {
    fn name(&self) -> &'static str {
        "fused-softmax-last-dim-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (y, g) = (f32_slice(s1, l1, self.name())?, f32_slice(s2, l2, self.name())?);
        let n = last_dim(l1);
        let rows_per_task = (CHUNK / n).max(1);
        let mut out = vec![0f32; y.len()];
        out.par_chunks_mut(n * rows_per_task)
            .zip(y.par_chunks(n * rows_per_task).zip(g.par_chunks(n * rows_per_task)))
            .for_each(|(o, (y, g))| {
                for ((o, y), g) in o.chunks_mut(n).zip(y.chunks(n)).zip(g.chunks(n)) {
                    let dot: f32 = y.iter().zip(g).map(|(a, b)| a * b).sum();
                    for ((o, &y), &g) in o.iter_mut().zip(y).zip(g) {
                        *o = y * (g - dot);
                    }
                }
            });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

/// LayerNorm over the last dimension with weight and bias (biased variance, as PyTorch).
pub fn layer_norm(x: &Tensor, weight: &Tensor, bias: &Tensor, eps: f64) -> candle_core::Result<Tensor> {
    if !(fusable(x) && fusable(weight) && fusable(bias)) {
        return crate::layers::layer_norm_composed(x, weight, bias, eps);
    }
    x.contiguous()?.apply_op3(&weight.contiguous()?, &bias.contiguous()?, LayerNormOp { eps: eps as f32 })
}

struct LayerNormOp {
    eps: f32,
}

/// LayerNorm of each `w.len()`-long row of `x`, on all threads.
pub(crate) fn layer_norm_forward(x: &[f32], w: &[f32], b: &[f32], eps: f32) -> Vec<f32> {
    let n = w.len().max(1);
    assert!(b.len() == w.len() && x.len().is_multiple_of(n), "layer_norm_forward: x, weight and bias do not fit");
    let rows_per_task = (CHUNK / n).max(1);
    let mut out = vec![0f32; x.len()];
    out.par_chunks_mut(n * rows_per_task)
        .zip(x.par_chunks(n * rows_per_task))
        .for_each(|(o, x)| layer_norm_rows(o, x, w, b, eps));
    out
}

/// LayerNorm's backward on all threads: writes (or with `accumulate`, adds) dx into `dx` and
/// returns dw and db back to back (2n values).
pub(crate) fn layer_norm_backward(
    dx: &mut [f32],
    accumulate: bool,
    x: &[f32],
    g: &[f32],
    w: &[f32],
    eps: f32,
) -> Vec<f32> {
    let n = w.len().max(1);
    assert!(
        x.len().is_multiple_of(n) && g.len() == x.len() && dx.len() == x.len(),
        "layer_norm_backward: lengths do not fit"
    );
    let rows_per_task = (CHUNK / n).max(1);
    // Each task returns its partial dw and db; they are added up after.
    let partials: Vec<Vec<f32>> = dx
        .par_chunks_mut(n * rows_per_task)
        .zip(x.par_chunks(n * rows_per_task).zip(g.par_chunks(n * rows_per_task)))
        .map(|(dx, (x, g))| {
            let (mut acc, mut xhat) = (vec![0f32; 2 * n], vec![0f32; n]);
            layer_norm_grad_rows(dx, accumulate, x, g, w, eps, &mut acc, &mut xhat);
            acc
        })
        .collect();
    let mut sums = vec![0f32; 2 * n];
    for p in partials {
        sums.iter_mut().zip(&p).for_each(|(s, v)| *s += v);
    }
    sums
}

/// Mean and 1/std of one row.
#[inline(always)]
fn row_stats(x: &[f32], eps: f32) -> (f32, f32) {
    let n = x.len() as f32;
    let mean = lane_sum(x.len(), |i| x[i]) / n;
    let var = lane_sum(x.len(), |i| (x[i] - mean) * (x[i] - mean)) / n;
    (mean, 1.0 / (var + eps).sqrt())
}

/// The sum of `term(i)` for i in 0..n, in sixteen partial sums so the loop vectorises (a
/// single float accumulator must add in order, which keeps it scalar).
#[inline(always)]
pub(crate) fn lane_sum(n: usize, term: impl Fn(usize) -> f32) -> f32 {
    const LANES: usize = 16;
    let mut acc = [0f32; LANES];
    let full = n / LANES * LANES;
    for base in (0..full).step_by(LANES) {
        for l in 0..LANES {
            acc[l] += term(base + l);
        }
    }
    let tail: f32 = (full..n).map(&term).sum();
    acc.iter().sum::<f32>() + tail
}

crate::simd_dispatch! {
    /// LayerNorm of each `w.len()`-long row of `x` into `out`.
    fn layer_norm_rows(out: &mut [f32], x: &[f32], w: &[f32], b: &[f32], eps: f32) {
        let n = w.len();
        for (o, x) in out.chunks_mut(n).zip(x.chunks(n)) {
            let (mean, rstd) = row_stats(x, eps);
            for i in 0..n {
                o[i] = (x[i] - mean) * rstd * w[i] + b[i];
            }
        }
    }
}

crate::simd_dispatch! {
    /// dx of each row into `dx` (added to it with `accumulate`); adds the rows' dw terms to
    /// acc[..n] and db terms to acc[n..].
    fn layer_norm_grad_rows(
        dx: &mut [f32],
        accumulate: bool,
        x: &[f32],
        g: &[f32],
        w: &[f32],
        eps: f32,
        acc: &mut [f32],
        xhat: &mut [f32],
    ) {
        let n = w.len();
        for ((dx, x), g) in dx.chunks_mut(n).zip(x.chunks(n)).zip(g.chunks(n)) {
            let (mean, rstd) = row_stats(x, eps);
            for i in 0..n {
                xhat[i] = (x[i] - mean) * rstd;
            }
            let mean_gw = lane_sum(n, |i| g[i] * w[i]) / n as f32;
            let mean_gw_xhat = lane_sum(n, |i| g[i] * w[i] * xhat[i]) / n as f32;
            for i in 0..n {
                acc[i] += g[i] * xhat[i];
                acc[n + i] += g[i];
            }
            if accumulate {
                for i in 0..n {
                    dx[i] += rstd * (g[i] * w[i] - mean_gw - xhat[i] * mean_gw_xhat);
                }
            } else {
                for i in 0..n {
                    dx[i] = rstd * (g[i] * w[i] - mean_gw - xhat[i] * mean_gw_xhat);
                }
            }
        }
    }
}

impl CustomOp3 for LayerNormOp {
    fn name(&self) -> &'static str {
        "fused-layer-norm"
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
        let (x, w, b) =
            (f32_slice(s1, l1, self.name())?, f32_slice(s2, l2, self.name())?, f32_slice(s3, l3, self.name())?);
        let n = last_dim(l1);
        if w.len() != n || b.len() != n {
            candle_core::bail!("{}: weight and bias must have {n} values", self.name());
        }
        Ok((CpuStorage::F32(layer_norm_forward(x, w, b, self.eps)), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let n = x.dim(candle_core::D::Minus1)?;
        let rows = x.elem_count() / n;
        // One op computes all three: the rows of dx, then dw, then db.
        let all = x.contiguous()?.apply_op3_no_bwd(
            &w.contiguous()?,
            &grad.contiguous()?,
            &LayerNormGrad { eps: self.eps },
        )?;
        let dx = all.narrow(0, 0, rows)?.reshape(x.shape())?;
        let dw = all.narrow(0, rows, 1)?.reshape(n)?;
        let db = all.narrow(0, rows + 1, 1)?.reshape(n)?;
        Ok((Some(dx), Some(dw), Some(db)))
    }
}

/// From x, w and the output gradient g: dx = rstd (gw - mean(gw) - xhat mean(gw xhat)) per row
/// with gw = g w, dw = sum over rows of g xhat, db = sum of g. Output (rows + 2, n).
struct LayerNormGrad {
    eps: f32,
}

impl CustomOp3 for LayerNormGrad {
    fn name(&self) -> &'static str {
        "fused-layer-norm-grad"
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
        let (x, w, g) =
            (f32_slice(s1, l1, self.name())?, f32_slice(s2, l2, self.name())?, f32_slice(s3, l3, self.name())?);
        let n = last_dim(l1);
        let rows = x.len() / n;
        let mut out = vec![0f32; (rows + 2) * n];
        let (dx, sums) = out.split_at_mut(rows * n);
        sums.copy_from_slice(&layer_norm_backward(dx, false, x, g, w, self.eps));
        Ok((CpuStorage::F32(out), Shape::from((rows + 2, n))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::simd::with_level;
    use candle_core::{Device, Var};

    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap()
    }

    /// Forward values and the gradient of sum(f(x) * w) agree between two implementations.
    fn check(
        fused: impl Fn(&Tensor) -> candle_core::Result<Tensor>,
        composed: impl Fn(&Tensor) -> candle_core::Result<Tensor>,
        scale: f64,
    ) {
        let dev = Device::Cpu;
        let x = Var::from_tensor(&(Tensor::randn(0f32, 1.0, (3, 5, 37), &dev).unwrap() * scale).unwrap()).unwrap();
        let w = Tensor::randn(0f32, 1.0, (3, 5, 37), &dev).unwrap();
        let (a, b) = (fused(x.as_tensor()).unwrap(), composed(x.as_tensor()).unwrap());
        assert!(max_diff(&a, &b) < 1e-5, "forward differs by {}", max_diff(&a, &b));
        let ga = (a * &w).unwrap().sum_all().unwrap().backward().unwrap();
        let gb = (b * &w).unwrap().sum_all().unwrap().backward().unwrap();
        let (ga, gb) = (ga.get(x.as_tensor()).unwrap(), gb.get(x.as_tensor()).unwrap());
        assert!(max_diff(ga, gb) < 1e-5, "gradient differs by {}", max_diff(ga, gb));
    }

    #[test]
    fn fast_erf_is_within_a_few_ulp_of_libm() {
        let mut worst = 0f32;
        for i in -8000..=8000 {
            let x = i as f32 * 1e-3;
            let exact = candle_core::cpu::erf::erf_f64(x as f64) as f32;
            worst = worst.max((erf_fast(x) - exact).abs());
        }
        assert!(worst < 5e-7, "erf differs from libm by up to {worst}");
    }

    #[test]
    fn fast_exp_is_within_a_few_ulp_of_std() {
        for i in -86_900..=87_900 {
            let x = i as f32 * 1e-3;
            let (fast, exact) = (exp_fast(x), (x as f64).exp());
            let rel = ((fast as f64 - exact) / exact).abs();
            assert!(rel < 4e-7, "exp({x}) = {fast}, exact {exact}, relative error {rel}");
        }
        assert!(exp_fast(-1e30) < 1e-37 && exp_fast(-1e30) >= 0.0);
    }

    #[test]
    fn softmax_rows_agree_at_every_simd_level() {
        let input: Vec<f32> = (0..3 * 37).map(|i| ((i * 7919) % 101) as f32 * 0.13 - 6.0).collect();
        let mut portable = input.clone();
        softmax_rows_portable(&mut portable, 37);
        for row in portable.chunks(37) {
            assert!((row.iter().sum::<f32>() - 1.0).abs() < 1e-5);
        }
        for level in crate::simd::tiers_to_check("softmax_rows_agree_at_every_simd_level") {
            let mut a = input.clone();
            with_level(level, || softmax_rows(&mut a, 37));
            for (x, y) in a.iter().zip(&portable) {
                assert!((x - y).abs() < 1e-6, "{level:?}: {x} vs {y}");
            }
        }
    }

    #[test]
    fn fused_gelu_matches_candle_forward_and_backward() {
        check(gelu_erf, |x| x.gelu_erf(), 3.0);
    }

    #[test]
    fn fused_softmax_matches_composed_forward_and_backward() {
        check(softmax_last_dim, crate::layers::softmax_composed, 4.0);
    }

    #[test]
    fn fused_layer_norm_matches_composed_forward_and_all_three_gradients() {
        let dev = Device::Cpu;
        let var = |t: Tensor| Var::from_tensor(&t).unwrap();
        let x = var((Tensor::randn(0f32, 1.0, (2, 7, 40), &dev).unwrap() * 3.0).unwrap());
        let w = var(Tensor::randn(1f32, 0.3, 40, &dev).unwrap());
        let b = var(Tensor::randn(0f32, 0.3, 40, &dev).unwrap());
        let up = Tensor::randn(0f32, 1.0, (2, 7, 40), &dev).unwrap();
        let fused = layer_norm(&x, &w, &b, 1e-6).unwrap();
        let composed = crate::layers::layer_norm_composed(&x, &w, &b, 1e-6).unwrap();
        assert!(max_diff(&fused, &composed) < 1e-5, "forward differs by {}", max_diff(&fused, &composed));
        let ga = (fused * &up).unwrap().sum_all().unwrap().backward().unwrap();
        let gb = (composed * &up).unwrap().sum_all().unwrap().backward().unwrap();
        for (name, v) in [("x", &x), ("weight", &w), ("bias", &b)] {
            let (a, c) = (ga.get(v.as_tensor()).unwrap(), gb.get(v.as_tensor()).unwrap());
            assert!(max_diff(a, c) < 2e-4, "gradient of {name} differs by {}", max_diff(a, c));
        }
    }

    #[test]
    fn strided_input_falls_back_to_a_contiguous_copy() {
        let x = Tensor::randn(0f32, 1.0, (4, 6), &Device::Cpu).unwrap().t().unwrap();
        let (a, b) = (softmax_last_dim(&x).unwrap(), crate::layers::softmax_composed(&x).unwrap());
        assert!(max_diff(&a, &b) < 1e-6);
    }
}
