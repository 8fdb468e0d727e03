//! The self-attention of one (batch, head) pair for `precision: 'int8'`: the key-block
//! ("flash") attention of [`super::flash_attention`], its softmax unchanged in f32, its two
//! products in integers on AVX512-VNNI.
//!
//! Once the Linear layers run in int8, the f32 attention is half of a forward at sapiens'
//! 3072 tokens, and its products already run near the f32 multiply-adds' peak; only fewer
//! instructions make it faster. Each product sums exactly in i32:
//! - scores, q k^T, in u8 x i8 (`vpdpbusd`, 64 multiply-adds an instruction against an f32
//!   FMA's 16): each query row and each key row quantized symmetrically to [-127, 127] with a
//!   scale of its own, as the Linear products quantize their weights. The query's bytes are
//!   stored plus 128 (`vpdpbusd` takes its first operand unsigned), and 128 times the key's
//!   byte sum is taken off each score.
//! - the weighted sum of v in i16 x i16 (`vpdpwssd`, 32 an instruction). Each key block's
//!   weights are exp(s - the row's largest score in that block) times [`WEIGHT_ONE`] (15 bits),
//!   and the block's sums are scaled by exp(that largest - the running maximum) as they are
//!   added in f32. Why 15 bits and not 8: a block's keys that score far below its largest
//!   would round to zero in 8, up to 127 of them each below half a step of 1/255 (2e-3 of the
//!   largest), together up to a quarter of its weight, dropped; at sapiens' 3072 tokens a row
//!   has 24 blocks of such tails. v is quantized per channel of the head over the pair's tokens
//!   to [-255, 255] (9 bits), and a block's 128 keys sum to at most 128 x 32767 x 255, inside
//!   i32 (checked at compile time below).
//!
//! What int8 costs here is the rounding of q, k and v (steps of 1/127, 1/127 and 1/255 of
//! their rows' and channels' largest values) and of each weight to 1/32767 of its block's
//! largest; the tests below bound it, and the model's tests and `npm run bench:precision`
//! measure it on logits. As the int8 Linear products, a row with a NaN or an infinity
//! quantizes to finite bytes (its step falls back to 1), so such an input gives a finite,
//! meaningless output rather than the NaN f32 would.

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;
use std::cell::RefCell;

use super::aligned::AlignedVec;
// The f32 kernel's blocking: its query rows, key panels, key blocks and score tiles.
use super::flash_attention::{
    sized, with_thread_scratch, write_rows, OutRows, PairView, ScoreUnits, KEY_BLOCK, PANEL, QUERY_ROWS,
    SCORE_TILE_ROWS,
};
use super::int8::{symmetric_step, K_GROUP, WEIGHT_LEVELS as QK_LEVELS};

/// Keys one `vpdpwssd` lane sums.
const KEY_PAIR: usize = 2;
/// The weight of a block's highest-scoring key.
const WEIGHT_ONE: f32 = 32767.0;
/// Levels of v on either side of zero.
const VALUE_LEVELS: f32 = 255.0;

// A key block's weighted sums of v stay inside i32.
const _: () = assert!(KEY_BLOCK as i64 * WEIGHT_ONE as i64 * VALUE_LEVELS as i64 <= i32::MAX as i64);

/// The largest head it takes: five vectors of 16 (the presets' heads are 64 values, 80 at
/// sapiens-0.6b, 60 at sapiens-2b).
const MAX_HEAD_DIM: usize = 80;

/// Whether [`attend`] runs for heads of this size on this CPU: AVX-512 with VNNI, and a head of
/// at most [`MAX_HEAD_DIM`] values (held in vectors of 16, the lanes past the head zero).
pub fn supported(head_dim: usize) -> bool {
    cfg!(target_arch = "x86_64")
        && super::int8::available()
        && super::simd::level() == super::simd::Level::Avx512
        && (1..=MAX_HEAD_DIM).contains(&head_dim)
}

/// Per-thread buffers, reused across calls.
#[derive(Default)]
struct Scratch {
    /// The pair's keys in panels of 64: for each group of four head values, the four bytes of
    /// every key of the panel side by side (what one `vpdpbusd` lane takes).
    keys: AlignedVec<i8>,
    /// Each key's scale (zero for the padding keys).
    key_scales: AlignedVec<f32>,
    /// 128 times each key's byte sum: the share of the queries' +128 in each score.
    key_offsets: AlignedVec<i32>,
    /// The pair's values by pairs of keys: for each pair, every channel's two values side by
    /// side (what one `vpdpwssd` lane takes).
    values: AlignedVec<i16>,
    /// Each channel's scale.
    value_scales: AlignedVec<f32>,
    /// A query block's rows, plus 128.
    queries: AlignedVec<u8>,
    /// A query block's scores for one key block.
    scores: AlignedVec<f32>,
    /// Those scores' weights (see [`weigh_row`]).
    weights: AlignedVec<i16>,
    /// A query block's weighted sums of v so far (before the division by the weights' sum).
    outputs: AlignedVec<f32>,
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::default());
}

/// softmax(scale q k^T) v for query rows `rows` of one pair, written to `out` (row i of the
/// range at `out.ptr + (i - rows.start) * out.stride`), its products in integers.
///
/// # Safety
/// [`supported`] holds for `pair.head_dim`; the pair's rows lie inside `pair.qkv`; `out`
/// addresses `rows.len()` rows of `head_dim` floats that no other thread touches meanwhile.
pub unsafe fn attend(pair: PairView, rows: std::ops::Range<usize>, scale: f32, out: OutRows) {
    with_thread_scratch(&SCRATCH, |scratch| {
        #[cfg(target_arch = "x86_64")]
        // SAFETY (each arm): `supported` checked AVX-512 with VNNI and the head size.
        match pair.head_dim.div_ceil(16) {
            1 => unsafe { attend_vnni::<1, 6>(pair, rows, scale, out, scratch) },
            2 => unsafe { attend_vnni::<2, 6>(pair, rows, scale, out, scratch) },
            3 => unsafe { attend_vnni::<3, 6>(pair, rows, scale, out, scratch) },
            4 => unsafe { attend_vnni::<4, 6>(pair, rows, scale, out, scratch) },
            5 => unsafe { attend_vnni::<5, 4>(pair, rows, scale, out, scratch) },
            _ => unreachable!("int8 flash attention called for a head of {} values", pair.head_dim),
        }
    })
}

/// [`attend`] for a head of up to `VECS` x 16 values, held in `VECS` x 16 (the lanes past the
/// head zero in q, k and v, so they add nothing), the weighted sum of v on tiles of `PV_ROWS`
/// rows.
///
/// # Safety
/// As [`attend`], and the CPU has AVX-512 (F, BW, DQ) and VNNI.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vnni")]
unsafe fn attend_vnni<const VECS: usize, const PV_ROWS: usize>(
    pair: PairView,
    rows: std::ops::Range<usize>,
    scale: f32,
    out: OutRows,
    scratch: &mut Scratch,
) {
    let (hd, width) = (pair.head_dim, VECS * 16);
    let n = pair.tokens;
    let padded = n.div_ceil(PANEL) * PANEL;
    let (keys, key_scales, key_offsets) = (
        sized(&mut scratch.keys, padded * width),
        sized(&mut scratch.key_scales, padded),
        sized(&mut scratch.key_offsets, padded),
    );
    pack_keys::<VECS>(pair, keys, key_scales, key_offsets);
    let (values, value_scales) = (sized(&mut scratch.values, padded * width), sized(&mut scratch.value_scales, width));
    pack_values::<VECS>(pair, values, value_scales);
    let queries = sized(&mut scratch.queries, QUERY_ROWS * width);
    let scores = sized(&mut scratch.scores, QUERY_ROWS * KEY_BLOCK);
    let weights = sized(&mut scratch.weights, QUERY_ROWS * KEY_BLOCK);
    let outputs = sized(&mut scratch.outputs, QUERY_ROWS * width);
    let mut query_scales = [0f32; QUERY_ROWS];
    let mut maxima = [f32::NEG_INFINITY; QUERY_ROWS];
    let mut sums = [0f32; QUERY_ROWS];
    for r0 in rows.clone().step_by(QUERY_ROWS) {
        let block_rows = QUERY_ROWS.min(rows.end - r0);
        // The block's queries; rows past the range are zero (their results are dropped).
        for (i, (row, row_scale)) in queries.chunks_exact_mut(width).zip(&mut query_scales).enumerate() {
            *row_scale = if i < block_rows {
                let src = &pair.qkv[pair.q + (r0 + i) * pair.row_stride..][..hd];
                quantize_query::<VECS>(src, row.as_mut_ptr()) * scale
            } else {
                row.fill(128);
                0.0
            };
        }
        outputs.fill(0.0);
        maxima.fill(f32::NEG_INFINITY);
        sums.fill(0.0);
        for j0 in (0..padded).step_by(KEY_BLOCK) {
            let block_keys = KEY_BLOCK.min(padded - j0);
            let valid = block_keys.min(n - j0);
            let mut block_maxima = [f32::NEG_INFINITY; QUERY_ROWS];
            for p in 0..block_keys / PANEL {
                let first = j0 + p * PANEL;
                let panel_keys = PANEL.min(valid.saturating_sub(p * PANEL));
                for t in (0..QUERY_ROWS).step_by(SCORE_TILE_ROWS) {
                    score_tile::<VECS>(
                        (queries.as_ptr().add(t * width), hd.div_ceil(K_GROUP)),
                        &query_scales[t..t + SCORE_TILE_ROWS],
                        KeyPanel {
                            bytes: keys.as_ptr().add(first * width),
                            scales: key_scales.as_ptr().add(first),
                            offsets: key_offsets.as_ptr().add(first),
                            count: panel_keys,
                        },
                        scores.as_mut_ptr().add(t * KEY_BLOCK + p * PANEL),
                        &mut block_maxima[t..t + SCORE_TILE_ROWS],
                    );
                }
            }
            let rescales = super::flash_attention::fold_maxima(&mut maxima, &block_maxima, ScoreUnits::Natural);
            let block_factors = block_factors(&maxima, &block_maxima);
            for i in 0..QUERY_ROWS {
                let row = &scores[i * KEY_BLOCK..][..block_keys];
                let weight_sum = weigh_row(row, valid, block_maxima[i], &mut weights[i * KEY_BLOCK..][..block_keys]);
                sums[i] = sums[i] * rescales[i] + block_factors[i] * weight_sum as f32;
            }
            for t in (0..QUERY_ROWS).step_by(PV_ROWS) {
                value_tile::<VECS, PV_ROWS>(
                    weights.as_ptr().add(t * KEY_BLOCK),
                    values.as_ptr().add(j0 * width),
                    block_keys / KEY_PAIR,
                    value_scales,
                    (&block_factors[t..t + PV_ROWS], &rescales[t..t + PV_ROWS]),
                    outputs.as_mut_ptr().add(t * width),
                );
            }
        }
        write_rows(out, r0 - rows.start, (outputs, width, hd), &sums[..block_rows]);
    }
}

/// Loads a row of at most `VECS` x 16 floats into `VECS` vectors (zero past its end) and
/// returns it with its largest magnitude.
///
/// # Safety
/// The CPU has AVX-512F; `src` is at most VECS x 16 long.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn load_row<const VECS: usize>(src: &[f32]) -> ([__m512; VECS], f32) {
    let mut row = [_mm512_setzero_ps(); VECS];
    let mut largest = _mm512_setzero_ps();
    for (t, v) in row.iter_mut().enumerate() {
        let mask = super::simd::lanes_below(src.len().saturating_sub(t * 16));
        *v = _mm512_maskz_loadu_ps(mask, src.as_ptr().wrapping_add(t * 16));
        largest = _mm512_max_ps(largest, _mm512_abs_ps(*v));
    }
    (row, _mm512_reduce_max_ps(largest))
}

/// round(x / step) of 16 lanes, clamped to [-levels, levels] (a NaN to -levels).
///
/// # Safety
/// The CPU has AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn quantize16(x: __m512, inverse: __m512, levels: i32) -> __m512i {
    let q = _mm512_cvtps_epi32(_mm512_mul_ps(x, inverse));
    _mm512_min_epi32(_mm512_max_epi32(q, _mm512_set1_epi32(-levels)), _mm512_set1_epi32(levels))
}

/// One query row quantized to [-127, 127] and stored plus 128 at `dst` (VECS x 16 bytes, 128
/// past the row's end); returns its step.
///
/// # Safety
/// The CPU has AVX-512 (F, BW); `src` is at most VECS x 16 long, `dst` addresses VECS x 16
/// bytes.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn quantize_query<const VECS: usize>(src: &[f32], dst: *mut u8) -> f32 {
    let (row, largest) = load_row::<VECS>(src);
    let step = symmetric_step(largest, QK_LEVELS);
    let inverse = _mm512_set1_ps(1.0 / step);
    for (t, &v) in row.iter().enumerate() {
        let q = _mm512_add_epi32(quantize16(v, inverse, QK_LEVELS as i32), _mm512_set1_epi32(128));
        _mm_storeu_si128(dst.add(t * 16).cast(), _mm512_cvtepi32_epi8(q));
    }
    step
}

/// The pair's keys quantized and packed for [`score_tile`] (see [`Scratch::keys`]); the
/// padding keys past the last are zero, with scale and offset zero. Panics where the buffers
/// are shorter than the padded keys need.
///
/// # Safety
/// The CPU has AVX-512 (F, BW).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn pack_keys<const VECS: usize>(pair: PairView, keys: &mut [i8], scales: &mut [f32], offsets: &mut [i32]) {
    let (hd, width, n) = (pair.head_dim, VECS * 16, pair.tokens);
    assert!(keys.len() >= n.div_ceil(PANEL) * PANEL * width && scales.len() >= n && offsets.len() >= n);
    // The padding keys: the rest of the last panel (its real keys are written below).
    keys[(n / PANEL) * PANEL * width..].fill(0);
    scales[n..].fill(0.0);
    offsets[n..].fill(0);
    for j in 0..n {
        let (row, largest) = load_row::<VECS>(&pair.qkv[pair.k + j * pair.row_stride..][..hd]);
        let step = symmetric_step(largest, QK_LEVELS);
        let inverse = _mm512_set1_ps(1.0 / step);
        let key = keys.as_mut_ptr().add((j / PANEL) * PANEL * width + (j % PANEL) * K_GROUP);
        let mut sum = _mm512_setzero_si512();
        for (t, &v) in row.iter().enumerate() {
            let q = quantize16(v, inverse, QK_LEVELS as i32);
            sum = _mm512_add_epi32(sum, q);
            // Values 16t .. 16t + 16 are groups 4t .. 4t + 4: four bytes into each.
            let bytes = _mm512_cvtepi32_epi8(q);
            let group = |e: usize| key.add((4 * t + e) * PANEL * K_GROUP).cast::<i32>();
            group(0).write_unaligned(_mm_extract_epi32::<0>(bytes));
            group(1).write_unaligned(_mm_extract_epi32::<1>(bytes));
            group(2).write_unaligned(_mm_extract_epi32::<2>(bytes));
            group(3).write_unaligned(_mm_extract_epi32::<3>(bytes));
        }
        scales[j] = step;
        offsets[j] = 128 * _mm512_reduce_add_epi32(sum);
    }
}

/// The pair's values quantized per channel and packed for [`value_tile`] (see
/// [`Scratch::values`]); the padding keys' values are zero.
///
/// # Safety
/// The CPU has AVX-512 (F, BW); `scales` is VECS x 16 long.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx2")]
unsafe fn pack_values<const VECS: usize>(pair: PairView, values: &mut [i16], scales: &mut [f32]) {
    let (hd, width) = (pair.head_dim, VECS * 16);
    let row_at = |j: usize| load_row::<VECS>(&pair.qkv[pair.v + j * pair.row_stride..][..hd]).0;
    let mut largest = [_mm512_setzero_ps(); VECS];
    for j in 0..pair.tokens {
        for (m, v) in largest.iter_mut().zip(row_at(j)) {
            *m = _mm512_max_ps(*m, _mm512_abs_ps(v));
        }
    }
    let mut inverses = [_mm512_setzero_ps(); VECS];
    for (t, m) in largest.iter().enumerate() {
        let mut channel = [0f32; 16];
        _mm512_storeu_ps(channel.as_mut_ptr(), *m);
        for (c, lane) in channel.iter_mut().enumerate() {
            scales[t * 16 + c] = symmetric_step(*lane, VALUE_LEVELS);
            *lane = 1.0 / scales[t * 16 + c];
        }
        inverses[t] = _mm512_loadu_ps(channel.as_ptr());
    }
    let n = pair.tokens;
    let pairs = n.div_ceil(KEY_PAIR);
    assert!(values.len() >= pairs * KEY_PAIR * width);
    for p in 0..pairs {
        let first = row_at(KEY_PAIR * p);
        // A last key without a partner is paired with zeros.
        let second = if KEY_PAIR * p + 1 < n { row_at(KEY_PAIR * p + 1) } else { [_mm512_setzero_ps(); VECS] };
        let dst = values.as_mut_ptr().add(p * KEY_PAIR * width);
        for t in 0..VECS {
            let a = _mm512_cvtepi32_epi16(quantize16(first[t], inverses[t], VALUE_LEVELS as i32));
            let b = _mm512_cvtepi32_epi16(quantize16(second[t], inverses[t], VALUE_LEVELS as i32));
            // Each channel's two values side by side: the unpacks interleave within halves
            // (channels 0-3 with 8-11, then 4-7 with 12-15), the permutes put the halves in order.
            let (low, high) = (_mm256_unpacklo_epi16(a, b), _mm256_unpackhi_epi16(a, b));
            _mm256_storeu_si256(dst.add(t * 32).cast(), _mm256_permute2x128_si256::<0x20>(low, high));
            _mm256_storeu_si256(dst.add(t * 32 + 16).cast(), _mm256_permute2x128_si256::<0x31>(low, high));
        }
    }
    values[pairs * KEY_PAIR * width..].fill(0);
}

/// One panel of packed keys: its bytes, each key's scale and offset, and how many of its 64
/// keys are real (the rest are padding).
#[derive(Clone, Copy)]
struct KeyPanel {
    bytes: *const i8,
    scales: *const f32,
    offsets: *const i32,
    count: usize,
}

/// Scores of 6 query rows (VECS x 16 bytes apart, with their scales, the attention's
/// 1/sqrt(hd) included; the head's first `groups` groups of four bytes are summed, the rest are
/// padding) against one panel of 64 keys, stored [`KEY_BLOCK`] apart: 24 i32 accumulators,
/// each step four loads of 64 bytes, six broadcasts of four and 24 `vpdpbusd`. Each row's
/// `maxima` entry is raised to its largest score over the panel's real keys.
///
/// # Safety
/// The CPU has AVX-512 (F, BW) and VNNI; the pointers address 6 query rows, a packed panel of
/// 64 keys with its scales and offsets, and 6 rows of 64 scores; `groups` <= VECS x 4.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
#[inline]
unsafe fn score_tile<const VECS: usize>(
    (queries, groups): (*const u8, usize),
    query_scales: &[f32],
    panel: KeyPanel,
    scores: *mut f32,
    maxima: &mut [f32],
) {
    let width = VECS * 16;
    let mut acc = [[_mm512_setzero_si512(); 4]; SCORE_TILE_ROWS];
    for g in 0..groups {
        let group = panel.bytes.add(g * PANEL * K_GROUP);
        let mut keys = [_mm512_setzero_si512(); 4];
        for (t, k) in keys.iter_mut().enumerate() {
            *k = _mm512_loadu_si512(group.add(t * 64).cast());
        }
        for (r, row) in acc.iter_mut().enumerate() {
            let four = _mm512_set1_epi32(queries.add(r * width + g * K_GROUP).cast::<i32>().read_unaligned());
            for (a, &k) in row.iter_mut().zip(&keys) {
                *a = _mm512_dpbusd_epi32(*a, four, k);
            }
        }
    }
    let lowest = _mm512_set1_ps(f32::NEG_INFINITY);
    let mut masked_max = [lowest; SCORE_TILE_ROWS];
    for t in 0..4 {
        let offsets = _mm512_loadu_si512(panel.offsets.add(t * 16).cast());
        let key_scales = _mm512_loadu_ps(panel.scales.add(t * 16));
        let mask = super::simd::lanes_below(panel.count.saturating_sub(t * 16));
        for r in 0..SCORE_TILE_ROWS {
            let exact = _mm512_cvtepi32_ps(_mm512_sub_epi32(acc[r][t], offsets));
            let s = _mm512_mul_ps(exact, _mm512_mul_ps(key_scales, _mm512_set1_ps(query_scales[r])));
            _mm512_storeu_ps(scores.add(r * KEY_BLOCK + t * 16), s);
            masked_max[r] = _mm512_max_ps(_mm512_mask_mov_ps(lowest, mask, s), masked_max[r]);
        }
    }
    for (m, lanes) in maxima.iter_mut().zip(masked_max) {
        *m = m.max(_mm512_reduce_max_ps(lanes));
    }
}

/// Each row's exp(its largest score in this block - its running maximum, this block's
/// included): the factor of this block's weights, which are relative to the block's largest.
///
/// # Safety
/// The CPU has AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn block_factors(maxima: &[f32; QUERY_ROWS], block_maxima: &[f32; QUERY_ROWS]) -> [f32; QUERY_ROWS] {
    let mut factors = [0f32; QUERY_ROWS];
    for v in (0..QUERY_ROWS).step_by(16) {
        let block = _mm512_loadu_ps(block_maxima.as_ptr().add(v));
        let shift = _mm512_sub_ps(block, _mm512_loadu_ps(maxima.as_ptr().add(v)));
        _mm512_storeu_ps(factors.as_mut_ptr().add(v), super::math::exp16(shift));
    }
    factors
}

/// One row's block of scores turned into weights round(32767 exp(s - the block's largest)),
/// zero past `valid` (padding keys); returns their sum.
///
/// # Safety
/// The CPU has AVX-512 (F, BW); `weights` is as long as `scores`, a multiple of 16.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn weigh_row(scores: &[f32], valid: usize, block_max: f32, weights: &mut [i16]) -> i32 {
    let (shift, one) = (_mm512_set1_ps(block_max), _mm512_set1_ps(WEIGHT_ONE));
    let mut sum = _mm512_setzero_si512();
    for (v, (chunk, out)) in scores.chunks_exact(16).zip(weights.chunks_exact_mut(16)).enumerate() {
        let mask = super::simd::lanes_below(valid.saturating_sub(v * 16));
        let e = super::math::exp16(_mm512_sub_ps(_mm512_loadu_ps(chunk.as_ptr()), shift));
        // exp16 of s - largest is in (0, 1], so w is in [0, 32767] without a clamp.
        let w = _mm512_maskz_cvtps_epi32(mask, _mm512_mul_ps(e, one));
        sum = _mm512_add_epi32(sum, w);
        _mm256_storeu_si256(out.as_mut_ptr().cast(), _mm512_cvtepi32_epi16(w));
    }
    _mm512_reduce_add_epi32(sum)
}

/// outputs (ROWS x VECS x 16, as far apart) = outputs x rescale + block factor x (weights (ROWS x
/// 2 key_pairs, [`KEY_BLOCK`] apart) times values (packed by pairs of keys) x each channel's
/// scale), per row: the block's sums held in ROWS x VECS i32 registers over all its keys.
///
/// # Safety
/// The CPU has AVX-512 (F, BW) and VNNI; the pointers address what the shapes say, and the
/// factors are ROWS long.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
#[inline]
unsafe fn value_tile<const VECS: usize, const ROWS: usize>(
    weights: *const i16,
    values: *const i16,
    key_pairs: usize,
    value_scales: &[f32],
    (block_factors, rescales): (&[f32], &[f32]),
    outputs: *mut f32,
) {
    let width = VECS * 16;
    let mut acc = [[_mm512_setzero_si512(); VECS]; ROWS];
    for g in 0..key_pairs {
        let pair = values.add(g * KEY_PAIR * width);
        let mut v = [_mm512_setzero_si512(); VECS];
        for (t, v) in v.iter_mut().enumerate() {
            *v = _mm512_loadu_si512(pair.add(t * 16 * KEY_PAIR).cast());
        }
        for (r, row) in acc.iter_mut().enumerate() {
            let two = _mm512_set1_epi32(weights.add(r * KEY_BLOCK + g * KEY_PAIR).cast::<i32>().read_unaligned());
            for (a, &v) in row.iter_mut().zip(&v) {
                *a = _mm512_dpwssd_epi32(*a, two, v);
            }
        }
    }
    for t in 0..VECS {
        let channel_scales = _mm512_loadu_ps(value_scales.as_ptr().add(t * 16));
        for r in 0..ROWS {
            let o = outputs.add(r * width + t * 16);
            let kept = _mm512_mul_ps(_mm512_loadu_ps(o), _mm512_set1_ps(rescales[r]));
            let factor = _mm512_mul_ps(channel_scales, _mm512_set1_ps(block_factors[r]));
            _mm512_storeu_ps(o, _mm512_fmadd_ps(_mm512_cvtepi32_ps(acc[r][t]), factor, kept));
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::kernels::attention::attention_forward_int8;
    use crate::kernels::flash_attention::tests::{exact, values, worst_relative_error};

    fn checkable_here() -> bool {
        crate::kernels::int8::checkable_here("the int8 attention") && super::supported(64)
    }

    #[test]
    fn operands_on_the_quantization_grid_leave_only_the_weights_rounding() {
        if !checkable_here() {
            return;
        }
        // q and k rows whose largest value is 127 steps and v channels whose largest is 255 steps,
        // every value a whole number of steps: quantizing them is exact, so what is left is
        // each weight's rounding to 1/32767 of its block's largest (and the exponentials').
        // Heads of 16, 64 and 80 values (whole vectors); of 24, 40, 60 and 72 (a vector's lanes
        // unused); of 10 and 50 (a group of four values part padding too).
        let shapes = [
            ((2, 77, 128), 2),
            ((1, 300, 160), 2),
            ((1, 2, 64), 1),
            ((1, 515, 64), 1),
            ((2, 90, 48), 2),
            ((1, 200, 64), 4),
            ((1, 130, 120), 2),
            ((1, 70, 80), 2),
            ((1, 140, 144), 2),
            ((2, 33, 20), 2),
            ((1, 150, 100), 2),
        ];
        for &((b, n, d), heads) in &shapes {
            let hd = d / heads;
            let mut qkv: Vec<f32> = values(b * n * 3 * d, 1.0).iter().map(|v| (v * 127.0).round()).collect();
            for (i, x) in qkv.iter_mut().enumerate() {
                let (c, part) = (i % d, (i % (3 * d)) / d);
                if part == 2 {
                    *x = (*x * 2.0).clamp(-255.0, 255.0);
                }
                // Each q and k row, and each v channel (its first token), holds its largest.
                let token = (i / (3 * d)) % n;
                if (part < 2 && c % hd == 0) || (part == 2 && token == 0) {
                    *x = if part == 2 { 255.0 } else { 127.0 };
                }
            }
            // Scores of a few units: 127^2 steps^2 / sqrt(hd) per value, over sqrt(hd) values.
            let step = 0.015;
            let qkv: Vec<f32> = qkv.iter().map(|x| x * step).collect();
            let want = exact(&qkv, (b, n, d), heads);
            let got = attention_forward_int8(&qkv, (b, n, d), heads).unwrap();
            let err = worst_relative_error(&got, &want);
            // Each weight is within 1/65534 of its block's largest, and the error of up to 128 of
            // them adds; a wrong byte, offset or scale would be off by far more.
            assert!(err < 1e-3, "{b} x {n} x {d}, {heads} heads: off by {err} of the largest output");
        }
    }

    #[test]
    fn the_int8_attention_tracks_the_exact_softmax() {
        if !checkable_here() {
            return;
        }
        for &((b, n, d), heads, spread) in
            &[((2, 77, 128), 2, 1.0), ((1, 300, 160), 2, 3.0), ((1, 700, 64), 1, 2.0), ((2, 90, 48), 2, 1.0)]
        {
            // Each key row and each value channel on a scale of its own (keys over 1-2.5, values
            // over 1-8.9), so a scale taken from the wrong row or channel shows.
            let mut qkv = values(b * n * 3 * d, spread);
            for (i, x) in qkv.iter_mut().enumerate() {
                let (token, part, c) = ((i / (3 * d)) % n, (i % (3 * d)) / d, i % d);
                match part {
                    1 => *x *= 1.0 + (token % 7) as f32 / 4.0,
                    2 => *x *= 1.0 + c as f32 / 8.0,
                    _ => {}
                }
            }
            let want = exact(&qkv, (b, n, d), heads);
            let got = attention_forward_int8(&qkv, (b, n, d), heads).unwrap();
            let err = worst_relative_error(&got, &want);
            // q and k in steps of 1/127 of their rows' largest move a score by up to about
            // |q| |k| / 127: at a spread of 3, 80 values and keys up to 2.5 times larger (scores
            // up to about 60), about half a unit, and the largest weights by as much. Measured:
            // 2.8e-3, 2.2e-2, 7.4e-3 and 2.5e-3.
            assert!(err < 5e-2, "{b} x {n} x {d}, {heads} heads: off by {err} of the largest output");
            assert!(err > 1e-6, "{b} x {n} x {d}: equal to f64, so the int8 products did not run");
        }
    }

    #[test]
    fn scores_all_far_below_zero_with_padding_keys_beside_them() {
        if !checkable_here() {
            return;
        }
        // Every key opposite every query: all real scores near -20. The padding keys past 77
        // score 0 in the tiles and must not count as a block's largest (its real weights would
        // then all round to zero).
        let (n, d) = (77, 64);
        let mut qkv = values(n * 3 * d, 1.0);
        for i in 0..n {
            for c in 0..d {
                let sign = if c % 2 == 0 { 1.0 } else { -1.0 };
                qkv[i * 3 * d + c] = sign * 1.2; // q
                qkv[i * 3 * d + d + c] = -sign * (1.2 + (i % 5) as f32 * 0.05); // k
            }
        }
        let want = exact(&qkv, (1, n, d), 1);
        let got = attention_forward_int8(&qkv, (1, n, d), 1).unwrap();
        let err = worst_relative_error(&got, &want);
        assert!(err < 1e-2, "off by {err} of the largest output");
    }

    #[test]
    fn a_long_tail_of_small_weights_keeps_its_mass() {
        if !checkable_here() {
            return;
        }
        // One key scores 7 above the other 2999, each of which then weighs e^-7 (9e-4) of it:
        // together 2.7 times its weight. Weights of 8 bits would round the 127 in the hot key's
        // block to zero (half a step of 1/255 is 2e-3): 4% off.
        let (n, d) = (3000, 64);
        for hot in [0, 1500] {
            let mut qkv = vec![0f32; n * 3 * d];
            for i in 0..n {
                qkv[i * 3 * d] = 1.0; // q: first value 1
                qkv[i * 3 * d + d] = 1.0; // k: first value 1, so every score is 1 / 8
                qkv[i * 3 * d + 2 * d] = if i == hot { 1.0 } else { -1.0 }; // v: +1 for the hot key
            }
            qkv[hot * 3 * d + d] = 57.0; // the hot key's score: 57 / 8, 7 above the rest
            let want = exact(&qkv, (1, n, d), 1);
            let got = attention_forward_int8(&qkv, (1, n, d), 1).unwrap();
            let err = worst_relative_error(&got, &want);
            assert!(err < 1e-3, "hot key {hot}: output {} against {}", got[0], want[0]);
        }
    }

    #[test]
    fn a_key_score_far_above_the_others_takes_all_the_weight_whichever_block_it_is_in() {
        if !checkable_here() {
            return;
        }
        let (n, d) = (300, 64);
        for hot in [0, 140, 299] {
            let mut qkv = vec![0f32; n * 3 * d];
            for i in 0..n {
                qkv[i * 3 * d] = 1.0;
                qkv[i * 3 * d + 2 * d] = i as f32; // v: first value the key's index
            }
            qkv[hot * 3 * d + d] = 640.0; // score 80 above the rest
            let got = attention_forward_int8(&qkv, (1, n, d), 1).unwrap();
            // v's step is 299 / 255 per channel: the hot key's value to within half of it.
            for i in 0..n {
                assert!((got[i * d] - hot as f32).abs() <= 0.6, "row {i}, hot key {hot}: {}", got[i * d]);
            }
        }
    }
}
