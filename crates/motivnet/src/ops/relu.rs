//! ReLU as PyTorch computes it: max(x, 0) with NaN kept, gradient 0 at 0. candle's own
//! `relu` maps NaN to 0: a diverged encoder would then reach the head as zeros, and the loss
//! would stay finite, hiding the divergence from the trainer's non-finite-loss check. One
//! multi-threaded CPU op with its own backward, and its composed twin.

use candle_core::Tensor;

use super::elementwise::Activation;
use crate::kernels::math::{relu_backward, relu_forward};

static RELU: Activation =
    Activation { op: "fused-relu", grad_op: "fused-relu-grad", forward: relu_forward, backward: relu_backward };

/// ReLU of x: the fused op on the CPU, the composed one elsewhere.
pub fn relu(x: &Tensor) -> candle_core::Result<Tensor> {
    if !super::dispatch::fused(&[x]) {
        return relu_composed(x);
    }
    RELU.apply(x)
}

/// The same from candle's primitive ops (device-generic).
pub fn relu_composed(x: &Tensor) -> candle_core::Result<Tensor> {
    let keep = x.gt(0.0)?.maximum(&x.ne(x)?)?; // x > 0, or x is NaN
    keep.where_cond(x, &x.zeros_like()?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::testing::check;
    use candle_core::{Device, Var};

    #[test]
    fn fused_relu_matches_composed_forward_and_backward() {
        check(relu, relu_composed, 2.0);
    }

    #[test]
    fn relu_keeps_nan_and_has_pytorchs_gradient_on_both_paths() {
        for path in ["fused", "composed"] {
            let f = if path == "fused" { relu } else { relu_composed };
            let x =
                Var::new(&[-2f32, -0.0, 0.0, 0.5, f32::NAN, f32::INFINITY, f32::NEG_INFINITY], &Device::Cpu).unwrap();
            let y = f(x.as_tensor()).unwrap().to_vec1::<f32>().unwrap();
            assert_eq!(&y[..4], &[0.0, 0.0, 0.0, 0.5], "{path}");
            assert!(y[4].is_nan(), "{path}: NaN must pass through, as in PyTorch");
            assert_eq!(&y[5..], &[f32::INFINITY, 0.0], "{path}");
            let grads = f(x.as_tensor()).unwrap().sum_all().unwrap().backward().unwrap();
            let g = grads.get(x.as_tensor()).unwrap().to_vec1::<f32>().unwrap();
            assert_eq!(&g[..4], &[0.0, 0.0, 0.0, 1.0], "{path}: zero at 0, as PyTorch");
        }
    }
}
