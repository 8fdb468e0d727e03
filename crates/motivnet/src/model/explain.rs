//! Where the model looks: the ML-Decoder's cross-attention maps beside the logits.
//!
//! Map of class c: the last decoder layer's cross-attention weights, averaged over heads
//! (PyTorch's `need_weights=True, average_attn_weights=True`), of the query logit c is pooled
//! from (group c / factor, see [`super::head::MlDecoder::forward_explained`]), over the
//! encoder's tokens laid back on their grid: (B, num_classes, grid_h, grid_w), row-major as
//! the encoder flattens its patches, each map summing to 1. Cell (i, j) is the patch whose
//! top-left input pixel is at row i * patch - padding, column j * patch - padding
//! ([`crate::EncoderConfig::grid`]). A separate call from `predict`, so plain inference never
//! computes them.

use candle_core::{DType, Tensor};

use super::inference::{ModelInput, Prediction};
use super::MotivNet;
use crate::error::Result;
use crate::nn::layers::{cut_graph_in_eval, Mode};

/// Attention maps as a plain vector, row-major (batch_size, num_classes, grid_height,
/// grid_width); each (grid_height x grid_width) map sums to 1.
#[derive(Debug, Clone)]
pub struct AttentionMaps {
    pub values: Vec<f32>,
    pub batch_size: usize,
    pub num_classes: usize,
    pub grid_height: usize,
    pub grid_width: usize,
}

impl MotivNet {
    /// The encoder's token grid (rows, columns) the attention maps lie on: the patch conv's
    /// output size for the configured input size.
    pub fn attention_grid(&self) -> (usize, usize) {
        self.config.encoder.grid()
    }

    /// Eval-mode logits (B, num_classes), equal to [`MotivNet::forward`]'s, and attention maps
    /// (B, num_classes, grid_h, grid_w) f32 of normalized images (module docs for the
    /// definition).
    pub fn forward_explained(&self, images: &Tensor) -> Result<(Tensor, Tensor)> {
        let mode = &mut Mode::Eval;
        let tokens = cut_graph_in_eval(self.encoder.forward(images, mode)?, mode);
        let (logits, maps) = self.head.forward_explained(&tokens)?;
        let (b, c, _) = maps.dims3()?;
        let (grid_h, grid_w) = self.attention_grid();
        Ok((cut_graph_in_eval(logits, mode), maps.reshape((b, c, grid_h, grid_w))?))
    }

    /// As [`MotivNet::predict`] (the same logits, in the same dtype), with the attention maps
    /// (B, num_classes, grid_h, grid_w), always f32.
    pub fn predict_explained(&self, input: &ModelInput) -> Result<(Tensor, Tensor)> {
        let x = self.input_tensor(input)?;
        let forward =
            || self.eval_in_parts(&x, |part| self.forward_explained(part).map(|(logits, maps)| [logits, maps]));
        let [logits, maps] = self.with_packed_products(forward)?;
        Ok((logits, maps.to_dtype(DType::F32)?))
    }

    /// As [`MotivNet::classify`], with the attention maps, copied off the device.
    pub fn classify_explained(&self, input: &ModelInput) -> Result<(Prediction, AttentionMaps)> {
        let (logits, maps) = self.predict_explained(input)?;
        let (batch_size, num_classes, grid_height, grid_width) = maps.dims4()?;
        let values = maps.flatten_all()?.to_vec1::<f32>()?;
        Ok((self.prediction(&logits)?, AttentionMaps { values, batch_size, num_classes, grid_height, grid_width }))
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{DType, Device, Tensor};

    use crate::config::ModelConfig;
    use crate::model::{ModelInput, MotivNet};
    use crate::runtime::precision::Precision;

    /// A small model whose 7 classes share 3 queries (factor 3: groups of 3, 3 and 1 classes).
    fn grouped_model() -> MotivNet {
        let mut config = ModelConfig::preset("tiny").unwrap();
        config.encoder = crate::config::EncoderConfig {
            embed_dim: 24,
            depth: 1,
            heads: 2,
            input_height: 64,
            input_width: 48,
            ..config.encoder
        };
        config.head = crate::config::HeadConfig {
            num_classes: 7,
            embed_dim: 16,
            layers: 2,
            heads: 4,
            feedforward: 32,
            groups: Some(3),
            dropout: 0.1,
        };
        MotivNet::new(&config, &Device::Cpu, 5).unwrap()
    }

    fn rows(t: &Tensor) -> Vec<Vec<f32>> {
        let (b, c, h, w) = t.dims4().unwrap();
        t.to_dtype(DType::F32).unwrap().reshape((b * c, h * w)).unwrap().to_vec2::<f32>().unwrap()
    }

    #[test]
    fn classes_of_one_group_share_its_map_and_logits_are_predicts() {
        let model = grouped_model();
        assert_eq!(model.config.head.duplicate_factor(), 3);
        let x = Tensor::randn(0f32, 1.0, (2, 3, 64, 48), &Device::Cpu).unwrap();
        let input = ModelInput::Tensor(&x);
        let (logits, maps) = model.predict_explained(&input).unwrap();
        assert_eq!(maps.dims(), &[2, 7, 4, 3]);
        assert_eq!(model.attention_grid(), (4, 3));
        let plain = model.predict(&input).unwrap();
        assert_eq!(logits.to_vec2::<f32>().unwrap(), plain.to_vec2::<f32>().unwrap());
        let maps = rows(&maps);
        for (i, map) in maps.iter().enumerate() {
            let (b, c) = (i / 7, i % 7);
            let sum: f32 = map.iter().sum();
            assert!((sum - 1.0).abs() < 1e-5 && map.iter().all(|&v| v >= 0.0), "map {i} sums to {sum}");
            assert_eq!(map, &maps[b * 7 + (c / 3) * 3], "class {c} of image {b} does not share its group's map");
        }
        assert_ne!(maps[0], maps[3], "groups 0 and 1 share a map");
        assert_ne!(maps[3], maps[6], "groups 1 and 2 share a map");
        assert_ne!(maps[0], maps[7], "two images share a map");

        let (prediction, flat) = model.classify_explained(&input).unwrap();
        assert_eq!(prediction.logits, model.classify(&input).unwrap().logits);
        assert_eq!((flat.batch_size, flat.num_classes, flat.grid_height, flat.grid_width), (2, 7, 4, 3));
        assert_eq!(flat.values, maps.concat());
    }

    /// bf16 tensors (the GPU's graph, run here): f32 maps, near the f32 model's.
    #[test]
    fn bf16_compute_gives_f32_maps_near_f32s() {
        let f32_model = grouped_model();
        let mut bf16_model = grouped_model();
        bf16_model.force_precision(Precision::Bf16);
        let x = Tensor::randn(0f32, 1.0, (2, 3, 64, 48), &Device::Cpu).unwrap();
        let input = ModelInput::Tensor(&x);
        let (logits, maps) = bf16_model.predict_explained(&input).unwrap();
        assert_eq!(logits.dtype(), DType::BF16);
        assert_eq!(maps.dtype(), DType::F32);
        let plain = bf16_model.predict(&input).unwrap().to_dtype(DType::F32).unwrap();
        let diff = (logits.to_dtype(DType::F32).unwrap() - plain).unwrap().abs().unwrap().max_all().unwrap();
        assert_eq!(diff.to_scalar::<f32>().unwrap(), 0.0, "explaining changes bf16 logits");
        let (_, reference) = f32_model.predict_explained(&input).unwrap();
        for (got, want) in rows(&maps).iter().zip(rows(&reference)) {
            let sum: f32 = got.iter().sum();
            assert!((sum - 1.0).abs() < 1e-5, "a bf16 map sums to {sum}");
            for (g, w) in got.iter().zip(&want) {
                assert!((g - w).abs() < 0.02 * w.max(0.05), "bf16 map value {g}, f32 {w}");
            }
        }
    }

    #[test]
    fn a_head_without_layers_has_nothing_to_explain() {
        let mut config = ModelConfig::preset("tiny").unwrap();
        config.encoder.input_height = 32;
        config.encoder.input_width = 32;
        config.encoder.depth = 1;
        config.head.layers = 0;
        config.head.embed_dim = 16;
        config.head.feedforward = 16;
        let model = MotivNet::new(&config, &Device::Cpu, 1).unwrap();
        let x = Tensor::zeros((1, 3, 32, 32), DType::F32, &Device::Cpu).unwrap();
        let err = model.predict_explained(&ModelInput::Tensor(&x)).unwrap_err();
        assert_eq!(err.code(), "MOTIVNET_CONFIG", "{err}");
        assert!(err.to_string().contains("no decoder layers"), "{err}");
    }
}
