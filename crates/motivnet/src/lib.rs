//! motivnet: facial emotion recognition with MotivNet on candle.
//!
//! MotivNet (Medicharla and Yilmaz) is a Sapiens ViT encoder ([`encoder`]) followed by an
//! ML-Decoder attention head ([`head`], Ridnik et al. 2021), fine-tuned on AffectNet. This crate
//! holds the model, its preprocessing ([`pixels`]), the loss, backward, gradient accumulation
//! and an AdamW with parameter groups ([`optim`], [`train`]), and checkpoint I/O with the
//! PyTorch reference's parameter names ([`weights`]). It knows nothing of Node: the binding
//! crate only converts values.
//!
//! Shapes: images (B, 3, H, W) -> encoder tokens (B, N, D) with N = (H/16) x (W/16) ->
//! logits (B, num_classes).

pub mod config;
pub mod cpu;
pub mod device;
pub mod dispatch;
pub mod encoder;
pub mod encoder_train;
pub mod error;
pub mod fused;
pub mod fused_attention;
pub mod fused_linear;
pub mod head;
pub mod layers;
pub mod loss;
pub mod malloc;
pub mod model;
pub mod optim;
pub mod params;
pub mod patches;
pub mod pixels;
pub mod precision;
pub mod simd;
pub mod spec;
pub mod strided_gemm;
pub mod train;
pub mod weights;

/// candle, re-exported so dependents use the same version.
pub use candle_core as candle;
pub use config::{EncoderConfig, HeadConfig, ModelConfig};
pub use device::parse_device;
pub use error::{Error, Result};
pub use layers::RecordedMasks;
pub use model::{Mode, MotivNet};
pub use optim::{AdamW, AdamWConfig, GroupConfig};
pub use params::InitScheme;
pub use pixels::{Geometry, ImageBatch, Normalization};
pub use precision::Precision;
pub use spec::ModelSpec;
pub use train::{ModelInput, Prediction, StepOutput, Trainer, TrainerConfig};
