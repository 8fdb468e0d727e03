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

use crate::kernels::separable::{self, Map};
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

/// A convolution's weights in the layout its kernel reads (`kernels::separable`).
struct Conv {
    weight: Vec<f32>,
    bias: Vec<f32>,
}

struct Block {
    /// (ky, kx, channel).
    depthwise: Conv,
    /// (in, out).
    pointwise: Conv,
    stride: usize,
}

impl Block {
    /// Depthwise, pointwise, plus the input (max-pooled where the block strides; channels
    /// past its own count as zeros where the block widens), then ReLU.
    fn forward(&self, x: &Map) -> Map {
        let h = separable::depthwise_3x3(x, &self.depthwise.weight, &self.depthwise.bias, self.stride);
        let pooled;
        let skip = if self.stride == 2 {
            pooled = separable::max_pool_2x2(x);
            &pooled
        } else {
            x
        };
        separable::pointwise(&h, &self.pointwise.weight, &self.pointwise.bias, Some(skip))
    }
}

/// One head: its 1 x 1 convolution and the block it reads.
struct Head {
    conv: Conv,
    block: usize,
}

impl Head {
    /// (H x W x anchors a cell x values an anchor), cell by cell, as TFLite orders them.
    fn forward(&self, taps: &[Map]) -> Vec<f32> {
        separable::pointwise(&taps[self.block], &self.conv.weight, &self.conv.bias, None).data
    }
}

pub struct BlazeFace {
    /// 5 x 5 at stride 2, (ky, kx, in, out).
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
        // TFLite keeps kernels as (out, h, w, in), depthwise ones as (1, h, w, channels); the
        // kernels read (h, w, in, out), (h, w, channels) and (in, out).
        let values = |name: &str, order: Option<(usize, usize, usize, usize)>| -> Result<Vec<f32>> {
            let t = tensors.get(name).ok_or_else(|| bad(format!("tensor {name} is missing")))?.to_dtype(DType::F32)?;
            let t = match order {
                Some(order) => t.permute(order)?.contiguous()?,
                None => t,
            };
            Ok(t.flatten_all()?.to_vec1::<f32>()?)
        };
        let conv = |prefix: &str| -> Result<Conv> {
            Ok(Conv {
                weight: values(&format!("{prefix}.weight"), Some((1, 2, 3, 0)))?,
                bias: values(&format!("{prefix}.bias"), None)?,
            })
        };
        let depthwise = |prefix: &str| -> Result<Conv> {
            Ok(Conv {
                weight: values(&format!("{prefix}.weight"), None)?,
                bias: values(&format!("{prefix}.bias"), None)?,
            })
        };
        let checked = |conv: Conv, prefix: &str, taps: usize, inputs: usize, outputs: usize| -> Result<Conv> {
            if conv.weight.len() != taps * inputs * outputs || conv.bias.len() != outputs {
                return Err(bad(format!(
                    "{prefix} has {} weights and {} biases, expected {taps} x {inputs} x {outputs} and {outputs}",
                    conv.weight.len(),
                    conv.bias.len()
                )));
            }
            Ok(conv)
        };
        let blocks = arch
            .blocks
            .iter()
            .enumerate()
            .map(|(i, b)| {
                if b.out < b.input || !(b.stride == 1 || b.stride == 2) {
                    return Err(bad(format!("block {i} is {} -> {} channels at stride {}", b.input, b.out, b.stride)));
                }
                let (dw, pw) = (format!("blocks.{i}.depthwise"), format!("blocks.{i}.pointwise"));
                Ok(Block {
                    depthwise: checked(depthwise(&dw)?, &dw, 9, 1, b.input)?,
                    pointwise: checked(conv(&pw)?, &pw, 1, b.input, b.out)?,
                    stride: b.stride,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let head = |name: &str, per_anchor: usize| -> Result<Head> {
            let spec = arch.heads.get(name).ok_or_else(|| bad(format!("head {name} is missing")))?;
            if spec.block >= blocks.len() {
                return Err(bad(format!("head {name} reads block {}, of {}", spec.block, blocks.len())));
            }
            let prefix = format!("heads.{name}");
            let conv = conv(&prefix)?;
            let inputs = arch.blocks[spec.block].out;
            if conv.weight.len() % inputs != 0 || conv.bias.len() % per_anchor != 0 {
                return Err(bad(format!(
                    "{prefix} does not read {inputs} channels or give {per_anchor} values an anchor"
                )));
            }
            let outputs = conv.bias.len();
            Ok(Head { conv: checked(conv, &prefix, 1, inputs, outputs)?, block: spec.block })
        };
        let heads = [
            (head("classificator_8", 1)?, head("regressor_8", 16)?),
            (head("classificator_16", 1)?, head("regressor_16", 16)?),
        ];
        let stem_out = arch.blocks.first().map_or(0, |b| b.input);
        let stem = checked(conv("stem")?, "stem", 25, 3, stem_out)?;
        Ok(Self { stem, blocks, heads, input: arch.input })
    }

    /// The faces in an RGB photograph (width x height, HWC), as MediaPipe's short-range face
    /// detection finds them: letterboxed to a square, warped onto the input, decoded, merged;
    /// boxes and keypoints in fractions of the photograph's width and height.
    pub fn detect(&self, rgb: &[u8], width: usize, height: usize) -> Result<Vec<Detection>> {
        self.detect_in(rgb, width, height, &Square::around(width, height))
    }

    /// The faces the detector finds in one square of an RGB photograph (image pixels; what
    /// lies outside the photograph is black), warped onto the input as [`Self::detect`] warps
    /// the letterbox square; boxes and keypoints in fractions of the whole photograph. The
    /// tiled search for small faces (`super::tiles`) looks at its tiles this way, without
    /// copying them out.
    pub fn detect_in(&self, rgb: &[u8], width: usize, height: usize, square: &Square) -> Result<Vec<Detection>> {
        if rgb.len() != width * height * 3 || width == 0 || height == 0 {
            return Err(Error::Input(format!(
                "a {width} x {height} RGB image needs {} bytes, got {}",
                width * height * 3,
                rgb.len()
            )));
        }
        let [h, w] = self.input;
        let input = Map { data: warp_to_input(rgb, width, height, square, w), height: h, width: w, channels: 3 };
        let faces = self.detect_map(&input);
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
        Ok(self.input_maps(input_nhwc)?.iter().map(|x| self.detect_map(x)).collect())
    }

    fn detect_map(&self, input: &Map) -> Vec<Detection> {
        let (regressors, logits) = self.forward_map(input);
        decode::weighted_nms(
            decode::decode(&regressors, &logits, &decode::anchors(), decode::MIN_SCORE),
            decode::MIN_SUPPRESSION_IOU,
        )
    }

    /// The raw outputs for a batch of inputs (B, 128, 128, 3), RGB scaled to [-1, 1], as TFLite
    /// gives them: regressors (B, 896, 16) and score logits (B, 896, 1), anchors in the order
    /// of the 16 x 16 map's cells (two each), then the 8 x 8 map's (six each).
    pub fn forward_raw(&self, input_nhwc: &Tensor) -> Result<(Tensor, Tensor)> {
        let (mut regressors, mut logits) = (Vec::new(), Vec::new());
        let maps = self.input_maps(input_nhwc)?;
        for x in &maps {
            let (r, l) = self.forward_map(x);
            regressors.extend(r);
            logits.extend(l);
        }
        let b = maps.len();
        let anchors = logits.len() / b.max(1);
        Ok((
            Tensor::from_vec(regressors, (b, anchors, 16), &Device::Cpu)?,
            Tensor::from_vec(logits, (b, anchors, 1), &Device::Cpu)?,
        ))
    }

    fn input_maps(&self, input_nhwc: &Tensor) -> Result<Vec<Map>> {
        let (b, h, w, c) = input_nhwc.dims4()?;
        if [h, w] != self.input || c != 3 {
            return Err(Error::Input(format!(
                "the detector takes (B, {}, {}, 3) inputs, got ({b}, {h}, {w}, {c})",
                self.input[0], self.input[1]
            )));
        }
        let values = input_nhwc.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
        Ok(values.chunks_exact(h * w * 3).map(|d| Map { data: d.to_vec(), height: h, width: w, channels: 3 }).collect())
    }

    /// One input's (regressors, anchors x 16; logits, one per anchor).
    fn forward_map(&self, input: &Map) -> (Vec<f32>, Vec<f32>) {
        let mut x = separable::conv_dense(input, &self.stem.weight, &self.stem.bias, 5, 2);
        separable::relu(&mut x);
        let mut taps: Vec<Map> = Vec::with_capacity(self.blocks.len());
        for block in &self.blocks {
            let next = block.forward(taps.last().unwrap_or(&x));
            taps.push(next);
        }
        let [(scores_fine, regress_fine), (scores_coarse, regress_coarse)] = &self.heads;
        let mut logits = scores_fine.forward(&taps);
        logits.extend(scores_coarse.forward(&taps));
        let mut regressors = regress_fine.forward(&taps);
        regressors.extend(regress_coarse.forward(&taps));
        (regressors, logits)
    }
}
