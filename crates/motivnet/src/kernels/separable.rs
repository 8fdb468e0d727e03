//! The convolutions of a small mobile network (the face detector) on channels-last (NHWC)
//! f32 maps, on the calling thread: a dense k x k convolution for the stem, depthwise 3 x 3 and
//! pointwise 1 x 1 for the separable blocks. Padding is TensorFlow's SAME (where the total is
//! odd, the extra row and column go after).
//!
//! Why our own: candle's `conv2d` runs a grouped (depthwise) convolution as one convolution per
//! channel, and lays the maps out channels-first, so each channel of a 3 x 3 window is a
//! strided gather. Channels-last, every tap of a window is one contiguous run of channels,
//! which is the vector: a 128 x 128 detector input takes about a millisecond instead of 50-90.
//! A decoding worker calls this on its own thread, so nothing here touches the shared pool.

/// One image's map: `height` x `width` x `channels`, row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct Map {
    pub data: Vec<f32>,
    pub height: usize,
    pub width: usize,
    pub channels: usize,
}

impl Map {
    pub fn zeros(height: usize, width: usize, channels: usize) -> Self {
        Self { data: vec![0.0; height * width * channels], height, width, channels }
    }
}

/// TensorFlow's SAME padding along one axis: (output length, padding before).
pub fn same_padding(n: usize, kernel: usize, stride: usize) -> (usize, usize) {
    let out = n.div_ceil(stride);
    let total = ((out - 1) * stride + kernel).saturating_sub(n);
    (out, total / 2)
}

// The layers below are dispatched whole (`simd_dispatch!`), and these inner loops inlined into
// each copy, so the vector width is chosen once per layer, not once per pixel.

/// `acc[c] += x[c] * w[c]` over a run of channels.
#[inline(always)]
fn multiply_add(acc: &mut [f32], x: &[f32], w: &[f32]) {
    for ((a, &v), &k) in acc.iter_mut().zip(x).zip(w) {
        *a += v * k;
    }
}

/// `acc[c] += v * w[c]` over a run of channels.
#[inline(always)]
fn scaled_add(acc: &mut [f32], v: f32, w: &[f32]) {
    for (a, &k) in acc.iter_mut().zip(w) {
        *a += v * k;
    }
}

crate::simd_dispatch! {
    /// A dense `k` x `k` convolution; `weight` as (ky, kx, in, out), `bias` per output channel.
    pub fn conv_dense(x: &Map, weight: &[f32], bias: &[f32], kernel: usize, stride: usize) -> Map {
        let out_channels = bias.len();
        assert_eq!(weight.len(), kernel * kernel * x.channels * out_channels, "weight: (k, k, in, out)");
        let (oh, top) = same_padding(x.height, kernel, stride);
        let (ow, left) = same_padding(x.width, kernel, stride);
        let mut out = Map::zeros(oh, ow, out_channels);
        for oy in 0..oh {
            for ox in 0..ow {
                let acc = &mut out.data[(oy * ow + ox) * out_channels..][..out_channels];
                acc.copy_from_slice(bias);
                for ky in 0..kernel {
                    let Some(iy) = (oy * stride + ky).checked_sub(top).filter(|&y| y < x.height) else { continue };
                    for kx in 0..kernel {
                        let Some(ix) = (ox * stride + kx).checked_sub(left).filter(|&v| v < x.width) else { continue };
                        let pixel = &x.data[(iy * x.width + ix) * x.channels..][..x.channels];
                        let taps = &weight[(ky * kernel + kx) * x.channels * out_channels..];
                        for (ci, &v) in pixel.iter().enumerate() {
                            scaled_add(acc, v, &taps[ci * out_channels..][..out_channels]);
                        }
                    }
                }
            }
        }
        out
    }
}

crate::simd_dispatch! {
    /// A depthwise 3 x 3 convolution; `weight` as (ky, kx, channel).
    pub fn depthwise_3x3(x: &Map, weight: &[f32], bias: &[f32], stride: usize) -> Map {
        let c = x.channels;
        assert_eq!(weight.len(), 9 * c, "weight: (3, 3, channels)");
        assert_eq!(bias.len(), c, "bias: one per channel");
        let (oh, top) = same_padding(x.height, 3, stride);
        let (ow, left) = same_padding(x.width, 3, stride);
        let mut out = Map::zeros(oh, ow, c);
        for oy in 0..oh {
            for ox in 0..ow {
                let acc = &mut out.data[(oy * ow + ox) * c..][..c];
                acc.copy_from_slice(bias);
                for ky in 0..3 {
                    let Some(iy) = (oy * stride + ky).checked_sub(top).filter(|&y| y < x.height) else { continue };
                    for kx in 0..3 {
                        let Some(ix) = (ox * stride + kx).checked_sub(left).filter(|&v| v < x.width) else { continue };
                        multiply_add(acc, &x.data[(iy * x.width + ix) * c..][..c], &weight[(ky * 3 + kx) * c..][..c]);
                    }
                }
            }
        }
        out
    }
}

crate::simd_dispatch! {
    /// A pointwise (1 x 1) convolution; `weight` as (in, out). With `residual`, that map is added
    /// (its channels may be fewer: the rest count as zeros) and the sum goes through ReLU.
    pub fn pointwise(x: &Map, weight: &[f32], bias: &[f32], residual: Option<&Map>) -> Map {
        let out_channels = bias.len();
        assert_eq!(weight.len(), x.channels * out_channels, "weight: (in, out)");
        let mut out = Map::zeros(x.height, x.width, out_channels);
        for (p, acc) in out.data.chunks_exact_mut(out_channels).enumerate() {
            acc.copy_from_slice(bias);
            for (ci, &v) in x.data[p * x.channels..][..x.channels].iter().enumerate() {
                scaled_add(acc, v, &weight[ci * out_channels..][..out_channels]);
            }
            if let Some(r) = residual {
                for (a, &s) in acc.iter_mut().zip(&r.data[p * r.channels..][..r.channels]) {
                    *a += s;
                }
                for a in acc.iter_mut() {
                    *a = a.max(0.0);
                }
            }
        }
        out
    }
}

crate::simd_dispatch! {
    /// 2 x 2 max pooling at stride 2 (TensorFlow's SAME: an odd last row or column pools alone).
    pub fn max_pool_2x2(x: &Map) -> Map {
        let c = x.channels;
        let (oh, ow) = (x.height.div_ceil(2), x.width.div_ceil(2));
        let mut out = Map::zeros(oh, ow, c);
        for oy in 0..oh {
            for ox in 0..ow {
                let acc = &mut out.data[(oy * ow + ox) * c..][..c];
                acc.fill(f32::NEG_INFINITY);
                for iy in (2 * oy)..(2 * oy + 2).min(x.height) {
                    for ix in (2 * ox)..(2 * ox + 2).min(x.width) {
                        for (a, &v) in acc.iter_mut().zip(&x.data[(iy * x.width + ix) * c..][..c]) {
                            *a = a.max(v);
                        }
                    }
                }
            }
        }
        out
    }
}

/// ReLU in place.
pub fn relu(x: &mut Map) {
    for v in x.data.iter_mut() {
        *v = v.max(0.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(height: usize, width: usize, channels: usize, seed: u32) -> Map {
        let data = (0..height * width * channels)
            .map(|i| ((((i as u32).wrapping_mul(2654435761)) ^ seed) % 1000) as f32 / 500.0 - 1.0)
            .collect();
        Map { data, height, width, channels }
    }

    /// The definition, one output value at a time, for any kernel, stride and groups.
    #[allow(clippy::too_many_arguments)]
    fn naive(
        x: &Map,
        weight: impl Fn(usize, usize, usize, usize) -> f32,
        bias: &[f32],
        k: usize,
        stride: usize,
        depthwise: bool,
    ) -> Map {
        let oc = bias.len();
        let (oh, top) = same_padding(x.height, k, stride);
        let (ow, left) = same_padding(x.width, k, stride);
        let mut out = Map::zeros(oh, ow, oc);
        for oy in 0..oh {
            for ox in 0..ow {
                for o in 0..oc {
                    let mut s = bias[o] as f64;
                    for ky in 0..k {
                        for kx in 0..k {
                            let (iy, ix) = (
                                (oy * stride + ky) as isize - top as isize,
                                (ox * stride + kx) as isize - left as isize,
                            );
                            if iy < 0 || ix < 0 || iy >= x.height as isize || ix >= x.width as isize {
                                continue;
                            }
                            let at = (iy as usize * x.width + ix as usize) * x.channels;
                            let inputs: Vec<usize> = if depthwise { vec![o] } else { (0..x.channels).collect() };
                            for i in inputs {
                                s += (x.data[at + i] * weight(ky, kx, i, o)) as f64;
                            }
                        }
                    }
                    out.data[(oy * ow + ox) * oc + o] = s as f32;
                }
            }
        }
        out
    }

    fn assert_close(a: &Map, b: &Map) {
        assert_eq!((a.height, a.width, a.channels), (b.height, b.width, b.channels));
        let worst = a.data.iter().zip(&b.data).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max);
        assert!(worst < 1e-4, "largest difference {worst}");
    }

    #[test]
    fn same_padding_puts_the_odd_row_after() {
        assert_eq!(same_padding(128, 5, 2), (64, 1));
        assert_eq!(same_padding(64, 3, 2), (32, 0));
        assert_eq!(same_padding(64, 3, 1), (64, 1));
        assert_eq!(same_padding(7, 3, 2), (4, 1));
    }

    #[test]
    fn dense_convolution_matches_the_definition_at_odd_sizes_and_strides() {
        for (h, w, stride) in [(9, 7, 2), (8, 8, 2), (5, 6, 1)] {
            let x = map(h, w, 3, 1);
            let (k, oc) = (5, 6);
            let weight: Vec<f32> = (0..k * k * 3 * oc).map(|i| ((i * 37 % 101) as f32 - 50.0) / 100.0).collect();
            let bias: Vec<f32> = (0..oc).map(|o| o as f32 / 10.0).collect();
            let got = conv_dense(&x, &weight, &bias, k, stride);
            let want = naive(&x, |ky, kx, i, o| weight[((ky * k + kx) * 3 + i) * oc + o], &bias, k, stride, false);
            assert_close(&got, &want);
        }
    }

    #[test]
    fn depthwise_convolution_matches_the_definition_at_both_strides() {
        for (h, w, c, stride) in [(8, 8, 24, 1), (8, 8, 24, 2), (7, 5, 19, 2)] {
            let x = map(h, w, c, 2);
            let weight: Vec<f32> = (0..9 * c).map(|i| ((i * 53 % 97) as f32 - 48.0) / 50.0).collect();
            let bias: Vec<f32> = (0..c).map(|o| o as f32 / 20.0).collect();
            let got = for_every_tier(|| depthwise_3x3(&x, &weight, &bias, stride));
            let want = naive(&x, |ky, kx, i, _| weight[(ky * 3 + kx) * c + i], &bias, 3, stride, true);
            assert_close(&got, &want);
        }
    }

    #[test]
    fn pointwise_adds_a_narrower_residual_and_rectifies() {
        let x = map(3, 4, 10, 3);
        let residual = map(3, 4, 6, 4);
        let weight: Vec<f32> = (0..10 * 13).map(|i| ((i * 29 % 89) as f32 - 44.0) / 40.0).collect();
        let bias: Vec<f32> = (0..13).map(|o| o as f32 / 7.0 - 1.0).collect();
        let got = for_every_tier(|| pointwise(&x, &weight, &bias, Some(&residual)));
        let mut want = naive(&x, |_, _, i, o| weight[i * 13 + o], &bias, 1, 1, false);
        for p in 0..12 {
            for o in 0..13 {
                let r = if o < 6 { residual.data[p * 6 + o] } else { 0.0 };
                let v = &mut want.data[p * 13 + o];
                *v = (*v + r).max(0.0);
            }
        }
        assert_close(&got, &want);
    }

    #[test]
    fn max_pool_keeps_each_windows_largest_and_pools_an_odd_edge_alone() {
        let x = Map { data: vec![1.0, 5.0, 2.0, 3.0, -1.0, 4.0], height: 2, width: 3, channels: 1 };
        assert_eq!(max_pool_2x2(&x).data, vec![5.0, 4.0]);
    }

    /// Runs `f` at every vector tier this CPU has and checks they agree; returns the portable result.
    fn for_every_tier(f: impl Fn() -> Map) -> Map {
        use crate::kernels::simd::{tiers_to_check, with_level, Level};
        let portable = with_level(Level::Portable, &f);
        for tier in tiers_to_check("separable") {
            assert_close(&with_level(tier, &f), &portable);
        }
        portable
    }
}
