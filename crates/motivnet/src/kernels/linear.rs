//! A Linear layer y = x W^T + b over row-major slices, and its gradients.

use std::mem::MaybeUninit;

use rayon::prelude::*;

use super::gelu::gelu_rows_with_bias_in_place;
use super::gemm::{filled_vec, matmul, threads_for_one_product, View, ViewMut, Write};

crate::simd_dispatch! {
    /// Adds each `acc.len()`-long row of `rows` to `acc`.
    fn add_rows(acc: &mut [f32], rows: &[f32]) {
        for row in rows.chunks(acc.len().max(1)) {
            acc.iter_mut().zip(row).for_each(|(a, v)| *a += v);
        }
    }
}

/// x W^T + b [+ residual] over row-major slices (x: rows x in_dim, W: out x in_dim): the
/// product accumulates onto the broadcast bias, plus the residual rows when given.
///
/// Panics when the lengths do not fit (rows x in_dim, out x in_dim, rows x out): the product
/// reads through raw pointers, and the output is filled only where the inputs reach.
pub fn linear_rows(x: &[f32], w: &[f32], b: &[f32], in_dim: usize, residual: Option<&[f32]>) -> Vec<f32> {
    let mut y = Vec::new();
    linear_rows_into(x, w, b, in_dim, residual, &mut y);
    y
}

/// [`linear_rows`] written into `y`, which takes the output's length (its old values are
/// overwritten, its allocation reused where large enough): for a caller that keeps the
/// output's buffer from call to call.
///
/// Panics as [`linear_rows`].
pub fn linear_rows_into(x: &[f32], w: &[f32], b: &[f32], in_dim: usize, residual: Option<&[f32]>, y: &mut Vec<f32>) {
    let rows = x.len() / in_dim.max(1);
    let out_dim = b.len();
    assert!(x.len() == rows * in_dim && w.len() == out_dim * in_dim, "linear_rows: x, W and b do not fit");
    assert!(residual.is_none_or(|r| r.len() == rows * out_dim), "linear_rows: residual does not fit the output");
    y.clear();
    y.reserve(rows * out_dim);
    start_from_bias(&mut y.spare_capacity_mut()[..rows * out_dim], b, residual);
    // SAFETY: every row received the bias (plus its residual row): rows x out_dim values.
    unsafe { y.set_len(rows * out_dim) };
    // SAFETY: y is rows x out_dim, initialised.
    unsafe { accumulate_product(y, x, w, in_dim) };
}

/// Writes the bias into every row of `y` (rows of `b.len()`), plus the matching row of
/// `residual` when given: where a Linear's product starts.
fn start_from_bias(y: &mut [MaybeUninit<f32>], b: &[f32], residual: Option<&[f32]>) {
    let width = b.len().max(1);
    match residual {
        None => y.par_chunks_mut(width * 64).for_each(|block| {
            block.chunks_mut(width).for_each(|r| r.iter_mut().zip(b).for_each(|(o, &v)| _ = o.write(v)))
        }),
        Some(res) => y.par_chunks_mut(width * 64).zip(res.par_chunks(width * 64)).for_each(|(block, res)| {
            block
                .chunks_mut(width)
                .zip(res.chunks(width))
                .for_each(|(r, res)| r.iter_mut().zip(b).zip(res).for_each(|((o, &v), &x)| _ = o.write(v + x)))
        }),
    }
}

/// y (rows x out) += x (rows x in_dim) W^T (W: out x in_dim), threaded.
///
/// # Safety
/// The lengths fit: x is whole rows of `in_dim`, W is y's width x `in_dim`.
unsafe fn accumulate_product(y: &mut [f32], x: &[f32], w: &[f32], in_dim: usize) {
    // SAFETY: the caller's promise; W's rows are `in_dim` apart.
    unsafe { accumulate_product_strided(y, x, (w, in_dim), in_dim) }
}

/// y (rows x out) += x (rows x in_dim) W^T, W's rows `w_stride` apart in `w` (a block of a
/// wider weight's columns when `w_stride` > `in_dim`), threaded.
///
/// # Safety
/// The lengths fit: x is whole rows of `in_dim`; `w` holds y's width rows of `in_dim` values,
/// `w_stride` apart.
unsafe fn accumulate_product_strided(y: &mut [f32], x: &[f32], (w, w_stride): (&[f32], usize), in_dim: usize) {
    let rows = x.len() / in_dim.max(1);
    let out_dim = y.len() / rows.max(1);
    debug_assert!(x.len() == rows * in_dim && y.len() == rows * out_dim && w_stride >= in_dim);
    debug_assert!(out_dim == 0 || w.len() >= (out_dim - 1) * w_stride + in_dim);
    if in_dim == 0 || rows == 0 {
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if rows <= FEW_ROWS && super::simd::level() == super::simd::Level::Avx512 {
        // SAFETY: the CPU has AVX-512F (checked above); the lengths fit (the caller's promise).
        unsafe { few_rows_product(y, x, (w, w_stride), in_dim) };
        return;
    }
    // SAFETY: y is rows x out_dim; x and W fit (the caller's promise).
    unsafe { gemm_rows(ViewMut::rows(y, 0, out_dim), x, (w, w_stride), (rows, out_dim, in_dim), Write::Accumulate) }
}

/// dst (rows x out_dim) [+]= x (rows x in_dim) W^T through `gemm`, W's rows `w_stride` apart.
///
/// # Safety
/// dst addresses rows x out_dim values (unwritten ones only for [`Write::Overwrite`]); x is
/// rows x in_dim; `w` holds out_dim rows of `in_dim` values, `w_stride` apart.
unsafe fn gemm_rows(
    dst: ViewMut,
    x: &[f32],
    (w, w_stride): (&[f32], usize),
    (rows, out_dim, in_dim): (usize, usize, usize),
    write: Write,
) {
    // SAFETY: the views cover exactly x, W and dst (the caller's promise).
    unsafe {
        matmul(
            (rows, out_dim, in_dim),
            dst,
            View::rows(x, 0, in_dim),
            View::rows(w, 0, w_stride).t(),
            1.0,
            write,
            threads_for_one_product(),
        );
    }
}

/// out (rows x out) = x (rows x in_dim) W^T (W: out x in_dim), threaded, into memory that may
/// be unwritten: through `gemm` without reading `out`, or for a few rows from zeros.
///
/// # Safety
/// The lengths fit: x is whole rows of `in_dim`, W is out's width x `in_dim`.
unsafe fn overwrite_product(out: &mut [MaybeUninit<f32>], x: &[f32], w: &[f32], in_dim: usize) {
    let rows = x.len() / in_dim.max(1);
    let out_dim = out.len() / rows.max(1);
    if rows <= FEW_ROWS || in_dim == 0 {
        out.fill(MaybeUninit::new(0.0));
        // SAFETY: every element was just written.
        let out = unsafe { std::slice::from_raw_parts_mut(out.as_mut_ptr().cast::<f32>(), out.len()) };
        // SAFETY: the caller's promise.
        unsafe { accumulate_product(out, x, w, in_dim) };
        return;
    }
    // SAFETY: out is rows x out_dim, which an overwriting product writes whole without reading;
    // x and W fit (the caller's promise).
    unsafe {
        gemm_rows(ViewMut::uninit_rows(out, 0, out_dim), x, (w, in_dim), (rows, out_dim, in_dim), Write::Overwrite)
    }
}

/// Rows of x up to which [`linear_rows`] multiplies by W's rows where they lie
/// ([`few_rows_product`]) instead of through `gemm`, which packs W for every call: the head's
/// layers after its cross-attention run on a few queries an image (16 rows at `small` batch 2,
/// 64 at `tiny` batch 8) against weights of up to 2048 x 768, and packing the weight took most
/// of their time (`small`'s f32 head alone 7.3 -> 4.5 ms, `tiny`'s 4.3 -> 4.0).
const FEW_ROWS: usize = 64;

/// Output columns (rows of W) a task of [`few_rows_product`] takes.
const FEW_ROWS_TASK: usize = 64;

/// y (rows x out) += x W^T for a few rows of x, as dot products of x's rows with W's rows, both
/// read where they lie: each task takes 64 rows of W (read from memory once) against every row
/// of x (kept in the caches), four of each at a time in sixteen registers of sixteen partial
/// sums.
///
/// # Safety
/// The CPU has AVX-512F; x is whole rows of `in_dim`; `w` holds y's width rows of `in_dim`
/// values, `w_stride` apart.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn few_rows_product(y: &mut [f32], x: &[f32], (w, w_stride): (&[f32], usize), in_dim: usize) {
    let rows = x.len() / in_dim;
    let out_dim = y.len() / rows.max(1);
    let dst = super::Shared(y.as_mut_ptr());
    (0..out_dim.div_ceil(FEW_ROWS_TASK)).into_par_iter().for_each(|task| {
        let columns = task * FEW_ROWS_TASK..((task + 1) * FEW_ROWS_TASK).min(out_dim);
        for j0 in columns.clone().step_by(4) {
            let j_count = 4.min(columns.end - j0);
            for r0 in (0..rows).step_by(4) {
                let r_count = 4.min(rows - r0);
                let x_row = |r: usize| x.as_ptr().add((r0 + r) * in_dim);
                let w_row = |j: usize| w.as_ptr().add((j0 + j) * w_stride);
                // SAFETY (all arms): rows r0.. of x and j0.. of W exist; this task alone writes
                // columns j0.. of y.
                let add = |r: usize, j: usize, sum: f32| *dst.at((r0 + r) * out_dim + j0 + j) += sum;
                if r_count == 4 && j_count == 4 {
                    let sums = dot_tile::<4, 4>(std::array::from_fn(x_row), std::array::from_fn(w_row), in_dim);
                    (0..4).for_each(|r| (0..4).for_each(|j| add(r, j, sums[r][j])));
                } else {
                    for r in 0..r_count {
                        for j in 0..j_count {
                            add(r, j, dot_tile::<1, 1>([x_row(r)], [w_row(j)], in_dim)[0][0]);
                        }
                    }
                }
            }
        }
    });
}

/// The R x J dot products of R rows of x with J rows of W, `len` values each: sixteen lanes of
/// partial sums each (the last few values through a lane mask), added up at the end.
///
/// # Safety
/// The CPU has AVX-512F; every pointer addresses `len` floats.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn dot_tile<const R: usize, const J: usize>(
    x: [*const f32; R],
    w: [*const f32; J],
    len: usize,
) -> [[f32; J]; R] {
    use std::arch::x86_64::*;
    // Plain loops: closures here would not inherit AVX-512 and would call each intrinsic.
    let mut acc = [[_mm512_setzero_ps(); J]; R];
    let mut c = 0;
    while c < len {
        let mask = super::simd::lanes_below(len - c);
        let mut b = [_mm512_setzero_ps(); J];
        for j in 0..J {
            b[j] = _mm512_maskz_loadu_ps(mask, w[j].add(c));
        }
        for r in 0..R {
            let a = _mm512_maskz_loadu_ps(mask, x[r].add(c));
            for j in 0..J {
                acc[r][j] = _mm512_fmadd_ps(a, b[j], acc[r][j]);
            }
        }
        c += 16;
    }
    let mut sums = [[0f32; J]; R];
    for r in 0..R {
        for j in 0..J {
            sums[r][j] = _mm512_reduce_add_ps(acc[r][j]);
        }
    }
    sums
}

/// Bytes of hidden activations [`mlp_rows`] holds at once. sapiens-0.3b's hidden layer is
/// 48 MiB for its 3072 tokens: whole, it is above glibc's mmap ceiling (32 MiB), so it was
/// mapped afresh and paged in by the kernel in every block, and it set the forward's peak.
/// The presets below it (`small`: 9 MiB, `tiny`: 4.5 MiB) run in one block.
pub const MLP_HIDDEN_BLOCK_BYTES: usize = 16 << 20;

/// Hidden units a block takes at most where the hidden layer does not fit
/// [`MLP_HIDDEN_BLOCK_BYTES`] whole: the block then spans as many rows as fit. In blocks of
/// rows (1024 at sapiens-0.3b), fc2 summed over all 4096 hidden units into only 1024 x 1024
/// outputs, a shape `gemm` runs a fifth below its speed elsewhere; in blocks of 1024 hidden
/// units over all 3072 rows, both products are 3072 x 1024 by 1024.
pub const MLP_HIDDEN_CHUNK: usize = 1024;

/// The block of hidden activations [`mlp_rows`] makes at a time, (rows, hidden units): the
/// whole layer where it fits [`MLP_HIDDEN_BLOCK_BYTES`]; else equal parts of the hidden units,
/// [`MLP_HIDDEN_CHUNK`] at most and whole vectors of 16, over as many rows as fit.
fn mlp_block(rows: usize, hidden: usize) -> (usize, usize) {
    let budget = MLP_HIDDEN_BLOCK_BYTES / 4;
    if rows * hidden <= budget {
        return (rows.max(1), hidden.max(1));
    }
    let parts = hidden.div_ceil(MLP_HIDDEN_CHUNK);
    let units = hidden.div_ceil(parts).next_multiple_of(16).min(hidden);
    ((budget / units).clamp(1, rows), units)
}

/// residual + fc2(GELU(fc1(x))) over row-major slices (x and the residual: rows x d; W1:
/// hidden x d, b1: hidden; W2: d x hidden, b2: d), for inference: the hidden activations in
/// blocks ([`mlp_block`]) in one reused buffer, fc1's product written without its bias and b1
/// added in GELU's pass, each block's fc2 product (its rows, its hidden units' columns of W2)
/// accumulated into the output, which starts from b2 plus the residual (the composed layers add
/// the biases and the residual last: the same terms, summed in another order).
///
/// Panics when the lengths do not fit.
pub fn mlp_rows(x: &[f32], fc1: (&[f32], &[f32]), fc2: (&[f32], &[f32]), residual: &[f32]) -> Vec<f32> {
    let rows = x.len() / fc2.1.len().max(1);
    mlp_rows_in_blocks(x, fc1, fc2, residual, mlp_block(rows, fc1.1.len()))
}

/// [`mlp_rows`] with the hidden activations made `block_rows` rows by `units` hidden units at
/// a time.
fn mlp_rows_in_blocks(
    x: &[f32],
    (w1, b1): (&[f32], &[f32]),
    (w2, b2): (&[f32], &[f32]),
    residual: &[f32],
    (block_rows, units): (usize, usize),
) -> Vec<f32> {
    let (d, hidden) = (b2.len(), b1.len());
    let rows = x.len() / d.max(1);
    assert!(
        x.len() == rows * d && w1.len() == hidden * d && w2.len() == d * hidden && residual.len() == rows * d,
        "mlp_rows: x ({} values), W1 ({}), b1 ({hidden}), W2 ({}), b2 ({d}) and the residual ({}) do not fit",
        x.len(),
        w1.len(),
        w2.len(),
        residual.len()
    );
    let (block_rows, units) = (block_rows.clamp(1, rows.max(1)), units.clamp(1, hidden.max(1)));
    // SAFETY: every row receives b2 plus its residual row: rows x d values.
    let mut y = unsafe { filled_vec(rows * d, |y| start_from_bias(y, b2, Some(residual))) };
    let mut h: Vec<f32> = Vec::with_capacity(block_rows * units);
    for r0 in (0..rows).step_by(block_rows) {
        let n = block_rows.min(rows - r0);
        for c0 in (0..hidden).step_by(units) {
            let c = units.min(hidden - c0);
            h.clear();
            // SAFETY: fc1: n rows of d (x), W1's rows c0 .. c0 + c (c x d, contiguous), n rows of
            // c (h), all of which the product writes.
            unsafe {
                overwrite_product(
                    &mut h.spare_capacity_mut()[..n * c],
                    &x[r0 * d..][..n * d],
                    &w1[c0 * d..][..c * d],
                    d,
                );
                h.set_len(n * c);
            }
            // fc1's bias joins in GELU's pass: starting the product from it was one more pass
            // over the block (the layer's widest activation).
            gelu_rows_with_bias_in_place(&mut h, &b1[c0..c0 + c]);
            // SAFETY: fc2: n rows of c (h), W2's columns c0 .. c0 + c (d rows of c, `hidden`
            // apart, the last ending inside W2), n rows of d (y).
            unsafe { accumulate_product_strided(&mut y[r0 * d..][..n * d], &h, (&w2[c0..], hidden), c) };
        }
    }
    y
}

/// The sums of the columns of a row-major matrix with `cols` columns (a Linear's bias
/// gradient): each task sums a band of rows, the bands' sums are added after.
pub fn column_sums(g: &[f32], cols: usize) -> Vec<f32> {
    const ROWS_PER_TASK: usize = 256;
    let partials: Vec<Vec<f32>> = g
        .par_chunks(cols.max(1) * ROWS_PER_TASK)
        .map(|band| {
            let mut acc = vec![0f32; cols];
            add_rows(&mut acc, band);
            acc
        })
        .collect();
    let mut sums = vec![0f32; cols];
    for p in &partials {
        sums.iter_mut().zip(p).for_each(|(s, v)| *s += v);
    }
    sums
}

/// lhs (m x k) times rhs (k x n) into a new row-major m x n buffer.
fn product(m: usize, n: usize, k: usize, lhs: View, rhs: View) -> Vec<f32> {
    let fill = |dst: &mut [MaybeUninit<f32>]| {
        if k == 0 {
            dst.fill(MaybeUninit::new(0.0));
            return;
        }
        // SAFETY: the callers' views cover m x k and k x n elements of live slices; the
        // destination is this m x n buffer, which an overwriting product never reads.
        unsafe {
            matmul(
                (m, n, k),
                ViewMut::uninit_rows(dst, 0, n),
                lhs,
                rhs,
                1.0,
                Write::Overwrite,
                threads_for_one_product(),
            )
        }
    };
    // SAFETY: the product (or the zero fill) writes all m x n elements.
    unsafe { filled_vec(m * n, fill) }
}

/// dx = dy W (rows x in_dim) of y = x W^T + b from the output gradient dy (rows x out_dim).
///
/// Panics when the lengths do not fit: the product reads through raw pointers.
pub fn input_grad(dy: &[f32], w: &[f32], (rows, in_dim, out_dim): (usize, usize, usize)) -> Vec<f32> {
    assert!(dy.len() == rows * out_dim && w.len() == out_dim * in_dim, "linear::input_grad: dy and W do not fit");
    product(rows, in_dim, out_dim, View::rows(dy, 0, out_dim), View::rows(w, 0, in_dim))
}

/// dW = dy^T x (out_dim x in_dim) and db = the column sums of dy (out_dim), from the layer's
/// input x (rows x in_dim) and its output gradient dy (rows x out_dim).
///
/// Panics when the lengths do not fit: the product reads through raw pointers.
pub fn param_grads(x: &[f32], dy: &[f32], (rows, in_dim, out_dim): (usize, usize, usize)) -> (Vec<f32>, Vec<f32>) {
    assert!(x.len() == rows * in_dim && dy.len() == rows * out_dim, "linear::param_grads: x and dy do not fit");
    let dw = product(out_dim, in_dim, rows, View::rows(dy, 0, out_dim).t(), View::rows(x, 0, in_dim));
    (dw, column_sums(dy, out_dim))
}

/// dx (rows x in), dW (out x in) and db (out) of y = x W^T + b from the output gradient g
/// (rows x out), back to back in one buffer.
pub fn linear_grads(x: &[f32], w: &[f32], g: &[f32], (out_dim, in_dim): (usize, usize)) -> Vec<f32> {
    let rows = x.len() / in_dim.max(1);
    assert!(
        x.len() == rows * in_dim && w.len() == out_dim * in_dim && g.len() == rows * out_dim,
        "linear_grads: x, W and the gradient do not fit"
    );
    let total = (rows + out_dim) * in_dim + out_dim;
    let threads = threads_for_one_product();
    let g_rows = View::rows(g, 0, out_dim);
    let db_sum = column_sums(g, out_dim);
    let fill = |all: &mut [MaybeUninit<f32>]| {
        let (dx, rest) = all.split_at_mut(rows * in_dim);
        let (dw, db) = rest.split_at_mut(out_dim * in_dim);
        // SAFETY: the views cover exactly g (rows x out), W (out x in), x (rows x in) and
        // the dx (rows x in) and dW (out x in) parts of the output, which the products
        // overwrite whole; an empty product's part is zeroed instead.
        unsafe {
            if out_dim > 0 {
                let dst = ViewMut::uninit_rows(dx, 0, in_dim);
                matmul((rows, in_dim, out_dim), dst, g_rows, View::rows(w, 0, in_dim), 1.0, Write::Overwrite, threads);
            } else {
                dx.fill(MaybeUninit::new(0.0));
            }
            if rows > 0 {
                let dst = ViewMut::uninit_rows(dw, 0, in_dim);
                matmul(
                    (out_dim, in_dim, rows),
                    dst,
                    g_rows.t(),
                    View::rows(x, 0, in_dim),
                    1.0,
                    Write::Overwrite,
                    threads,
                );
            } else {
                dw.fill(MaybeUninit::new(0.0));
            }
        }
        db.iter_mut().zip(&db_sum).for_each(|(d, &v)| _ = d.write(v));
    };
    // SAFETY: `fill` writes dx, dW and db whole (above).
    unsafe { filled_vec(total, fill) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::gelu::gelu_in_place;

    fn values(len: usize, seed: u32, spread: f32) -> Vec<f32> {
        let mut state = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
        (0..len)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 17;
                state ^= state << 5;
                spread * ((state % 20_001) as f32 / 10_000.0 - 1.0)
            })
            .collect()
    }

    /// A few rows of x multiplied by W's rows where they lie give the f64 sums within f32's
    /// rounding, with a residual, at shapes that do and do not fill the four-by-four tiles, the
    /// sixteen-value steps and a task's 64 columns; the first row count past the few takes
    /// `gemm` and agrees too.
    #[test]
    fn few_rows_match_f64_sums() {
        for (rows, in_dim, out_dim) in [(16, 384, 2048), (7, 45, 70), (1, 3, 5), (64, 200, 130), (65, 40, 30)] {
            let (x, w, b) = (values(rows * in_dim, 7, 1.0), values(out_dim * in_dim, 8, 0.3), values(out_dim, 9, 1.0));
            let residual = values(rows * out_dim, 10, 1.0);
            let got = linear_rows(&x, &w, &b, in_dim, Some(&residual));
            for r in 0..rows {
                for j in 0..out_dim {
                    let dot: f64 = (0..in_dim).map(|c| x[r * in_dim + c] as f64 * w[j * in_dim + c] as f64).sum();
                    let want = dot + b[j] as f64 + residual[r * out_dim + j] as f64;
                    let error = (got[r * out_dim + j] as f64 - want).abs();
                    assert!(error < 1e-5 * in_dim as f64, "{rows} x {in_dim} -> {out_dim}: ({r}, {j}) off by {error}");
                }
            }
        }
    }

    /// An MLP of these sizes (values from `seed` on, weights within `spread`): its input, the
    /// residual, (W1, b1), (W2, b2), and the output of its layers one after the other.
    struct MlpCase {
        x: Vec<f32>,
        residual: Vec<f32>,
        fc1: (Vec<f32>, Vec<f32>),
        fc2: (Vec<f32>, Vec<f32>),
        want: Vec<f32>,
    }

    fn mlp_case((rows, d, hidden): (usize, usize, usize), seed: u32, spread: f32) -> MlpCase {
        let (x, residual) = (values(rows * d, seed, 1.0), values(rows * d, seed + 1, 1.0));
        let fc1 = (values(hidden * d, seed + 2, spread), values(hidden, seed + 3, spread));
        let fc2 = (values(d * hidden, seed + 4, spread), values(d, seed + 5, spread));
        let mut h = linear_rows(&x, &fc1.0, &fc1.1, d, None);
        gelu_in_place(&mut h);
        let y = linear_rows(&h, &fc2.0, &fc2.1, hidden, None);
        let want = y.iter().zip(&residual).map(|(y, r)| y + r).collect();
        MlpCase { x, residual, fc1, fc2, want }
    }

    #[test]
    fn the_mlp_in_blocks_matches_its_layers_one_after_the_other() {
        let MlpCase { x, residual, fc1: (w1, b1), fc2: (w2, b2), want } = mlp_case((37, 24, 40), 1, 0.4);
        // Blocks of one row, of rows that do not divide the rows, of all rows and more; hidden
        // units one at a time, in parts that do not divide them, whole; and both at once (the
        // rows past 64 take `gemm`, the few rows the dot products).
        let blocks = [(1, 40), (5, 40), (16, 40), (37, 40), (100, 40), (37, 1), (37, 16), (37, 17), (5, 16), (100, 7)];
        for (block_rows, units) in blocks {
            let got = mlp_rows_in_blocks(&x, (&w1, &b1), (&w2, &b2), &residual, (block_rows, units));
            assert_eq!(got.len(), want.len());
            let worst = got.iter().zip(&want).map(|(g, w)| (g - w).abs()).fold(0f32, f32::max);
            assert!(worst < 1e-5, "blocks of {block_rows} rows by {units} units: off by {worst}");
        }
        let whole = mlp_rows(&x, (&w1, &b1), (&w2, &b2), &residual);
        assert!(whole.iter().zip(&want).all(|(g, w)| (g - w).abs() < 1e-5));
        // Past the few rows: fc1 overwriting through `gemm`, fc2 through its strided weight, in
        // one block and in parts of the hidden units.
        let (rows, hidden) = (150, 96);
        let MlpCase { x, residual, fc1: (w1, b1), fc2: (w2, b2), want } = mlp_case((rows, 32, hidden), 7, 0.3);
        for units in [hidden, 32, 40] {
            let got = mlp_rows_in_blocks(&x, (&w1, &b1), (&w2, &b2), &residual, (rows, units));
            let worst = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
            assert!(worst < 1e-5, "150 rows in parts of {units} hidden units: off by {worst}");
        }
    }

    /// The blocks: the whole layer where it fits the budget; else at most 1024 hidden units in
    /// equal parts of whole vectors, over as many rows as fit, never more rows than there are.
    #[test]
    fn the_mlp_takes_blocks_of_hidden_units_where_the_layer_does_not_fit() {
        assert_eq!(mlp_block(1536, 1536), (1536, 1536));
        assert_eq!(mlp_block(3072, 4096), (3072, 1024));
        assert_eq!(mlp_block(24576, 4096), (4096, 1024));
        assert_eq!(mlp_block(3072, 7680), (3072, 960));
        assert_eq!(mlp_block(3072, 6144), (3072, 1024));
        assert_eq!(mlp_block(0, 16), (1, 16));
    }

    #[test]
    #[should_panic(expected = "do not fit")]
    fn an_mlp_whose_shapes_do_not_fit_is_refused() {
        let (x, r) = (values(10, 1, 1.0), values(10, 2, 1.0));
        let (w1, b1, w2, b2) = (values(15, 3, 1.0), values(3, 4, 1.0), values(16, 5, 1.0), values(5, 6, 1.0));
        mlp_rows(&x, (&w1, &b1), (&w2, &b2), &r);
    }
}
