//! MotivNet: the Sapiens encoder and the ML-Decoder head with their parameters.
//!
//! In: normalized images (B, 3, H, W) (see [`crate::ops::pixels`] for u8 images of any size).
//! Out: logits (B, num_classes). Parameters live in a [`ParamStore`] under the reference's
//! checkpoint names: `pose_encoder.*` and `decoder.decoder.*`. [`MotivNet::forward`] is the
//! model for inference and on devices without the fused kernels; [`MotivNet::forward_train`]
//! is the one place the model is assembled for a training step; [`MotivNet::forward_explained`]
//! adds the head's attention maps to the logits ([`explain`]).

pub mod encoder;
pub mod encoder_train;
pub mod explain;
pub mod head;
pub mod inference;

use candle_core::backprop::GradStore;
use candle_core::{DType, Device, Tensor, Var};

use crate::config::ModelConfig;
use crate::error::{Error, Result};
use crate::io::weights::{self, LoadOptions, LoadReport};
use crate::keys::{DECODER as DECODER_PREFIX, ENCODER as ENCODER_PREFIX};
pub use crate::nn::layers::Mode;
use crate::nn::params::{InitScheme, ParamStore};
use crate::ops::pixels::Normalization;
use crate::runtime::precision::Precision;
use encoder::SapiensEncoder;
use encoder_train::EncoderTape;
pub use explain::AttentionMaps;
use head::MlDecoder;
pub use inference::{ModelInput, Prediction};

pub struct MotivNet {
    pub config: ModelConfig,
    pub params: ParamStore,
    pub encoder: SapiensEncoder,
    pub head: MlDecoder,
    /// Mean and std the u8 pixels are normalized with (the reference's by default).
    pub normalization: Normalization,
    /// The dtype activations are computed in (see [`crate::runtime::precision`]).
    precision: Precision,
    /// bf16 tensors on the CPU, as on CUDA (the tests' way to run the GPU's bf16 graph here).
    bf16_tensors_on_cpu: bool,
}

impl MotivNet {
    /// A freshly initialised model as the upstream code starts one ([`InitScheme::Upstream`]);
    /// `seed` fixes every initial weight.
    pub fn new(config: &ModelConfig, device: &Device, seed: u64) -> Result<Self> {
        Self::with_init(config, device, seed, InitScheme::Upstream)
    }

    /// A freshly initialised model under `init`.
    pub fn with_init(config: &ModelConfig, device: &Device, seed: u64, init: InitScheme) -> Result<Self> {
        config.validate()?;
        crate::runtime::cpu::prepare();
        let mut params = ParamStore::new(device, seed);
        let encoder = SapiensEncoder::new(&mut params, ENCODER_PREFIX.trim_end_matches('.'), &config.encoder, init)?;
        let head = MlDecoder::new(
            &mut params,
            DECODER_PREFIX.trim_end_matches('.'),
            &config.head,
            config.encoder.embed_dim,
            init,
        )?;
        let normalization = Normalization::default();
        Ok(Self {
            config: config.clone(),
            params,
            encoder,
            head,
            normalization,
            precision: Precision::F32,
            bf16_tensors_on_cpu: false,
        })
    }

    /// Loads a checkpoint (see [`crate::io::weights`] for the layouts read).
    pub fn load_weights(&self, path: &std::path::Path, encoder_only: bool) -> Result<LoadReport> {
        let opts = LoadOptions { encoder_only, grid: Some(self.config.encoder.grid()) };
        weights::load_file(&self.params, path, &opts)
    }

    /// Writes the weights as safetensors with the reference's names.
    pub fn save_weights(&self, path: &std::path::Path) -> Result<()> {
        weights::save_weights(&self.params, path)
    }

    pub fn device(&self) -> &Device {
        self.params.device()
    }

    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// Computes in `precision` from now on; bf16 only on a CUDA device or a CPU with AMX.
    pub fn set_precision(&mut self, precision: Precision) -> Result<()> {
        precision.check_device(self.device())?;
        self.precision = precision;
        Ok(())
    }

    /// As [`MotivNet::set_precision`] without the device check, and with bf16 tensors on the
    /// CPU as on CUDA: the tests run the GPU's bf16 graph here.
    #[cfg(test)]
    pub(crate) fn force_precision(&mut self, precision: Precision) {
        self.precision = precision;
        self.bf16_tensors_on_cpu = precision == Precision::Bf16;
    }

    /// The dtype of the tensors the model computes on: bf16 on CUDA under bf16, else f32 (the
    /// CPU's bf16 rounds only the products' operands, inside them).
    pub fn tensor_dtype(&self) -> DType {
        if self.precision == Precision::Bf16 && (self.device().is_cuda() || self.bf16_tensors_on_cpu) {
            DType::BF16
        } else {
            DType::F32
        }
    }

    /// Whether the Linear products run on the CPU's AMX tiles in bf16 (inference only).
    pub fn cpu_bf16_products(&self) -> bool {
        self.precision.cpu_bf16_products(self.device()) && !self.bf16_tensors_on_cpu
    }

    /// Normalized images (B, 3, H, W) -> logits (B, num_classes).
    pub fn forward(&self, images: &Tensor, mode: &mut Mode) -> Result<Tensor> {
        let tokens = crate::nn::layers::cut_graph_in_eval(self.encoder.forward(images, mode)?, mode);
        Ok(crate::nn::layers::cut_graph_in_eval(self.head.forward(&tokens, mode)?, mode))
    }

    /// Train-mode logits (B, num_classes) of normalized images, and what [`MotivNet::backward`]
    /// needs beyond candle's graph. On the fused CPU path the encoder runs its hand-written
    /// training pass (`encoder_train`) and its tokens enter the head as a leaf; elsewhere the
    /// whole model is candle's graph.
    pub fn forward_train(&self, images: &Tensor, mode: &mut Mode) -> Result<(Tensor, TrainPass)> {
        if !mode.is_train() {
            return Err(Error::Internal("forward_train needs a train mode".into()));
        }
        if encoder_train::supported(&self.encoder, images) {
            let (tokens, tape) = encoder_train::forward(&self.encoder, images)?;
            let logits = self.head.forward(tokens.as_tensor(), mode)?;
            return Ok((logits, TrainPass { encoder: Some((tokens, tape)) }));
        }
        Ok((self.forward(images, mode)?, TrainPass { encoder: None }))
    }

    /// The gradients of `loss` (a scalar computed from [`MotivNet::forward_train`]'s logits)
    /// for every parameter, whichever path the forward took.
    pub fn backward(&self, loss: &Tensor, pass: TrainPass) -> Result<GradStore> {
        let mut grads = loss.backward()?;
        if let Some((tokens, tape)) = pass.encoder {
            let d_tokens = grads
                .remove(tokens.as_tensor())
                .ok_or_else(|| Error::Internal("the encoder's tokens received no gradient from the head".into()))?;
            for (param, grad) in tape.backward(&d_tokens)? {
                grads.insert(&param, grad);
            }
        }
        Ok(grads)
    }
}

/// What a training forward leaves for its backward besides candle's graph: the encoder's
/// tokens and tape when it ran by hand.
pub struct TrainPass {
    encoder: Option<(Var, EncoderTape)>,
}
