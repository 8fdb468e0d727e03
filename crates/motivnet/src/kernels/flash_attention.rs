//! The f32 self-attention of one (batch, head) pair without its N x N scores: keys in blocks,
//! each block's softmax folded into a running maximum and sum per query row ("flash"
//! attention), on AVX-512. It keeps no probabilities: it runs where the forward keeps none
//! (inference, and training steps whose probabilities would pass the op's budget; their
//! backward recomputes them).
//!
//! The attention through the `gemm` crate writes a block of query rows' scores (12 MiB), reads
//! them twice for the softmax and once more for the product with v: at sapiens' 3072 tokens
//! every score goes to memory and back three times, and q k^T, which sums over only the head's
//! 64 values, runs well below the product's speed. Here a task holds 48 query rows, their
//! scores for 128 keys at a time (24 KB, in the first-level cache), the head's keys transposed
//! into panels of 64 and its values packed in rows (768 KB each at 3072 tokens, in the second);
//! the products run on register tiles written for these shapes, and each row's largest score
//! is taken from the score tiles while they are in registers.
//!
//! For each block of keys: S = scale q k^T in base-2 units (the queries scaled by log2(e)
//! too, so that each weight is 2^(S - m), nine instructions a vector where exp takes
//! fourteen); m' = max(m, max_j S); the row's sum l (held lane by lane, added across at the
//! end) and its output o are scaled by 2^(m - m') before S's weights 2^(S - m') are added to
//! l and their product with v to o; at the end o / l. The result equals softmax(q k^T) v up to the
//! order of the sums and the exponentials' rounding: the tests below hold it, and the attention
//! through `gemm`, within 5e-6 of the largest output of an f64 softmax.

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;
use std::cell::RefCell;

use super::aligned::{AlignedVec, Plain};

/// Query rows a task holds at once: a multiple of both register tiles' heights (6, and 6 or 4).
pub(super) const QUERY_ROWS: usize = 48;
/// Keys a panel of the transposed keys holds: four vectors of 16, the width of a score tile.
pub(super) const PANEL: usize = 64;
/// Vectors across a panel.
const PANEL_VECS: usize = PANEL / 16;
/// Keys whose scores a task holds at once (two panels).
pub(super) const KEY_BLOCK: usize = 128;
/// Rows of a score tile (6 x 64 scores in 24 registers).
pub(super) const SCORE_TILE_ROWS: usize = 6;

/// A pair's queries, keys and values in a packed (B, N, 3D) qkv buffer: where q, k and v of
/// token 0 start, rows `row_stride` apart, `head_dim` values each.
#[derive(Clone, Copy)]
pub struct PairView<'a> {
    pub qkv: &'a [f32],
    pub q: usize,
    pub k: usize,
    pub v: usize,
    pub row_stride: usize,
    pub tokens: usize,
    pub head_dim: usize,
}

/// Where this task's output rows go: row i of the pair's (N, hd) block at `ptr + i * stride`.
#[derive(Clone, Copy)]
pub struct OutRows {
    pub ptr: *mut f32,
    pub stride: usize,
}

/// Tokens below which the attention through `gemm` is kept: a block of query rows' scores
/// then fits the second-level cache anyway (192 tokens, `tiny`: 48 KB for 64 rows), and it
/// ran 5% faster there (1.88 against 1.97 ms a call, medians of 11 alternating rounds); at
/// 768 tokens (`small`) this attention was 7% faster, at 3072 (sapiens) a quarter faster.
pub const MIN_TOKENS: usize = 512;

/// Whether [`attend`] runs for heads of this size on this CPU: AVX-512, and a head of 64 or
/// 80 values (four or five vectors: every preset's but sapiens-2b's 60).
pub fn supported(head_dim: usize) -> bool {
    cfg!(target_arch = "x86_64") && super::simd::level() == super::simd::Level::Avx512 && matches!(head_dim, 64 | 80)
}

/// Per-thread buffers, reused across calls: the pair's packed keys and values, and a query
/// block's scaled queries, scores and outputs.
#[derive(Default)]
struct Scratch {
    keys: AlignedVec<f32>,
    values: AlignedVec<f32>,
    queries: AlignedVec<f32>,
    scores: AlignedVec<f32>,
    outputs: AlignedVec<f32>,
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::default());
}

/// softmax(scale q k^T) v for query rows `rows` of one pair, written to `out` (row i of the
/// range at `out.ptr + (i - rows.start) * out.stride`).
///
/// # Safety
/// [`supported`] holds for `pair.head_dim`; the pair's rows lie inside `pair.qkv`; `out`
/// addresses `rows.len()` rows of `head_dim` floats that no other thread touches meanwhile.
pub unsafe fn attend(pair: PairView, rows: std::ops::Range<usize>, scale: f32, out: OutRows) {
    with_thread_scratch(&SCRATCH, |scratch| {
        #[cfg(target_arch = "x86_64")]
        match pair.head_dim {
            // SAFETY: `supported` checked AVX-512 and the head size.
            64 => unsafe { attend_avx512::<4, 6>(pair, rows, scale, out, scratch) },
            80 => unsafe { attend_avx512::<5, 4>(pair, rows, scale, out, scratch) },
            other => unreachable!("flash attention called for a head of {other} values"),
        }
    })
}

/// Runs `f` with this thread's buffers in `key`, taken out of their cell meanwhile (a task that
/// rayon runs on this thread inside `f` gets buffers of its own instead of finding these
/// borrowed), and put back after.
pub(super) fn with_thread_scratch<S: Default, R>(
    key: &'static std::thread::LocalKey<RefCell<S>>,
    f: impl FnOnce(&mut S) -> R,
) -> R {
    let mut scratch = key.with(|cell| cell.take());
    let result = f(&mut scratch);
    key.with(|cell| cell.replace(scratch));
    result
}

/// The finished rows of a query block, each output row (`hd` values, `stride` apart in
/// `outputs`) divided by its weights' sum, written to rows `first ..` of `out`.
///
/// # Safety
/// `out` addresses rows `first .. first + sums.len()` of `hd` floats that no other thread
/// touches meanwhile.
pub(super) unsafe fn write_rows(
    out: OutRows,
    first: usize,
    (outputs, stride, hd): (&[f32], usize, usize),
    sums: &[f32],
) {
    for (i, &sum) in sums.iter().enumerate() {
        let inv = 1.0 / sum;
        // SAFETY: the caller's promise.
        let dst = unsafe { std::slice::from_raw_parts_mut(out.ptr.add((first + i) * out.stride), hd) };
        dst.iter_mut().zip(&outputs[i * stride..][..hd]).for_each(|(d, o)| *d = o * inv);
    }
}

/// Grows `buf` to `len` elements (contents unspecified) and returns them.
pub(super) fn sized<T: Plain>(buf: &mut AlignedVec<T>, len: usize) -> &mut [T] {
    if buf.len() < len {
        buf.resize(len);
    }
    &mut buf[..len]
}

/// [`attend`] for a head of `VECS` x 16 values, the product with v on tiles of `PV_ROWS` rows.
///
/// # Safety
/// As [`attend`], and the CPU has AVX-512F and AVX512DQ (both part of [`supported`]'s level).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512dq")]
unsafe fn attend_avx512<const VECS: usize, const PV_ROWS: usize>(
    pair: PairView,
    rows: std::ops::Range<usize>,
    scale: f32,
    out: OutRows,
    scratch: &mut Scratch,
) {
    let hd = VECS * 16;
    let n = pair.tokens;
    let padded = n.div_ceil(PANEL) * PANEL;
    let keys = sized(&mut scratch.keys, padded * hd);
    let values = sized(&mut scratch.values, padded * hd);
    pack_keys(pair, keys);
    pack_values(pair, values);
    let queries = sized(&mut scratch.queries, QUERY_ROWS * hd);
    let scores = sized(&mut scratch.scores, QUERY_ROWS * KEY_BLOCK);
    let outputs = sized(&mut scratch.outputs, QUERY_ROWS * hd);
    let mut maxima = [f32::NEG_INFINITY; QUERY_ROWS];
    // Each row's weights summed lane by lane, added across only when the row is finished.
    let mut sums = [_mm512_setzero_ps(); QUERY_ROWS];
    // Scores in base-2 units, so that each weight is 2^(s - m): a cheaper exponential.
    let scale = scale * std::f32::consts::LOG2_E;
    for r0 in rows.clone().step_by(QUERY_ROWS) {
        let block_rows = QUERY_ROWS.min(rows.end - r0);
        // The block's queries, scaled, rows past the range zero (their results are dropped).
        for i in 0..QUERY_ROWS {
            let dst = &mut queries[i * hd..][..hd];
            if i < block_rows {
                let src = &pair.qkv[pair.q + (r0 + i) * pair.row_stride..][..hd];
                dst.iter_mut().zip(src).for_each(|(d, s)| *d = s * scale);
            } else {
                dst.fill(0.0);
            }
        }
        outputs.fill(0.0);
        maxima.fill(f32::NEG_INFINITY);
        sums.fill(_mm512_setzero_ps());
        for j0 in (0..padded).step_by(KEY_BLOCK) {
            let block_keys = KEY_BLOCK.min(padded - j0);
            let valid = block_keys.min(n - j0);
            // Each row's largest score in this block, found while the tiles are in registers.
            let mut block_maxima = [f32::NEG_INFINITY; QUERY_ROWS];
            for p in 0..block_keys / PANEL {
                let panel = keys.as_ptr().add((j0 + p * PANEL) * hd);
                let panel_keys = PANEL.min(valid.saturating_sub(p * PANEL));
                for t in (0..QUERY_ROWS).step_by(SCORE_TILE_ROWS) {
                    score_tile::<VECS>(
                        queries.as_ptr().add(t * hd),
                        panel,
                        scores.as_mut_ptr().add(t * KEY_BLOCK + p * PANEL),
                        panel_keys,
                        &mut block_maxima[t..t + SCORE_TILE_ROWS],
                    );
                }
            }
            let rescales = fold_maxima(&mut maxima, &block_maxima, ScoreUnits::Base2);
            for i in 0..QUERY_ROWS {
                let row = &mut scores[i * KEY_BLOCK..][..block_keys];
                let factor = _mm512_set1_ps(rescales[i]);
                sums[i] = _mm512_fmadd_ps(sums[i], factor, exponentiate_row(row, valid, maxima[i]));
                for t in 0..VECS {
                    let o = outputs.as_mut_ptr().add(i * hd + t * 16);
                    _mm512_storeu_ps(o, _mm512_mul_ps(factor, _mm512_loadu_ps(o)));
                }
            }
            for t in (0..QUERY_ROWS).step_by(PV_ROWS) {
                value_tile::<VECS, PV_ROWS>(
                    scores.as_ptr().add(t * KEY_BLOCK),
                    values.as_ptr().add(j0 * hd),
                    block_keys,
                    outputs.as_mut_ptr().add(t * hd),
                );
            }
        }
        let row_sums: [f32; QUERY_ROWS] = std::array::from_fn(|i| _mm512_reduce_add_ps(sums[i]));
        write_rows(out, r0 - rows.start, (outputs, hd, hd), &row_sums[..block_rows]);
    }
}

/// The pair's keys transposed into panels of [`PANEL`] keys: panel p holds, for each of the
/// head's values c, keys 64p .. 64p + 64 at `keys[64p * hd + c * 64 ..]`, the keys
/// past the last zero. Sixteen keys by sixteen values at a time, transposed in registers: a
/// value at a time, the transposition took a twentieth of the attention at sapiens-0.3b's
/// shape.
///
/// # Safety
/// The CPU has AVX-512F; the head's size is a multiple of 16 (see [`supported`]); the pair's
/// key rows lie inside `pair.qkv`; `keys` holds whole panels.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn pack_keys(pair: PairView, keys: &mut [f32]) {
    let hd = pair.head_dim;
    debug_assert!(hd.is_multiple_of(16) && keys.len().is_multiple_of(PANEL * hd));
    assert!(
        pair.tokens == 0 || pair.k + (pair.tokens - 1) * pair.row_stride + hd <= pair.qkv.len(),
        "pack_keys: the pair's keys lie outside qkv"
    );
    for (p, panel) in keys.chunks_exact_mut(PANEL * hd).enumerate() {
        for j0 in (0..PANEL).step_by(16) {
            for c0 in (0..hd).step_by(16) {
                let mut rows = [_mm512_setzero_si512(); 16];
                for (i, row) in rows.iter_mut().enumerate() {
                    let j = p * PANEL + j0 + i;
                    if j < pair.tokens {
                        *row = _mm512_loadu_si512(pair.qkv.as_ptr().add(pair.k + j * pair.row_stride + c0).cast());
                    }
                }
                let columns = super::amx::transpose_words_16x16(rows);
                for (i, column) in columns.iter().enumerate() {
                    _mm512_storeu_si512(panel.as_mut_ptr().add((c0 + i) * PANEL + j0).cast(), *column);
                }
            }
        }
    }
}

/// The pair's values in rows of `hd`, contiguous, the rows past the last zero.
fn pack_values(pair: PairView, values: &mut [f32]) {
    let hd = pair.head_dim;
    for (j, row) in values.chunks_exact_mut(hd).enumerate() {
        if j < pair.tokens {
            row.copy_from_slice(&pair.qkv[pair.v + j * pair.row_stride..][..hd]);
        } else {
            row.fill(0.0);
        }
    }
}

/// The units a kernel's scores are in, which set how a difference of scores becomes a factor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum ScoreUnits {
    /// scale q k^T: weights exp(s - m).
    Natural,
    /// scale q k^T log2(e): weights 2^(s - m), a cheaper exponential for the same values.
    Base2,
}

/// The running maxima of the query rows moved to include this block's, 16 rows at a time:
/// returns each row's exp(m - m') (2^(m - m') for scores in base-2 units), the factor its sum
/// and output so far are scaled by (about 1e-38, against sums of zero, before the first block:
/// both exponentials clamp their argument).
///
/// # Safety
/// The CPU has AVX-512F and AVX512DQ.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512dq")]
pub(super) unsafe fn fold_maxima(
    maxima: &mut [f32; QUERY_ROWS],
    block_maxima: &[f32; QUERY_ROWS],
    units: ScoreUnits,
) -> [f32; QUERY_ROWS] {
    let mut rescales = [0f32; QUERY_ROWS];
    for v in (0..QUERY_ROWS).step_by(16) {
        let old = _mm512_loadu_ps(maxima.as_ptr().add(v));
        let new = _mm512_max_ps(_mm512_loadu_ps(block_maxima.as_ptr().add(v)), old);
        let difference = _mm512_sub_ps(old, new);
        let factor = match units {
            ScoreUnits::Natural => super::math::exp16(difference),
            ScoreUnits::Base2 => super::math::exp2_16(difference),
        };
        _mm512_storeu_ps(rescales.as_mut_ptr().add(v), factor);
        _mm512_storeu_ps(maxima.as_mut_ptr().add(v), new);
    }
    rescales
}

/// One row's block of scores (base-2 units, a whole number of vectors) replaced by
/// 2^(s - maximum), zero past `valid` (padding keys); returns their sums lane by lane.
///
/// # Safety
/// The CPU has AVX-512F and AVX512DQ; `row` is a whole number of vectors.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512dq")]
unsafe fn exponentiate_row(row: &mut [f32], valid: usize, maximum: f32) -> __m512 {
    debug_assert!(row.len().is_multiple_of(16));
    let shift = _mm512_set1_ps(maximum);
    let mut sums = _mm512_setzero_ps();
    for (v, lanes) in row.chunks_exact_mut(16).enumerate() {
        let weights = super::math::exp2_16(_mm512_sub_ps(_mm512_loadu_ps(lanes.as_ptr()), shift));
        let weights = match valid.saturating_sub(v * 16) {
            16.. => weights,
            keys => _mm512_maskz_mov_ps(super::simd::lanes_below(keys), weights),
        };
        _mm512_storeu_ps(lanes.as_mut_ptr(), weights);
        sums = _mm512_add_ps(sums, weights);
    }
    sums
}

/// One step of a register tile's sums: acc[r][t] += column(r) * row[t], `row` the ROWS-wide
/// tile's VECS x 16 values at `row`, `column(r)` broadcast across row r (both tiles' inner loop).
///
/// # Safety
/// The CPU has AVX-512F; `row` addresses VECS x 16 floats.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn tile_step<const ROWS: usize, const VECS: usize>(
    acc: &mut [[__m512; VECS]; ROWS],
    row: *const f32,
    column: impl Fn(usize) -> f32,
) {
    let mut b = [_mm512_setzero_ps(); VECS];
    for t in 0..VECS {
        b[t] = _mm512_loadu_ps(row.add(t * 16));
    }
    for r in 0..ROWS {
        let a = _mm512_set1_ps(column(r));
        for t in 0..VECS {
            acc[r][t] = _mm512_fmadd_ps(a, b[t], acc[r][t]);
        }
    }
}

/// Scores of 6 query rows (`hd` apart) against one panel of 64 keys, stored [`KEY_BLOCK`]
/// apart: 24 accumulators, each step of the sum four loads of 16 keys and six broadcasts.
/// Each row's `maxima` entry is raised to the largest of its scores for the panel's first
/// `keys` keys (the rest are padding).
///
/// # Safety
/// The CPU has AVX-512F; the pointers address 6 x hd queries, a packed panel and 6 rows of
/// 64 scores.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn score_tile<const VECS: usize>(
    queries: *const f32,
    panel: *const f32,
    scores: *mut f32,
    keys: usize,
    maxima: &mut [f32],
) {
    let hd = VECS * 16;
    let mut acc = [[_mm512_setzero_ps(); PANEL_VECS]; SCORE_TILE_ROWS];
    for c in 0..hd {
        tile_step(&mut acc, panel.add(c * PANEL), |r| *queries.add(r * hd + c));
    }
    let lowest = _mm512_set1_ps(f32::NEG_INFINITY);
    for r in 0..SCORE_TILE_ROWS {
        let mut both = lowest;
        for t in 0..PANEL_VECS {
            _mm512_storeu_ps(scores.add(r * KEY_BLOCK + t * 16), acc[r][t]);
            let mask = super::simd::lanes_below(keys.saturating_sub(t * 16));
            both = _mm512_max_ps(_mm512_mask_mov_ps(lowest, mask, acc[r][t]), both);
        }
        let m = _mm512_reduce_max_ps(both);
        if m > maxima[r] {
            maxima[r] = m;
        }
    }
}

/// outputs (ROWS x hd, `hd` apart) += weights (ROWS x keys, [`KEY_BLOCK`] apart) times
/// values (keys x hd): the outputs held in ROWS x VECS registers over all the keys.
///
/// # Safety
/// The CPU has AVX-512F; the pointers address what the shapes say.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn value_tile<const VECS: usize, const ROWS: usize>(
    weights: *const f32,
    values: *const f32,
    keys: usize,
    outputs: *mut f32,
) {
    let hd = VECS * 16;
    let mut acc = [[_mm512_setzero_ps(); VECS]; ROWS];
    for r in 0..ROWS {
        for t in 0..VECS {
            acc[r][t] = _mm512_loadu_ps(outputs.add(r * hd + t * 16));
        }
    }
    for j in 0..keys {
        tile_step(&mut acc, values.add(j * hd), |r| *weights.add(r * KEY_BLOCK + j));
    }
    for r in 0..ROWS {
        for t in 0..VECS {
            _mm512_storeu_ps(outputs.add(r * hd + t * 16), acc[r][t]);
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use crate::kernels::attention::{attention_forward, attention_forward_in_key_blocks};
    use crate::kernels::simd::{with_level, Level};

    /// softmax(q k^T / sqrt(hd)) v of every pair in f64, the heads merged: (B, N, D).
    pub(crate) fn exact(qkv: &[f32], (b, n, d): (usize, usize, usize), heads: usize) -> Vec<f64> {
        let hd = d / heads;
        let scale = 1.0 / (hd as f64).sqrt();
        let at = |bi: usize, i: usize, part: usize, h: usize, c: usize| {
            qkv[(bi * n + i) * 3 * d + part * d + h * hd + c] as f64
        };
        let mut out = vec![0f64; b * n * d];
        for bi in 0..b {
            for h in 0..heads {
                for i in 0..n {
                    let scores: Vec<f64> = (0..n)
                        .map(|j| (0..hd).map(|c| at(bi, i, 0, h, c) * at(bi, j, 1, h, c)).sum::<f64>() * scale)
                        .collect();
                    let max = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                    let weights: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
                    let total: f64 = weights.iter().sum();
                    for c in 0..hd {
                        let o: f64 = weights.iter().enumerate().map(|(j, w)| w * at(bi, j, 2, h, c)).sum();
                        out[(bi * n + i) * d + h * hd + c] = o / total;
                    }
                }
            }
        }
        out
    }

    /// Deterministic values in [-spread, spread): a wide spread makes the running maximum
    /// move from block to block, so the rescaling is exercised.
    pub(crate) fn values(len: usize, spread: f32) -> Vec<f32> {
        (0..len).map(|i| (((i * 7919 + 13) % 1009) as f32 / 1009.0 * 2.0 - 1.0) * spread).collect()
    }

    pub(crate) fn worst_relative_error(got: &[f32], want: &[f64]) -> f64 {
        let norm = want.iter().map(|w| w.abs()).fold(0.0, f64::max).max(1e-30);
        got.iter().zip(want).map(|(&g, &w)| (g as f64 - w).abs() / norm).fold(0.0, f64::max)
    }

    #[test]
    fn blocked_attention_matches_the_exact_softmax_for_every_head_size_it_takes() {
        // Tokens not a multiple of the panel or the key block; a few query blocks; both head
        // sizes; batches of two; a spread that puts the largest score in a later key block.
        for &((b, n, d), heads, spread) in
            &[((2, 77, 128), 2, 1.0), ((1, 300, 160), 2, 3.0), ((2, 129, 64), 1, 0.5), ((1, 2, 64), 1, 1.0)]
        {
            let qkv = values(b * n * 3 * d, spread);
            let want = exact(&qkv, (b, n, d), heads);
            // The attention through `gemm` (these are fewer tokens than MIN_TOKENS).
            let (through_gemm, _) = attention_forward(&qkv, (b, n, d), heads, false).unwrap();
            let err = worst_relative_error(&through_gemm, &want);
            assert!(err < 5e-6, "{b} x {n} x {d}, {heads} heads, through gemm: off by {err} of the largest output");
            if !super::supported(d / heads) {
                eprintln!("this CPU has no AVX-512: the blocked attention was not checked here");
                return;
            }
            let blocked = attention_forward_in_key_blocks(&qkv, (b, n, d), heads);
            let err = worst_relative_error(&blocked, &want);
            assert!(err < 5e-6, "{b} x {n} x {d}, {heads} heads, in key blocks: off by {err} of the largest output");
        }
    }

    #[test]
    fn the_attention_takes_key_blocks_from_min_tokens_on_where_the_cpu_has_avx512() {
        let (b, n, d) = (1, super::MIN_TOKENS + 37, 64);
        let qkv = values(b * n * 3 * d, 2.0);
        let (got, _) = attention_forward(&qkv, (b, n, d), 1, false).unwrap();
        let err = worst_relative_error(&got, &exact(&qkv, (b, n, d), 1));
        assert!(err < 5e-6, "off by {err} of the largest output");
        if super::supported(d) {
            assert_eq!(got, attention_forward_in_key_blocks(&qkv, (b, n, d), 1), "not the blocked attention");
        }
        // Below AVX-512 the attention through `gemm` runs instead, and agrees.
        let (portable, _) = with_level(Level::Avx2, || attention_forward(&qkv, (b, n, d), 1, false).unwrap());
        let err = worst_relative_error(&portable, &exact(&qkv, (b, n, d), 1));
        assert!(err < 5e-6, "without AVX-512: off by {err} of the largest output");
    }

    #[test]
    fn a_key_score_far_above_the_others_takes_all_the_weight_whichever_block_it_is_in() {
        if !super::supported(64) {
            eprintln!("this CPU has no AVX-512: the blocked attention was not checked here");
            return;
        }
        // One key per case scores 80 above the rest: the output is that key's value (the others
        // weigh e^-80 each, 1e-30 in all), whether it sits in the first key block (the later
        // blocks add nothing) or the last (every earlier sum is rescaled to almost nothing).
        let (n, d) = (300, 64);
        for hot in [0, 140, 299] {
            let mut qkv = vec![0f32; n * 3 * d];
            for i in 0..n {
                qkv[i * 3 * d] = 1.0; // q: first value 1
                qkv[i * 3 * d + 2 * d] = i as f32; // v: first value the key's index
            }
            qkv[hot * 3 * d + d] = 640.0; // k of the hot key: score 640 / 8 = 80
            let got = attention_forward_in_key_blocks(&qkv, (1, n, d), 1);
            // Within two ulp of the value: the hot key's weight (2^0 by a polynomial, one ulp
            // below 1) multiplies its value and divides the sum, each product rounded once.
            let tolerance = 2.0 * f32::EPSILON * (hot as f32).max(1.0);
            for i in 0..n {
                assert!((got[i * d] - hot as f32).abs() <= tolerance, "row {i}, hot key {hot}: {}", got[i * d]);
            }
        }
    }
}
