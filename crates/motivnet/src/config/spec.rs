//! From what a user names (a preset or a config file, a weights file, a class count) to the
//! model config to build.
//!
//! A spec fixes what it names and leaves the rest to the weights: a preset fixes the encoder,
//! and its head values are only the defaults of a fresh head; a config file fixes every head
//! key it writes. Head keys left open take their value from the weights file's own head, so
//! the released MotivNet checkpoint (7 classes, decoder embedding 1152) loads with
//! `sapiens-1b` as it is. A key the spec fixes and the file contradicts is reported by the
//! loader with both shapes.

use std::collections::BTreeMap;
use std::path::Path;

use crate::config::{ModelConfig, PRESET_NAMES};
use crate::error::{Error, Result};
use crate::keys::DECODER as DECODER_PREFIX;

/// The head keys a spec may leave to the weights file (the ones tensor shapes determine; the
/// number of attention heads and the dropout rate are not visible in shapes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct OpenHead {
    pub num_classes: bool,
    pub embed_dim: bool,
    pub layers: bool,
    pub feedforward: bool,
    pub groups: bool,
}

impl OpenHead {
    const ALL: Self = Self { num_classes: true, embed_dim: true, layers: true, feedforward: true, groups: true };
}

/// A parsed model spec: its config, and which head keys it leaves open.
#[derive(Debug, Clone)]
pub struct ModelSpec {
    pub config: ModelConfig,
    pub open: OpenHead,
}

/// What a weights file's own head fixes, read from its tensor shapes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeadShape {
    pub num_classes: usize,
    pub groups: usize,
    pub embed_dim: usize,
    pub layers: usize,
    pub feedforward: Option<usize>,
}

impl ModelSpec {
    /// A preset name or a JSON config file (see [`ModelConfig::from_preset_or_file`]).
    pub fn parse(spec: &str) -> Result<Self> {
        let path = Path::new(spec);
        if PRESET_NAMES.contains(&spec) && !path.is_file() {
            return Ok(Self { config: ModelConfig::preset(spec)?, open: OpenHead::ALL });
        }
        if !path.is_file() {
            // The same errors as ModelConfig's: an unknown preset, or a missing file.
            return Ok(Self { config: ModelConfig::from_preset_or_file(spec)?, open: OpenHead::ALL });
        }
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let config = ModelConfig::from_json(&text).map_err(|e| Error::Config(format!("{}: {e}", path.display())))?;
        // Keys the file writes are fixed; the JSON parsed above, so this cannot fail.
        let value: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
        let head = value.get("head").and_then(|h| h.as_object());
        let absent = |key: &str| head.is_none_or(|h| !h.contains_key(key));
        let open = OpenHead {
            num_classes: absent("numClasses"),
            embed_dim: absent("embedDim"),
            layers: absent("layers"),
            feedforward: absent("feedforward"),
            groups: absent("groups"),
        };
        Ok(Self { config, open })
    }

    /// The config to build: the open head keys from `weights` (the file's canonical key ->
    /// shape map; None for a fresh head or an encoder-only load), then `num_classes` when given.
    pub fn resolve(
        &self,
        weights: Option<(&str, &BTreeMap<String, Vec<usize>>)>,
        num_classes: Option<usize>,
    ) -> Result<ModelConfig> {
        let mut config = self.config.clone();
        let mut from_file = None;
        if let Some((file, shapes)) = weights {
            if let Some(shape) = HeadShape::of(shapes, file)? {
                let head = &mut config.head;
                let open = self.open;
                if open.num_classes {
                    head.num_classes = shape.num_classes;
                }
                if open.embed_dim {
                    head.embed_dim = shape.embed_dim;
                }
                if open.layers {
                    head.layers = shape.layers;
                }
                if let (true, Some(ff)) = (open.feedforward, shape.feedforward) {
                    head.feedforward = ff;
                }
                if open.groups {
                    // Written out only where it differs from ML-Decoder's default, min(100, classes).
                    head.groups = (shape.groups != head.num_classes.min(100)).then_some(shape.groups);
                }
                from_file = Some((file, shape));
            }
        }
        if let Some(n) = num_classes {
            if let Some((file, shape)) = &from_file {
                if shape.num_classes != n {
                    return Err(Error::Config(format!(
                        "{file} holds a {}-class head ({DECODER_PREFIX}duplicate_pooling_bias is [{}]), but {n} classes \
                         were asked for: to train a new {n}-class head on its encoder, load it encoder-only",
                        shape.num_classes, shape.num_classes
                    )));
                }
            }
            config.head.num_classes = n;
            if self.open.groups && from_file.is_none() {
                config.head.groups = None;
            }
        }
        config.validate()?;
        Ok(config)
    }
}

impl HeadShape {
    /// The head a file holds, from the shapes of its `decoder.decoder.*` tensors; None when it
    /// holds no head (a Sapiens backbone). Inconsistent shapes are an error naming the keys.
    pub fn of(shapes: &BTreeMap<String, Vec<usize>>, file: &str) -> Result<Option<Self>> {
        let get = |key: &str| shapes.get(&format!("{DECODER_PREFIX}{key}"));
        let (Some(queries), Some(bias)) = (get("query_embed.weight"), get("duplicate_pooling_bias")) else {
            return Ok(None);
        };
        let bad = |what: String| Error::Weights(format!("{file}: the head's shapes do not fit together: {what}"));
        let &[groups, embed_dim] = queries.as_slice() else {
            return Err(bad(format!(
                "{DECODER_PREFIX}query_embed.weight is {queries:?}, expected [groups, embedding]"
            )));
        };
        let &[num_classes] = bias.as_slice() else {
            return Err(bad(format!("{DECODER_PREFIX}duplicate_pooling_bias is {bias:?}, expected [classes]")));
        };
        if num_classes == 0 || groups == 0 || groups > num_classes {
            return Err(bad(format!(
                "{groups} query groups for {num_classes} classes ({DECODER_PREFIX}query_embed.weight {queries:?}, \
                 duplicate_pooling_bias {bias:?})"
            )));
        }
        let layers = shapes
            .keys()
            .filter_map(|k| {
                k.strip_prefix(DECODER_PREFIX)?.strip_prefix("layers.")?.split('.').next()?.parse::<usize>().ok()
            })
            .max()
            .map_or(0, |i| i + 1);
        let feedforward = get("layers.0.linear1.weight").and_then(|w| w.first().copied());
        Ok(Some(Self { num_classes, groups, embed_dim, layers, feedforward }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The key -> shape table of the released checkpoint's module (`MotivNet(7, 0, 0)`:
    /// sapiens-1b, decoder embedding 1152), written by the PyTorch reference script.
    fn released_head() -> BTreeMap<String, Vec<usize>> {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/released_shapes.json");
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
    }

    #[test]
    fn a_preset_takes_the_released_checkpoints_head() {
        let spec = ModelSpec::parse("sapiens-1b").unwrap();
        let shapes = released_head();
        let config = spec.resolve(Some(("MotivNet.pth", &shapes)), None).unwrap();
        assert_eq!(config.head.num_classes, 7);
        assert_eq!(config.head.num_groups(), 7);
        assert_eq!(config.head.groups, None);
        assert_eq!(config.head.embed_dim, 1152);
        assert_eq!(config.head.layers, 2);
        assert_eq!(config.head.feedforward, 2048);
        assert_eq!(config.encoder, ModelConfig::preset("sapiens-1b").unwrap().encoder);
        // The preset's encoder is the checkpoint's: 40 blocks of width 1536 on a 64 x 48 grid.
        assert_eq!(shapes["pose_encoder.pos_embed"], [1, 64 * 48, 1536]);
        assert_eq!(shapes["pose_encoder.layers.39.ffn.layers.0.0.weight"], [6144, 1536]);
        assert!(!shapes.contains_key("pose_encoder.layers.40.ln1.weight"));
        // Without weights, or asked for its own class count: the same.
        assert_eq!(spec.resolve(None, None).unwrap().head.num_classes, 8);
        assert_eq!(spec.resolve(Some(("MotivNet.pth", &shapes)), Some(7)).unwrap(), config);
        let err = spec.resolve(Some(("MotivNet.pth", &shapes)), Some(8)).unwrap_err().to_string();
        assert!(err.contains("MotivNet.pth holds a 7-class head") && err.contains("encoder-only"), "{err}");
    }

    #[test]
    fn a_config_file_fixes_the_head_keys_it_writes() {
        let dir = std::env::temp_dir().join(format!("motivnet-spec-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let encoder =
            r#""encoder": {"embedDim": 1536, "depth": 40, "heads": 24, "inputHeight": 1024, "inputWidth": 768}"#;
        let open = dir.join("open.json");
        std::fs::write(&open, format!("{{{encoder}}}")).unwrap();
        let fixed = dir.join("fixed.json");
        std::fs::write(&fixed, format!(r#"{{{encoder}, "head": {{"numClasses": 8, "embedDim": 1152}}}}"#)).unwrap();
        let shapes = released_head();
        let from_open = ModelSpec::parse(open.to_str().unwrap()).unwrap().resolve(Some(("w", &shapes)), None).unwrap();
        assert_eq!((from_open.head.num_classes, from_open.head.embed_dim), (7, 1152));
        // The fixed file keeps its 8 classes: the loader then names both shapes.
        let from_fixed =
            ModelSpec::parse(fixed.to_str().unwrap()).unwrap().resolve(Some(("w", &shapes)), None).unwrap();
        assert_eq!(from_fixed.head.num_classes, 8);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_backbone_without_head_changes_nothing_and_bad_shapes_are_named() {
        let spec = ModelSpec::parse("tiny").unwrap();
        let mut backbone = BTreeMap::new();
        backbone.insert("pose_encoder.pos_embed".to_string(), vec![1, 192, 192]);
        assert_eq!(spec.resolve(Some(("b", &backbone)), Some(7)).unwrap().head.num_classes, 7);
        let mut shapes = released_head();
        shapes.insert(format!("{DECODER_PREFIX}query_embed.weight"), vec![9, 1152]);
        let err = spec.resolve(Some(("w.pth", &shapes)), None).unwrap_err().to_string();
        assert!(err.contains("w.pth") && err.contains("9 query groups for 7 classes"), "{err}");
    }
}
