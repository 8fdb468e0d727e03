//! GELU, exact (erf) form as PyTorch's `nn.GELU()` (candle's `gelu()` is the tanh
//! approximation), as one multi-threaded CPU op with its own backward.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Shape, Tensor};

use super::f32_slice;
use crate::kernels::gelu::{gelu_backward, gelu_forward};

/// GELU of x: the fused op on the CPU, candle's `gelu_erf` elsewhere.
pub fn gelu_erf(x: &Tensor) -> candle_core::Result<Tensor> {
    if !super::dispatch::fused(&[x]) {
        return x.gelu_erf();
    }
    x.contiguous()?.apply_op1(GeluErf)
}

struct GeluErf;

impl CustomOp1 for GeluErf {
    fn name(&self) -> &'static str {
        "fused-gelu-erf"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = f32_slice(storage, layout, self.name())?;
        Ok((CpuStorage::F32(gelu_forward(x)), layout.shape().clone()))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> candle_core::Result<Option<Tensor>> {
        Ok(Some(arg.contiguous()?.apply_op2_no_bwd(&grad_res.contiguous()?, &GeluErfGrad)?))
    }
}

/// d/dx [x Phi(x)] = Phi(x) + x phi(x), times the incoming gradient.
struct GeluErfGrad;

impl CustomOp2 for GeluErfGrad {
    fn name(&self) -> &'static str {
        "fused-gelu-erf-grad"
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
        Ok((CpuStorage::F32(gelu_backward(x, g)), l1.shape().clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::testing::check;

    #[test]
    fn fused_gelu_matches_candle_forward_and_backward() {
        check(gelu_erf, |x| x.gelu_erf(), 3.0);
    }
}
