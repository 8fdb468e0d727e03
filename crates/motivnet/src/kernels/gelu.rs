//! GELU, exact (erf) form as PyTorch's `nn.GELU()`, and its derivative, over slices.

use std::mem::MaybeUninit;

use rayon::prelude::*;

use super::gemm::filled_vec;
#[cfg(target_arch = "x86_64")]
use super::math::{erf16, exp16};
use super::math::{erf_fast, exp_fast, FRAC_1_SQRT_2PI};
use super::CHUNK;

#[inline(always)]
fn gelu_value(v: f32) -> f32 {
    0.5 * v * (1.0 + erf_fast(v * std::f32::consts::FRAC_1_SQRT_2))
}

/// GELU of each value of `x` into `out` (which may be fresh, unwritten memory).
pub fn gelu_chunk(out: &mut [MaybeUninit<f32>], x: &[f32]) {
    assert_eq!(out.len(), x.len(), "gelu_chunk: input and output lengths differ");
    #[cfg(target_arch = "x86_64")]
    if super::simd::level() == super::simd::Level::Avx512 {
        // SAFETY: `level` reports AVX-512 only where the CPU has it; both hold x.len() values.
        unsafe { gelu_avx512(out.as_mut_ptr().cast(), x.as_ptr(), x.len()) };
        return;
    }
    gelu_chunk_dispatched(out, x);
}

/// GELU of each value, in place.
pub fn gelu_in_place(x: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if super::simd::level() == super::simd::Level::Avx512 {
        // SAFETY: as in `gelu_chunk`; reading and writing the same value is allowed.
        unsafe { gelu_avx512(x.as_mut_ptr(), x.as_ptr(), x.len()) };
        return;
    }
    gelu_in_place_dispatched(x);
}

/// GELU(v + b) of each value v of each row of `x` (rows of `bias.len()`), in place, on all
/// threads: a Linear's bias added in the activation's pass instead of a pass of its own.
pub fn gelu_rows_with_bias_in_place(x: &mut [f32], bias: &[f32]) {
    let width = bias.len().max(1);
    assert!(x.len().is_multiple_of(width), "gelu_rows_with_bias_in_place: {} values are not rows of {width}", x.len());
    x.par_chunks_mut(width * CHUNK.div_ceil(width)).for_each(|rows| {
        #[cfg(target_arch = "x86_64")]
        if super::simd::level() == super::simd::Level::Avx512 {
            for row in rows.chunks_mut(width) {
                // SAFETY: `level` reports AVX-512 only where the CPU has it; the row and the bias
                // both hold `width` values.
                unsafe { gelu_with_bias_avx512(row.as_mut_ptr(), bias.as_ptr(), width) };
            }
            return;
        }
        for row in rows.chunks_mut(width) {
            row.iter_mut().zip(bias).for_each(|(v, b)| *v += b);
            gelu_in_place_dispatched(row);
        }
    });
}

/// GELU(x + b) of `len` values in place, sixteen at a time, the last few through a lane mask.
///
/// # Safety
/// The CPU has AVX-512F; `x` and `bias` address `len` floats, `x` writable.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn gelu_with_bias_avx512(x: *mut f32, bias: *const f32, len: usize) {
    use std::arch::x86_64::*;
    let mut i = 0;
    while i + 16 <= len {
        let v = _mm512_add_ps(_mm512_loadu_ps(x.add(i)), _mm512_loadu_ps(bias.add(i)));
        _mm512_storeu_ps(x.add(i), gelu16(v));
        i += 16;
    }
    if i < len {
        let mask = super::simd::lanes_below(len - i);
        let v = _mm512_add_ps(_mm512_maskz_loadu_ps(mask, x.add(i)), _mm512_maskz_loadu_ps(mask, bias.add(i)));
        _mm512_mask_storeu_ps(x.add(i), mask, gelu16(v));
    }
}

/// The gradient through GELU: `grad` times GELU's derivative at `x`, into `out`.
fn gelu_grad_chunk(out: &mut [MaybeUninit<f32>], x: &[f32], grad: &[f32]) {
    assert!(out.len() == x.len() && x.len() == grad.len(), "gelu_grad_chunk: lengths differ");
    #[cfg(target_arch = "x86_64")]
    if super::simd::level() == super::simd::Level::Avx512 {
        // SAFETY: as in `gelu_chunk`; all three hold x.len() values.
        unsafe { gelu_grad_avx512(out.as_mut_ptr().cast(), x.as_ptr(), grad.as_ptr(), x.len()) };
        return;
    }
    gelu_grad_chunk_dispatched(out, x, grad);
}

/// GELU of `len` values from `x` into `out` (which may be `x`), sixteen at a time with
/// [`erf16`]; the last few through a lane mask, so each value gets the same instructions
/// wherever it lies (GELU on each block of a product equals GELU over the whole output).
///
/// # Safety
/// The CPU has AVX-512F; `x` and `out` address `len` floats, `out` writable.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn gelu_avx512(out: *mut f32, x: *const f32, len: usize) {
    use std::arch::x86_64::*;
    let mut i = 0;
    while i + 16 <= len {
        _mm512_storeu_ps(out.add(i), gelu16(_mm512_loadu_ps(x.add(i))));
        i += 16;
    }
    if i < len {
        let mask = super::simd::lanes_below(len - i);
        _mm512_mask_storeu_ps(out.add(i), mask, gelu16(_mm512_maskz_loadu_ps(mask, x.add(i))));
    }
}

/// GELU of sixteen values with [`erf16`]: what [`gelu_avx512`] gives each value, for callers
/// that finish a block of a product in registers.
///
/// # Safety
/// The CPU has AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
pub(super) unsafe fn gelu16(v: std::arch::x86_64::__m512) -> std::arch::x86_64::__m512 {
    use std::arch::x86_64::*;
    let erf = erf16(_mm512_mul_ps(v, _mm512_set1_ps(std::f32::consts::FRAC_1_SQRT_2)));
    // half v (1 + erf), not half v erf + half v in one step: at v = -inf, where erf stops a
    // little short of -1, that would be inf - inf.
    _mm512_mul_ps(_mm512_mul_ps(v, _mm512_set1_ps(0.5)), _mm512_add_ps(_mm512_set1_ps(1.0), erf))
}

/// [`gelu_grad_chunk`] sixteen at a time, with [`erf16`] and [`exp16`], the last few through a
/// lane mask.
///
/// # Safety
/// The CPU has AVX-512F; `x` and `grad` address `len` floats, `out` `len` writable ones.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn gelu_grad_avx512(out: *mut f32, x: *const f32, grad: *const f32, len: usize) {
    use std::arch::x86_64::*;
    let grad16 = |v: __m512, g: __m512| {
        let half = _mm512_set1_ps(0.5);
        let erf = erf16(_mm512_mul_ps(v, _mm512_set1_ps(std::f32::consts::FRAC_1_SQRT_2)));
        let cdf = _mm512_fmadd_ps(half, erf, half);
        let pdf = _mm512_mul_ps(
            _mm512_set1_ps(FRAC_1_SQRT_2PI),
            exp16(_mm512_mul_ps(_mm512_mul_ps(v, v), _mm512_set1_ps(-0.5))),
        );
        _mm512_mul_ps(g, _mm512_fmadd_ps(v, pdf, cdf))
    };
    let mut i = 0;
    while i + 16 <= len {
        _mm512_storeu_ps(out.add(i), grad16(_mm512_loadu_ps(x.add(i)), _mm512_loadu_ps(grad.add(i))));
        i += 16;
    }
    if i < len {
        let mask = super::simd::lanes_below(len - i);
        let (v, g) = (_mm512_maskz_loadu_ps(mask, x.add(i)), _mm512_maskz_loadu_ps(mask, grad.add(i)));
        _mm512_mask_storeu_ps(out.add(i), mask, grad16(v, g));
    }
}

crate::simd_dispatch! {
    fn gelu_chunk_dispatched(out: &mut [MaybeUninit<f32>], x: &[f32]) {
        for (o, &v) in out.iter_mut().zip(x) {
            o.write(gelu_value(v));
        }
    }
}

crate::simd_dispatch! {
    fn gelu_in_place_dispatched(x: &mut [f32]) {
        for v in x.iter_mut() {
            *v = gelu_value(*v);
        }
    }
}

crate::simd_dispatch! {
    fn gelu_grad_chunk_dispatched(out: &mut [MaybeUninit<f32>], x: &[f32], grad: &[f32]) {
        for ((o, &v), &g) in out.iter_mut().zip(x).zip(grad) {
            let cdf = 0.5 * (1.0 + erf_fast(v * std::f32::consts::FRAC_1_SQRT_2));
            let pdf = FRAC_1_SQRT_2PI * exp_fast(-0.5 * v * v);
            o.write(g * (cdf + v * pdf));
        }
    }
}

/// GELU of each value, on all threads.
pub fn gelu_forward(x: &[f32]) -> Vec<f32> {
    // SAFETY: the chunks of `out` pair up with those of `x`, which has len() elements.
    unsafe {
        filled_vec(x.len(), |out| {
            out.par_chunks_mut(CHUNK).zip(x.par_chunks(CHUNK)).for_each(|(o, x)| gelu_chunk(o, x))
        })
    }
}

/// `grad` times GELU's derivative at `x`, element-wise, on all threads. Panics when the two
/// differ in length (the output is filled only where both reach).
pub fn gelu_backward(x: &[f32], grad: &[f32]) -> Vec<f32> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::simd::{tiers_to_check, with_level, Level};

    fn inputs(len: usize) -> Vec<f32> {
        (0..len).map(|i| ((i * 7919) % 1201) as f32 * 0.01 - 6.0).collect()
    }

    /// The chunk functions on this thread, capped at `tier` (rayon's threads are not capped):
    /// GELU into fresh memory, GELU in place, and the gradient.
    fn at_tier(tier: Level, x: &[f32], g: &[f32]) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
        with_level(tier, || {
            let mut fresh = vec![MaybeUninit::uninit(); x.len()];
            gelu_chunk(&mut fresh, x);
            let mut in_place = x.to_vec();
            gelu_in_place(&mut in_place);
            let mut grad = vec![MaybeUninit::uninit(); x.len()];
            gelu_grad_chunk(&mut grad, x, g);
            // SAFETY: each chunk function wrote every value.
            let done = |v: Vec<MaybeUninit<f32>>| v.into_iter().map(|v| unsafe { v.assume_init() }).collect();
            (done(fresh), in_place, done(grad))
        })
    }

    /// Each tier's GELU and its gradient within float rounding of the portable code's, at
    /// every length around the vector width (the masked last vector); in place and into fresh
    /// memory the same, bit for bit.
    #[test]
    fn every_tier_matches_the_portable_code_at_every_length() {
        for tier in tiers_to_check("gelu") {
            for len in (0..50).chain([1000]) {
                let x = inputs(len);
                let g: Vec<f32> = x.iter().map(|v| 0.3 - v * 0.1).collect();
                let (want, _, want_grad) = at_tier(Level::Portable, &x, &g);
                let (got, in_place, got_grad) = at_tier(tier, &x, &g);
                for i in 0..len {
                    let tolerance = 2e-6 * (1.0 + x[i].abs());
                    let at = format!("{tier:?}, length {len}, x = {}", x[i]);
                    assert_eq!(
                        got[i].to_bits(),
                        in_place[i].to_bits(),
                        "{at}: in place {} against {}",
                        in_place[i],
                        got[i]
                    );
                    assert!((got[i] - want[i]).abs() <= tolerance, "{at}: GELU {}, portable {}", got[i], want[i]);
                    assert!(
                        (got_grad[i] - want_grad[i]).abs() <= tolerance,
                        "{at}: GELU' {}, portable {}",
                        got_grad[i],
                        want_grad[i]
                    );
                }
            }
        }
    }

    /// GELU with the bias added in its pass gives, bit for bit, the bias added first and then
    /// GELU in place, for rows that do and do not fill whole vectors, over more rows than one
    /// task takes.
    #[test]
    fn gelu_with_the_bias_in_its_pass_is_the_bias_then_gelu() {
        for width in [1, 15, 16, 40, 1536] {
            let rows = 2 * CHUNK / width + 3;
            let x = inputs(rows * width);
            let bias: Vec<f32> = (0..width).map(|j| j as f32 * 0.37 - 2.0).collect();
            let mut want = x.clone();
            want.chunks_mut(width).for_each(|row| row.iter_mut().zip(&bias).for_each(|(v, b)| *v += b));
            gelu_in_place(&mut want);
            let mut got = x.clone();
            gelu_rows_with_bias_in_place(&mut got, &bias);
            let differ = got.iter().zip(&want).position(|(g, w)| g.to_bits() != w.to_bits());
            assert_eq!(differ, None, "rows of {width}: first difference at {differ:?}");
        }
    }

    #[test]
    #[should_panic(expected = "not rows of")]
    fn gelu_with_a_bias_that_does_not_divide_the_values_is_refused() {
        gelu_rows_with_bias_in_place(&mut [0.0; 10], &[1.0; 3]);
    }

    /// NaN, the infinities and the zeros come out as the portable code gives them.
    #[test]
    fn special_values_come_out_as_on_the_portable_code() {
        let x = [f32::NAN, f32::INFINITY, f32::NEG_INFINITY, 0.0, -0.0, 1e30, -1e30];
        let g = [1.0; 7];
        let (want, _, want_grad) = at_tier(Level::Portable, &x, &g);
        for tier in tiers_to_check("gelu special values") {
            let (got, _, got_grad) = at_tier(tier, &x, &g);
            for i in 0..x.len() {
                let same = |a: f32, b: f32| a == b || (a.is_nan() && b.is_nan());
                assert!(same(got[i], want[i]), "{tier:?}: GELU({}) = {}, portable {}", x[i], got[i], want[i]);
                assert!(
                    same(got_grad[i], want_grad[i]),
                    "{tier:?}: GELU'({}) = {}, portable {}",
                    x[i],
                    got_grad[i],
                    want_grad[i]
                );
            }
        }
    }
}
