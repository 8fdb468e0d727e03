//! A Linear layer y = x W^T + b and its gradients with the products on AMX tiles: what
//! `precision: 'bf16'` trains the encoder with on a CPU that has them.
//!
//! As `torch.autocast(bfloat16)` runs a Linear and its backward, each of the three products
//! rounds its operands to bf16 and sums in f32: y = x W^T, dx = dy W and dW = dy^T x. The
//! weight, the bias and its gradient (the column sums of dy, in f32), and everything between
//! the products stay f32. The weight is packed for each product from its current f32 values
//! (the optimizer changes them every step), twice a step: as W^T for y, as W for dx.

use super::amx::{self, Bf16Rows, Finish, Lhs, PackedB, Rows};
use super::linear::column_sums;

/// x W^T + b [+ residual] (x: rows x in_dim, W: out x in_dim, residual: rows x out), the
/// values of [`super::linear::linear_rows`] with bf16 operands.
///
/// Panics where the CPU has no AMX, or when the lengths do not fit.
pub fn linear_rows(x: &[f32], w: &[f32], b: &[f32], in_dim: usize, residual: Option<&[f32]>) -> Vec<f32> {
    let out_dim = b.len();
    let a = Rows::contiguous(x, in_dim);
    assert!(
        x.len() == a.rows * in_dim && w.len() == out_dim * in_dim,
        "linear_bf16::linear_rows: x, W and b do not fit"
    );
    let packed = PackedB::from_weight(w, out_dim, in_dim);
    amx::linear_rows_bf16(Lhs::F32 { rows: a, scale: 1.0 }, &packed, b, residual.map_or(Finish::None, Finish::Add))
}

/// dx = dy W (rows x in_dim) from the output gradient dy (rows x out_dim).
///
/// Panics where the CPU has no AMX, or when the lengths do not fit.
pub fn input_grad(dy: &[f32], w: &[f32], (rows, in_dim, out_dim): (usize, usize, usize)) -> Vec<f32> {
    assert!(dy.len() == rows * out_dim && w.len() == out_dim * in_dim, "linear_bf16::input_grad: dy and W do not fit");
    let packed = PackedB::from_rows(w, 0, in_dim, out_dim, in_dim, true);
    amx::product_rows_bf16(Lhs::F32 { rows: Rows::contiguous(dy, out_dim), scale: 1.0 }, &packed)
}

/// dW = dy^T x (out_dim x in_dim) and db = the column sums of dy (out_dim), from the layer's
/// input x (rows x in_dim) and its output gradient dy (rows x out_dim). dy^T is rounded
/// straight into the tiles' layout ([`Bf16Rows::set_transposed`]); x is packed as B from its
/// rows.
///
/// Panics where the CPU has no AMX, or when the lengths do not fit.
pub fn param_grads(x: &[f32], dy: &[f32], (rows, in_dim, out_dim): (usize, usize, usize)) -> (Vec<f32>, Vec<f32>) {
    assert!(x.len() == rows * in_dim && dy.len() == rows * out_dim, "linear_bf16::param_grads: x and dy do not fit");
    // The calling thread's buffer for dy^T, reused from layer to layer and step to step: a
    // fresh one is a zero-filled allocation of up to a few MB each call, which the transpose
    // then overwrites.
    let mut dy_t = TRANSPOSED.with(|cell| cell.take());
    dy_t.set_transposed(dy, rows, out_dim, true);
    let packed = PackedB::from_rows(x, 0, in_dim, rows, in_dim, true);
    let dw = amx::product_rows_bf16(Lhs::Bf16(&dy_t), &packed);
    TRANSPOSED.with(|cell| cell.replace(dy_t));
    (dw, column_sums(dy, out_dim))
}

thread_local! {
    static TRANSPOSED: std::cell::RefCell<Bf16Rows> = std::cell::RefCell::new(Bf16Rows::default());
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::amx::{checkable_here, from_bf16, to_bf16};

    fn rounded(v: &[f32]) -> Vec<f32> {
        v.iter().map(|&x| from_bf16(to_bf16(x))).collect()
    }

    /// a (m x k) times b (k x n), both row-major, summed in f64.
    fn exact_product(a: &[f32], b: &[f32], (m, n, k): (usize, usize, usize)) -> Vec<f32> {
        let mut c = vec![0f32; m * n];
        for i in 0..m {
            for j in 0..n {
                c[i * n + j] = (0..k).map(|t| a[i * k + t] as f64 * b[t * n + j] as f64).sum::<f64>() as f32;
            }
        }
        c
    }

    fn transpose(v: &[f32], rows: usize, cols: usize) -> Vec<f32> {
        (0..cols * rows).map(|i| v[(i % rows) * cols + i / rows]).collect()
    }

    fn assert_close(got: &[f32], want: &[f32], what: &str) {
        assert_eq!(got.len(), want.len(), "{what}: length");
        let scale = want.iter().fold(1e-6f32, |m, v| m.max(v.abs()));
        let worst = got.iter().zip(want).fold(0f32, |m, (g, w)| m.max((g - w).abs()));
        assert!(worst <= 1e-4 * scale, "{what}: off by {worst} (largest value {scale})");
    }

    /// All three products against f64 sums of the bf16-rounded operands, at sizes that are and
    /// are not multiples of the tiles (and a gradient wider than B's column blocks split over
    /// the threads); the bias gradient is dy's column sums.
    #[test]
    fn forward_and_gradients_are_the_products_of_the_rounded_operands() {
        if !checkable_here("the bf16 Linear") {
            return;
        }
        for (rows, in_dim, out_dim) in [(64, 32, 32), (70, 45, 100), (3, 7, 5), (300, 96, 40)] {
            let value = |seed: usize, i: usize| ((i * seed) % 211) as f32 * 0.013 - 1.3;
            let x: Vec<f32> = (0..rows * in_dim).map(|i| value(7919, i)).collect();
            let w: Vec<f32> = (0..out_dim * in_dim).map(|i| value(104_729, i)).collect();
            let b: Vec<f32> = (0..out_dim).map(|j| j as f32 * 0.25).collect();
            let dy: Vec<f32> = (0..rows * out_dim).map(|i| value(15_485_863, i)).collect();
            let residual: Vec<f32> = (0..rows * out_dim).map(|i| value(31, i)).collect();
            let (xr, wr, dyr) = (rounded(&x), rounded(&w), rounded(&dy));

            let mut want_y = exact_product(&xr, &transpose(&wr, out_dim, in_dim), (rows, out_dim, in_dim));
            for (i, v) in want_y.iter_mut().enumerate() {
                *v += b[i % out_dim] + residual[i];
            }
            assert_close(&linear_rows(&x, &w, &b, in_dim, Some(&residual)), &want_y, "y");

            let want_dx = exact_product(&dyr, &wr, (rows, in_dim, out_dim));
            assert_close(&input_grad(&dy, &w, (rows, in_dim, out_dim)), &want_dx, "dx");

            let want_dw = exact_product(&transpose(&dyr, rows, out_dim), &xr, (out_dim, in_dim, rows));
            let (dw, db) = param_grads(&x, &dy, (rows, in_dim, out_dim));
            assert_close(&dw, &want_dw, "dW");
            let want_db: Vec<f32> = (0..out_dim).map(|j| (0..rows).map(|r| dy[r * out_dim + j]).sum()).collect();
            assert_close(&db, &want_db, "db");
        }
    }
}
