//! A Linear layer y = x W^T + b over row-major slices, and its gradients.

use std::mem::MaybeUninit;

use rayon::prelude::*;

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
    let rows = x.len() / in_dim.max(1);
    let out_dim = b.len();
    assert!(x.len() == rows * in_dim && w.len() == out_dim * in_dim, "linear_rows: x, W and b do not fit");
    assert!(residual.is_none_or(|r| r.len() == rows * out_dim), "linear_rows: residual does not fit the output");
    let width = out_dim.max(1);
    // SAFETY: every row receives the bias (plus its residual row): rows x out_dim values.
    let mut y = unsafe {
        filled_vec(rows * out_dim, |y| match residual {
            None => y.par_chunks_mut(width * 64).for_each(|block| {
                block.chunks_mut(width).for_each(|r| r.iter_mut().zip(b).for_each(|(o, &v)| _ = o.write(v)))
            }),
            Some(res) => y.par_chunks_mut(width * 64).zip(res.par_chunks(width * 64)).for_each(|(block, res)| {
                block
                    .chunks_mut(width)
                    .zip(res.chunks(width))
                    .for_each(|(r, res)| r.iter_mut().zip(b).zip(res).for_each(|((o, &v), &x)| _ = o.write(v + x)))
            }),
        })
    };
    if in_dim > 0 {
        // SAFETY: the views cover exactly x (rows x in), W (out x in) and y (rows x out).
        unsafe {
            matmul(
                (rows, out_dim, in_dim),
                ViewMut::rows(&mut y, 0, out_dim),
                View::rows(x, 0, in_dim),
                View::rows(w, 0, in_dim).t(),
                1.0,
                Write::Accumulate,
                threads_for_one_product(),
            );
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
