//! BlazeFace (short range): 128 x 128 RGB in [-1, 1] -> for each of 896 anchors, 16 regressors
//! (box centre offset and size, six keypoints, in input pixels) and one score logit.
//!
//! A stem convolution (5 x 5, stride 2) and sixteen blocks: depthwise 3 x 3 (stride 1 or 2),
//! pointwise 1 x 1, plus the block's input, max-pooled where the block strides and widened with
//! zero channels where it widens, then ReLU. Two heads of 1 x 1 convolutions read the 16 x 16
//! map (two anchors a cell) and the 8 x 8 one (six a cell). Padding is TensorFlow's SAME: where
//! it is odd, the extra row and column go after, not before. The architecture comes with the
//! weights (the file's `architecture` metadata), as the converter read it from the graph.

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};
use serde::Deserialize;

use super::decode::{self, Detection};
use super::input::{warp_to_input, Square};
use crate::error::{Error, Result};

/// The converted weights, float16 as in the original file.
const WEIGHTS: &[u8] = include_bytes!("../../assets/blazeface_short_range.safetensors");

#[derive(Deserialize)]
struct BlockSpec {
    stride: usize,
    #[serde(rename = "in")]
    input: usize,
    out: usize,
}

#[derive(Deserialize)]
struct HeadSpec {
    block: usize,
}

#[derive(Deserialize)]
struct Architecture {
    blocks: Vec<BlockSpec>,
    heads: HashMap<String, HeadSpec>,
    input: [usize; 2],
}

/// A convolution with TensorFlow's SAME padding; weights in candle's (out, in / groups, h, w).
struct Conv {
    weight: Tensor,
    bias: Tensor,
    stride: usize,
    groups: usize,
}

impl Conv {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (_, _, kh, kw) = self.weight.dims4()?;
        let (_, _, h, w) = x.dims4()?;
        let pad = |n: usize, k: usize| {
            let out = n.div_ceil(self.stride);
            let total = ((out - 1) * self.stride + k).saturating_sub(n);
            (total / 2, total - total / 2)
        };
        let ((top, bottom), (left, right)) = (pad(h, kh), pad(w, kw));
        let x = if top + bottom + left + right > 0 {
            x.pad_with_zeros(2, top, bottom)?.pad_with_zeros(3, left, right)?
        } else {
            x.clone()
        };
        let y = x.conv2d(&self.weight, 0, self.stride, 1, self.groups)?;
        Ok(y.broadcast_add(&self.bias.reshape((1, (), 1, 1))?)?)
    }
}

struct Block {
    depthwise: Conv,
    pointwise: Conv,
    stride: usize,
    widen: usize,
}

impl Block {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let h = self.pointwise.forward(&self.depthwise.forward(x)?)?;
        let mut skip = if self.stride == 2 { x.max_pool2d_with_stride(2, 2)? } else { x.clone() };
        if self.widen > 0 {
            skip = skip.pad_with_zeros(1, 0, self.widen)?;
        }
        Ok((h + skip)?.relu()?)
    }
}

/// One head: its convolution, the block it reads, and how many values it gives an anchor.
struct Head {
    conv: Conv,
    block: usize,
    per_anchor: usize,
}

pub struct BlazeFace {
    stem: Conv,
    blocks: Vec<Block>,
    /// (scores, regressors) on the 16 x 16 map, then on the 8 x 8 one.
    heads: [(Head, Head); 2],
    /// Input height and width.
    pub input: [usize; 2],
}

fn bad(what: impl std::fmt::Display) -> Error {
    Error::Weights(format!("the embedded face detector: {what}"))
}

impl BlazeFace {
    /// The detector whose weights ship inside the crate.
    pub fn embedded() -> Result<Self> {
        Self::from_safetensors(WEIGHTS)
    }

    /// A detector from converted weights (scripts/detector/convert_blazeface.py's format).
    pub fn from_safetensors(bytes: &[u8]) -> Result<Self> {
        let (_, meta) = safetensors::SafeTensors::read_metadata(bytes).map_err(bad)?;
        let arch = meta
            .metadata()
            .as_ref()
            .and_then(|m| m.get("architecture"))
            .ok_or_else(|| bad("no architecture in the file's metadata"))?;
        let arch: Architecture = serde_json::from_str(arch).map_err(|e| bad(format!("architecture: {e}")))?;
        let tensors = candle_core::safetensors::load_buffer(bytes, &Device::Cpu)?;
        let get = |name: &str| -> Result<Tensor> {
            Ok(tensors.get(name).ok_or_else(|| bad(format!("tensor {name} is missing")))?.to_dtype(DType::F32)?)
        };
        // TFLite keeps kernels as (out, h, w, in), depthwise ones as (1, h, w, channels).
        let conv = |prefix: &str, stride: usize| -> Result<Conv> {
            let weight = get(&format!("{prefix}.weight"))?.permute((0, 3, 1, 2))?.contiguous()?;
            Ok(Conv { weight, bias: get(&format!("{prefix}.bias"))?, stride, groups: 1 })
        };
        let depthwise = |prefix: &str, stride: usize| -> Result<Conv> {
            let weight = get(&format!("{prefix}.weight"))?.permute((3, 0, 1, 2))?.contiguous()?;
            let groups = weight.dim(0)?;
            Ok(Conv { weight, bias: get(&format!("{prefix}.bias"))?, stride, groups })
        };
        let blocks = arch
            .blocks
            .iter()
            .enumerate()
            .map(|(i, b)| {
                if b.out < b.input || !(b.stride == 1 || b.stride == 2) {
                    return Err(bad(format!("block {i} is {} -> {} channels at stride {}", b.input, b.out, b.stride)));
                }
                Ok(Block {
                    depthwise: depthwise(&format!("blocks.{i}.depthwise"), b.stride)?,
                    pointwise: conv(&format!("blocks.{i}.pointwise"), 1)?,
                    stride: b.stride,
                    widen: b.out - b.input,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let head = |name: &str, per_anchor: usize| -> Result<Head> {
            let spec = arch.heads.get(name).ok_or_else(|| bad(format!("head {name} is missing")))?;
            if spec.block >= blocks.len() {
                return Err(bad(format!("head {name} reads block {}, of {}", spec.block, blocks.len())));
            }
            Ok(Head { conv: conv(&format!("heads.{name}"), 1)?, block: spec.block, per_anchor })
        };
        let heads = [
            (head("classificator_8", 1)?, head("regressor_8", 16)?),
            (head("classificator_16", 1)?, head("regressor_16", 16)?),
        ];
        Ok(Self { stem: conv("stem", 2)?, blocks, heads, input: arch.input })
    }

    /// The faces in an RGB photograph (width x height, HWC), as MediaPipe's short-range face
    /// detection finds them: letterboxed to a square, warped onto the input, decoded, merged;
    /// boxes and keypoints in fractions of the photograph's width and height.
    pub fn detect(&self, rgb: &[u8], width: usize, height: usize) -> Result<Vec<Detection>> {
        if rgb.len() != width * height * 3 || width == 0 || height == 0 {
            return Err(Error::Input(format!(
                "a {width} x {height} RGB image needs {} bytes, got {}",
                width * height * 3,
                rgb.len()
            )));
        }
        let square = Square::around(width, height);
        let [h, w] = self.input;
        let input = Tensor::from_vec(warp_to_input(rgb, width, height, &square, w), (1, h, w, 3), &Device::Cpu)?;
        let faces = self.detect_inputs(&input)?.remove(0);
        Ok(faces
            .into_iter()
            .map(|d| {
                let [l, t] = square.to_image([d.bbox[0], d.bbox[1]], width, height);
                let [r, b] = square.to_image([d.bbox[2], d.bbox[3]], width, height);
                let keypoints = d.keypoints.map(|k| square.to_image(k, width, height));
                Detection { bbox: [l, t, r, b], keypoints, score: d.score }
            })
            .collect())
    }

    /// The faces in each input of a batch (B, 128, 128, 3), RGB in [-1, 1]: decoded against
    /// the anchors, scored, at least [`decode::MIN_SCORE`], and merged by weighted
    /// non-maximum suppression, as MediaPipe's graph does. Coordinates are fractions of the
    /// input square.
    pub fn detect_inputs(&self, input_nhwc: &Tensor) -> Result<Vec<Vec<Detection>>> {
        let (regressors, logits) = self.forward_raw(input_nhwc)?;
        let (regressors, logits) = (regressors.to_vec3::<f32>()?, logits.to_vec3::<f32>()?);
        let anchors = decode::anchors();
        Ok(regressors
            .iter()
            .zip(&logits)
            .map(|(r, l)| {
                let r: Vec<f32> = r.iter().flatten().copied().collect();
                let l: Vec<f32> = l.iter().flatten().copied().collect();
                decode::weighted_nms(decode::decode(&r, &l, &anchors, decode::MIN_SCORE), decode::MIN_SUPPRESSION_IOU)
            })
            .collect())
    }

    /// The raw outputs for a batch of inputs (B, 128, 128, 3), RGB scaled to [-1, 1], as TFLite
    /// gives them: regressors (B, 896, 16) and score logits (B, 896, 1), anchors in the order
    /// of the 16 x 16 map's cells (two each), then the 8 x 8 map's (six each).
    pub fn forward_raw(&self, input_nhwc: &Tensor) -> Result<(Tensor, Tensor)> {
        let x = input_nhwc.permute((0, 3, 1, 2))?.contiguous()?;
        let mut x = self.stem.forward(&x)?.relu()?;
        let mut taps = HashMap::new();
        for (i, block) in self.blocks.iter().enumerate() {
            x = block.forward(&x)?;
            taps.insert(i, x.clone());
        }
        // A head's (B, anchors x values, H, W) as (B, H x W x anchors, values): cell by cell.
        let flatten = |head: &Head| -> Result<Tensor> {
            let y = head.conv.forward(&taps[&head.block])?;
            let b = y.dim(0)?;
            Ok(y.permute((0, 2, 3, 1))?.contiguous()?.reshape((b, (), head.per_anchor))?)
        };
        let scores = Tensor::cat(&[flatten(&self.heads[0].0)?, flatten(&self.heads[1].0)?], 1)?;
        let regressors = Tensor::cat(&[flatten(&self.heads[0].1)?, flatten(&self.heads[1].1)?], 1)?;
        Ok((regressors, scores))
    }
}
