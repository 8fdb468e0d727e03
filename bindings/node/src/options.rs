//! Option and input types as JS sees them, and their conversion into core types. Values are
//! checked here only as far as the conversion needs (signs, lengths of small arrays); the
//! core checks everything that concerns the model.

use napi::bindgen_prelude::{Float32Array, Int32Array, Uint8Array};
use napi_derive::napi;

use crate::error::invalid;
use motivnet::train::optim::{AdamWConfig, GroupConfig};
use motivnet::{Geometry, Normalization};

/// How to create a model.
#[napi(object)]
pub struct LoadOptions {
    /// A preset name (`tiny`, `small`, `sapiens-0.3b`, `sapiens-0.6b`, `sapiens-1b`,
    /// `sapiens-2b`) or a path to a JSON model config file.
    pub model: String,
    /// A weights file: safetensors or a PyTorch `.pth` state dict (MotivNet or Sapiens layout).
    pub weights: Option<String>,
    /// Load only the encoder from `weights`; the head keeps its fresh initialisation.
    /// @default false
    pub encoder_only: Option<bool>,
    /// The head's class count. By default a preset takes its head's shape (class count,
    /// query groups, embedding width, layers) from `weights` when they hold a head, and has 8
    /// classes otherwise; a config file fixes the head keys it writes. Asking for another
    /// count than the weights' head holds is an error (load `encoderOnly` to train a new head).
    pub num_classes: Option<u32>,
    /// How a fresh model is initialised: `upstream` (as the PyTorch code: default Linear and
    /// Conv init, zero position embedding, identical decoder layers) or `vit` (truncated
    /// normal 0.02, independent decoder layers). @default "upstream"
    pub init: Option<String>,
    /// `cpu`, `cuda` or `cuda:N`. @default "cpu"
    pub device: Option<String>,
    /// `f32`, or `bf16`: on CUDA, compute in bf16 with f32 master weights; on a CPU with
    /// AVX512_BF16, the Linear products in bf16 (on AMX tiles where it has them). @default "f32"
    pub precision: Option<String>,
    /// The model will be trained: under bf16 on the CPU its Linear weights stay f32 (the
    /// train step rounds them for each product) instead of being kept only in bf16 for
    /// inference. @default false
    pub for_training: Option<bool>,
    /// Seeds the initial weights and the dropout masks. @default 0
    pub seed: Option<u32>,
    pub optimizer: Option<OptimizerOptions>,
    pub normalization: Option<NormalizationOptions>,
}

/// AdamW settings fixed for the model's lifetime (learning rates come with each step).
#[napi(object)]
pub struct OptimizerOptions {
    /// @default 0.01
    pub encoder_weight_decay: Option<f64>,
    /// @default 0.01
    pub decoder_weight_decay: Option<f64>,
    /// @default 0.9
    pub beta1: Option<f64>,
    /// @default 0.999
    pub beta2: Option<f64>,
    /// @default 1e-8
    pub eps: Option<f64>,
    /// Clip the global gradient norm to this value before each update. @default none
    pub max_grad_norm: Option<f64>,
    /// No weight decay on biases, norm weights and the position embedding (Sapiens' recipe).
    /// @default false
    pub exclude_norm_bias_pos_from_decay: Option<bool>,
    /// Layer-wise learning-rate decay for the encoder (Sapiens: 0.85). @default none
    pub encoder_layer_decay: Option<f64>,
}

/// Per-channel (R, G, B) mean and std on the 0..255 scale.
#[napi(object)]
pub struct NormalizationOptions {
    pub mean: Vec<f64>,
    pub std: Vec<f64>,
}

impl TryFrom<OptimizerOptions> for AdamWConfig {
    type Error = napi::Error;
    fn try_from(o: OptimizerOptions) -> napi::Result<Self> {
        let d = AdamWConfig::default();
        Ok(AdamWConfig {
            beta1: o.beta1.unwrap_or(d.beta1),
            beta2: o.beta2.unwrap_or(d.beta2),
            eps: o.eps.unwrap_or(d.eps),
            encoder: GroupConfig { weight_decay: o.encoder_weight_decay.unwrap_or(d.encoder.weight_decay) },
            decoder: GroupConfig { weight_decay: o.decoder_weight_decay.unwrap_or(d.decoder.weight_decay) },
            exclude_norm_bias_pos_from_decay: o.exclude_norm_bias_pos_from_decay.unwrap_or(false),
            max_grad_norm: o.max_grad_norm,
            encoder_layer_decay: o.encoder_layer_decay,
        })
    }
}

impl TryFrom<NormalizationOptions> for Normalization {
    type Error = napi::Error;
    fn try_from(n: NormalizationOptions) -> napi::Result<Self> {
        let three = |v: &[f64], what: &str| -> napi::Result<[f32; 3]> {
            match v {
                [a, b, c] => Ok([*a as f32, *b as f32, *c as f32]),
                _ => Err(invalid(format!("normalization.{what} needs 3 values (R, G, B), got {}", v.len()))),
            }
        };
        let std = three(&n.std, "std")?;
        if std.iter().any(|s| !(s.is_finite() && *s > 0.0)) {
            return Err(invalid(format!("normalization.std must be positive, got {std:?}")));
        }
        Ok(Normalization { mean: three(&n.mean, "mean")?, std })
    }
}

/// A batch for the model, in one of two forms.
#[napi(object)]
pub struct NativeInput {
    /// RGB images (HWC, u8) back to back.
    pub pixels: Option<Uint8Array>,
    pub widths: Option<Vec<i64>>,
    pub heights: Option<Vec<i64>>,
    /// `stretch`, `letterbox` or `none`. @default "stretch"
    pub geometry: Option<String>,
    /// Or: normalized f32 images (B, 3, H, W) at the model's input size.
    pub tensor: Option<Float32Array>,
    pub batch_size: Option<u32>,
}

/// The owned, checked form of [`NativeInput`] that travels to the worker thread.
pub enum Input {
    Pixels { data: Uint8Array, sizes: Vec<(usize, usize)>, geometry: Geometry },
    Normalized { data: Float32Array, batch_size: usize },
}

impl TryFrom<NativeInput> for Input {
    type Error = napi::Error;
    fn try_from(i: NativeInput) -> napi::Result<Self> {
        match (i.pixels, i.tensor) {
            (Some(data), None) => {
                let widths = i.widths.ok_or_else(|| invalid("pixels given without widths"))?;
                let heights = i.heights.ok_or_else(|| invalid("pixels given without heights"))?;
                if widths.len() != heights.len() {
                    return Err(invalid(format!("{} widths but {} heights", widths.len(), heights.len())));
                }
                let sizes = widths
                    .iter()
                    .zip(&heights)
                    .enumerate()
                    .map(|(n, (&w, &h))| {
                        if w <= 0 || h <= 0 {
                            Err(invalid(format!("image {n} is {w} x {h} (width x height): both must be at least 1")))
                        } else {
                            Ok((w as usize, h as usize))
                        }
                    })
                    .collect::<napi::Result<Vec<_>>>()?;
                let geometry = i.geometry.as_deref().unwrap_or("stretch").parse().map_err(crate::error::to_js)?;
                Ok(Input::Pixels { data, sizes, geometry })
            }
            (None, Some(data)) => {
                let batch_size = i.batch_size.ok_or_else(|| invalid("a tensor input needs batchSize"))? as usize;
                Ok(Input::Normalized { data, batch_size })
            }
            (Some(_), Some(_)) => Err(invalid("give either pixels or tensor, not both")),
            (None, None) => Err(invalid("the input holds neither pixels nor tensor")),
        }
    }
}

impl Input {
    /// Borrows the JS memory for the core: no copy of the pixels.
    pub fn with<T>(&self, f: impl FnOnce(&motivnet::ModelInput) -> motivnet::Result<T>) -> motivnet::Result<T> {
        match self {
            Input::Pixels { data, sizes, geometry } => {
                let batch = motivnet::ImageBatch::new(data, sizes)?;
                f(&motivnet::ModelInput::Pixels { batch, geometry: *geometry })
            }
            Input::Normalized { data, batch_size } => {
                f(&motivnet::ModelInput::Normalized { data, batch_size: *batch_size })
            }
        }
    }
}

/// Labels as JS gives them, checked for sign here; the range is the core's to check.
pub fn labels(labels: &Int32Array) -> napi::Result<Vec<u32>> {
    labels
        .iter()
        .enumerate()
        .map(|(i, &l)| {
            u32::try_from(l).map_err(|_| invalid(format!("label {l} at index {i} is out of range: labels start at 0")))
        })
        .collect()
}
