//! The dtype the model computes in: f32 everywhere, or bf16 on CUDA with f32 master weights,
//! or bf16 products on a CPU with AMX tiles, or int8 products on a CPU with AVX512-VNNI
//! (inference only).
//!
//! On CUDA, in bf16 the input batch is cast to bf16 and each layer follows its input's dtype:
//! Linear and matmul weights are cast from the f32 parameters as they are used, while LayerNorm, the
//! attention softmax and the loss compute in f32 (their sums lose too much in bf16). Backward
//! casts each parameter's gradient back to f32 through those casts, so the gradients, the
//! AdamW moments and the weights stay f32, as PyTorch's autocast keeps them.
//!
//! On the CPU, bf16 means the Linear layers' products (the patch embedding, qkv, the
//! projections, the MLPs) run on AMX tiles, or without tiles on AVX512_BF16's dot products (two
//! bf16 products per f32 lane an instruction, twice AVX-512's f32 rate), with their operands
//! rounded to bf16 and f32 sums, as `torch.autocast` on the CPU and OpenVINO's default
//! precision do; everything else stays f32. candle's CPU backend has no bf16 product of its own
//! (it widens to f32 and back), so on a CPU with neither bf16 would only be slower and is
//! refused. A train step under bf16 on the CPU runs the encoder's Linear products and attention
//! in bf16 (tiles or dot products alike), forward and backward
//! (`model::products::Products`), with f32 weights, gradients and optimizer; the head stays
//! f32 (its ReLU gates flip under rounding, which cost accuracy: see `model::head_train` and
//! docs/BENCHMARKS.md).
//!
//! int8 means the Linear layers' products run on VNNI with dynamic quantization, as ONNX
//! Runtime's and PyTorch's dynamic int8 Linear: each weight row to i8 with its own scale (once),
//! each input row to u8 with its own scale and zero point (each call), exact i32 sums
//! (`kernels::int8`). The encoder's self-attention runs its two products in integers too, its
//! softmax in f32 (`kernels::flash_attention_int8`, heads of up to 80 values; a larger head
//! keeps the f32 attention). LayerNorm, GELU and the head stay f32. It is for inference on the
//! CPU only: a train step, a GPU, or a CPU without VNNI is refused.

use candle_core::Device;

use crate::error::{Error, Result};

/// Whether `precision: 'bf16'` can run on this CPU: it has AVX512_BF16 (on AMX tiles where it
/// has them and the kernel lets this process use them, else on the dot products), and
/// `MOTIVNET_BF16=off` is not set.
pub fn cpu_bf16_available() -> bool {
    crate::kernels::amx::available()
}

/// What `precision: 'bf16'` computes its products on here: "AMX" (tiles), "AVX512_BF16" (dot
/// products), or None where it cannot run on this CPU.
pub fn cpu_bf16_kernel() -> Option<&'static str> {
    use crate::kernels::amx;
    match (amx::available(), amx::tiles()) {
        (true, true) => Some("AMX"),
        (true, false) => Some("AVX512_BF16"),
        (false, _) => None,
    }
}

/// Whether `precision: 'int8'` can run on this CPU: it has AVX512-VNNI (and `MOTIVNET_INT8=off`
/// is not set).
pub fn cpu_int8_available() -> bool {
    crate::kernels::int8::available()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Precision {
    #[default]
    F32,
    Bf16,
    Int8,
}

impl Precision {
    /// `f32`, `bf16` or `int8`.
    pub fn parse(name: &str) -> Result<Self> {
        match name.trim() {
            "f32" | "fp32" | "float32" => Ok(Self::F32),
            "bf16" | "bfloat16" => Ok(Self::Bf16),
            "int8" => Ok(Self::Int8),
            other => Err(Error::Config(format!("precision '{other}' is not valid: expected f32, bf16 or int8"))),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::F32 => "f32",
            Self::Bf16 => "bf16",
            Self::Int8 => "int8",
        }
    }

    /// Refuses bf16 on a CPU without AVX512_BF16: candle's CPU backend has no bf16 product of its own
    /// (it widens to f32 and back), so bf16 there would only be slower and less exact. Refuses
    /// int8 anywhere but on a CPU with AVX512-VNNI.
    pub fn check_device(self, device: &Device) -> Result<()> {
        if self == Self::Int8 {
            if device.is_cuda() {
                return Err(Error::Device(
                    "precision 'int8' runs on the CPU only (its products are AVX512-VNNI's): pick bf16 or f32 on CUDA"
                        .into(),
                ));
            }
            if std::env::var("MOTIVNET_INT8").is_ok_and(|v| v.trim() == "off") {
                return Err(Error::Device(
                    "precision 'int8' is turned off here (MOTIVNET_INT8=off): unset it, or pick f32".into(),
                ));
            }
            if !crate::kernels::int8::available() {
                return Err(Error::Device(
                    "precision 'int8' needs a CPU with AVX512-VNNI (Intel Xeon of the 2nd generation or later, AMD \
                     Zen 4 or later); this one has none: pick f32"
                        .into(),
                ));
            }
            if crate::ops::dispatch::composed_forced() {
                return Err(Error::Device(
                    "precision 'int8' runs on the fused CPU kernels, and the composed ones are forced here \
                     (MOTIVNET_KERNELS=composed): unset it, or pick f32"
                        .into(),
                ));
            }
        }
        if self == Self::Bf16 && !device.is_cuda() && !crate::kernels::amx::available() {
            return Err(Error::Device(format!(
                "precision 'bf16' needs a CUDA device or a CPU with AVX512_BF16 (Intel Xeon of the 4th \
                 generation or later, AMD Zen 4 or later){}: pick f32 or --device cuda",
                if std::env::var("MOTIVNET_BF16").is_ok_and(|v| v.trim() == "off") {
                    "; it is turned off here (MOTIVNET_BF16=off)"
                } else {
                    "; this one has none"
                }
            )));
        }
        Ok(())
    }

    /// Refuses a precision that cannot train: int8, whose products have no backward.
    pub fn check_trainable(self) -> Result<()> {
        if self == Self::Int8 {
            return Err(Error::Config(
                "precision 'int8' is for inference only (its products have no backward): train with precision \
                 'f32' (or 'bf16'), then load the trained weights with 'int8' to serve them"
                    .into(),
            ));
        }
        Ok(())
    }

    /// Whether this precision on `device` means bf16 products on the CPU's AMX tiles, with
    /// f32 tensors around them (see the module's notes).
    pub fn cpu_bf16_products(self, device: &Device) -> bool {
        self == Self::Bf16 && device.is_cpu()
    }

    /// Whether this precision on `device` means int8 products on the CPU's VNNI, with f32
    /// tensors around them.
    pub fn cpu_int8_products(self, device: &Device) -> bool {
        self == Self::Int8 && device.is_cpu()
    }
}

/// An n x n operand of the roofline products: a fixed spread of values in [-1, 1) set by
/// `seed`, the same on every run.
fn square_operand(n: usize, seed: usize) -> Vec<f32> {
    (0..n * n).map(|i| ((i * seed % 1000) as f32 - 500.0) / 500.0).collect()
}

/// An n x n x n product on the bf16 kernel the bf16 Linear layers run on (AMX tiles, or the
/// dot products without them; A rounded to bf16 as they round their input, B packed
/// beforehand, on the compute threads), as a closure a benchmark times: the roof of our bf16
/// cases. None where the CPU has no bf16 products.
pub fn bf16_square_product(n: usize) -> Option<impl FnMut()> {
    use crate::kernels::amx;
    if !amx::available() {
        return None;
    }
    let (a, b) = (square_operand(n, 7919), amx::PackedB::from_weight(&square_operand(n, 104_729), n, n));
    let mut c = vec![0f32; n * n];
    Some(move || {
        let lhs = amx::Lhs::F32 { rows: amx::Rows::contiguous(&a, n), scale: 1.0 };
        // SAFETY: c is n x n and this closure's own.
        unsafe { amx::gemm(lhs, &b, c.as_mut_ptr(), n, amx::Start::Zero, amx::Finish::None, true) };
        std::hint::black_box(&c);
    })
}

/// An n x n x n product on the int8 kernel the int8 Linear layers run on (A quantized as they
/// quantize their input, B quantized and packed beforehand, on the compute threads), as a
/// closure a benchmark times: the roof of our int8 cases. None where the CPU has no VNNI.
pub fn int8_square_product(n: usize) -> Option<impl FnMut()> {
    use crate::kernels::{amx::Finish, int8};
    if !int8::available() {
        return None;
    }
    let (a, b) = (square_operand(n, 7919), int8::PackedI8::from_weight(&square_operand(n, 104_729), n, n));
    let bias = vec![0f32; n];
    Some(move || {
        std::hint::black_box(int8::linear_rows(int8::Input::F32(&a), &b, &bias, Finish::None));
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_and_bf16_needs_cuda_or_avx512_bf16_and_int8_vnni() {
        assert_eq!(Precision::parse("bf16").unwrap(), Precision::Bf16);
        assert_eq!(Precision::parse(" f32 ").unwrap(), Precision::F32);
        assert_eq!(Precision::parse("int8").unwrap(), Precision::Int8);
        let err = Precision::parse("fp16").unwrap_err().to_string();
        assert!(err.contains("'fp16'") && err.contains("f32, bf16 or int8"), "{err}");
        assert!(Precision::F32.check_device(&Device::Cpu).is_ok());
        match Precision::Bf16.check_device(&Device::Cpu) {
            Ok(()) => assert!(crate::kernels::amx::available(), "bf16 accepted on a CPU without bf16 products"),
            Err(err) => {
                assert!(!crate::kernels::amx::available(), "bf16 refused on a CPU with bf16 products: {err}");
                assert!(err.to_string().contains("CPU with AVX512_BF16"), "{err}");
            }
        }
        // What bf16 runs on names the engine the kernels pick: tiles, dot products, or none.
        let (bf16, tiles) = (crate::kernels::amx::available(), crate::kernels::amx::tiles());
        assert_eq!(cpu_bf16_kernel(), bf16.then_some(if tiles { "AMX" } else { "AVX512_BF16" }));
        assert!(!tiles || bf16, "AMX tiles without bf16 products");
        match Precision::Int8.check_device(&Device::Cpu) {
            Ok(()) => assert!(crate::kernels::int8::available(), "int8 accepted on a CPU without VNNI"),
            Err(err) if err.to_string().contains("needs a CPU with AVX512-VNNI") => {
                assert!(!crate::kernels::int8::available(), "int8 refused on a CPU with VNNI: {err}")
            }
            Err(err) => {
                let why = ["MOTIVNET_INT8=off", "MOTIVNET_KERNELS=composed"];
                assert!(why.iter().any(|w| err.to_string().contains(w)), "{err}");
            }
        }
    }
}
