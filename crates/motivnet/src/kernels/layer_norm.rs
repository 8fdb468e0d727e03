//! LayerNorm over the last dimension (biased variance, as PyTorch) and its backward, over
//! row-major slices.

use rayon::prelude::*;

use super::math::lane_sum;
use super::CHUNK;

/// LayerNorm of each `w.len()`-long row of `x`, on all threads.
pub fn layer_norm_forward(x: &[f32], w: &[f32], b: &[f32], eps: f32) -> Vec<f32> {
    let n = w.len().max(1);
    assert!(b.len() == w.len() && x.len().is_multiple_of(n), "layer_norm_forward: x, weight and bias do not fit");
    let rows_per_task = (CHUNK / n).max(1);
    let mut out = vec![0f32; x.len()];
    out.par_chunks_mut(n * rows_per_task)
        .zip(x.par_chunks(n * rows_per_task))
        .for_each(|(o, x)| layer_norm_rows(o, x, w, b, eps));
    out
}

/// LayerNorm of one row `x` into `out` (w.len() values each), the values
/// [`layer_norm_forward`] gives it: for a product that normalizes its input rows as it reads
/// them ([`super::amx::Lhs::Normalized`]).
pub fn layer_norm_row(out: &mut [f32], x: &[f32], w: &[f32], b: &[f32], eps: f32) {
    assert!(out.len() == w.len() && x.len() == w.len() && b.len() == w.len(), "layer_norm_row: lengths do not fit");
    layer_norm_rows(out, x, w, b, eps);
}

/// LayerNorm's backward on all threads: writes (or with `accumulate`, adds) dx into `dx` and
/// returns dw and db back to back (2n values).
pub fn layer_norm_backward(dx: &mut [f32], accumulate: bool, x: &[f32], g: &[f32], w: &[f32], eps: f32) -> Vec<f32> {
    let n = w.len().max(1);
    assert!(
        x.len().is_multiple_of(n) && g.len() == x.len() && dx.len() == x.len(),
        "layer_norm_backward: lengths do not fit"
    );
    let rows_per_task = (CHUNK / n).max(1);
    // Each task returns its partial dw and db; they are added up after.
    let partials: Vec<Vec<f32>> = dx
        .par_chunks_mut(n * rows_per_task)
        .zip(x.par_chunks(n * rows_per_task).zip(g.par_chunks(n * rows_per_task)))
        .map(|(dx, (x, g))| {
            let (mut acc, mut xhat) = (vec![0f32; 2 * n], vec![0f32; n]);
            layer_norm_grad_rows(dx, accumulate, x, g, w, eps, &mut acc, &mut xhat);
            acc
        })
        .collect();
    let mut sums = vec![0f32; 2 * n];
    for p in partials {
        sums.iter_mut().zip(&p).for_each(|(s, v)| *s += v);
    }
    sums
}

/// Mean and 1/std of one row.
#[inline(always)]
fn row_stats(x: &[f32], eps: f32) -> (f32, f32) {
    let n = x.len() as f32;
    let mean = lane_sum([x], |[v]| v) / n;
    let var = lane_sum([x], |[v]| (v - mean) * (v - mean)) / n;
    (mean, 1.0 / (var + eps).sqrt())
}

crate::simd_dispatch! {
    /// LayerNorm of each `w.len()`-long row of `x` into `out`.
    fn layer_norm_rows(out: &mut [f32], x: &[f32], w: &[f32], b: &[f32], eps: f32) {
        let n = w.len();
        for (o, x) in out.chunks_mut(n).zip(x.chunks(n)) {
            let (mean, rstd) = row_stats(x, eps);
            for (((o, &x), &w), &b) in o.iter_mut().zip(x).zip(w).zip(b) {
                *o = (x - mean) * rstd * w + b;
            }
        }
    }
}

crate::simd_dispatch! {
    /// dx of each row into `dx` (added to it with `accumulate`); adds the rows' dw terms to
    /// acc[..n] and db terms to acc[n..].
    fn layer_norm_grad_rows(
        dx: &mut [f32],
        accumulate: bool,
        x: &[f32],
        g: &[f32],
        w: &[f32],
        eps: f32,
        acc: &mut [f32],
        xhat: &mut [f32],
    ) {
        let n = w.len();
        for ((dx, x), g) in dx.chunks_mut(n).zip(x.chunks(n)).zip(g.chunks(n)) {
            let (mean, rstd) = row_stats(x, eps);
            // Zipped slices, not indices: the loops vectorise without a bounds check a value.
            for (h, &x) in xhat.iter_mut().zip(x) {
                *h = (x - mean) * rstd;
            }
            let mean_gw = lane_sum([g, w], |[g, w]| g * w) / n as f32;
            let mean_gw_xhat = lane_sum([g, w, xhat], |[g, w, xhat]| g * w * xhat) / n as f32;
            let (dw, db) = acc.split_at_mut(n);
            for (((dw, db), &g), &h) in dw.iter_mut().zip(db.iter_mut()).zip(g).zip(xhat.iter()) {
                *dw += g * h;
                *db += g;
            }
            let terms = dx.iter_mut().zip(g).zip(w).zip(xhat.iter());
            if accumulate {
                for (((dx, &g), &w), &h) in terms {
                    *dx += rstd * (g * w - mean_gw - h * mean_gw_xhat);
                }
            } else {
                for (((dx, &g), &w), &h) in terms {
                    *dx = rstd * (g * w - mean_gw - h * mean_gw_xhat);
                }
            }
        }
    }
}
