//! softmax(scale q k^T) v for one block of 32 query rows with both products on AMX tiles, a
//! block of keys at a time: the attention of `precision: 'bf16'` inference.
//!
//! For each block of [`KEY_BLOCK`] keys: the scores S = q k^T of the block (32 x 256 in f32,
//! 32 KB) from the tiles; each row's largest so far m and the exponentials exp(S - m), rounded
//! to bf16 into a row panel (16 KB) that is at once the left operand of the product with v,
//! summed in f32 into the row's l; then o += P v on the tiles, the 32 x 64 output kept in f32
//! (8 KB). Where a row's largest grows, its l and o so far are first scaled by
//! exp(m_old - m_new): the order of flash attention (Dao et al. 2022). What a block writes (56
//! KB) is about the size of the first-level cache (48 KB here) and is read back at once; the
//! whole rows of scores and exponentials that the attention held before (32 x 3072 at
//! sapiens-0.3b's shape, 384 KB and 192 KB) went through the second-level cache, and the
//! softmax's passes over them waited on it.
//!
//! The exponentials are 2^(S log2(e) - m log2(e)), t in one fused multiply-add, with m log2(e)
//! the same f32 value for the row's exponentials and the factor that rescales them, so its
//! rounding cancels in o / l. q (scaled first: exactly, for a power-of-four head size), k, the
//! exponentials and v are rounded to bf16, as `torch.autocast(bfloat16)` rounds the operands
//! of both products; the sums, the softmax and its normalization are f32. Queries already in
//! bf16 (a qkv product's panels, [`Queries::Panel`]) come unscaled, the scale joining log2(e)
//! in the exponentials; the output goes to f32 rows or, rounded, to the next product's panel.

use std::cell::RefCell;

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

use super::aligned::AlignedVec;
use super::amx::{self, PackedB, Rows, BLOCK, K_STEP};
use super::flash_attention::{sized, with_thread_scratch};

/// Keys a block takes: eight of the tiles' 32-column blocks. The scores, exponentials and
/// output of a block (32 + 16 + 8 KB) are about the first-level cache's size, each read back
/// right after it is written.
pub const KEY_BLOCK: usize = 256;

/// Per-thread buffers, reused across calls.
#[derive(Default)]
struct Scratch {
    /// The query rows, scaled and rounded, as a row panel.
    queries: AlignedVec<u16>,
    /// A key block's scores, KEY_BLOCK floats a row.
    scores: AlignedVec<f32>,
    /// A key block's exponentials as a row panel of KEY_BLOCK / 32 k-steps.
    exponentials: AlignedVec<u16>,
    /// The weighted sums of v so far, a row of the head's size rounded up to 32.
    outputs: AlignedVec<f32>,
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::default());
}

/// The query rows of a block.
#[derive(Clone, Copy)]
pub enum Queries<'a> {
    /// Up to 32 rows of f32 (head_dim values each), scaled and rounded into a panel here.
    Rows(Rows<'a>),
    /// Rows already rounded to bf16, unscaled: the head's k-steps of a panel (head_dim / 32 of
    /// them back to back, starting on a cache line), `rows` of its 32 rows the block's. The scale
    /// then multiplies the scores: for a power-of-two scale (a head of 64 values: 1/8) the same
    /// bits as rounding q times the scale.
    Panel { steps: &'a [u16], rows: usize },
}

impl Queries<'_> {
    fn rows(&self) -> usize {
        match self {
            Self::Rows(rows) => rows.rows,
            Self::Panel { rows, .. } => *rows,
        }
    }
}

/// Where a block's output rows go.
#[derive(Clone, Copy)]
pub enum Output {
    /// f32 rows of head_dim values, row i at `ptr + i * stride`.
    Rows { ptr: *mut f32, stride: usize },
    /// Rounded to bf16 into the head's k-steps of a panel (head_dim / 32 of them back to back
    /// from `ptr`): the next product's left operand, the projection's. Rows past the block's are
    /// written as zeros.
    Panel(*mut u16),
}

/// Writes softmax(scale q k^T) v for up to 32 query rows (`queries`, head_dim values each) to
/// `out`, against a pair's keys packed as B = k^T (`keys`: head_dim x tokens) and its values
/// (`values`: tokens x head_dim).
///
/// # Safety
/// [`amx::available`] holds; `out` addresses the block's rows (32 of a panel's rows for
/// [`Output::Panel`], whose head_dim is then a multiple of 32) that no other thread touches
/// meanwhile.
pub unsafe fn attend(queries: Queries, scale: f32, keys: &PackedB, values: &PackedB, out: Output) {
    let (head_dim, tokens, rows) = (keys.k, keys.n, queries.rows());
    assert!(
        rows <= BLOCK && values.k == tokens && values.n == head_dim,
        "flash_attention_bf16::attend: {rows} query rows against keys {head_dim} x {tokens} and values {} x {}",
        values.k,
        values.n
    );
    let (head_k, head_width) = (head_dim.div_ceil(K_STEP) * K_STEP, head_dim.div_ceil(BLOCK) * BLOCK);
    match queries {
        Queries::Rows(q) => assert!(
            rows == 0 || q.offset + (rows - 1) * q.stride + head_dim <= q.data.len(),
            "flash_attention_bf16::attend: the query rows lie outside their buffer"
        ),
        Queries::Panel { steps, .. } => assert!(
            head_dim == head_k && steps.len() >= BLOCK * head_k,
            "flash_attention_bf16::attend: a panel of queries holds {} values for a head of {head_dim}",
            steps.len()
        ),
    }
    assert!(
        matches!(out, Output::Rows { .. }) || head_dim.is_multiple_of(K_STEP),
        "flash_attention_bf16::attend: a head of {head_dim} values does not fill a panel's k-steps"
    );
    amx::configure_tiles();
    with_thread_scratch(&SCRATCH, |scratch| {
        // The scores come scaled when q was scaled before rounding; else the scale joins log2(e).
        let (q, score_scale): (&[u16], f32) = match queries {
            Queries::Rows(q) => {
                let panel = sized(&mut scratch.queries, BLOCK * head_k);
                for r in 0..BLOCK {
                    let row: &[f32] = if r < rows { &q.data[q.offset + r * q.stride..][..head_dim] } else { &[] };
                    amx::write_panel_row(panel, r, row, scale);
                }
                (panel, 1.0)
            }
            Queries::Panel { steps, .. } => (steps, scale),
        };
        let log2e = score_scale * std::f32::consts::LOG2_E;
        let scores = sized(&mut scratch.scores, BLOCK * KEY_BLOCK);
        // Rows past the query rows hold whatever an earlier call left: a row of the product
        // depends on that row alone, and their outputs are dropped.
        let exponentials = sized(&mut scratch.exponentials, BLOCK * KEY_BLOCK);
        let outputs = sized(&mut scratch.outputs, BLOCK * head_width);
        outputs.fill(0.0);
        // Per row: its largest score so far times log2(e), and its exponentials' sums.
        let mut shifts = [f32::NEG_INFINITY; BLOCK];
        // SAFETY: `available` includes AVX-512F.
        let mut sums = [unsafe { _mm512_setzero_ps() }; BLOCK];
        for j0 in (0..tokens).step_by(KEY_BLOCK) {
            let block_keys = KEY_BLOCK.min(tokens - j0);
            let steps = block_keys.div_ceil(K_STEP);
            for jb in 0..steps {
                // SAFETY: `available` (the caller's promise), tiles configured above; q holds
                // head_k / 32 k-steps; column block j0 / 32 + jb lies inside the keys' padded
                // tokens; the scores hold 32 rows of KEY_BLOCK, this block's 32 columns at jb * 32.
                unsafe {
                    let c = scores.as_mut_ptr().add(jb * BLOCK);
                    amx::block_product(q, head_k, keys, (j0 / BLOCK + jb, 0), c, KEY_BLOCK, false);
                }
            }
            // SAFETY: `available` includes AVX-512F and AVX512DQ; the scores hold 32 rows of
            // KEY_BLOCK.
            let factors = unsafe { raise_shifts(scores, rows, block_keys, log2e, &mut shifts) };
            for r in 0..rows {
                let row = &scores[r * KEY_BLOCK..][..block_keys];
                let output = &mut outputs[r * head_width..][..head_width];
                // SAFETY: `available` includes AVX512_BF16 and AVX512DQ beside AVX-512F.
                unsafe {
                    // The first block's sums and outputs are still zero.
                    if j0 > 0 && factors[r] < 1.0 {
                        rescale(&mut sums[r], output, factors[r]);
                    }
                    exponentiate_row(exponentials, r, row, log2e, shifts[r], &mut sums[r]);
                }
            }
            for jb in 0..head_width / BLOCK {
                // SAFETY: as above; the exponentials hold `steps` k-steps; the values' k-steps
                // j0 / 32 .. + steps lie inside their padded tokens; the outputs hold 32 rows of
                // head_width, this block's columns at jb * 32.
                unsafe {
                    let c = outputs.as_mut_ptr().add(jb * BLOCK);
                    amx::block_product(exponentials, steps * K_STEP, values, (jb, j0 / K_STEP), c, head_width, true);
                }
            }
        }
        // SAFETY: as above, and the caller's promise on `out`.
        unsafe {
            match out {
                Output::Rows { ptr, stride } => {
                    write_normalized(&sums[..rows], outputs, head_width, head_dim, ptr, stride)
                }
                Output::Panel(ptr) => write_normalized_panel(&sums[..rows], outputs, head_width, head_dim, ptr),
            }
        }
    });
}

/// Each row's largest score of this key block (rows `..rows`, `keys` scores each) joins the
/// row's shift (its largest so far times `log2e`: log2(e), times the scale where the scores are
/// unscaled); returns 2^(old shift - new), the factor that
/// rescales what the row summed before. The rows' maxima are taken first, then the shifts and
/// factors sixteen rows at a time: a row's maximum, compared and turned into a factor by a
/// scalar exponential before its own exponentials, held each row's work up behind its
/// reductions (a tenth of the attention's time at `small`'s shape).
///
/// # Safety
/// The CPU has AVX-512F and AVX512DQ; `scores` holds `rows` rows of KEY_BLOCK.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512dq")]
unsafe fn raise_shifts(
    scores: &[f32],
    rows: usize,
    keys: usize,
    log2e: f32,
    shifts: &mut [f32; BLOCK],
) -> [f32; BLOCK] {
    let mut largest = [f32::NEG_INFINITY; BLOCK];
    for (r, largest) in largest.iter_mut().enumerate().take(rows) {
        *largest = super::softmax::row_max_avx512(&scores[r * KEY_BLOCK..][..keys]) * log2e;
    }
    let mut factors = [1f32; BLOCK];
    for lane0 in (0..BLOCK).step_by(16) {
        let old = _mm512_loadu_ps(shifts.as_ptr().add(lane0));
        // Where a maximum is NaN, max returns its second operand: the shift so far.
        let new = _mm512_max_ps(_mm512_loadu_ps(largest.as_ptr().add(lane0)), old);
        _mm512_storeu_ps(shifts.as_mut_ptr().add(lane0), new);
        let factor = super::math::exp2_16(_mm512_sub_ps(old, new));
        _mm512_storeu_ps(factors.as_mut_ptr().add(lane0), factor);
    }
    factors
}

/// A row's sums and output so far times `factor`, where its largest score grew.
///
/// # Safety
/// The CPU has AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn rescale(sums: &mut __m512, output: &mut [f32], factor: f32) {
    *sums = _mm512_mul_ps(*sums, _mm512_set1_ps(factor));
    output.iter_mut().for_each(|o| *o *= factor);
}

/// Each row's output (`outputs`, rows `width` apart) divided by its weights' sum (`sums`, in
/// sixteen lanes), its first `head_dim` values written to `out` (rows `out_stride` apart).
///
/// # Safety
/// The CPU has AVX-512F; `out` addresses sums.len() rows of `head_dim` floats.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn write_normalized(
    sums: &[__m512],
    outputs: &[f32],
    width: usize,
    head_dim: usize,
    out: *mut f32,
    out_stride: usize,
) {
    for (r, &sum) in sums.iter().enumerate() {
        let inverse = 1.0 / _mm512_reduce_add_ps(sum);
        let dst = std::slice::from_raw_parts_mut(out.add(r * out_stride), head_dim);
        dst.iter_mut().zip(&outputs[r * width..]).for_each(|(d, &o)| *d = o * inverse);
    }
}

/// [`write_normalized`] rounded to bf16 into a panel's k-steps (`head_dim` / 32 of them back to
/// back from `out`, 32 rows of 32 values each); rows past `sums.len()` are zeros.
///
/// # Safety
/// The CPU has AVX-512F and AVX512_BF16; `out` addresses head_dim / 32 k-steps; head_dim is a
/// multiple of 32.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16,avx512vl")]
unsafe fn write_normalized_panel(sums: &[__m512], outputs: &[f32], width: usize, head_dim: usize, out: *mut u16) {
    for r in 0..BLOCK {
        let inverse = _mm512_set1_ps(sums.get(r).map_or(0.0, |&sum| 1.0 / _mm512_reduce_add_ps(sum)));
        for step in 0..head_dim / K_STEP {
            // Rows past the block's: zero times whatever their outputs hold is zero, unless it is
            // not finite; they are written as zeros outright.
            let rounded: __m512i = if r < sums.len() {
                let o = outputs.as_ptr().add(r * width + step * K_STEP);
                let (low, high) = (_mm512_loadu_ps(o), _mm512_loadu_ps(o.add(16)));
                std::mem::transmute::<__m512bh, __m512i>(_mm512_cvtne2ps_pbh(
                    _mm512_mul_ps(high, inverse),
                    _mm512_mul_ps(low, inverse),
                ))
            } else {
                _mm512_setzero_si512()
            };
            _mm512_storeu_si512(out.add(step * BLOCK * K_STEP + r * K_STEP).cast(), rounded);
        }
    }
}

/// Row `r` of a key block: exp(s - largest) = 2^(s log2e - shift) of each score (`log2e` as in
/// [`raise_shifts`]) added to the
/// row's sums and rounded to bf16 into row r of the panel, zeros past the scores to the k-step's
/// end. The sums stay in sixteen lanes from block to block (added up once, at the end).
///
/// # Safety
/// The CPU has AVX-512F, AVX512DQ and AVX512_BF16; the panel holds scores.len().div_ceil(32)
/// k-steps.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512dq,avx512bf16,avx512vl")]
unsafe fn exponentiate_row(panel: &mut [u16], r: usize, scores: &[f32], log2e: f32, shift: f32, sums: &mut __m512) {
    let len = scores.len();
    let (whole, steps) = (len / K_STEP, len.div_ceil(K_STEP));
    assert!(panel.len() >= steps * BLOCK * K_STEP, "exponentiate_row: the panel is too small");
    let at = |i: usize| scores.as_ptr().add(i);
    let lanes = |i: usize| -> __mmask16 { ((1u32 << len.saturating_sub(i).min(16)) - 1) as __mmask16 };
    let (log2e, shift_lanes) = (_mm512_set1_ps(log2e), _mm512_set1_ps(shift));
    let exponential = |s: __m512| super::math::exp2_16(_mm512_fmsub_ps(s, log2e, shift_lanes));
    let mut total = *sums;
    let mut store = |step: usize, low: __m512, high: __m512| {
        total = _mm512_add_ps(total, _mm512_add_ps(low, high));
        let rounded: __m512i = std::mem::transmute(_mm512_cvtne2ps_pbh(high, low));
        _mm512_storeu_si512(panel.as_mut_ptr().add(step * BLOCK * K_STEP + r * K_STEP).cast(), rounded);
    };
    for step in 0..whole {
        let i = step * K_STEP;
        store(step, exponential(_mm512_loadu_ps(at(i))), exponential(_mm512_loadu_ps(at(i + 16))));
    }
    if whole < steps {
        // Zeros past the scores: they meet v's padding rows, and add nothing to the sums.
        let i = whole * K_STEP;
        let part = |i: usize| _mm512_maskz_mov_ps(lanes(i), exponential(_mm512_maskz_loadu_ps(lanes(i), at(i))));
        store(whole, part(i), part(i + 16));
    }
    *sums = total;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::amx::{checkable_here, from_bf16, to_bf16};

    fn rounded(v: f32) -> f64 {
        from_bf16(to_bf16(v)) as f64
    }

    /// One query block against keys and values of `tokens` rows (row-major, head_dim each),
    /// through [`attend`], and the exact softmax of the bf16-rounded operands in f64.
    fn attend_and_exact(q: &[f32], k: &[f32], v: &[f32], head_dim: usize, scale: f32) -> (Vec<f32>, Vec<f64>) {
        let (rows, tokens) = (q.len() / head_dim, k.len() / head_dim);
        let keys = PackedB::from_transposed_rows(k, 0, head_dim, tokens, head_dim, false);
        let values = PackedB::from_rows(v, 0, head_dim, tokens, head_dim, false);
        let mut got = vec![f32::NAN; rows * head_dim];
        let queries = Rows { data: q, offset: 0, stride: head_dim, rows };
        // SAFETY: AMX is available (the callers check); `got` is rows x head_dim and ours.
        let out = Output::Rows { ptr: got.as_mut_ptr(), stride: head_dim };
        unsafe { attend(Queries::Rows(queries), scale, &keys, &values, out) };
        let mut exact = vec![0f64; rows * head_dim];
        for i in 0..rows {
            let scores: Vec<f64> = (0..tokens)
                .map(|j| {
                    (0..head_dim).map(|c| rounded(q[i * head_dim + c] * scale) * rounded(k[j * head_dim + c])).sum()
                })
                .collect();
            let max = scores.iter().fold(f64::NEG_INFINITY, |m, &s| m.max(s));
            let weights: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
            let total: f64 = weights.iter().sum();
            for c in 0..head_dim {
                exact[i * head_dim + c] =
                    weights.iter().enumerate().map(|(j, w)| w * rounded(v[j * head_dim + c])).sum::<f64>() / total;
            }
        }
        (got, exact)
    }

    /// Against the exact softmax of the rounded operands: across several key blocks (the last
    /// one partial), with each row's largest score growing from block to block (so the sums
    /// and outputs so far are rescaled) or falling, for heads that do and do not fill the
    /// tiles, and query blocks of 32 rows and fewer. The exponentials are rounded to bf16
    /// (relative error up to 2^-9 each), so each output lies within 2^-8 of |v|'s largest.
    #[test]
    fn key_blocks_give_the_softmax_of_the_rounded_operands() {
        if !checkable_here("the bf16 flash attention") {
            return;
        }
        let mut state = 12345u64;
        let mut random = move || {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((state >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        };
        for (rows, tokens, head_dim, trend) in
            [(32, 600, 64, 4.0), (32, 600, 64, -4.0), (7, 300, 12, 2.0), (32, 257, 80, 1.0), (1, 40, 64, 0.0)]
        {
            let q: Vec<f32> = (0..rows * head_dim).map(|_| random() + 0.5).collect();
            // Keys drift along the queries' mean: each block's largest score grows (or falls).
            let k: Vec<f32> =
                (0..tokens * head_dim).map(|i| random() + trend * (i / head_dim) as f32 / tokens as f32).collect();
            let v: Vec<f32> = (0..tokens * head_dim).map(|_| random() * 2.0).collect();
            let scale = 1.0 / (head_dim as f32).sqrt();
            let (got, exact) = attend_and_exact(&q, &k, &v, head_dim, scale);
            let largest_v = v.iter().fold(0f64, |m, &x| m.max(rounded(x).abs()));
            let worst = got.iter().zip(&exact).fold(0f64, |m, (&g, &e)| m.max((g as f64 - e).abs()));
            assert!(
                worst <= largest_v / 256.0,
                "{rows} rows, {tokens} tokens, head {head_dim}, trend {trend}: off by {worst} (|v| up to {largest_v})"
            );
        }
    }

    /// Rows past the query block's are never written, and what an earlier call left in the
    /// thread's buffers does not reach a later call's rows.
    #[test]
    fn only_the_query_rows_are_written_and_earlier_calls_leave_nothing() {
        if !checkable_here("the bf16 flash attention") {
            return;
        }
        let (tokens, head_dim) = (300, 64);
        let k: Vec<f32> = (0..tokens * head_dim).map(|i| ((i * 7919) % 211) as f32 * 0.01 - 1.0).collect();
        let v: Vec<f32> = (0..tokens * head_dim).map(|i| ((i * 104_729) % 199) as f32 * 0.01 - 1.0).collect();
        let keys = PackedB::from_transposed_rows(&k, 0, head_dim, tokens, head_dim, false);
        let values = PackedB::from_rows(&v, 0, head_dim, tokens, head_dim, false);
        let q: Vec<f32> = (0..3 * head_dim).map(|i| (i % 13) as f32 * 0.05).collect();
        // First on this test's own thread, whose buffers are fresh.
        let (alone, _) = attend_and_exact(&q, &k, &v, head_dim, 0.125);
        let call = |q: &[f32], rows: usize, scale: f32, out: &mut [f32]| {
            assert!(out.len() >= rows * head_dim);
            // SAFETY: AMX is available (checked above); `out` holds the rows and is ours.
            unsafe {
                attend(
                    Queries::Rows(Rows { data: q, offset: 0, stride: head_dim, rows }),
                    scale,
                    &keys,
                    &values,
                    Output::Rows { ptr: out.as_mut_ptr(), stride: head_dim },
                )
            }
        };
        // A call with huge scores leaves the buffers full of large values.
        call(&vec![50f32; 32 * head_dim], 32, 1.0, &mut vec![0f32; 32 * head_dim]);
        let mut out = vec![f32::NAN; 5 * head_dim];
        call(&q, 3, 0.125, &mut out);
        assert_eq!(&out[..3 * head_dim], &alone[..], "a call after another gives what it gives alone");
        assert!(out[3 * head_dim..].iter().all(|v| v.is_nan()), "rows past the query rows were written");
    }

    /// Queries read from a bf16 panel (unscaled, the scale joining the scores) and the output
    /// rounded into a panel give the bits of f32 query rows scaled before rounding and of the
    /// f32 output rounded after, for a head of 64 values (scale 1/8); rows past a short block's
    /// are written as zeros.
    #[test]
    fn panel_queries_and_outputs_give_the_bits_of_rows() {
        if !checkable_here("the bf16 flash attention") {
            return;
        }
        let (tokens, head_dim, scale) = (300, 64, 0.125);
        let value = |i: usize, m: usize| ((i * m) % 251) as f32 * 0.013 - 1.6;
        let k: Vec<f32> = (0..tokens * head_dim).map(|i| value(i, 7919)).collect();
        let v: Vec<f32> = (0..tokens * head_dim).map(|i| value(i, 104_729)).collect();
        let keys = PackedB::from_transposed_rows(&k, 0, head_dim, tokens, head_dim, false);
        let values = PackedB::from_rows(&v, 0, head_dim, tokens, head_dim, false);
        for rows in [32, 20] {
            let q: Vec<f32> = (0..rows * head_dim).map(|i| value(i, 31) * 2.0).collect();
            let mut want = vec![0f32; rows * head_dim];
            let mut panel = amx::Bf16Rows::default();
            panel.reset(rows, head_dim);
            for r in 0..rows {
                panel.set_row(r, &q[r * head_dim..][..head_dim], 1.0);
            }
            let mut got = AlignedVec::<u16>::new();
            got.resize(BLOCK * head_dim);
            got.fill(u16::MAX);
            // SAFETY: AMX is available (checked above); the buffers hold the rows and are ours.
            unsafe {
                let from_rows = Queries::Rows(Rows { data: &q, offset: 0, stride: head_dim, rows });
                attend(from_rows, scale, &keys, &values, Output::Rows { ptr: want.as_mut_ptr(), stride: head_dim });
                let from_panel = Queries::Panel { steps: &panel.values()[..BLOCK * head_dim], rows };
                attend(from_panel, scale, &keys, &values, Output::Panel(got.as_mut_ptr()));
            }
            for r in 0..BLOCK {
                for c in 0..head_dim {
                    let word = got[(c / K_STEP) * BLOCK * K_STEP + r * K_STEP + c % K_STEP];
                    let expected = if r < rows { to_bf16(want[r * head_dim + c]) } else { 0 };
                    assert_eq!(word, expected, "{rows} rows: row {r}, value {c}");
                }
            }
        }
    }
}
