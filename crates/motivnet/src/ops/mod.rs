//! The model's custom candle ops, one file each, with their own backward and their composed
//! twin (candle's primitive ops, device-generic: what a GPU runs) beside them. Which of the two
//! runs is decided in one place, [`dispatch`]. The arithmetic is in `crate::kernels`.

pub mod attention;
pub mod dispatch;
pub mod elementwise;
pub mod gelu;
pub mod heads;
pub mod layer_norm;
pub mod linear;
pub mod patches;
pub mod pixels;
pub mod relu;
pub mod softmax;

use candle_core::{CpuStorage, Layout};

/// The f32 values of a contiguous CPU tensor, or an error naming the op.
pub(crate) fn f32_slice<'a>(storage: &'a CpuStorage, layout: &Layout, op: &str) -> candle_core::Result<&'a [f32]> {
    let CpuStorage::F32(values) = storage else { candle_core::bail!("{op}: expected f32 input") };
    let Some((start, end)) = layout.contiguous_offsets() else { candle_core::bail!("{op}: input must be contiguous") };
    Ok(&values[start..end])
}

/// The length of the last dimension (at least 1).
pub(crate) fn last_dim(layout: &Layout) -> usize {
    layout.dims().last().copied().unwrap_or(1).max(1)
}

/// A kernel's complaint as a candle error.
pub(crate) fn kernel_err(msg: String) -> candle_core::Error {
    candle_core::Error::Msg(msg)
}

#[cfg(test)]
pub(crate) mod testing {
    use candle_core::{Device, Tensor, Var};

    pub fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap()
    }

    /// Forward values and the gradient of sum(f(x) * w) agree between two implementations.
    pub fn check(
        fused: impl Fn(&Tensor) -> candle_core::Result<Tensor>,
        composed: impl Fn(&Tensor) -> candle_core::Result<Tensor>,
        scale: f64,
    ) {
        let dev = Device::Cpu;
        let x = Var::from_tensor(&(Tensor::randn(0f32, 1.0, (3, 5, 37), &dev).unwrap() * scale).unwrap()).unwrap();
        let w = Tensor::randn(0f32, 1.0, (3, 5, 37), &dev).unwrap();
        let (a, b) = (fused(x.as_tensor()).unwrap(), composed(x.as_tensor()).unwrap());
        assert!(max_diff(&a, &b) < 1e-5, "forward differs by {}", max_diff(&a, &b));
        let ga = (a * &w).unwrap().sum_all().unwrap().backward().unwrap();
        let gb = (b * &w).unwrap().sum_all().unwrap().backward().unwrap();
        let (ga, gb) = (ga.get(x.as_tensor()).unwrap(), gb.get(x.as_tensor()).unwrap());
        assert!(max_diff(ga, gb) < 1e-5, "gradient differs by {}", max_diff(ga, gb));
    }
}
