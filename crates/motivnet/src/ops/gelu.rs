//! GELU, exact (erf) form as PyTorch's `nn.GELU()` (candle's `gelu()` is the tanh
//! approximation), as one multi-threaded CPU op with its own backward.

use candle_core::Tensor;

use super::elementwise::Activation;
use crate::kernels::gelu::{gelu_backward, gelu_forward};

/// d/dx [x Phi(x)] = Phi(x) + x phi(x), times the incoming gradient, in the backward.
static GELU_ERF: Activation =
    Activation { op: "fused-gelu-erf", grad_op: "fused-gelu-erf-grad", forward: gelu_forward, backward: gelu_backward };

/// GELU of x: the fused op on the CPU, candle's `gelu_erf` elsewhere.
pub fn gelu_erf(x: &Tensor) -> candle_core::Result<Tensor> {
    if !super::dispatch::fused(&[x]) {
        return x.gelu_erf();
    }
    GELU_ERF.apply(x)
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
