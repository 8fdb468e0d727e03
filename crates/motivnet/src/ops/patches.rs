//! Cutting images into the rows of the patch-embedding matmul.
//!
//! The Sapiens patch embedding is a stride-k, kernel-k conv with padding p. As a matmul, each
//! output token is one row of 3 x k x k pixels. Built from candle ops this is two zero pads,
//! two narrows and a 6-D permute copied to contiguous: three single-threaded passes over the
//! batch. On the CPU one parallel pass writes the rows directly, reading zeros where the
//! conv's window falls outside the image.

use candle_core::{CpuStorage, CustomOp1, Layout, Shape, Tensor};

/// Images (B, 3, H, W) -> patch rows (B, gh * gw, 3 k k) for a stride-k, kernel-k conv with
/// padding p, in (channel, row, column) order within a row, as the conv weight flattens.
pub fn patch_rows(images: &Tensor, k: usize, p: usize, (gh, gw): (usize, usize)) -> candle_core::Result<Tensor> {
    // No backward: pixels are never trained. A tracked input takes the differentiable path.
    if super::dispatch::fused(&[images]) && !images.track_op() {
        return images.contiguous()?.apply_op1_no_bwd(&PatchRows { k, p, gh, gw });
    }
    patch_rows_composed(images, k, p, (gh, gw))
}

/// The same rows from candle ops (differentiable), for other devices and for the tests.
pub fn patch_rows_composed(
    images: &Tensor,
    k: usize,
    p: usize,
    (gh, gw): (usize, usize),
) -> candle_core::Result<Tensor> {
    let (b, c, h, w) = images.dims4()?;
    // The conv reads padded rows [0, gh*k), i.e. image rows [-p, gh*k - p): pad p before,
    // and after only as much as that range overruns the image, then crop to the range.
    let x = images
        .pad_with_zeros(2, p, (gh * k).saturating_sub(h + p))?
        .narrow(2, 0, gh * k)?
        .pad_with_zeros(3, p, (gw * k).saturating_sub(w + p))?
        .narrow(3, 0, gw * k)?;
    x.reshape((b, c, gh, k, gw, k))?.permute((0, 2, 4, 1, 3, 5))?.contiguous()?.reshape((b, gh * gw, c * k * k))
}

struct PatchRows {
    k: usize,
    p: usize,
    gh: usize,
    gw: usize,
}

impl CustomOp1 for PatchRows {
    fn name(&self) -> &'static str {
        "patch-rows"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let pixels = super::f32_slice(storage, layout, self.name())?;
        let dims = layout.shape().dims4()?;
        let Self { k, p, gh, gw } = *self;
        let rows = crate::kernels::patches::patch_rows(pixels, dims, k, p, (gh, gw));
        Ok((CpuStorage::F32(rows), Shape::from((dims.0, gh * gw, dims.1 * k * k))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn one_pass_rows_equal_the_composed_pad_crop_permute() {
        // Grids that pad on both sides, overrun the image, crop its last pixels, and pad by more
        // than a patch (whole kernel rows and columns in the padding).
        for (h, w, k, p) in [(36, 28, 8, 2), (33, 17, 4, 1), (16, 16, 16, 0), (20, 13, 6, 3), (10, 9, 2, 3)] {
            let grid = ((h + 2 * p - k) / k + 1, (w + 2 * p - k) / k + 1);
            let images = Tensor::randn(0f32, 1.0, (2, 3, h, w), &Device::Cpu).unwrap();
            let fused = patch_rows(&images, k, p, grid).unwrap();
            let composed = patch_rows_composed(&images, k, p, grid).unwrap();
            assert_eq!(fused.dims(), composed.dims());
            let diff = (fused - composed).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap();
            assert_eq!(diff.to_scalar::<f32>().unwrap(), 0.0, "{h} x {w}, k {k}, p {p}");
        }
    }
}
