//! Softmax over the rows of a row-major buffer, and its backward.

use rayon::prelude::*;

use super::math::exp_fast;
use super::CHUNK;

/// Softmax of each `n`-long row of `rows`, in place. The loops are written in 16 lanes (max
/// and sum as sixteen partial results) so they vectorise, as wide as the CPU allows
/// (crate::kernels::simd): one AVX-512 register or two AVX2 ones.
pub fn softmax_rows(rows: &mut [f32], n: usize) {
    #[cfg(target_arch = "x86_64")]
    if super::simd::level() == super::simd::Level::Avx512 {
        // SAFETY: `level` reports AVX-512 only where the CPU has it.
        unsafe { softmax_rows_avx512(rows, n) };
        return;
    }
    softmax_rows_dispatched(rows, n);
}

/// [`softmax_rows`] with the exponentials of [`super::math::exp16`]: the vectorised loops of
/// the portable code spend a third more instructions on each exp.
///
/// # Safety
/// The CPU has AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn softmax_rows_avx512(rows: &mut [f32], n: usize) {
    for row in rows.chunks_mut(n.max(1)) {
        let inv = 1.0 / exp_shifted_avx512(row, row_max_avx512(row));
        row.iter_mut().for_each(|v| *v *= inv);
    }
}

/// Each value of `row` replaced by exp(value - shift) ([`super::math::exp16`]); returns their
/// sum. Softmax's middle pass, also the blocked attention's (`super::flash_attention`).
///
/// # Safety
/// The CPU has AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
pub(crate) unsafe fn exp_shifted_avx512(row: &mut [f32], shift: f32) -> f32 {
    use std::arch::x86_64::*;
    let shift_lanes = _mm512_set1_ps(shift);
    let mut sums = _mm512_setzero_ps();
    let mut blocks = row.chunks_exact_mut(16);
    for block in &mut blocks {
        let e = super::math::exp16(_mm512_sub_ps(_mm512_loadu_ps(block.as_ptr()), shift_lanes));
        _mm512_storeu_ps(block.as_mut_ptr(), e);
        sums = _mm512_add_ps(sums, e);
    }
    let mut total = _mm512_reduce_add_ps(sums);
    for v in blocks.into_remainder() {
        *v = exp_fast(*v - shift);
        total += *v;
    }
    total
}

/// The largest value of a row, NaNs passed over (as the portable loops do), on AVX-512.
///
/// # Safety
/// The CPU has AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
pub(crate) unsafe fn row_max_avx512(row: &[f32]) -> f32 {
    use std::arch::x86_64::*;
    let mut lanes = _mm512_set1_ps(f32::NEG_INFINITY);
    let mut blocks = row.chunks_exact(16);
    for block in &mut blocks {
        // Where a value is NaN, max returns its second operand: the running maximum.
        lanes = _mm512_max_ps(_mm512_loadu_ps(block.as_ptr()), lanes);
    }
    blocks.remainder().iter().fold(_mm512_reduce_max_ps(lanes), |m, &v| if v > m { v } else { m })
}

crate::simd_dispatch! {
    fn softmax_rows_dispatched(rows: &mut [f32], n: usize) {
        softmax_rows_portable(rows, n)
    }
}

#[inline(always)]
fn softmax_rows_portable(rows: &mut [f32], n: usize) {
    for row in rows.chunks_mut(n.max(1)) {
        let inv = exp_row(row);
        row.iter_mut().for_each(|v| *v *= inv);
    }
}

/// One row exponentiated in place as softmax does it (its largest value subtracted first),
/// without the normalization: returns 1 / the row's sum, the factor that normalizes it.
#[inline(always)]
fn exp_row(row: &mut [f32]) -> f32 {
    const LANES: usize = 16;
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
    1.0 / total
}

/// Softmax of each `n`-long row of `x`, on all threads.
pub fn softmax_forward(x: &[f32], n: usize) -> Vec<f32> {
    let n = n.max(1);
    let rows_per_task = (CHUNK / n).max(1);
    let mut out = vec![0f32; x.len()];
    out.par_chunks_mut(n * rows_per_task).zip(x.par_chunks(n * rows_per_task)).for_each(|(o, x)| {
        o.copy_from_slice(x);
        softmax_rows(o, n);
    });
    out
}

/// dx = y * (g - sum(g * y)) per `n`-long row, from the softmax output y and the incoming
/// gradient g, on all threads.
pub fn softmax_backward(y: &[f32], g: &[f32], n: usize) -> Vec<f32> {
    assert_eq!(y.len(), g.len(), "softmax_backward: output and gradient lengths differ");
    let n = n.max(1);
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
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::simd::with_level;

    #[test]
    fn softmax_rows_agree_at_every_simd_level() {
        let input: Vec<f32> = (0..3 * 37).map(|i| ((i * 7919) % 101) as f32 * 0.13 - 6.0).collect();
        let mut portable = input.clone();
        softmax_rows_portable(&mut portable, 37);
        for row in portable.chunks(37) {
            assert!((row.iter().sum::<f32>() - 1.0).abs() < 1e-5);
        }
        for level in crate::kernels::simd::tiers_to_check("softmax_rows_agree_at_every_simd_level") {
            let mut a = input.clone();
            with_level(level, || softmax_rows(&mut a, 37));
            for (x, y) in a.iter().zip(&portable) {
                assert!((x - y).abs() < 1e-6, "{level:?}: {x} vs {y}");
            }
        }
    }
}
