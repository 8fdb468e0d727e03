//! u8 RGB images of any sizes -> the model's normalized input (B, 3, H, W): the fused CPU pass
//! (`crate::kernels::resize`), or the same arithmetic as candle ops on other devices.
//!
//! Why in the core and not in the preprocessing workers: upscaling a ~400 px face to 768 x 1024
//! is several times slower in libvips than decoding, a u8 image is a quarter of the f32 tensor
//! to copy or upload, and here the resize, rounding and normalization fuse into one
//! multi-threaded write straight into the input tensor. On a GPU the same arithmetic runs as
//! tensor ops on the device, from the uploaded u8 pixels.

use candle_core::{DType, Device, Tensor};

use crate::error::{input_err, Result};
use crate::kernels::resize::{check_none_geometry, placement, taps};
pub use crate::kernels::resize::{
    resize_normalize_cpu, resize_normalize_into, resize_normalize_rows, Geometry, ImageBatch, Normalization, Rows,
};

/// [`resize_normalize_cpu`] after the checks [`to_input_tensor`] makes, as a flat vector, or
/// into `out` when given (its length must be B x 3 x out_h x out_w).
pub fn resize_normalize_checked(
    batch: &ImageBatch,
    geometry: Geometry,
    out_h: usize,
    out_w: usize,
    norm: &Normalization,
    out: Option<&mut [f32]>,
) -> Result<Option<Vec<f32>>> {
    if geometry == Geometry::None {
        check_none_geometry(batch, out_h, out_w)?;
    }
    let Some(out) = out else {
        return Ok(Some(resize_normalize_cpu(batch, geometry, out_h, out_w, norm)));
    };
    let expected = batch.len() * 3 * out_h * out_w;
    if out.len() != expected {
        return Err(input_err!(
            "output buffer holds {} values, expected {} x 3 x {out_h} x {out_w} = {expected}",
            out.len(),
            batch.len()
        ));
    }
    resize_normalize_into(batch, geometry, out_h, out_w, norm, out);
    Ok(None)
}

/// u8 images -> u8 images of out_w x out_h (HWC, back to back): the levels the model's
/// resize produces before it normalizes (letterbox bands at 255). Resizing these again with
/// [`Geometry::None`] is the identity, so a batch of them normalizes to exactly what the
/// originals would. Runs on the calling thread (see [`Rows::CallerThread`]).
pub fn resize_levels(batch: &ImageBatch, geometry: Geometry, out_h: usize, out_w: usize) -> Result<Vec<u8>> {
    if geometry == Geometry::None {
        check_none_geometry(batch, out_h, out_w)?;
    }
    let identity = Normalization { mean: [0.0; 3], std: [1.0; 3] };
    let mut planes = vec![0f32; batch.len() * 3 * out_h * out_w];
    resize_normalize_rows(batch, geometry, out_h, out_w, &identity, &mut planes, Rows::CallerThread);
    let plane = out_h * out_w;
    let mut levels = vec![0u8; planes.len()];
    for (b, image) in levels.chunks_exact_mut(3 * plane).enumerate() {
        let chw = &planes[b * 3 * plane..(b + 1) * 3 * plane];
        for (p, pixel) in image.chunks_exact_mut(3).enumerate() {
            // Whole levels in 0..=255 (the kernel rounds before it normalizes): exact casts.
            pixel[0] = chw[p] as u8;
            pixel[1] = chw[plane + p] as u8;
            pixel[2] = chw[2 * plane + p] as u8;
        }
    }
    Ok(levels)
}

/// u8 images -> normalized f32 (B, 3, out_h, out_w) on `device`.
pub fn to_input_tensor(
    batch: &ImageBatch,
    geometry: Geometry,
    out_h: usize,
    out_w: usize,
    norm: &Normalization,
    device: &Device,
) -> Result<Tensor> {
    if device.is_cpu() && !super::dispatch::composed_forced() {
        let data = resize_normalize_checked(batch, geometry, out_h, out_w, norm, None)?.expect("allocated");
        Ok(Tensor::from_vec(data, (batch.len(), 3, out_h, out_w), device)?)
    } else {
        if geometry == Geometry::None {
            check_none_geometry(batch, out_h, out_w)?;
        }
        resize_normalize_tensor_ops(batch, geometry, out_h, out_w, norm, device)
    }
}

/// The same arithmetic as [`resize_normalize_cpu`] as candle ops, for devices other than the
/// CPU: only u8 pixels and the small tap tables cross to the device.
pub fn resize_normalize_tensor_ops(
    batch: &ImageBatch,
    geometry: Geometry,
    out_h: usize,
    out_w: usize,
    norm: &Normalization,
    device: &Device,
) -> Result<Tensor> {
    let (rows, top) = placement(geometry, out_h, out_w);
    let mean = Tensor::from_slice(&norm.mean, (3, 1, 1), device)?;
    let std = Tensor::from_slice(&norm.std, (3, 1, 1), device)?;
    let mut outs = Vec::with_capacity(batch.len());
    for (src, w, h) in batch.images() {
        let img = Tensor::from_slice(src, (h, w, 3), device)?.to_dtype(DType::F32)?.permute((2, 0, 1))?.contiguous()?;
        let (ytaps, xtaps) = (taps(h, rows), taps(w, out_w));
        let index = |t: &[(usize, usize, f32)], pick: fn(&(usize, usize, f32)) -> usize| {
            Tensor::from_vec(t.iter().map(|x| pick(x) as u32).collect::<Vec<_>>(), t.len(), device)
        };
        let weight =
            |t: &[(usize, usize, f32)]| Tensor::from_vec(t.iter().map(|x| x.2).collect::<Vec<_>>(), t.len(), device);
        let wy = weight(&ytaps)?.reshape((1, rows, 1))?;
        let wx = weight(&xtaps)?.reshape((1, 1, out_w))?;
        let r0 = img.index_select(&index(&ytaps, |t| t.0)?, 1)?;
        let r1 = img.index_select(&index(&ytaps, |t| t.1)?, 1)?;
        let lerp = |a: &Tensor, b: &Tensor, t: &Tensor| -> candle_core::Result<Tensor> {
            a.broadcast_add(&(b - a)?.broadcast_mul(t)?)
        };
        let rows_t = lerp(&r0, &r1, &wy)?.contiguous()?;
        let c0 = rows_t.index_select(&index(&xtaps, |t| t.0)?, 2)?;
        let c1 = rows_t.index_select(&index(&xtaps, |t| t.1)?, 2)?;
        let mut resized = (lerp(&c0, &c1, &wx)? + 0.5)?.floor()?;
        if rows < out_h {
            let white = |n: usize| Tensor::full(255f32, (3, n, out_w), device);
            resized = Tensor::cat(&[white(top)?, resized, white(out_h - rows - top)?], 1)?;
        }
        outs.push(resized.broadcast_sub(&mean)?.broadcast_div(&std)?);
    }
    Ok(Tensor::stack(&outs, 0)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tensor_ops_path_matches_fused_cpu_pass() {
        let sizes = [(30usize, 40usize), (97, 61), (5, 3)];
        let data: Vec<u8> =
            (0..sizes.iter().map(|(w, h)| w * h * 3).sum::<usize>()).map(|i| (i * 37 % 251) as u8).collect();
        let batch = ImageBatch::new(&data, &sizes).unwrap();
        let norm = Normalization::default();
        for geometry in [Geometry::Stretch, Geometry::Letterbox] {
            let fused = resize_normalize_cpu(&batch, geometry, 64, 48, &norm);
            let ops = resize_normalize_tensor_ops(&batch, geometry, 64, 48, &norm, &Device::Cpu).unwrap();
            let ops = ops.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let max = fused.iter().zip(&ops).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
            // Both round to the same u8 level except at exact .5 ties reached by different
            // rounding of the lerp; one level is 1/std ~ 0.018.
            assert!(max < 0.02, "{geometry:?}: max difference {max}");
        }
    }

    #[test]
    fn resized_levels_then_geometry_none_normalize_exactly_as_the_originals() {
        let sizes = [(30usize, 40usize), (97, 61), (5, 3), (48, 64)];
        let data: Vec<u8> =
            (0..sizes.iter().map(|(w, h)| w * h * 3).sum::<usize>()).map(|i| (i * 37 % 251) as u8).collect();
        let batch = ImageBatch::new(&data, &sizes).unwrap();
        let norm = Normalization::default();
        for geometry in [Geometry::Stretch, Geometry::Letterbox] {
            let direct = resize_normalize_cpu(&batch, geometry, 64, 48, &norm);
            let levels = resize_levels(&batch, geometry, 64, 48).unwrap();
            let resized = vec![(48, 64); sizes.len()];
            let again =
                resize_normalize_cpu(&ImageBatch::new(&levels, &resized).unwrap(), Geometry::None, 64, 48, &norm);
            assert_eq!(direct, again, "{geometry:?}");
        }
        let wrong = resize_levels(&batch, Geometry::None, 64, 48).unwrap_err();
        assert!(wrong.to_string().contains("geometry 'none' needs exactly 48 x 64"), "{wrong}");
    }
}
