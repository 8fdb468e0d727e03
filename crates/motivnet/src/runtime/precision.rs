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
