//! An element-wise activation as one CPU op with its own backward, from a forward kernel
//! (y = f(x)) and a backward kernel (dx = f'(x) * dy) over f32 slices: what GELU and ReLU
//! share. The backward reads x, not y, so the op keeps only its input.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Shape, Tensor};

use super::f32_slice;

/// The kernels and names of one activation.
pub struct Activation {
    pub op: &'static str,
    pub grad_op: &'static str,
    pub forward: fn(&[f32]) -> Vec<f32>,
    pub backward: fn(&[f32], &[f32]) -> Vec<f32>,
}

impl Activation {
    /// The activation of x (f32 on the CPU), with its backward.
    pub fn apply(&'static self, x: &Tensor) -> candle_core::Result<Tensor> {
        x.contiguous()?.apply_op1(Forward(self))
    }
}

struct Forward(&'static Activation);

impl CustomOp1 for Forward {
    fn name(&self) -> &'static str {
        self.0.op
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = f32_slice(storage, layout, self.name())?;
        Ok((CpuStorage::F32((self.0.forward)(x)), layout.shape().clone()))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> candle_core::Result<Option<Tensor>> {
        Ok(Some(arg.contiguous()?.apply_op2_no_bwd(&grad_res.contiguous()?, &Backward(self.0))?))
    }
}

/// dx from x and the incoming gradient.
struct Backward(&'static Activation);

impl CustomOp2 for Backward {
    fn name(&self) -> &'static str {
        self.0.grad_op
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
        Ok((CpuStorage::F32((self.0.backward)(x, g)), l1.shape().clone()))
    }
}
