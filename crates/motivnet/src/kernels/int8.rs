//! Linear products in int8 on AVX512-VNNI, for `precision: 'int8'` (inference on the CPU).
//!
//! Quantized as ONNX Runtime's and PyTorch's dynamic int8 Linear quantize:
//! - each weight row (one output channel) symmetrically, to i8 in [-127, 127] with a scale of
//!   its own, once, when the weight is packed ([`PackedI8`]);
//! - each input row asymmetrically, to u8 with a scale and zero point of its own taken from
//!   that row's range (0 included), at each call.
//!
//! `vpdpbusd` multiplies 64 u8 by 64 i8 and adds each four neighbouring products into one of
//! 16 i32 lanes: 64 multiply-adds an instruction, where an f32 FMA does 16, and on the CPUs
//! that have it the two issue at the same rate. y = sx sw (sum_k (qx - z) qw) + b: the zero
//! point's share, z times the weight row's sum, is taken off once per output (the sums are
//! kept with the packing), so the inner loop multiplies the stored bytes as they are. The
//! sums are exact (at most 255 x 127 x 4 per lane and step, far from i32's range for any k a
//! model here has); what int8 loses is the rounding of both operands to 8 bits.
//!
//! A tile is 6 rows by 64 columns (24 accumulators); a task takes 96 rows and sweeps every
//! column panel of B across them, so a panel is read from memory once per task.

use std::sync::OnceLock;

use rayon::prelude::*;

use super::aligned::AlignedVec;
use super::amx::Finish;
use super::gelu::gelu_in_place;
use super::Shared;

/// Output columns a tile computes: four vectors of 16 i32 lanes.
pub const TILE_COLS: usize = 64;
/// Input rows a tile computes.
const TILE_ROWS: usize = 6;
/// Rows one task multiplies against all of B (sixteen tiles).
const ROWS_PER_TASK: usize = 96;
/// Values of k one `vpdpbusd` lane sums.
pub(super) const K_GROUP: usize = 4;
/// Levels of a weight on either side of zero (i8 without -128, so it is symmetric).
pub(super) const WEIGHT_LEVELS: f32 = 127.0;

/// Whether the int8 kernel can run here: the CPU has AVX-512 (F, BW, VL) and VNNI.
/// `MOTIVNET_INT8=off` says no, to compare or to rule the kernel out.
pub fn available() -> bool {
    static AVAILABLE: OnceLock<bool> = OnceLock::new();
    *AVAILABLE.get_or_init(|| {
        if std::env::var("MOTIVNET_INT8").is_ok_and(|v| v.trim() == "off") {
            return false;
        }
        #[cfg(target_arch = "x86_64")]
        {
            is_x86_feature_detected!("avx512f")
                && is_x86_feature_detected!("avx512bw")
                && is_x86_feature_detected!("avx512vl")
                && is_x86_feature_detected!("avx512vnni")
        }
        #[cfg(not(target_arch = "x86_64"))]
        false
    })
}

/// A weight W (n x k: n output channels of k inputs) quantized per output channel and packed
/// for the kernel: for each panel of 64 channels, k in groups of four, each group holding the
/// four bytes of every channel side by side (what one `vpdpbusd` lane takes).
pub struct PackedI8 {
    /// Output channels.
    pub n: usize,
    /// Inputs per channel.
    pub k: usize,
    /// k rounded up to a group of four (the padding is zeros).
    kp: usize,
    /// n rounded up to whole panels.
    np: usize,
    panels: AlignedVec<i8>,
    /// Each channel's scale (np long, 0 past n): w = scale x q.
    scales: Vec<f32>,
    /// Each channel's sum of its quantized values (np long).
    sums: Vec<i32>,
}

impl PackedI8 {
    /// Quantizes and packs `w` (n x k, row-major: a Linear's weight), over rayon's threads.
    pub fn from_weight(w: &[f32], n: usize, k: usize) -> Self {
        assert_eq!(w.len(), n * k, "int8::PackedI8::from_weight: W is not n x k");
        let (kp, np) = (k.next_multiple_of(K_GROUP), n.next_multiple_of(TILE_COLS).max(TILE_COLS));
        let mut panels = AlignedVec::<i8>::zeroed(np * kp);
        let (mut scales, mut sums) = (vec![0f32; np], vec![0i32; np]);
        panels
            .par_chunks_mut(TILE_COLS * kp)
            .zip(scales.par_chunks_mut(TILE_COLS))
            .zip(sums.par_chunks_mut(TILE_COLS))
            .enumerate()
            .for_each(|(p, ((panel, scales), sums))| {
                for c in 0..TILE_COLS.min(n.saturating_sub(p * TILE_COLS)) {
                    let row = &w[(p * TILE_COLS + c) * k..][..k];
                    let largest = row.iter().fold(0f32, |m, v| m.max(v.abs()));
                    let scale = symmetric_step(largest, WEIGHT_LEVELS);
                    let mut sum = 0i32;
                    for (i, &v) in row.iter().enumerate() {
                        let q = (v / scale).round().clamp(-WEIGHT_LEVELS, WEIGHT_LEVELS) as i8;
                        panel[(i / K_GROUP) * TILE_COLS * K_GROUP + c * K_GROUP + i % K_GROUP] = q;
                        sum += i32::from(q);
                    }
                    (scales[c], sums[c]) = (scale, sum);
                }
            });
        Self { n, k, kp, np, panels, scales, sums }
    }

    /// The weight as it is multiplied: each value its channel's scale times its byte (n x k).
    #[cfg(test)]
    fn dequantized(&self) -> Vec<f32> {
        let mut w = vec![0f32; self.n * self.k];
        for (o, row) in w.chunks_mut(self.k.max(1)).enumerate() {
            let panel = &self.panels[(o / TILE_COLS) * TILE_COLS * self.kp..];
            for (i, v) in row.iter_mut().enumerate() {
                let q = panel[(i / K_GROUP) * TILE_COLS * K_GROUP + (o % TILE_COLS) * K_GROUP + i % K_GROUP];
                *v = self.scales[o] * f32::from(q);
            }
        }
        w
    }
}

/// Rows of f32 quantized to u8, each with its scale and zero point: x = scale (q - zero). A
/// product's left operand, made from f32 rows ([`linear_rows`] does it) or by the product
/// before it ([`linear_gelu_rows_quantized`]).
#[derive(Default)]
pub struct QuantizedRows {
    /// Values per row.
    k: usize,
    /// Bytes per row: k rounded up to a group of four.
    kp: usize,
    /// The rows, kp bytes each (past k: the zero point, which the weight's zero padding
    /// ignores).
    data: Vec<u8>,
    scales: Vec<f32>,
    zeros: Vec<i32>,
}

impl QuantizedRows {
    /// Quantizes the rows of `x` (k wide), over rayon's threads.
    pub fn of(x: &[f32], k: usize) -> Self {
        let m = x.len() / k.max(1);
        assert_eq!(x.len(), m * k, "int8::QuantizedRows::of: x is not whole rows of {k}");
        let mut out = Self::zeroed(m, k);
        let kp = out.kp;
        out.data
            .par_chunks_mut(kp.max(1))
            .zip(out.scales.par_iter_mut())
            .zip(out.zeros.par_iter_mut())
            .enumerate()
            .with_min_len(16)
            .for_each(|(r, ((q, scale), zero))| (*scale, *zero) = quantize_row(&x[r * k..][..k], q));
        out
    }

    /// m rows of k values, every byte, scale and zero point 0 until written.
    fn zeroed(m: usize, k: usize) -> Self {
        let kp = k.next_multiple_of(K_GROUP);
        Self { k, kp, data: vec![0u8; m * kp], scales: vec![0f32; m], zeros: vec![0i32; m] }
    }

    /// How many rows.
    pub fn rows(&self) -> usize {
        self.scales.len()
    }

    /// Row i as it is multiplied: scale (q - zero) for each of its k values.
    #[cfg(test)]
    fn dequantized_row(&self, i: usize) -> Vec<f32> {
        let (scale, zero) = (self.scales[i], self.zeros[i] as f32);
        self.data[i * self.kp..][..self.k].iter().map(|&q| scale * (f32::from(q) - zero)).collect()
    }
}

/// Quantizes `x` into `q` (as long, or longer: the rest is the zero point), to u8 with the
/// scale and zero point of its range with 0 in it, returned. On AVX-512 sixteen values at a
/// time, with the same values as [`quantize_row_portable`].
fn quantize_row(x: &[f32], q: &mut [u8]) -> (f32, i32) {
    assert!(q.len() >= x.len(), "int8::quantize_row: q is shorter than x");
    #[cfg(target_arch = "x86_64")]
    if available() {
        // SAFETY: `available` holds, so the CPU has AVX-512F, BW and VL; q is at least x's length.
        let (low, high) = unsafe { vnni::range(x) };
        let (scale, zero) = scale_and_zero(low, high);
        // SAFETY: as above.
        unsafe { vnni::quantize(x, q, 1.0 / scale, zero) };
        q[x.len()..].fill(zero as u8);
        return (scale, zero as i32);
    }
    quantize_row_portable(x, q)
}

/// [`quantize_row`] one value at a time.
fn quantize_row_portable(x: &[f32], q: &mut [u8]) -> (f32, i32) {
    let (low, high) = x.iter().fold((0f32, 0f32), |(lo, hi), &v| (lo.min(v), hi.max(v)));
    let (scale, zero) = scale_and_zero(low, high);
    let inverse = 1.0 / scale;
    for (q, &v) in q.iter_mut().zip(x) {
        *q = v.mul_add(inverse, zero).round_ties_even().clamp(0.0, 255.0) as u8;
    }
    q[x.len()..].fill(zero as u8);
    (scale, zero as i32)
}

/// The step and zero point of u8 over [low, high] (low <= 0 <= high), zero a whole number.
///
/// A range too narrow for a normal step (which the compute threads would flush to zero), or
/// not finite, takes a step of 1: every value then rounds to the zero point or near it.
fn scale_and_zero(low: f32, high: f32) -> (f32, f32) {
    let scale = normal_or_one((high - low) / 255.0);
    (scale, (-low / scale).round_ties_even().clamp(0.0, 255.0))
}

/// The step of a symmetric quantization to [-levels, levels] of values whose largest magnitude
/// is `largest`, by the rule of [`scale_and_zero`].
pub(crate) fn symmetric_step(largest: f32, levels: f32) -> f32 {
    normal_or_one(largest / levels)
}

/// `step` where it is a normal number, else 1.
fn normal_or_one(step: f32) -> f32 {
    if step.is_normal() {
        step
    } else {
        1.0
    }
}

/// A product's left operand: f32 rows (quantized at the call), or rows already quantized.
#[derive(Clone, Copy)]
pub enum Input<'a> {
    F32(&'a [f32]),
    Quantized(&'a QuantizedRows),
}

/// x W^T + b, then `finish` (GELU, or a residual of m x n added), with x's rows quantized to
/// u8 and W's to i8 (`w`), the sums exact, the result f32 (m x n, row-major). Splits the rows
/// (and, when there are few, B's panels) over rayon's threads.
///
/// Panics where [`available`] does not hold, or when the lengths do not fit.
pub fn linear_rows(x: Input, w: &PackedI8, bias: &[f32], finish: Finish) -> Vec<f32> {
    let quantized;
    let a = match x {
        Input::F32(values) => {
            assert_eq!(values.len() % w.k.max(1), 0, "int8::linear_rows: x is not whole rows of {}", w.k);
            quantized = QuantizedRows::of(values, w.k);
            &quantized
        }
        Input::Quantized(rows) => rows,
    };
    let (m, n) = (a.rows(), w.n);
    if let Finish::Add(addend) = finish {
        assert_eq!(addend.len(), m * n, "int8::linear_rows: the addend is not m x n");
    }
    let mut y: Vec<f32> = Vec::with_capacity(m * n);
    multiply(a, w, bias, finish, Dest::F32(Shared(y.as_mut_ptr())));
    // SAFETY: `multiply` wrote every value of the m x n output.
    unsafe { y.set_len(m * n) };
    y
}

/// GELU(x W^T + b) quantized row by row: the MLP's hidden layer made ready for fc2 without
/// being stored in f32. Each task quantizes its rows once all their columns are done, while
/// they are in its cache; the values equal [`QuantizedRows::of`] applied to [`linear_rows`]
/// with GELU. (Where the rows are too few for every thread to hold whole rows, that is what
/// runs.) At sapiens-0.3b's 3072 tokens the f32 hidden layer is 50 MB a block: written,
/// faulted in page by page and read back once more to be quantized.
///
/// Panics where [`available`] does not hold, or when the lengths do not fit.
pub fn linear_gelu_rows_quantized(x: &[f32], w: &PackedI8, bias: &[f32]) -> QuantizedRows {
    assert_eq!(x.len() % w.k.max(1), 0, "int8::linear_gelu_rows_quantized: x is not whole rows of {}", w.k);
    let a = QuantizedRows::of(x, w.k);
    if a.rows().div_ceil(ROWS_PER_TASK) < rayon::current_num_threads() {
        let y = linear_rows(Input::Quantized(&a), w, bias, Finish::Gelu);
        return QuantizedRows::of(&y, w.n);
    }
    let mut out = QuantizedRows::zeroed(a.rows(), w.n);
    let dest = Dest::Quantized {
        data: Shared(out.data.as_mut_ptr()),
        scales: Shared(out.scales.as_mut_ptr()),
        zeros: Shared(out.zeros.as_mut_ptr()),
        kp: out.kp,
    };
    multiply(&a, w, bias, Finish::Gelu, dest);
    out
}

/// Where a product's values go.
#[derive(Clone, Copy)]
enum Dest {
    /// f32 rows, m x n, row-major.
    F32(Shared<f32>),
    /// A [`QuantizedRows`] of m rows of n: each task finishes its rows' columns in a buffer of
    /// its own, then quantizes them.
    Quantized { data: Shared<u8>, scales: Shared<f32>, zeros: Shared<i32>, kp: usize },
}

/// The product of `a` and `w` plus the bias, then `finish`, into `dest`, on rayon's threads:
/// tasks of [`ROWS_PER_TASK`] rows, and where those are fewer than the threads (never for a
/// quantized destination) B's panels shared out too.
fn multiply(a: &QuantizedRows, w: &PackedI8, bias: &[f32], finish: Finish, dest: Dest) {
    assert!(available(), "int8: the int8 kernel is not available (no AVX512-VNNI, or MOTIVNET_INT8=off)");
    assert!(
        a.k == w.k && bias.len() == w.n,
        "int8: x's rows ({}), W ({} x {}) and the bias ({}) do not fit",
        a.k,
        w.n,
        w.k,
        bias.len()
    );
    let (m, n) = (a.rows(), w.n);
    let padded_bias: Vec<f32> = bias.iter().copied().chain(std::iter::repeat(0.0)).take(w.np).collect();
    let row_tasks = m.div_ceil(ROWS_PER_TASK);
    let column_panels = w.np / TILE_COLS;
    let column_parts = match dest {
        Dest::F32(_) => rayon::current_num_threads().div_ceil(row_tasks.max(1)).clamp(1, column_panels),
        Dest::Quantized { .. } => 1,
    };
    (0..row_tasks * column_parts).into_par_iter().for_each(|t| {
        let (task, part) = (t / column_parts, t % column_parts);
        let rows = task * ROWS_PER_TASK..((task + 1) * ROWS_PER_TASK).min(m);
        let panels = column_panels * part / column_parts..column_panels * (part + 1) / column_parts;
        // Where this task's rows go before they are quantized: a buffer of the thread's own.
        let mut staged = STAGED.with(|cell| cell.take());
        let (c0, c_stride) = match dest {
            Dest::F32(y) => (y.0.wrapping_add(rows.start * n), n),
            Dest::Quantized { .. } => {
                staged.resize(staged.len().max(rows.len() * n), 0.0);
                (staged.as_mut_ptr(), n)
            }
        };
        for p in panels {
            let (j0, cols) = (p * TILE_COLS, TILE_COLS.min(n - (p * TILE_COLS).min(n)));
            if cols == 0 {
                continue;
            }
            let panel = &w.panels[p * TILE_COLS * w.kp..][..TILE_COLS * w.kp];
            let columns = Columns {
                scales: &w.scales[j0..][..TILE_COLS],
                sums: &w.sums[j0..][..TILE_COLS],
                bias: &padded_bias[j0..][..TILE_COLS],
                count: cols,
            };
            for r0 in rows.clone().step_by(TILE_ROWS) {
                let tile_rows = TILE_ROWS.min(rows.end - r0);
                // SAFETY: this task alone writes rows `rows` x columns j0..j0 + cols of the
                // destination (y with room for m x n, or its own buffer of rows.len() x n);
                // a's rows r0..r0 + tile_rows exist.
                unsafe {
                    let c = c0.add((r0 - rows.start) * c_stride + j0);
                    tile(a, r0, tile_rows, w.kp, panel, &columns, c, c_stride);
                    for r in 0..tile_rows {
                        let row = std::slice::from_raw_parts_mut(c.add(r * c_stride), cols);
                        match finish {
                            Finish::None => {}
                            Finish::Gelu => gelu_in_place(row),
                            Finish::Add(addend) => {
                                let add = &addend[(r0 + r) * n + j0..][..cols];
                                row.iter_mut().zip(add).for_each(|(v, a)| *v += a);
                            }
                        }
                    }
                }
            }
        }
        if let Dest::Quantized { data, scales, zeros, kp } = dest {
            for (i, r) in rows.clone().enumerate() {
                // SAFETY: row r of the destination is this task's alone (column_parts is 1),
                // kp bytes of m rows.
                unsafe {
                    let q = std::slice::from_raw_parts_mut(data.at(r * kp), kp);
                    let (scale, zero) = quantize_row(&staged[i * n..][..n], q);
                    (*scales.at(r), *zeros.at(r)) = (scale, zero);
                }
            }
        }
        STAGED.with(|cell| {
            if cell.borrow().len() < staged.len() {
                cell.replace(staged);
            }
        });
    });
}

thread_local! {
    /// A task's rows before they are quantized ([`Dest::Quantized`]), reused from call to call.
    static STAGED: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// What a tile needs of its 64 output columns: W's scales and sums, the bias (all padded to
/// 64), and how many of the 64 exist.
struct Columns<'a> {
    scales: &'a [f32],
    sums: &'a [i32],
    bias: &'a [f32],
    count: usize,
}

/// One tile: rows r0..r0 + rows (at most 6) of A by one 64-column panel of W, dequantized
/// with the bias into C (`c`, rows `c_stride` floats apart).
///
/// # Safety
/// `c` addresses `rows` rows of `columns.count` floats that nothing else touches meanwhile.
unsafe fn tile(
    a: &QuantizedRows,
    r0: usize,
    rows: usize,
    kp: usize,
    panel: &[i8],
    columns: &Columns,
    c: *mut f32,
    c_stride: usize,
) {
    debug_assert!(rows <= TILE_ROWS && (r0 + rows) * kp <= a.data.len() && panel.len() == TILE_COLS * kp);
    #[cfg(target_arch = "x86_64")]
    {
        let rows_of_a = TileRows {
            data: a.data[r0 * kp..].as_ptr(),
            scales: &a.scales[r0..r0 + rows],
            zeros: &a.zeros[r0..r0 + rows],
        };
        // SAFETY: `linear_rows` runs only where `available` holds; the caller's promise on C.
        unsafe {
            match rows {
                6 => vnni::tile::<6>(rows_of_a, kp, panel.as_ptr(), columns, c, c_stride),
                5 => vnni::tile::<5>(rows_of_a, kp, panel.as_ptr(), columns, c, c_stride),
                4 => vnni::tile::<4>(rows_of_a, kp, panel.as_ptr(), columns, c, c_stride),
                3 => vnni::tile::<3>(rows_of_a, kp, panel.as_ptr(), columns, c, c_stride),
                2 => vnni::tile::<2>(rows_of_a, kp, panel.as_ptr(), columns, c, c_stride),
                1 => vnni::tile::<1>(rows_of_a, kp, panel.as_ptr(), columns, c, c_stride),
                _ => unreachable!("a tile has 1 to 6 rows"),
            }
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    unreachable!("int8::available is false off x86-64")
}

/// A tile's rows of A: their bytes (kp apart), scales and zero points.
struct TileRows<'a> {
    data: *const u8,
    scales: &'a [f32],
    zeros: &'a [i32],
}

#[cfg(target_arch = "x86_64")]
mod vnni {
    use std::arch::x86_64::*;

    use super::{Columns, TileRows, K_GROUP, TILE_COLS};
    use crate::kernels::simd::lanes_below;

    /// The smallest and largest of x and 0 (the lanes past x's end read as 0). A NaN is passed
    /// over where it is the second operand, as `f32::min` would; finite rows are what the model
    /// quantizes.
    ///
    /// # Safety
    /// The CPU has AVX-512F.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn range(x: &[f32]) -> (f32, f32) {
        let (mut low, mut high) = (_mm512_setzero_ps(), _mm512_setzero_ps());
        for chunk in x.chunks(16) {
            // SAFETY: the mask reads the chunk's values only.
            let v = unsafe { _mm512_maskz_loadu_ps(lanes_below(chunk.len()), chunk.as_ptr()) };
            (low, high) = (_mm512_min_ps(low, v), _mm512_max_ps(high, v));
        }
        (_mm512_reduce_min_ps(low), _mm512_reduce_max_ps(high))
    }

    /// q = clamp(round-to-even(x inverse + zero), 0, 255), one multiply-add rounding once.
    ///
    /// # Safety
    /// The CPU has AVX-512F, BW and VL; q is at least x's length.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    pub(super) unsafe fn quantize(x: &[f32], q: &mut [u8], inverse: f32, zero: f32) {
        let (inverse, zero) = (_mm512_set1_ps(inverse), _mm512_set1_ps(zero));
        let (lowest, highest) = (_mm512_setzero_si512(), _mm512_set1_epi32(255));
        for (chunk, out) in x.chunks(16).zip(q.chunks_mut(16)) {
            let mask = lanes_below(chunk.len());
            // SAFETY: the mask reads and writes the chunk's lanes only; out is as long.
            unsafe {
                let v = _mm512_maskz_loadu_ps(mask, chunk.as_ptr());
                let rounded = _mm512_cvtps_epi32(_mm512_fmadd_ps(v, inverse, zero));
                let clamped = _mm512_min_epi32(_mm512_max_epi32(rounded, lowest), highest);
                _mm_mask_storeu_epi8(out.as_mut_ptr().cast(), mask, _mm512_cvtepi32_epi8(clamped));
            }
        }
    }

    /// R rows of A (kp bytes each) by a 64-column panel of W, over all of k, in 4 x R i32
    /// accumulators; then y = (sum - zero x W's sum) x (row scale x column scale) + bias, stored
    /// through a lane mask past the panel's last real column.
    ///
    /// # Safety
    /// The CPU has AVX-512F, BW and VNNI; A's rows hold kp bytes, the panel 64 x kp; `c`
    /// addresses R rows of `columns.count` floats `c_stride` apart.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    pub(super) unsafe fn tile<const R: usize>(
        a: TileRows,
        kp: usize,
        panel: *const i8,
        columns: &Columns,
        c: *mut f32,
        c_stride: usize,
    ) {
        let mut sums = [[_mm512_setzero_si512(); 4]; R];
        for step in 0..kp / K_GROUP {
            // SAFETY: step < kp / 4: inside the panel and inside each row of A.
            unsafe {
                let b = panel.add(step * TILE_COLS * K_GROUP);
                let w = [0, 1, 2, 3].map(|v| _mm512_loadu_si512(b.add(v * 64).cast()));
                for (r, row_sums) in sums.iter_mut().enumerate() {
                    let four = a.data.add(r * kp + step * K_GROUP).cast::<i32>().read_unaligned();
                    let x = _mm512_set1_epi32(four);
                    for v in 0..4 {
                        row_sums[v] = _mm512_dpbusd_epi32(row_sums[v], x, w[v]);
                    }
                }
            }
        }
        for v in 0..4 {
            let valid = columns.count.saturating_sub(v * 16).min(16);
            if valid == 0 {
                break;
            }
            let mask = lanes_below(valid);
            // SAFETY: the column terms are 64 long; C's row r has `count` columns from c.
            unsafe {
                let scale = _mm512_loadu_ps(columns.scales.as_ptr().add(v * 16));
                let w_sums = _mm512_loadu_si512(columns.sums.as_ptr().add(v * 16).cast());
                let bias = _mm512_loadu_ps(columns.bias.as_ptr().add(v * 16));
                for (r, row_sums) in sums.iter().enumerate() {
                    let offset = _mm512_mullo_epi32(_mm512_set1_epi32(a.zeros[r]), w_sums);
                    let exact = _mm512_cvtepi32_ps(_mm512_sub_epi32(row_sums[v], offset));
                    let y = _mm512_fmadd_ps(exact, _mm512_mul_ps(scale, _mm512_set1_ps(a.scales[r])), bias);
                    _mm512_mask_storeu_ps(c.add(r * c_stride + v * 16), mask, y);
                }
            }
        }
    }
}

/// For the tests of code on VNNI: whether it can be checked here, saying on the test's output
/// what was not checked when the CPU has no AVX512-VNNI.
#[cfg(test)]
pub(crate) fn checkable_here(what: &str) -> bool {
    if !available() {
        eprintln!("this CPU has no AVX512-VNNI: {what} was not checked here");
    }
    available()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(len: usize, seed: u64) -> Vec<f32> {
        let mut state = seed;
        (0..len)
            .map(|_| {
                state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                ((state >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
            })
            .collect()
    }

    /// The product from the quantized operands in f64: what the kernel must give to f32's
    /// rounding of its last steps.
    fn expected(x: &[f32], w: &PackedI8, bias: &[f32]) -> Vec<f32> {
        let (k, n) = (w.k, w.n);
        let wq = w.dequantized();
        let mut y = Vec::new();
        for row in x.chunks(k) {
            let mut q = vec![0u8; w.kp];
            let (scale, zero) = quantize_row(row, &mut q);
            for o in 0..n {
                let sum: f64 = (0..k).map(|i| (f64::from(q[i]) - f64::from(zero)) * f64::from(wq[o * k + i])).sum();
                y.push((sum * f64::from(scale) + f64::from(bias[o])) as f32);
            }
        }
        y
    }

    /// Odd shapes (k not a multiple of 4, n not of 64, m not of 6 or 96), each finish, and
    /// one call over many threads' tasks against the same product from the quantized values.
    #[test]
    fn the_kernel_multiplies_the_quantized_operands_exactly() {
        if !checkable_here("the int8 kernel") {
            return;
        }
        for &(m, k, n) in &[(1, 3, 1), (7, 13, 70), (53, 192, 576), (100, 64, 129), (5, 1031, 64)] {
            let (x, wv, bias) = (values(m * k, 1), values(n * k, 2), values(n, 3));
            let w = PackedI8::from_weight(&wv, n, k);
            let want = expected(&x, &w, &bias);
            let plain = linear_rows(Input::F32(&x), &w, &bias, Finish::None);
            for (i, (g, e)) in plain.iter().zip(&want).enumerate() {
                assert!((g - e).abs() <= 1e-5 * (1.0 + e.abs()), "({m}, {k}, {n}) at {i}: {g} against {e}");
            }
            let gelu = linear_rows(Input::F32(&x), &w, &bias, Finish::Gelu);
            let mut want_gelu = plain.clone();
            gelu_in_place(&mut want_gelu);
            assert_eq!(gelu, want_gelu, "({m}, {k}, {n}): GELU on the tiles");
            let addend = values(m * n, 4);
            let added = linear_rows(Input::F32(&x), &w, &bias, Finish::Add(&addend));
            let want_added: Vec<f32> = plain.iter().zip(&addend).map(|(v, a)| v + a).collect();
            assert_eq!(added, want_added, "({m}, {k}, {n}): the residual added");
        }
    }

    /// The vector quantizer gives the portable one's bytes, scale and zero point, on rows of
    /// every length around a vector's 16 and of either sign.
    #[test]
    fn the_vector_quantizer_matches_the_portable_one() {
        if !checkable_here("the vector quantizer") {
            return;
        }
        // Shifts of 10 put every value on one side of 0, so the zero point sits at 0 or 255.
        for len in [1, 15, 16, 17, 100, 768] {
            for shift in [-10.0f32, -0.9, 0.0, 0.9, 10.0] {
                let row: Vec<f32> = values(len, len as u64).iter().map(|v| v * 4.0 + shift).collect();
                let (mut fast, mut plain) = (vec![0u8; len + 3], vec![0u8; len + 3]);
                let got = quantize_row(&row, &mut fast);
                assert_eq!(got, quantize_row_portable(&row, &mut plain), "len {len}, shift {shift}");
                assert_eq!(fast, plain, "len {len}, shift {shift}");
            }
        }
    }

    /// The MLP's hidden layer quantized as each task finishes its rows: the same bytes, scales
    /// and zero points as quantizing [`linear_rows`]' GELU output, whether the rows are many
    /// (quantized in the tasks) or too few for the threads (quantized after); and a product
    /// from rows already quantized equals the one that quantizes them itself.
    #[test]
    fn the_hidden_layer_quantized_in_the_tasks_equals_quantizing_it_after() {
        if !checkable_here("the int8 hidden layer") {
            return;
        }
        let pool = rayon::ThreadPoolBuilder::new().num_threads(2).build().unwrap();
        for &(m, k, n) in &[(7, 20, 70), (300, 40, 130), (193, 64, 64)] {
            let (x, wv, bias) = (values(m * k, 7), values(n * k, 8), values(n, 9));
            let w = PackedI8::from_weight(&wv, n, k);
            pool.install(|| {
                let fused = linear_gelu_rows_quantized(&x, &w, &bias);
                let after = QuantizedRows::of(&linear_rows(Input::F32(&x), &w, &bias, Finish::Gelu), n);
                assert_eq!(fused.rows(), m);
                assert_eq!(fused.data, after.data, "({m}, {k}, {n}): the bytes differ");
                assert_eq!(fused.scales, after.scales, "({m}, {k}, {n}): the scales differ");
                assert_eq!(fused.zeros, after.zeros, "({m}, {k}, {n}): the zero points differ");
                let (w2, b2) = (PackedI8::from_weight(&values(5 * n, 10), 5, n), values(5, 11));
                let from_rows = linear_rows(Input::Quantized(&fused), &w2, &b2, Finish::None);
                let hidden: Vec<f32> = (0..m).flat_map(|i| after.dequantized_row(i)).collect();
                let requantized = linear_rows(Input::F32(&hidden), &w2, &b2, Finish::None);
                for (a, b) in from_rows.iter().zip(&requantized) {
                    assert!((a - b).abs() <= 1e-4 * (1.0 + b.abs()), "({m}, {k}, {n}): {a} against {b}");
                }
            });
        }
    }

    /// The quantization's error stays within its steps: each input value within half of its
    /// row's step, each weight within half of its channel's, and the product near f32's.
    #[test]
    fn quantization_stays_within_half_a_step() {
        let row = values(300, 5).iter().map(|v| v * 3.0 + 0.5).collect::<Vec<_>>();
        let mut q = vec![0u8; 300];
        let (scale, zero) = quantize_row(&row, &mut q);
        for (v, &b) in row.iter().zip(&q) {
            let back = scale * (f32::from(b) - zero as f32);
            assert!((back - v).abs() <= 0.5 * scale + 1e-6, "{v} comes back as {back}");
        }
        let (n, k) = (70, 50);
        let wv = values(n * k, 6);
        let w = PackedI8::from_weight(&wv, n, k);
        for (o, (row, back)) in wv.chunks(k).zip(w.dequantized().chunks(k)).enumerate() {
            let step = row.iter().fold(0f32, |m, v| m.max(v.abs())) / 127.0;
            for (v, b) in row.iter().zip(back) {
                assert!((v - b).abs() <= 0.5 * step + 1e-7, "channel {o}: {v} comes back as {b}");
            }
        }
        // A row of zeros and a constant row quantize without dividing by zero.
        for row in [vec![0f32; 9], vec![2.5f32; 9], vec![-1.0f32; 9]] {
            let mut q = vec![0u8; 12];
            let (scale, zero) = quantize_row(&row, &mut q);
            for (v, &b) in row.iter().zip(&q) {
                assert!((scale * (f32::from(b) - zero as f32) - v).abs() <= 0.5 * scale, "{row:?}");
            }
        }
    }
}
