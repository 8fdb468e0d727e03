//! LayerNorm over the last dimension with weight and bias (biased variance, as PyTorch), as
//! one multi-threaded CPU op with its own backward (candle_nn's fused LayerNorm has none), and
//! its composed twin.

use candle_core::{CpuStorage, CustomOp3, Layout, Shape, Tensor, D};

use super::{f32_slice, last_dim};
use crate::kernels::layer_norm::{layer_norm_backward, layer_norm_forward};

/// LayerNorm of x: the fused op on the CPU, the composed one elsewhere.
pub fn layer_norm(x: &Tensor, weight: &Tensor, bias: &Tensor, eps: f64) -> candle_core::Result<Tensor> {
    if !super::dispatch::fused(&[x, weight, bias]) {
        return layer_norm_composed(x, weight, bias, eps);
    }
    x.contiguous()?.apply_op3(&weight.contiguous()?, &bias.contiguous()?, LayerNormOp { eps: eps as f32 })
}

/// LayerNorm from candle's primitive ops (differentiable), for other devices.
pub fn layer_norm_composed(x: &Tensor, weight: &Tensor, bias: &Tensor, eps: f64) -> candle_core::Result<Tensor> {
    let mean = x.mean_keepdim(D::Minus1)?;
    let centred = x.broadcast_sub(&mean)?;
    let var = centred.sqr()?.mean_keepdim(D::Minus1)?;
    let normed = centred.broadcast_div(&(var + eps)?.sqrt()?)?;
    normed.broadcast_mul(weight)?.broadcast_add(bias)
}

/// ReLU as PyTorch computes it: max(x, 0) with NaN kept and a zero gradient at 0. candle's own
/// `relu` maps NaN to 0: a diverged encoder would then reach the head as zeros, and the loss
/// would stay finite, hiding the divergence from the trainer's non-finite-loss check.
pub fn relu(x: &Tensor) -> candle_core::Result<Tensor> {
    let keep = x.gt(0.0)?.maximum(&x.ne(x)?)?; // x > 0, or x is NaN
    keep.where_cond(x, &x.zeros_like()?)
}

struct LayerNormOp {
    eps: f32,
}

impl CustomOp3 for LayerNormOp {
    fn name(&self) -> &'static str {
        "fused-layer-norm"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (x, w, b) =
            (f32_slice(s1, l1, self.name())?, f32_slice(s2, l2, self.name())?, f32_slice(s3, l3, self.name())?);
        let n = last_dim(l1);
        if w.len() != n || b.len() != n {
            candle_core::bail!("{}: weight and bias must have {n} values", self.name());
        }
        Ok((CpuStorage::F32(layer_norm_forward(x, w, b, self.eps)), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let n = x.dim(D::Minus1)?;
        let rows = x.elem_count() / n;
        // One op computes all three: the rows of dx, then dw, then db.
        let all = x.contiguous()?.apply_op3_no_bwd(
            &w.contiguous()?,
            &grad.contiguous()?,
            &LayerNormGrad { eps: self.eps },
        )?;
        let dx = all.narrow(0, 0, rows)?.reshape(x.shape())?;
        let dw = all.narrow(0, rows, 1)?.reshape(n)?;
        let db = all.narrow(0, rows + 1, 1)?.reshape(n)?;
        Ok((Some(dx), Some(dw), Some(db)))
    }
}

/// From x, w and the output gradient g: dx = rstd (gw - mean(gw) - xhat mean(gw xhat)) per row
/// with gw = g w, dw = sum over rows of g xhat, db = sum of g. Output (rows + 2, n).
struct LayerNormGrad {
    eps: f32,
}

impl CustomOp3 for LayerNormGrad {
    fn name(&self) -> &'static str {
        "fused-layer-norm-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (x, w, g) =
            (f32_slice(s1, l1, self.name())?, f32_slice(s2, l2, self.name())?, f32_slice(s3, l3, self.name())?);
        let n = last_dim(l1);
        let rows = x.len() / n;
        let mut out = vec![0f32; (rows + 2) * n];
        let (dx, sums) = out.split_at_mut(rows * n);
        sums.copy_from_slice(&layer_norm_backward(dx, false, x, g, w, self.eps));
        Ok((CpuStorage::F32(out), Shape::from((rows + 2, n))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::testing::max_diff;
    use candle_core::{Device, Var};

    #[test]
    fn fused_layer_norm_matches_composed_forward_and_all_three_gradients() {
        let dev = Device::Cpu;
        let var = |t: Tensor| Var::from_tensor(&t).unwrap();
        let x = var((Tensor::randn(0f32, 1.0, (2, 7, 40), &dev).unwrap() * 3.0).unwrap());
        let w = var(Tensor::randn(1f32, 0.3, 40, &dev).unwrap());
        let b = var(Tensor::randn(0f32, 0.3, 40, &dev).unwrap());
        let up = Tensor::randn(0f32, 1.0, (2, 7, 40), &dev).unwrap();
        let fused = layer_norm(&x, &w, &b, 1e-6).unwrap();
        let composed = layer_norm_composed(&x, &w, &b, 1e-6).unwrap();
        assert!(max_diff(&fused, &composed) < 1e-5, "forward differs by {}", max_diff(&fused, &composed));
        let ga = (fused * &up).unwrap().sum_all().unwrap().backward().unwrap();
        let gb = (composed * &up).unwrap().sum_all().unwrap().backward().unwrap();
        for (name, v) in [("x", &x), ("weight", &w), ("bias", &b)] {
            let (a, c) = (ga.get(v.as_tensor()).unwrap(), gb.get(v.as_tensor()).unwrap());
            assert!(max_diff(a, c) < 2e-4, "gradient of {name} differs by {}", max_diff(a, c));
        }
    }
}
