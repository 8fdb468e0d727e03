//! A 32 x 32 block of a bf16 product on AVX512_BF16's dot products (`vdpbf16ps`), for a CPU
//! that has AVX512_BF16 but no AMX tiles (AMD Zen 4 and later, or a virtual machine that hides
//! the tiles).
//!
//! It reads the operands the tiles read, laid out as [`super::amx`] lays them out: a 32-row
//! panel of A in k-steps (32 rows of 32 bf16 values a step) and a column block of B as pair-rows
//! (for each pair of k, each of the 32 columns' two values together). `vdpbf16ps` multiplies 16
//! such pairs by one pair broadcast from a row of A and adds both products to 16 f32 sums, so a
//! pair-row of B is two vectors as it lies, and a row's pair one 32-bit broadcast: no operand is
//! repacked. Where AVX-512's f32 multiply-add makes 16 products an instruction, this makes 32,
//! twice the f32 rate on the same core, with the sums in f32 as on the tiles; only the order in
//! which each sum's products are added differs from the tiles'.
//!
//! Eight rows at a time by the block's 32 columns: 16 sums held in registers over all of k, two
//! vectors of B loaded per pair for eight broadcasts of A. The block's B (32 columns by k, 24
//! KB at k = 384) stays in the first-level cache for the four passes over it.

use super::amx::{BlockStart, BLOCK, K_STEP};

/// Rows of the block a pass over k holds sums for.
const ROWS_PER_PASS: usize = 8;
/// Vectors of 16 sums a row of the block spans.
const VECTORS_PER_ROW: usize = BLOCK / 16;

/// The block at `c` (32 rows `c_stride` floats apart) = `start` + the panel times the column
/// block, over `kp` values of k (a multiple of 32): what [`super::amx`]'s tile block computes,
/// on the dot products.
///
/// # Safety
/// The CPU has AVX-512F and AVX512_BF16; `panel` holds kp / 32 k-steps of 32 x 32 bf16 values,
/// `b_block` kp / 2 pair-rows of 64, a bias 32 floats, and `c` 32 rows of 32 floats that this
/// thread alone reads and writes.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16")]
pub(super) unsafe fn block(
    panel: *const u16,
    kp: usize,
    b_block: *const u16,
    c: *mut f32,
    c_stride: usize,
    start: BlockStart,
) {
    use std::arch::x86_64::*;
    debug_assert!(kp.is_multiple_of(K_STEP), "bf16_dot::block: k is not whole k-steps");
    for row0 in (0..BLOCK).step_by(ROWS_PER_PASS) {
        let mut sums = [[_mm512_setzero_ps(); VECTORS_PER_ROW]; ROWS_PER_PASS];
        for (r, row) in sums.iter_mut().enumerate() {
            for (v, sum) in row.iter_mut().enumerate() {
                *sum = match start {
                    BlockStart::Zero => _mm512_setzero_ps(),
                    BlockStart::Bias(bias) => _mm512_loadu_ps(bias.add(v * 16)),
                    BlockStart::Sums => _mm512_loadu_ps(c.add((row0 + r) * c_stride + v * 16)),
                };
            }
        }
        for step in 0..kp / K_STEP {
            let a_step = panel.add(step * BLOCK * K_STEP + row0 * K_STEP);
            let b_step = b_block.add(step * K_STEP * BLOCK);
            for pair in 0..K_STEP / 2 {
                let b_pair = b_step.add(pair * 2 * BLOCK);
                let b: [__m512bh; VECTORS_PER_ROW] =
                    std::array::from_fn(|v| std::mem::transmute(_mm512_loadu_ps(b_pair.add(v * 32).cast())));
                for (r, row) in sums.iter_mut().enumerate() {
                    // A row's pair (k, k + 1) is one 32-bit word, broadcast to every column.
                    let word = a_step.add(r * K_STEP + pair * 2).cast::<i32>().read_unaligned();
                    let a: __m512bh = std::mem::transmute(_mm512_set1_epi32(word));
                    for (sum, b) in row.iter_mut().zip(b) {
                        *sum = _mm512_dpbf16_ps(*sum, a, b);
                    }
                }
            }
        }
        for (r, row) in sums.iter().enumerate() {
            for (v, sum) in row.iter().enumerate() {
                _mm512_storeu_ps(c.add((row0 + r) * c_stride + v * 16), *sum);
            }
        }
    }
}

#[cfg(all(test, target_arch = "x86_64"))]
mod tests {
    use super::*;
    use crate::kernels::amx::{from_bf16, to_bf16};

    /// The block from each of its three starts against f64 sums of the same bf16 operands, read
    /// through the layouts the tiles read (k-steps of A, pair-rows of B), at one k-step and at
    /// several.
    #[test]
    fn a_block_is_the_sums_of_its_pairs_from_each_start() {
        if !(is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512bf16")) {
            eprintln!("this CPU has no AVX512_BF16: the dot products' block was not checked here");
            return;
        }
        for kp in [K_STEP, 5 * K_STEP] {
            let a: Vec<u16> = (0..BLOCK * kp).map(|i| to_bf16(((i * 7919) % 211) as f32 * 0.013 - 1.3)).collect();
            let b: Vec<u16> = (0..kp * BLOCK).map(|i| to_bf16(((i * 104_729) % 199) as f32 * 0.011 - 1.1)).collect();
            // A[r][k] in k-steps; B[k][j] in pair-rows: pair p, column j at p * 64 + 2j (+1 for k odd).
            let a_at =
                |r: usize, k: usize| from_bf16(a[(k / K_STEP) * BLOCK * K_STEP + r * K_STEP + k % K_STEP]) as f64;
            let b_at = |k: usize, j: usize| from_bf16(b[(k / 2) * 2 * BLOCK + 2 * j + k % 2]) as f64;
            let bias: Vec<f32> = (0..BLOCK).map(|j| j as f32 * 0.25 - 3.0).collect();
            let stride = BLOCK + 5;
            let before: Vec<f32> = (0..BLOCK * stride).map(|i| (i % 17) as f32 - 8.0).collect();
            for start in ["zero", "bias", "sums"] {
                let mut c = before.clone();
                let how = match start {
                    "zero" => BlockStart::Zero,
                    "bias" => BlockStart::Bias(bias.as_ptr()),
                    _ => BlockStart::Sums,
                };
                // SAFETY: the CPU has AVX-512F and AVX512_BF16 (checked above); the operands
                // hold kp values of k for 32 rows and 32 columns, c 32 rows of `stride`.
                unsafe { block(a.as_ptr(), kp, b.as_ptr(), c.as_mut_ptr(), stride, how) };
                for r in 0..BLOCK {
                    for j in 0..stride {
                        let got = c[r * stride + j];
                        if j >= BLOCK {
                            assert_eq!(got, before[r * stride + j], "column {j} past the block was written");
                            continue;
                        }
                        let mut want = match start {
                            "zero" => 0.0,
                            "bias" => bias[j] as f64,
                            _ => before[r * stride + j] as f64,
                        };
                        let mut size = want.abs();
                        for k in 0..kp {
                            want += a_at(r, k) * b_at(k, j);
                            size += (a_at(r, k) * b_at(k, j)).abs();
                        }
                        let off = (got as f64 - want).abs();
                        assert!(off <= 1e-6 * (1.0 + size), "{start}, k {kp}, ({r}, {j}): {got} against {want}");
                    }
                }
            }
        }
    }
}
