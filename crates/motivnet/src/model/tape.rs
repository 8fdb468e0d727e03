//! What the hand-written training passes (`encoder_train`, `head_train`) share: reading a
//! parameter's values in place, and handing gradients back as tensors.

use candle_core::{Device, StorageRef, Tensor};

use crate::error::{Error, Result};
use crate::ops::f32_slice;

/// A tensor read-locked for the length of a pass, viewed as f32 values.
pub(crate) struct Read<'a> {
    storage: StorageRef<'a>,
    layout: &'a candle_core::Layout,
    pass: &'static str,
}

impl<'a> Read<'a> {
    /// `pass` names the training pass in errors.
    pub fn new(t: &'a Tensor, pass: &'static str) -> Self {
        let (storage, layout) = t.storage_and_layout();
        Self { storage, layout, pass }
    }

    pub fn values(&self) -> Result<&[f32]> {
        match &*self.storage {
            candle_core::Storage::Cpu(cpu) => Ok(f32_slice(cpu, self.layout, self.pass)?),
            _ => Err(Error::Internal(format!("{}: expected a CPU tensor", self.pass))),
        }
    }
}

/// Each parameter with its gradient as a tensor of the parameter's shape; a gradient of the
/// wrong length is an internal error that names the pass and the shape.
pub(crate) fn gradient_tensors(pairs: Vec<(Tensor, Vec<f32>)>, pass: &str) -> Result<Vec<(Tensor, Tensor)>> {
    pairs
        .into_iter()
        .map(|(param, grad)| {
            if grad.len() != param.elem_count() {
                return Err(Error::Internal(format!(
                    "{pass}: a gradient of {} values for a parameter of shape {:?}",
                    grad.len(),
                    param.dims()
                )));
            }
            let grad = Tensor::from_vec(grad, param.shape(), &Device::Cpu)?;
            Ok((param, grad))
        })
        .collect()
}
