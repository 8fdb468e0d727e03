//! motivnet: facial emotion recognition with MotivNet on candle.
//!
//! MotivNet (Medicharla and Yilmaz) is a Sapiens ViT encoder followed by an ML-Decoder
//! attention head (Ridnik et al. 2021), fine-tuned on AffectNet. This crate holds the model,
//! its preprocessing, the loss, backward, gradient accumulation and an AdamW with parameter
//! groups, and checkpoint I/O with the PyTorch reference's parameter names. It knows nothing
//! of Node: the binding crate only converts values.
//!
//! Shapes: images (B, 3, H, W) -> encoder tokens (B, N, D) with N = (H/16) x (W/16) ->
//! logits (B, num_classes).
//!
//! # The map
//!
//! Each layer uses only those above it in this list:
//!
//! - [`kernels`]: candle-free slice math (strided matmuls, SIMD tiers, exp/erf, softmax,
//!   GELU, LayerNorm, Linear, attention, patch rows, the OpenCV-style resize).
//! - [`ops`]: candle custom ops over the kernels, each with its own backward and its
//!   composed, device-generic twin beside it; [`ops::dispatch`] decides which runs.
//! - [`nn`]: parameters by checkpoint name ([`nn::params`]), and Linear, LayerNorm, ReLU,
//!   dropout, attention and the train/eval mode ([`nn::layers`]).
//! - [`model`]: the Sapiens encoder, the ML-Decoder head, [`MotivNet`] with `forward`,
//!   `forward_train` and `forward_explained` (the head's attention maps), and the encoder's
//!   and the head's hand-written training passes.
//! - [`train`]: the [`Trainer`] (loss, backward, accumulation, training state) and AdamW.
//!
//! Beside them: [`config`] (configs, presets, what a spec leaves to the weights), [`io`]
//! (checkpoints), [`keys`] (every checkpoint and state-key prefix), [`runtime`] (compute
//! threads, malloc, devices, precision) and [`error`].

pub mod config;
pub mod detector;
pub mod error;
pub mod io;
pub(crate) mod kernels;
pub mod keys;
pub mod model;
pub mod nn;
pub mod ops;
pub mod runtime;
pub mod train;

/// candle, re-exported so dependents use the same version.
pub use candle_core as candle;
pub use config::spec::ModelSpec;
pub use config::{EncoderConfig, HeadConfig, ModelConfig};
pub use error::{Error, Result};
pub use model::{AttentionMaps, Mode, ModelInput, MotivNet, Prediction};
pub use nn::layers::RecordedMasks;
pub use nn::params::InitScheme;
pub use ops::pixels::{Geometry, ImageBatch, Normalization};
pub use runtime::device::parse_device;
pub use runtime::precision::Precision;
pub use train::optim::{AdamW, AdamWConfig, GroupConfig};
pub use train::{StepOutput, Trainer, TrainerConfig};
