//! The dtype the model computes in: f32 everywhere, or bf16 on CUDA with f32 master weights.
//!
//! In bf16 the input batch is cast to bf16 and each layer follows its input's dtype: Linear
//! and matmul weights are cast from the f32 parameters as they are used, while LayerNorm, the
//! attention softmax and the loss compute in f32 (their sums lose too much in bf16). Backward
//! casts each parameter's gradient back to f32 through those casts, so the gradients, the
//! AdamW moments and the weights stay f32, as PyTorch's autocast keeps them.

use candle_core::{DType, Device};

use crate::error::{Error, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Precision {
    #[default]
    F32,
    Bf16,
}

impl Precision {
    /// `f32` or `bf16`.
    pub fn parse(name: &str) -> Result<Self> {
        match name.trim() {
            "f32" | "fp32" | "float32" => Ok(Self::F32),
            "bf16" | "bfloat16" => Ok(Self::Bf16),
            other => Err(Error::Config(format!("precision '{other}' is not valid: expected f32 or bf16"))),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::F32 => "f32",
            Self::Bf16 => "bf16",
        }
    }

    /// The dtype activations are computed in.
    pub fn dtype(self) -> DType {
        match self {
            Self::F32 => DType::F32,
            Self::Bf16 => DType::BF16,
        }
    }

    /// Refuses bf16 off CUDA: candle's CPU backend has no bf16 matmul kernel (it widens to f32
    /// and back), so bf16 there would only be slower and less exact.
    pub fn check_device(self, device: &Device) -> Result<()> {
        if self == Self::Bf16 && !device.is_cuda() {
            return Err(Error::Device(
                "precision 'bf16' runs on CUDA devices only (the CPU computes in f32): pick --device cuda or f32"
                    .into(),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ModelConfig;
    use crate::model::MotivNet;
    use crate::optim::Groups;
    use crate::train::{ModelInput, Trainer, TrainerConfig};
    use candle_core::Tensor;

    fn model() -> MotivNet {
        let config = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/config.json");
        MotivNet::new(&ModelConfig::from_file(&config).unwrap(), &Device::Cpu, 3).unwrap()
    }

    fn max_abs(t: &Tensor) -> f32 {
        t.to_dtype(DType::F32)
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    }

    /// bf16 compute (run on the CPU here, where candle widens its matmuls) against f32: the
    /// same logits to bf16's precision, f32 gradients and weights, and a loss that falls.
    #[test]
    fn bf16_compute_tracks_f32_and_keeps_f32_master_weights() {
        let x = Tensor::randn(0f32, 1.0, (4, 3, 64, 48), &Device::Cpu).unwrap();
        let input = ModelInput::Tensor(&x);
        let f32_model = model();
        let mut bf16_model = model();
        bf16_model.force_precision(Precision::Bf16);
        assert_eq!(bf16_model.input_tensor(&input).unwrap().dtype(), DType::BF16);
        let (a, b) = (f32_model.predict(&input).unwrap(), bf16_model.predict(&input).unwrap());
        assert_eq!(b.dtype(), DType::BF16);
        let diff = max_abs(&(a - b.to_dtype(DType::F32).unwrap()).unwrap());
        assert!(diff < 0.05 * max_abs(&f32_model.predict(&input).unwrap()).max(1.0), "logits differ by {diff}");

        let labels = [0u32, 3, 5, 7];
        let lr = Groups { encoder: 1e-3, decoder: 1e-3 };
        let mut trainer = Trainer::new(bf16_model, TrainerConfig::default());
        let first = trainer.train_step(&input, &labels, lr, false).unwrap().loss;
        for (name, g) in trainer.accumulated_gradients() {
            assert_eq!(g.dtype(), DType::F32, "gradient of {name}");
        }
        trainer.train_step(&input, &labels, lr, true).unwrap();
        for p in trainer.model.params.iter() {
            assert_eq!(p.var.dtype(), DType::F32, "{} stays f32", p.name);
        }
        let last = (0..20).map(|_| trainer.train_step(&input, &labels, lr, true).unwrap().loss).last().unwrap();
        assert!(last < 0.5 * first, "loss {first} -> {last}: bf16 training does not learn");
    }

    #[test]
    fn names_parse_and_bf16_needs_cuda() {
        assert_eq!(Precision::parse("bf16").unwrap(), Precision::Bf16);
        assert_eq!(Precision::parse(" f32 ").unwrap(), Precision::F32);
        let err = Precision::parse("fp16").unwrap_err().to_string();
        assert!(err.contains("'fp16'") && err.contains("f32 or bf16"), "{err}");
        assert!(Precision::F32.check_device(&Device::Cpu).is_ok());
        let err = Precision::Bf16.check_device(&Device::Cpu).unwrap_err().to_string();
        assert!(err.contains("CUDA devices only"), "{err}");
    }
}
