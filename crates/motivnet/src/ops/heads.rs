//! Splitting (B, N, H x hd) into heads, (B, H, N, hd) contiguous, as one CPU op with its own
//! backward (the heads merged back). The head's cross-attention splits its keys and values this
//! way, reading them in place from the packed key-value projection. candle's transpose and
//! `contiguous` copy value by value through a generic strided index: at `tiny`'s batch of 8
//! (1536 rows of 192), a layer's two splits took about 3 ms of a 23 ms head forward.

use candle_core::{CpuStorage, CustomOp1, Layout, Shape, Tensor};
use rayon::prelude::*;

use super::f32_slice;

/// (B, N, heads x hd) -> (B, heads, N, hd), contiguous: the fused op on the CPU where the last
/// dimension is contiguous (a narrowed view of a wider tensor is read in place), candle's
/// reshape and transpose elsewhere.
pub fn split_heads(x: &Tensor, heads: usize) -> candle_core::Result<Tensor> {
    let fits = super::dispatch::fused(&[x]) && x.rank() == 3 && x.layout().stride().last() == Some(&1);
    if !fits || heads == 0 || x.dim(2)? % heads != 0 {
        return split_heads_composed(x, heads);
    }
    x.apply_op1(Split { heads })
}

/// The same from candle's primitive ops (device-generic).
pub fn split_heads_composed(x: &Tensor, heads: usize) -> candle_core::Result<Tensor> {
    let (b, n, d) = x.dims3()?;
    x.reshape((b, n, heads, d / heads))?.transpose(1, 2)?.contiguous()
}

struct Split {
    heads: usize,
}

impl CustomOp1 for Split {
    fn name(&self) -> &'static str {
        "split-heads"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let CpuStorage::F32(values) = storage else { candle_core::bail!("split-heads: expected f32 input") };
        let (b, n, d) = layout.shape().dims3()?;
        let (h, stride) = (self.heads, layout.stride());
        let hd = d / h;
        let (batch_stride, row_stride, start) = (stride[0], stride[1], layout.start_offset());
        if b > 0 && n > 0 && start + (b - 1) * batch_stride + (n - 1) * row_stride + d > values.len() {
            candle_core::bail!("split-heads: the layout reaches past its storage");
        }
        let mut out = vec![0f32; b * n * d];
        out.par_chunks_mut((n * hd).max(1)).enumerate().for_each(|(pair, block)| {
            let (bi, hi) = (pair / h, pair % h);
            for (r, dst) in block.chunks_exact_mut(hd.max(1)).enumerate() {
                let at = start + bi * batch_stride + r * row_stride + hi * hd;
                dst.copy_from_slice(&values[at..at + hd]);
            }
        });
        Ok((CpuStorage::F32(out), Shape::from((b, h, n, hd))))
    }

    fn bwd(&self, _arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> candle_core::Result<Option<Tensor>> {
        Ok(Some(grad_res.contiguous()?.apply_op1_no_bwd(&Merge)?))
    }
}

/// (B, H, N, hd) contiguous -> (B, N, H x hd): the split's backward.
struct Merge;

impl CustomOp1 for Merge {
    fn name(&self) -> &'static str {
        "split-heads-grad"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let g = f32_slice(storage, layout, self.name())?;
        let (b, h, n, hd) = layout.shape().dims4()?;
        let d = h * hd;
        let mut out = vec![0f32; b * n * d];
        out.par_chunks_mut((n * d).max(1)).enumerate().for_each(|(bi, image)| {
            for (r, row) in image.chunks_exact_mut(d.max(1)).enumerate() {
                for (hi, dst) in row.chunks_exact_mut(hd.max(1)).enumerate() {
                    let at = ((bi * h + hi) * n + r) * hd;
                    dst.copy_from_slice(&g[at..at + hd]);
                }
            }
        });
        Ok((CpuStorage::F32(out), Shape::from((b, n, d))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::testing::max_diff;
    use candle_core::{Device, Var};

    /// The fused split against the composed one, on a narrowed view of a wider tensor (as the
    /// head's keys and values are read), forward and backward.
    #[test]
    fn fused_split_matches_composed_on_a_narrowed_view() {
        let dev = Device::Cpu;
        let kv = Var::from_tensor(&Tensor::randn(0f32, 1.0, (3, 7, 24), &dev).unwrap()).unwrap();
        let w = Tensor::randn(0f32, 1.0, (3, 4, 7, 3), &dev).unwrap();
        for (from, heads) in [(0, 4), (12, 4), (12, 1)] {
            let view = kv.as_tensor().narrow(2, from, 12).unwrap();
            let w = if heads == 4 { w.clone() } else { w.reshape((3, 1, 7, 12)).unwrap() };
            let (a, b) = (split_heads(&view, heads).unwrap(), split_heads_composed(&view, heads).unwrap());
            assert_eq!(a.dims(), b.dims());
            assert_eq!(max_diff(&a, &b), 0.0, "forward, from {from}");
            let ga = (a * &w).unwrap().sum_all().unwrap().backward().unwrap();
            let gb = (b * &w).unwrap().sum_all().unwrap().backward().unwrap();
            let (ga, gb) = (ga.get(kv.as_tensor()).unwrap(), gb.get(kv.as_tensor()).unwrap());
            assert_eq!(max_diff(ga, gb), 0.0, "gradient, from {from}");
        }
    }
}
