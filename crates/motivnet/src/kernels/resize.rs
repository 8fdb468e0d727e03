//! u8 RGB images of any sizes -> normalized f32 planes (B, 3, H, W), in one pass, with
//! OpenCV's `INTER_LINEAR` conventions: half-pixel centres, source coordinates clamped at the
//! edges, no antialiasing when shrinking, and the result rounded to u8 as `cv2.resize` on a u8
//! image does, before `(x - mean) / std`. Geometries: `stretch` to W x H, `letterbox` to W x W
//! with white bands above and below up to H, `none` (already W x H).

use std::str::FromStr;

use rayon::prelude::*;

use crate::error::{input_err, Error, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Geometry {
    Stretch,
    Letterbox,
    None,
}

impl FromStr for Geometry {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "stretch" => Ok(Geometry::Stretch),
            "letterbox" => Ok(Geometry::Letterbox),
            "none" => Ok(Geometry::None),
            other => Err(input_err!("geometry '{other}' is not valid: expected stretch, letterbox or none")),
        }
    }
}

/// Per-channel (R, G, B) mean and standard deviation on the 0..255 scale.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Normalization {
    pub mean: [f32; 3],
    pub std: [f32; 3],
}

impl Default for Normalization {
    /// The MotivNet reference's values (docs/REFERENCE_MODEL.md, section 5).
    fn default() -> Self {
        Self { mean: [123.5, 116.5, 103.5], std: [58.5, 57.0, 57.5] }
    }
}

impl Normalization {
    /// Sapiens' own configs.
    pub fn sapiens() -> Self {
        Self { mean: [123.675, 116.28, 103.53], std: [58.395, 57.12, 57.375] }
    }
}

/// A batch of RGB images (HWC, u8) stored back to back, with their sizes.
#[derive(Debug, Clone, Copy)]
pub struct ImageBatch<'a> {
    pub data: &'a [u8],
    /// (width, height) of each image, in order.
    pub sizes: &'a [(usize, usize)],
}

impl<'a> ImageBatch<'a> {
    /// Checks that the sizes are positive and add up to the buffer's length.
    pub fn new(data: &'a [u8], sizes: &'a [(usize, usize)]) -> Result<Self> {
        if sizes.is_empty() {
            return Err(input_err!("the batch holds no images"));
        }
        let mut expected = 0usize;
        for (i, &(w, h)) in sizes.iter().enumerate() {
            if w == 0 || h == 0 {
                return Err(input_err!("image {i} is {w} x {h} (width x height): both must be at least 1"));
            }
            // Checked: sizes come from outside, and a wrapped product could match a short buffer.
            expected = w
                .checked_mul(h)
                .and_then(|n| n.checked_mul(3))
                .and_then(|n| n.checked_add(expected))
                .ok_or_else(|| input_err!("image {i} is {w} x {h} (width x height): too many pixels to address"))?;
        }
        if data.len() != expected {
            return Err(input_err!(
                "pixel buffer holds {} bytes, expected {expected} (the sum of width x height x 3 over {} images)",
                data.len(),
                sizes.len()
            ));
        }
        Ok(Self { data, sizes })
    }

    pub fn len(&self) -> usize {
        self.sizes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sizes.is_empty()
    }

    /// Each image's pixels with its width and height.
    pub fn images(&self) -> Vec<(&'a [u8], usize, usize)> {
        let mut offset = 0;
        self.sizes
            .iter()
            .map(|&(w, h)| {
                let img = &self.data[offset..offset + w * h * 3];
                offset += w * h * 3;
                (img, w, h)
            })
            .collect()
    }
}

/// For each output index, the two source indices and the weight of the second: OpenCV's
/// `INTER_LINEAR` coordinate mapping, src = (dst + 0.5) * in / out - 0.5, clamped at the edges.
pub(crate) fn taps(src_len: usize, dst_len: usize) -> Vec<(usize, usize, f32)> {
    let scale = src_len as f64 / dst_len as f64;
    (0..dst_len)
        .map(|d| {
            let f = (d as f64 + 0.5) * scale - 0.5;
            let i = f.floor();
            let t = f - i;
            let i = i as i64;
            if i < 0 {
                (0, 0, 0.0)
            } else if i as usize >= src_len - 1 {
                (src_len - 1, src_len - 1, 0.0)
            } else {
                (i as usize, i as usize + 1, t as f32)
            }
        })
        .collect()
}

/// Where the resized image lands in the H x W output: (rows, top) for a geometry.
pub(crate) fn placement(geometry: Geometry, out_h: usize, out_w: usize) -> (usize, usize) {
    match geometry {
        Geometry::Letterbox => (out_w, (out_h - out_w) / 2),
        Geometry::Stretch | Geometry::None => (out_h, 0),
    }
}

pub(crate) fn check_none_geometry(batch: &ImageBatch, out_h: usize, out_w: usize) -> Result<()> {
    for (i, &(w, h)) in batch.sizes.iter().enumerate() {
        if (w, h) != (out_w, out_h) {
            return Err(input_err!(
                "image {i} is {w} x {h} (width x height), but geometry 'none' needs exactly {out_w} x {out_h}: \
                 use 'stretch' or 'letterbox' to resize"
            ));
        }
    }
    Ok(())
}

/// The fused CPU pass. Each output row of each image is one rayon task: it blends the two
/// source rows it needs (all three channels at once, a loop the compiler vectorises), then
/// interpolates along x, rounds to a u8 level and normalizes straight into the three planes.
/// Bilinear interpolation is separable, so the vertical-then-horizontal order gives OpenCV's
/// values; only the rounding of OpenCV's fixed-point arithmetic differs (within one level).
pub fn resize_normalize_cpu(
    batch: &ImageBatch,
    geometry: Geometry,
    out_h: usize,
    out_w: usize,
    norm: &Normalization,
) -> Vec<f32> {
    let mut out = vec![0f32; batch.len() * 3 * out_h * out_w];
    resize_normalize_into(batch, geometry, out_h, out_w, norm, &mut out);
    out
}

/// [`resize_normalize_cpu`] into a caller's buffer of B x 3 x out_h x out_w values: a reused
/// buffer saves the allocation and the page faults of a fresh one on every batch.
pub fn resize_normalize_into(
    batch: &ImageBatch,
    geometry: Geometry,
    out_h: usize,
    out_w: usize,
    norm: &Normalization,
    out: &mut [f32],
) {
    resize_normalize_rows(batch, geometry, out_h, out_w, norm, out, Rows::Parallel);
}

/// Where the rows of a resize run.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Rows {
    /// Spread over rayon's threads: a batch for the model.
    Parallel,
    /// On the calling thread alone: one image in a thread that is already one of several
    /// (a decoding worker), where waiting for a shared pool would stall it.
    CallerThread,
}

/// [`resize_normalize_into`], with its rows run where `rows` says.
pub fn resize_normalize_rows(
    batch: &ImageBatch,
    geometry: Geometry,
    out_h: usize,
    out_w: usize,
    norm: &Normalization,
    out: &mut [f32],
    rows_on: Rows,
) {
    let images = batch.images();
    let (rows, top) = placement(geometry, out_h, out_w);
    let plans: Vec<RowPlan> = images.iter().map(|&(_, w, h)| RowPlan::new(w, h, rows, out_w)).collect();
    let inv_std = [0, 1, 2].map(|c| 1.0 / norm.std[c]);
    let pad = [0, 1, 2].map(|c| (255.0 - norm.mean[c]) * inv_std[c]);
    let plane = out_h * out_w;
    assert_eq!(out.len(), images.len() * 3 * plane, "output buffer size");
    let out_ptr = SharedOut(out.as_mut_ptr());
    let row_task = |blend: &mut Vec<f32>, r: usize| {
        let (b, y) = (r / out_h, r % out_h);
        // SAFETY: task (b, y) writes only row y of image b's three planes: disjoint across
        // tasks, and `out` outlives the parallel loop.
        let row = |c: usize| unsafe {
            std::slice::from_raw_parts_mut(out_ptr.get().add((b * 3 + c) * plane + y * out_w), out_w)
        };
        if y < top || y >= top + rows {
            (0..3).for_each(|c| row(c).fill(pad[c]));
            return;
        }
        let (src, w, _) = images[b];
        let plan = &plans[b];
        let (y0, y1, wy) = plan.y[y - top];
        let (line0, line1) = (&src[y0 * w * 3..(y0 + 1) * w * 3], &src[y1 * w * 3..(y1 + 1) * w * 3]);
        blend.clear();
        blend.extend(line0.iter().zip(line1).map(|(&a, &b)| a as f32 + (b as f32 - a as f32) * wy));
        let (r0, r1, r2) = (row(0), row(1), row(2));
        for x in 0..out_w {
            let (i0, i1, wx) = (plan.x0[x] as usize, plan.x1[x] as usize, plan.wx[x]);
            let level = |c: usize| {
                let v = blend[i0 + c] + (blend[i1 + c] - blend[i0 + c]) * wx;
                // v >= 0, so flooring v + 0.5 rounds to nearest, as cv2.resize's u8 output
                // (floor, not `as u32`: a float-to-int cast is a scalar conversion per value).
                (v + 0.5).floor()
            };
            r0[x] = (level(0) - norm.mean[0]) * inv_std[0];
            r1[x] = (level(1) - norm.mean[1]) * inv_std[1];
            r2[x] = (level(2) - norm.mean[2]) * inv_std[2];
        }
    };
    let n = images.len() * out_h;
    match rows_on {
        Rows::Parallel => (0..n).into_par_iter().with_min_len(8).for_each_init(Vec::new, row_task),
        Rows::CallerThread => {
            let mut blend = Vec::new();
            (0..n).for_each(|r| row_task(&mut blend, r));
        }
    }
}

/// The output pointer shared by the row tasks (see the SAFETY note at its use).
#[derive(Clone, Copy)]
struct SharedOut(*mut f32);
unsafe impl Send for SharedOut {}
unsafe impl Sync for SharedOut {}
impl SharedOut {
    fn get(self) -> *mut f32 {
        self.0
    }
}

/// One image's interpolation taps: rows, and columns as byte offsets into an RGB row.
struct RowPlan {
    y: Vec<(usize, usize, f32)>,
    x0: Vec<u32>,
    x1: Vec<u32>,
    wx: Vec<f32>,
}

impl RowPlan {
    fn new(w: usize, h: usize, rows: usize, out_w: usize) -> Self {
        let xt = taps(w, out_w);
        Self {
            y: taps(h, rows),
            x0: xt.iter().map(|t| (t.0 * 3) as u32).collect(),
            x1: xt.iter().map(|t| (t.1 * 3) as u32).collect(),
            wx: xt.iter().map(|t| t.2).collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn taps_follow_opencv_conventions() {
        // Upscaling 2 -> 4: centres at -0.25 (clamped), 0.25, 0.75, 1.25 (clamped).
        let t = taps(2, 4);
        assert_eq!(t[0], (0, 0, 0.0));
        assert_eq!(t[1], (0, 1, 0.25));
        assert_eq!(t[2], (0, 1, 0.75));
        assert_eq!(t[3], (1, 1, 0.0));
    }

    #[test]
    fn buffer_length_and_sizes_are_checked() {
        let data = vec![0u8; 10];
        let err = ImageBatch::new(&data, &[(2, 2)]).unwrap_err().to_string();
        assert!(err.contains("10 bytes") && err.contains("expected 12"), "{err}");
        let err = ImageBatch::new(&data, &[(0, 2)]).unwrap_err().to_string();
        assert!(err.contains("image 0 is 0 x 2"), "{err}");
        // Sizes whose byte count overflows: refused, not wrapped into a small number.
        let huge = 1usize << 32;
        for sizes in [[(huge, huge)], [(usize::MAX / 2, 3)]] {
            let err = ImageBatch::new(&data, &sizes).unwrap_err();
            assert!(err.to_string().contains("too many pixels to address"), "{err}");
        }
        let err = ImageBatch::new(&data, &[(2, 2), (usize::MAX / 4, 2)]).unwrap_err();
        assert!(err.to_string().contains("image 1"), "{err}");
    }
}
