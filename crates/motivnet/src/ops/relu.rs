//! ReLU as PyTorch computes it: max(x, 0) with NaN kept, gradient 0 at 0. candle's own
//! `relu` maps NaN to 0: a diverged encoder would then reach the head as zeros, and the loss
//! would stay finite, hiding the divergence from the trainer's non-finite-loss check. One
//! multi-threaded CPU op with its own backward, and its composed twin.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Shape, Tensor};

use super::f32_slice;
use crate::kernels::math::{relu_backward, relu_forward};

/// ReLU of x: the fused op on the CPU, the composed one elsewhere.
pub fn relu(x: &Tensor) -> candle_core::Result<Tensor> {
    if !super::dispatch::fused(&[x]) {
        return relu_composed(x);
    }
    x.contiguous()?.apply_op1(Relu)
}

/// The same from candle's primitive ops (device-generic).
pub fn relu_composed(x: &Tensor) -> candle_core::Result<Tensor> {
    let keep = x.gt(0.0)?.maximum(&x.ne(x)?)?; // x > 0, or x is NaN
    keep.where_cond(x, &x.zeros_like()?)
}

struct Relu;

impl CustomOp1 for Relu {
    fn name(&self) -> &'static str {
        "fused-relu"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = f32_slice(storage, layout, self.name())?;
        Ok((CpuStorage::F32(relu_forward(x)), layout.shape().clone()))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> candle_core::Result<Option<Tensor>> {
        Ok(Some(arg.contiguous()?.apply_op2_no_bwd(&grad_res.contiguous()?, &ReluGrad)?))
    }
}

struct ReluGrad;

impl CustomOp2 for ReluGrad {
    fn name(&self) -> &'static str {
        "fused-relu-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (x, g) = (f32_slice(s1, l1, self.name())?, f32_slice(s2, l2, self.name())?);
        if x.len() != g.len() {
            candle_core::bail!("{}: input has {} values, gradient {}", self.name(), x.len(), g.len());
        }
        Ok((CpuStorage::F32(relu_backward(x, g)), l1.shape().clone()))
    }
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
