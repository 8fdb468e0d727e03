//! GELU, exact (erf) form as PyTorch's `nn.GELU()`, and its derivative, over slices.

use std::mem::MaybeUninit;

use rayon::prelude::*;

use super::gemm::filled_vec;
use super::math::{erf_fast, exp_fast, FRAC_1_SQRT_2PI};
use super::CHUNK;

#[inline(always)]
fn gelu_value(v: f32) -> f32 {
    0.5 * v * (1.0 + erf_fast(v * std::f32::consts::FRAC_1_SQRT_2))
}

crate::simd_dispatch! {
    /// GELU of each value of `x` into `out` (which may be fresh, unwritten memory).
    fn gelu_chunk(out: &mut [MaybeUninit<f32>], x: &[f32]) {
        for (o, &v) in out.iter_mut().zip(x) {
            o.write(gelu_value(v));
        }
    }
}

crate::simd_dispatch! {
    /// GELU of each value, in place.
    pub fn gelu_in_place(x: &mut [f32]) {
        for v in x.iter_mut() {
            *v = gelu_value(*v);
        }
    }
}

crate::simd_dispatch! {
    /// The gradient through GELU: `grad` times GELU's derivative at `x`, into `out`.
    pub fn gelu_grad_chunk(out: &mut [MaybeUninit<f32>], x: &[f32], grad: &[f32]) {
        for ((o, &v), &g) in out.iter_mut().zip(x).zip(grad) {
            let cdf = 0.5 * (1.0 + erf_fast(v * std::f32::consts::FRAC_1_SQRT_2));
            let pdf = FRAC_1_SQRT_2PI * exp_fast(-0.5 * v * v);
            o.write(g * (cdf + v * pdf));
        }
    }
}

/// GELU of each value, on all threads.
pub fn gelu_forward(x: &[f32]) -> Vec<f32> {
    // SAFETY: the chunks of `out` pair up with those of `x`, which has len() elements.
    unsafe {
        filled_vec(x.len(), |out| {
            out.par_chunks_mut(CHUNK).zip(x.par_chunks(CHUNK)).for_each(|(o, x)| gelu_chunk(o, x))
        })
    }
}

/// `grad` times GELU's derivative at `x`, element-wise, on all threads. Panics when the two
/// differ in length (the output is filled only where both reach).
pub fn gelu_backward(x: &[f32], grad: &[f32]) -> Vec<f32> {
    assert_eq!(x.len(), grad.len(), "gelu_backward: input and gradient lengths differ");
    // SAFETY: the chunks of `out` pair up with those of `x`, which has len() elements.
    unsafe {
        filled_vec(x.len(), |out| {
            out.par_chunks_mut(CHUNK)
                .zip(x.par_chunks(CHUNK).zip(grad.par_chunks(CHUNK)))
                .for_each(|(o, (x, g))| gelu_grad_chunk(o, x, g))
        })
    }
}
