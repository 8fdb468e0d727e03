//! MotivNet: the Sapiens encoder and the ML-Decoder head with their parameters.
//!
//! In: normalized images (B, 3, H, W) (see [`crate::pixels`] for u8 images of any size).
//! Out: logits (B, num_classes). Parameters live in a [`ParamStore`] under the reference's
//! checkpoint names: `pose_encoder.*` and `decoder.decoder.*`.

use candle_core::{Device, Tensor};

use crate::config::ModelConfig;
use crate::encoder::SapiensEncoder;
use crate::error::Result;
use crate::head::MlDecoder;
pub use crate::layers::Mode;
use crate::params::{InitScheme, ParamStore};
use crate::pixels::Normalization;
use crate::precision::Precision;
use crate::weights::{self, LoadOptions, LoadReport, DECODER_PREFIX, ENCODER_PREFIX};

pub struct MotivNet {
    pub config: ModelConfig,
    pub params: ParamStore,
    pub encoder: SapiensEncoder,
    pub head: MlDecoder,
    /// Mean and std the u8 pixels are normalized with (the reference's by default).
    pub normalization: Normalization,
    /// The dtype activations are computed in (see [`crate::precision`]).
    precision: Precision,
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
        crate::cpu::prepare();
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
        Ok(Self { config: config.clone(), params, encoder, head, normalization, precision: Precision::F32 })
    }

    /// Loads a checkpoint (see [`crate::weights`] for the layouts read).
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

    /// Computes in `precision` from now on; bf16 only on a CUDA device.
    pub fn set_precision(&mut self, precision: Precision) -> Result<()> {
        precision.check_device(self.device())?;
        self.precision = precision;
        Ok(())
    }

    /// As [`MotivNet::set_precision`] without the device check: the tests run bf16 on the CPU.
    #[cfg(test)]
    pub(crate) fn force_precision(&mut self, precision: Precision) {
        self.precision = precision;
    }

    /// Normalized images (B, 3, H, W) -> logits (B, num_classes).
    pub fn forward(&self, images: &Tensor, mode: &mut Mode) -> Result<Tensor> {
        let tokens = crate::layers::cut_graph_in_eval(self.encoder.forward(images, mode)?, mode);
        Ok(crate::layers::cut_graph_in_eval(self.head.forward(&tokens, mode)?, mode))
    }
}
