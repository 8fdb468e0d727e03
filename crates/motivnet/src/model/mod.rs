//! MotivNet: the Sapiens encoder and the ML-Decoder head with their parameters.
//!
//! In: normalized images (B, 3, H, W) (see [`crate::ops::pixels`] for u8 images of any size).
//! Out: logits (B, num_classes). Parameters live in a [`ParamStore`] under the reference's
//! checkpoint names: `pose_encoder.*` and `decoder.decoder.*`. [`MotivNet::forward`] is the
//! model for inference and on devices without the fused kernels; [`MotivNet::forward_train`]
//! is the one place the model is assembled for a training step; [`MotivNet::forward_explained`]
//! adds the head's attention maps to the logits ([`explain`]).

mod batch_parts;
pub mod encoder;
pub mod encoder_train;
pub mod explain;
pub mod head;
pub mod head_train;
pub mod inference;
pub mod products;
mod tape;

use candle_core::backprop::GradStore;
use candle_core::{DType, Device, Tensor, Var};

use crate::config::ModelConfig;
use crate::error::{Error, Result};
use crate::io::weights::{self, LoadOptions, LoadReport};
use crate::keys::{DECODER as DECODER_PREFIX, ENCODER as ENCODER_PREFIX};
pub use crate::nn::layers::Mode;
use crate::nn::layers::PackedKind;
use crate::nn::params::{InitScheme, ParamStore};
use crate::ops::pixels::Normalization;
use crate::runtime::precision::Precision;
use batch_parts::EncoderTapes;
use encoder::SapiensEncoder;
pub use explain::AttentionMaps;
use head::MlDecoder;
use head_train::HeadTape;
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
        Self::build(config, ParamStore::new(device, seed), init)
    }

    /// A model with the weights of `path` (see [`MotivNet::load_weights`]). When the file sets
    /// every parameter (the encoder and the head), the model is built with zeros instead of an
    /// initialisation the load would overwrite: 3 of the 4 seconds of loading sapiens-0.3b.
    /// When the head stays freshly initialised (`encoder_only`, a Sapiens backbone), it is
    /// built under `init` with `seed`, as [`MotivNet::with_init`].
    pub fn from_weights_file(
        config: &ModelConfig,
        device: &Device,
        seed: u64,
        init: InitScheme,
        path: &std::path::Path,
        encoder_only: bool,
    ) -> Result<(Self, LoadReport)> {
        let shapes = weights::canonical_shapes(&weights::read_shapes(path)?);
        let sets_every_parameter = !encoder_only && shapes.keys().any(|k| k.starts_with(DECODER_PREFIX));
        let model = if sets_every_parameter {
            Self::build(config, ParamStore::for_values_from_file(device), init)?
        } else {
            Self::with_init(config, device, seed, init)?
        };
        // On an error the model, zeros and all, is dropped here.
        let report = model.load_weights(path, encoder_only)?;
        Ok((model, report))
    }

    fn build(config: &ModelConfig, mut params: ParamStore, init: InitScheme) -> Result<Self> {
        config.validate()?;
        crate::runtime::cpu::prepare();
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

    /// Computes in `precision` from now on; bf16 only on a CUDA device or a CPU with AMX, int8
    /// only on a CPU with AVX512-VNNI (inference).
    pub fn set_precision(&mut self, precision: Precision) -> Result<()> {
        precision.check_device(self.device())?;
        if precision != self.precision {
            self.params.check_all_held(&format!("compute in {}", precision.name()))?;
        }
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

    /// Whether the Linear products run on the CPU's AMX tiles in bf16 (in inference, and in the
    /// encoder's training pass).
    pub fn cpu_bf16_products(&self) -> bool {
        self.precision.cpu_bf16_products(self.device()) && !self.bf16_tensors_on_cpu
    }

    /// Whether the Linear products run on the CPU's VNNI in int8 (inference only).
    pub fn cpu_int8_products(&self) -> bool {
        self.precision.cpu_int8_products(self.device())
    }

    /// The packed precision this model's Linear products run in on the CPU, if any.
    pub fn packed_products(&self) -> Option<PackedKind> {
        if self.cpu_int8_products() {
            Some(PackedKind::Int8)
        } else if self.cpu_bf16_products() {
            Some(PackedKind::Bf16)
        } else {
            None
        }
    }

    /// Runs `f`, an inference pass, with the Linear products in this model's precision on the
    /// CPU (bf16 on AMX tiles, int8 on VNNI), or as it is elsewhere.
    pub(crate) fn with_packed_products<R>(&self, f: impl FnOnce() -> R) -> R {
        match self.packed_products() {
            Some(PackedKind::Bf16) => crate::ops::dispatch::bf16_matmuls(f),
            Some(PackedKind::Int8) => crate::ops::dispatch::int8_matmuls(f),
            None => f(),
        }
    }

    /// Whether [`MotivNet::keep_linear_weights_packed_only`] applies: the Linear products run
    /// in bf16 on the CPU's AMX tiles or in int8 on its VNNI, and the composed kernels (which
    /// multiply in f32) are not forced on this thread or process.
    pub fn can_keep_linear_weights_packed_only(&self) -> bool {
        self.packed_products().is_some() && !crate::ops::dispatch::composed_forced()
    }

    /// For a model that only infers with bf16 or int8 products on the CPU: keeps each Linear
    /// weight (in int8, the encoder's) only as its packing, freeing the f32 values layer by
    /// layer as each is packed. The Linear weights then take 2 bytes a value in bf16 and 1 in
    /// int8, instead of 4 (plus the packing's): sapiens-0.3b's 1.2 GB of them become 0.6 or
    /// 0.3 GB. The logits do not change
    /// (the products read the same packing); what needs the f32 values is refused from then on
    /// with the reason: saving or loading weights or a training state, training, another
    /// precision. Returns how many weights were let go (0 when called again).
    pub fn keep_linear_weights_packed_only(&mut self) -> Result<usize> {
        let Some(kind) = self.packed_products().filter(|_| self.can_keep_linear_weights_packed_only()) else {
            return Err(Error::Config(format!(
                "Linear weights are kept packed only under precision 'bf16' on a CPU with AVX512_BF16 or 'int8' on a CPU \
                 with VNNI, on the fused kernels; this model computes in {} on {:?}{}",
                self.precision.name(),
                self.device(),
                if crate::ops::dispatch::composed_forced() { " with the composed kernels forced" } else { "" }
            )));
        };
        // Under int8 the head keeps its f32 weights: inference takes its f32 pass
        // (`head_train::predicts`), which reads them, and they are a few MB beside the encoder's.
        let head = match kind {
            PackedKind::Bf16 => self.head.linears_mut(),
            PackedKind::Int8 => Vec::new(),
        };
        let mut released = 0;
        for linear in self.encoder.linears_mut().into_iter().chain(head) {
            if linear.packing_held_only().is_some() {
                continue;
            }
            let weight = linear.weight.clone();
            linear.keep_packing_only(kind)?;
            // The store's handle was the last one besides `weight`: the values go with it.
            self.params.release(&weight, kind.name())?;
            released += 1;
        }
        crate::runtime::malloc::return_free_memory();
        Ok(released)
    }

    /// Normalized images (B, 3, H, W) -> logits (B, num_classes).
    pub fn forward(&self, images: &Tensor, mode: &mut Mode) -> Result<Tensor> {
        let tokens = crate::nn::layers::cut_graph_in_eval(self.encoder.forward(images, mode)?, mode);
        Ok(crate::nn::layers::cut_graph_in_eval(self.head.forward(&tokens, mode)?, mode))
    }

    /// Train-mode logits (B, num_classes) of normalized images, and what [`MotivNet::backward`]
    /// needs beyond candle's graph. On the fused CPU path the encoder and the head run their
    /// hand-written training passes (`encoder_train`, `head_train`): the tokens pass from one
    /// to the other as plain values and the logits enter the loss as a leaf; elsewhere the
    /// whole model is candle's graph. Under bf16 products on the CPU the encoder's Linear
    /// layers and attention multiply on the AMX tiles, forward and backward; the head stays f32.
    pub fn forward_train(&self, images: &Tensor, mode: &mut Mode) -> Result<(Tensor, TrainPass)> {
        if !mode.is_train() {
            return Err(Error::Internal("forward_train needs a train mode".into()));
        }
        self.precision.check_trainable()?;
        let bf16 = self.cpu_bf16_products();
        if bf16 {
            self.params.check_all_held("train")?;
        }
        if encoder_train::supported(&self.encoder, images) {
            let products = if bf16 { products::Products::Bf16 } else { products::Products::F32 };
            let (tokens, encoder_tape) = self.encoder_train_in_parts(images, products)?;
            if head_train::supported(&self.head, tokens.as_tensor()) {
                let (logits, head_tape) = head_train::forward(&self.head, tokens.as_tensor(), mode)?;
                let pass = TrainPass { encoder: Some((tokens, encoder_tape)), head: Some((logits.clone(), head_tape)) };
                return Ok((logits.as_tensor().clone(), pass));
            }
            let logits = self.head.forward(tokens.as_tensor(), mode)?;
            return Ok((logits, TrainPass { encoder: Some((tokens, encoder_tape)), head: None }));
        }
        if bf16 {
            // The composed graph would multiply in f32 while the model says bf16.
            return Err(Error::Config(
                "precision 'bf16' trains on the CPU through the fused kernels only (they are forced off here, \
                 or the input is not a contiguous f32 CPU tensor): train with precision 'f32'"
                    .into(),
            ));
        }
        Ok((self.forward(images, mode)?, TrainPass { encoder: None, head: None }))
    }

    /// The gradients of `loss` (a scalar computed from [`MotivNet::forward_train`]'s logits)
    /// for every parameter, whichever path the forward took.
    pub fn backward(&self, loss: &Tensor, pass: TrainPass) -> Result<GradStore> {
        let mut grads = loss.backward()?;
        // The head's pass hands the tokens' gradient straight to the encoder's; on candle's
        // graph it is the gradient of the tokens' leaf.
        let mut d_tokens = None;
        if let Some((logits, tape)) = pass.head {
            let d_logits = grads
                .remove(logits.as_tensor())
                .ok_or_else(|| Error::Internal("the logits received no gradient from the loss".into()))?;
            let (pairs, d) = tape.backward(&d_logits)?;
            for (param, grad) in pairs {
                grads.insert(&param, grad);
            }
            d_tokens = Some(d);
        }
        if let Some((tokens, tape)) = pass.encoder {
            let d_tokens = match d_tokens {
                Some(d) => d,
                None => grads
                    .remove(tokens.as_tensor())
                    .ok_or_else(|| Error::Internal("the encoder's tokens received no gradient from the head".into()))?,
            };
            for (param, grad) in tape.backward(&d_tokens)? {
                grads.insert(&param, grad);
            }
        }
        Ok(grads)
    }
}

/// What a training forward leaves for its backward besides candle's graph: the encoder's
/// tokens and tape when it ran by hand, and the head's logits and tape when it did.
pub struct TrainPass {
    encoder: Option<(Var, EncoderTapes)>,
    head: Option<(Var, HeadTape)>,
}
