//! Cross-entropy on logits with integer labels (PyTorch's `F.cross_entropy`, mean reduction).

use candle_core::{DType, Device, Tensor};

use crate::error::{input_err, Result};
use crate::nn::layers::log_softmax;

/// Logits (B, C) and labels in 0..C -> the mean negative log-likelihood, a scalar tensor.
pub fn cross_entropy(logits: &Tensor, labels: &[u32]) -> Result<Tensor> {
    let (b, c) = logits.dims2()?;
    if labels.len() != b {
        return Err(input_err!("{} labels for a batch of {b} images", labels.len()));
    }
    if let Some((i, &l)) = labels.iter().enumerate().find(|(_, &l)| l as usize >= c) {
        return Err(input_err!("label {l} at index {i} is out of range: the model has {c} classes (0..{})", c - 1));
    }
    // A one-hot product rather than gather: plain element-wise ops on every backend.
    let mut one_hot = vec![0f32; b * c];
    for (i, &l) in labels.iter().enumerate() {
        one_hot[i * c + l as usize] = 1.0;
    }
    let one_hot = Tensor::from_vec(one_hot, (b, c), &Device::Cpu)?.to_device(logits.device())?;
    let log_probs = log_softmax(&logits.to_dtype(DType::F32)?)?;
    Ok((log_probs * one_hot)?.sum_all()?.affine(-1.0 / b as f64, 0.0)?)
}
