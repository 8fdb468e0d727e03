//! Softmax over the last dimension, as one multi-threaded CPU op with its own backward
//! (candle's fused `softmax_last_dim` has none), and its composed twin.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Shape, Tensor, D};

use super::{f32_slice, last_dim};
use crate::kernels::softmax::{softmax_backward, softmax_forward};

/// Softmax over the last dimension: the fused op on the CPU, the composed one elsewhere.
pub fn softmax_last_dim(x: &Tensor) -> candle_core::Result<Tensor> {
    if !super::dispatch::fused(&[x]) {
        return softmax_composed(x);
    }
    x.contiguous()?.apply_op1(SoftmaxLastDim)
}

/// Softmax from candle's primitive ops, for other devices. The max is detached: it only guards
/// exp() against overflow, and differentiating through it adds rounding noise and work for no
/// gradient.
pub fn softmax_composed(x: &Tensor) -> candle_core::Result<Tensor> {
    let max = x.max_keepdim(D::Minus1)?.detach();
    let e = x.broadcast_sub(&max)?.exp()?;
    e.broadcast_div(&e.sum_keepdim(D::Minus1)?)
}

struct SoftmaxLastDim;

impl CustomOp1 for SoftmaxLastDim {
    fn name(&self) -> &'static str {
        "fused-softmax-last-dim"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = f32_slice(storage, layout, self.name())?;
        Ok((CpuStorage::F32(softmax_forward(x, last_dim(layout))), layout.shape().clone()))
    }

    fn bwd(&self, _arg: &Tensor, res: &Tensor, grad_res: &Tensor) -> candle_core::Result<Option<Tensor>> {
        Ok(Some(res.contiguous()?.apply_op2_no_bwd(&grad_res.contiguous()?, &SoftmaxGrad)?))
    }
}

/// dx = y * (g - sum(g * y)) per row, from the softmax output y and the incoming gradient g.
struct SoftmaxGrad;

impl CustomOp2 for SoftmaxGrad {
    fn name(&self) -> &'static str {
        "fused-softmax-last-dim-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (y, g) = (f32_slice(s1, l1, self.name())?, f32_slice(s2, l2, self.name())?);
        if y.len() != g.len() {
            candle_core::bail!("{}: output has {} values, gradient {}", self.name(), y.len(), g.len());
        }
        Ok((CpuStorage::F32(softmax_backward(y, g, last_dim(l1))), l1.shape().clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::testing::{check, max_diff};
    use candle_core::Device;

    #[test]
    fn fused_softmax_matches_composed_forward_and_backward() {
        check(softmax_last_dim, softmax_composed, 4.0);
    }

    #[test]
    fn strided_input_falls_back_to_a_contiguous_copy() {
        let x = Tensor::randn(0f32, 1.0, (4, 6), &Device::Cpu).unwrap().t().unwrap();
        let (a, b) = (softmax_last_dim(&x).unwrap(), softmax_composed(&x).unwrap());
        assert!(max_diff(&a, &b) < 1e-6);
    }
}
