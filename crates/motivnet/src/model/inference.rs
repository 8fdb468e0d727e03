//! The model in eval mode on its inputs: u8 images of any sizes with a geometry, or ready
//! tensors; logits, probabilities and the evaluation loss.

use candle_core::{DType, Tensor};

use super::MotivNet;
use crate::error::{input_err, Result};
use crate::nn::layers::Mode;
use crate::nn::loss::cross_entropy;
use crate::ops::pixels::{to_input_tensor, Geometry, ImageBatch};

/// What a model call takes: u8 images of any sizes with a geometry, or a ready tensor.
#[derive(Debug, Clone, Copy)]
pub enum ModelInput<'a> {
    Pixels {
        batch: ImageBatch<'a>,
        geometry: Geometry,
    },
    /// Normalized f32 images (B, 3, H, W) at the model's input size.
    Tensor(&'a Tensor),
    /// The same as a flat row-major slice of `batch_size` images (for callers without candle).
    Normalized {
        data: &'a [f32],
        batch_size: usize,
    },
}

/// Eval-mode outputs as plain vectors, row-major (B, num_classes).
#[derive(Debug, Clone)]
pub struct Prediction {
    pub logits: Vec<f32>,
    pub probabilities: Vec<f32>,
    pub num_classes: usize,
}

impl MotivNet {
    /// The model's input tensor for `input` on the model's device, in its compute dtype.
    pub fn input_tensor(&self, input: &ModelInput) -> Result<Tensor> {
        Ok(self.input_tensor_f32(input)?.to_dtype(self.tensor_dtype())?)
    }

    fn input_tensor_f32(&self, input: &ModelInput) -> Result<Tensor> {
        crate::runtime::cpu::prepare();
        let enc = &self.config.encoder;
        match input {
            ModelInput::Pixels { batch, geometry } => {
                to_input_tensor(batch, *geometry, enc.input_height, enc.input_width, &self.normalization, self.device())
            }
            ModelInput::Tensor(t) => {
                if t.rank() != 4 {
                    return Err(input_err!(
                        "input tensor has shape {:?}, expected (B, 3, {}, {})",
                        t.dims(),
                        enc.input_height,
                        enc.input_width
                    ));
                }
                Ok(t.to_dtype(DType::F32)?.to_device(self.device())?)
            }
            ModelInput::Normalized { data, batch_size } => {
                let per_image = 3 * enc.input_height * enc.input_width;
                if *batch_size == 0 || data.len() != batch_size * per_image {
                    return Err(input_err!(
                        "normalized input holds {} values, expected {batch_size} x 3 x {} x {} = {}",
                        data.len(),
                        enc.input_height,
                        enc.input_width,
                        batch_size * per_image
                    ));
                }
                Ok(Tensor::from_slice(data, (*batch_size, 3, enc.input_height, enc.input_width), self.device())?)
            }
        }
    }

    /// Eval-mode logits (B, num_classes).
    pub fn predict(&self, input: &ModelInput) -> Result<Tensor> {
        let x = self.input_tensor(input)?;
        let forward =
            || self.eval_in_parts(&x, |part| Ok([self.forward(part, &mut Mode::Eval)?])).map(|[logits]| logits);
        self.with_packed_products(forward)
    }

    /// Eval-mode logits and softmax probabilities, copied off the device.
    pub fn classify(&self, input: &ModelInput) -> Result<Prediction> {
        self.prediction(&self.predict(input)?)
    }

    /// Eval-mode mean cross-entropy with the logits and probabilities.
    pub fn evaluate(&self, input: &ModelInput, labels: &[u32]) -> Result<(f32, Prediction)> {
        let logits = self.predict(input)?;
        let loss = cross_entropy(&logits, labels)?.to_scalar::<f32>()?;
        Ok((loss, self.prediction(&logits)?))
    }

    pub(super) fn prediction(&self, logits: &Tensor) -> Result<Prediction> {
        let flat = |t: &Tensor| -> Result<Vec<f32>> { Ok(t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?) };
        let probabilities = crate::nn::layers::softmax(logits)?;
        Ok(Prediction {
            logits: flat(logits)?,
            probabilities: flat(&probabilities)?,
            num_classes: self.config.head.num_classes,
        })
    }
}
