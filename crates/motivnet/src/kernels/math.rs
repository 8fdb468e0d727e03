//! Scalar functions written so the loops around them vectorise: exp and erf without a
//! library call, sums in sixteen lanes; and ReLU with PyTorch's NaN and gradient conventions.

use rayon::prelude::*;

use super::CHUNK;

pub(crate) const FRAC_1_SQRT_2PI: f32 = 0.398_942_3;

/// exp(x) in f32 without a library call, so the loops around it vectorise: exp(x) =
/// 2^n exp(r) with n = round(x / ln 2) and |r| <= ln 2 / 2, exp(r) by its degree-6 Taylor
/// polynomial (truncation error r^7 / 7! < 1.2e-7, about one ulp). Inputs are clamped to the
/// range where 2^n stays a normal float.
///
/// n is never converted from float to int: Rust's `as i32` saturates and maps NaN to 0, which
/// LLVM compiles to scalar conversions with checks, one lane at a time (softmax ran at a sixth
/// of its vector speed). Adding 1.5 x 2^23 leaves n in the low bits of the sum's pattern, and
/// integer arithmetic on those bits builds 2^n.
#[inline(always)]
pub fn exp_fast(x: f32) -> f32 {
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    // Adding 1.5 * 2^23 rounds to the nearest integer in the float unit, branch-free.
    const ROUND: f32 = 12_582_912.0;
    let x = x.clamp(-87.0, 88.0);
    let shifted = x * std::f32::consts::LOG2_E + ROUND;
    let n = shifted - ROUND;
    let r = x - n * LN2_HI - n * LN2_LO;
    let p = 1.0 + r * (1.0 + r * (0.5 + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0))))));
    // The pattern of `shifted` minus that of ROUND is n (|n| < 2^22), as a wrapping integer.
    let n_bits = shifted.to_bits().wrapping_sub(ROUND.to_bits());
    p * f32::from_bits(n_bits.wrapping_add(127) << 23)
}

/// [`exp_fast`] on sixteen lanes with AVX-512: the same clamp, reduction and polynomial, the
/// reduction and the polynomial in fused multiply-adds, n rounded by `vrndscaleps` and 2^n
/// applied by `vscalefps` instead of built from bits. Within an ulp of [`exp_fast`], in about
/// two thirds of its instructions.
///
/// # Safety
/// The CPU has AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
pub(crate) unsafe fn exp16(x: std::arch::x86_64::__m512) -> std::arch::x86_64::__m512 {
    use std::arch::x86_64::*;
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    // The bound first: where an operand is NaN, max and min return the second, so a NaN
    // stays a NaN, as with `f32::clamp`.
    let x = _mm512_min_ps(_mm512_set1_ps(88.0), _mm512_max_ps(_mm512_set1_ps(-87.0), x));
    // Round to nearest (even), exceptions suppressed.
    let n = _mm512_roundscale_ps::<0x08>(_mm512_mul_ps(x, _mm512_set1_ps(std::f32::consts::LOG2_E)));
    let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(LN2_HI), x);
    let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(LN2_LO), r);
    let mut p = _mm512_set1_ps(1.0 / 720.0);
    for c in [1.0 / 120.0, 1.0 / 24.0, 1.0 / 6.0, 0.5, 1.0, 1.0] {
        p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(c));
    }
    _mm512_scalef_ps(p, n)
}

/// 2^t on sixteen lanes with AVX-512: f = t - floor(t) in [0, 1) by `vreduceps` in one
/// instruction, 2^f by a degree-5 polynomial fitted to 2^f's relative error on [0, 1) (1.6e-7
/// in f32 arithmetic, about two ulp), and `vscalefps`, which takes floor(t) itself, applies
/// 2^floor(t). Nine instructions with the caller's fused multiply-add that makes
/// t = x log2(e) - shift, where [`exp16`] of x - shift takes fourteen: the softmax of the bf16
/// attention, whose exponentials are the bulk of its arithmetic (rounding t to an integer and
/// subtracting it, as before, took three more). t below -125 is taken as -125, so results stay
/// normal floats (no slow subnormal arithmetic after), and -inf gives 2^-125 rather than the
/// NaN of -inf minus floor(-inf).
///
/// # Safety
/// The CPU has AVX-512F and AVX512DQ.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512dq")]
#[inline]
pub(crate) unsafe fn exp2_16(t: std::arch::x86_64::__m512) -> std::arch::x86_64::__m512 {
    use std::arch::x86_64::*;
    /// 2^f on [0, 1), lowest power first.
    const POLY: [f32; 6] = [0.999_999_94, 0.693_153_1, 0.240_153_61, 0.055_826_317, 0.008_989_34, 0.001_877_576_7];
    // Where t is NaN, max returns it (the second operand), so a NaN stays a NaN.
    let t = _mm512_max_ps(_mm512_set1_ps(-125.0), t);
    // t - floor(t): no fraction bits kept (imm[7:4] = 0), rounding down (imm[1:0] = 1),
    // precision exceptions suppressed (imm[3]).
    let f = _mm512_reduce_ps::<0x09>(t);
    let mut p = _mm512_set1_ps(POLY[5]);
    for &c in POLY[..5].iter().rev() {
        p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(c));
    }
    _mm512_scalef_ps(p, t)
}

/// erf(x) in f32 as a rational function of x^2 on [-4, 4] (erf is +-1 to f32 precision
/// outside), the approximation Eigen and XLA use: a few ulp from the exact value, with no
/// branches, so the GELU loops vectorise (plain multiply-adds: `mul_add` without a target
/// FMA feature is a library call). libm's `erff`, which candle calls, took a tenth of
/// the `tiny` forward.
#[inline(always)]
pub fn erf_fast(x: f32) -> f32 {
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

/// [`erf_fast`] on sixteen lanes with AVX-512: the same clamp and rational function, its
/// polynomials in fused multiply-adds (the portable loops, compiled without FMA, multiply and
/// add apart). Within a few ulp of [`erf_fast`]; GELU on it, one thread, 32-value rows in the
/// second-level cache: 1.05 ms per 1.18 million values against 1.47 for the portable loops'
/// AVX-512 copy.
///
/// # Safety
/// The CPU has AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
pub(crate) unsafe fn erf16(x: std::arch::x86_64::__m512) -> std::arch::x86_64::__m512 {
    use std::arch::x86_64::*;
    // NaN stays NaN, as with `f32::clamp` (see `exp16`).
    let x = _mm512_min_ps(_mm512_set1_ps(4.0), _mm512_max_ps(_mm512_set1_ps(-4.0), x));
    let x2 = _mm512_mul_ps(x, x);
    let mut p = _mm512_set1_ps(-2.726_142_3e-10);
    for c in [2.770_681_4e-8, -2.101_024e-6, -5.692_506_4e-5, -7.349_906_3e-4, -2.954_6e-3, -1.609_603_3e-2] {
        p = _mm512_fmadd_ps(p, x2, _mm512_set1_ps(c));
    }
    let mut q = _mm512_set1_ps(-1.456_607_2e-5);
    for c in [-2.133_740_6e-4, -1.682_827e-3, -7.373_329e-3, -1.426_474e-2] {
        q = _mm512_fmadd_ps(q, x2, _mm512_set1_ps(c));
    }
    _mm512_div_ps(_mm512_mul_ps(x, p), q)
}

/// The sum of `term` over the values of `slices` taken side by side (term([a[i], b[i], ..]) for
/// each i below the first slice's length), in sixteen partial sums so the loop vectorises (a
/// single float accumulator must add in order, which keeps it scalar). The slices are taken
/// sixteen values at a time as arrays: indexing them one value at a time left a bounds check
/// on each, and the loop scalar (LayerNorm ran a value at a time). Panics when a slice is
/// shorter than the first.
#[inline(always)]
pub fn lane_sum<const K: usize>(slices: [&[f32]; K], term: impl Fn([f32; K]) -> f32) -> f32 {
    const LANES: usize = 16;
    let n = slices.first().map_or(0, |s| s.len());
    assert!(slices.iter().all(|s| s.len() >= n), "lane_sum: a slice is shorter than the first");
    let mut acc = [0f32; LANES];
    let full = n / LANES * LANES;
    let mut base = 0;
    while base < full {
        let chunks: [&[f32; LANES]; K] = std::array::from_fn(|s| slices[s][base..base + LANES].try_into().unwrap());
        for (l, lane) in acc.iter_mut().enumerate() {
            *lane += term(std::array::from_fn(|s| chunks[s][l]));
        }
        base += LANES;
    }
    let tail: f32 = (full..n).map(|i| term(std::array::from_fn(|s| slices[s][i]))).sum();
    acc.iter().sum::<f32>() + tail
}

/// max(x, 0) of each value with NaN kept, as PyTorch's ReLU, on all threads. Written as a
/// select, which vectorises: the branch it replaced was mispredicted on about every other
/// value of real activations (signs at random), and the head's ReLU over a `tiny` batch's
/// tokens took 1.5 ms instead of 0.2.
pub fn relu_forward(x: &[f32]) -> Vec<f32> {
    let mut out = x.to_vec();
    relu_in_place(&mut out);
    out
}

/// [`relu_forward`] over a buffer the caller owns (a product's fresh output).
pub fn relu_in_place(x: &mut [f32]) {
    x.par_chunks_mut(CHUNK).for_each(|c| {
        for v in c {
            // NaN > 0 is false and NaN < 0 too: only values below 0 become 0.
            *v = if *v < 0.0 { 0.0 } else { *v };
        }
    });
}

/// ReLU's backward as PyTorch's: the incoming gradient where x > 0, 0 elsewhere (at 0 too);
/// a select, as the forward. ReLU's output gates the same as its input (positive exactly
/// where the input is), so either may be passed as x.
pub fn relu_backward(x: &[f32], grad: &[f32]) -> Vec<f32> {
    let mut out = grad.to_vec();
    relu_backward_in_place(x, &mut out);
    out
}

/// [`relu_backward`] over a gradient buffer the caller owns.
pub fn relu_backward_in_place(x: &[f32], grad: &mut [f32]) {
    assert_eq!(x.len(), grad.len(), "relu_backward: input and gradient lengths differ");
    grad.par_chunks_mut(CHUNK).zip(x.par_chunks(CHUNK)).for_each(|(g, x)| {
        for (g, &x) in g.iter_mut().zip(x) {
            // NaN > 0 is false: its gradient is 0, as at 0 and below.
            *g = if x > 0.0 { *g } else { 0.0 };
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn erf_on_sixteen_lanes_is_within_a_few_ulp_of_libm() {
        use std::arch::x86_64::*;
        if crate::kernels::simd::detected() != crate::kernels::simd::Level::Avx512 {
            eprintln!("this CPU has no AVX-512: erf16 was not checked here");
            return;
        }
        let xs: Vec<f32> =
            (-8000..=8000).map(|i| i as f32 * 1e-3).chain([f32::INFINITY, f32::NEG_INFINITY, 1e30]).collect();
        let mut worst = 0f32;
        for group in xs.chunks(16) {
            let mut lanes = [0f32; 16];
            lanes[..group.len()].copy_from_slice(group);
            // SAFETY: AVX-512 checked above.
            unsafe { _mm512_storeu_ps(lanes.as_mut_ptr(), erf16(_mm512_loadu_ps(lanes.as_ptr()))) };
            for (&x, &got) in group.iter().zip(&lanes) {
                let exact = candle_core::cpu::erf::erf_f64(x as f64) as f32;
                worst = worst.max((got - exact).abs());
            }
        }
        assert!(worst < 5e-7, "erf16 differs from libm by up to {worst}");
        let mut nan = [f32::NAN; 16];
        // SAFETY: as above.
        unsafe { _mm512_storeu_ps(nan.as_mut_ptr(), erf16(_mm512_loadu_ps(nan.as_ptr()))) };
        assert!(nan.iter().all(|v| v.is_nan()), "erf16 of NaN must stay NaN");
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
    #[cfg(target_arch = "x86_64")]
    fn exp2_on_sixteen_lanes_is_within_a_few_ulp_of_std() {
        use std::arch::x86_64::*;
        if super::super::simd::level() != super::super::simd::Level::Avx512 {
            eprintln!("this CPU has no AVX-512: exp2_16 was not checked here");
            return;
        }
        let lanes = |t: [f32; 16]| {
            let mut out = [0f32; 16];
            // SAFETY: the CPU has AVX-512F (checked above).
            unsafe { _mm512_storeu_ps(out.as_mut_ptr(), exp2_16(_mm512_loadu_ps(t.as_ptr()))) };
            out
        };
        let mut worst = 0f64;
        for i in 0..20_000 {
            let t: [f32; 16] = std::array::from_fn(|l| -124.0 + (i * 16 + l) as f32 * 3.9e-4);
            for (&t, got) in t.iter().zip(lanes(t)) {
                let exact = 2f64.powf(t as f64);
                worst = worst.max(((got as f64 - exact) / exact).abs());
            }
        }
        assert!(worst < 3e-7, "exp2_16: relative error {worst}");
        let special = lanes([
            f32::NAN,
            f32::NEG_INFINITY,
            -1e30,
            0.0,
            1.0,
            -1.0,
            10.0,
            200.0,
            0.0,
            0.0,
            0.0,
            0.0,
            0.0,
            0.0,
            0.0,
            0.0,
        ]);
        assert!(special[0].is_nan());
        let floor = 2f32.powi(-125);
        assert!((special[1] - floor).abs() <= 3e-7 * floor && special[2] == special[1]);
        assert!((special[3] - 1.0).abs() < 2e-7 && (special[4] - 2.0).abs() < 4e-7 && (special[5] - 0.5).abs() < 1e-7);
        assert!((special[6] - 1024.0).abs() < 3e-4 && special[7].is_infinite());
    }
}
