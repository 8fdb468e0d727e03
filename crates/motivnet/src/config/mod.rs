//! Model configuration: the Sapiens encoder and the ML-Decoder head, with named presets.
//!
//! The Sapiens sizes mirror the upstream configs (`sapiens/pose/configs/sapiens_pose/*`, table
//! in docs/REFERENCE_MODEL.md, section 1). `tiny` and `small` are ours: the same block at CPU-friendly sizes,
//! keeping the 4:3 height:width of 1024 x 768. A config file is JSON with camelCase keys:
//! `{"encoder": {"embedDim", "depth", "heads", "mlpRatio", "patchSize", "patchPadding",
//! "inputHeight", "inputWidth"}, "head": {"numClasses", "embedDim", "layers", "heads",
//! "feedforward", "groups", "dropout"}}`.

use std::path::Path;

use serde::{Deserialize, Serialize};

pub mod spec;

use crate::error::{Error, Result};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EncoderConfig {
    pub embed_dim: usize,
    pub depth: usize,
    pub heads: usize,
    #[serde(default = "default_mlp_ratio")]
    pub mlp_ratio: f64,
    #[serde(default = "default_patch_size")]
    pub patch_size: usize,
    #[serde(default = "default_patch_padding")]
    pub patch_padding: usize,
    pub input_height: usize,
    pub input_width: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HeadConfig {
    #[serde(default = "default_num_classes")]
    pub num_classes: usize,
    #[serde(default = "default_head_embed")]
    pub embed_dim: usize,
    #[serde(default = "default_head_layers")]
    pub layers: usize,
    #[serde(default = "default_head_heads")]
    pub heads: usize,
    #[serde(default = "default_feedforward")]
    pub feedforward: usize,
    /// Number of query groups K; ML-Decoder's default is min(100, num_classes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub groups: Option<usize>,
    #[serde(default = "default_dropout")]
    pub dropout: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    pub encoder: EncoderConfig,
    #[serde(default = "HeadConfig::default")]
    pub head: HeadConfig,
}

fn default_mlp_ratio() -> f64 {
    4.0
}
fn default_patch_size() -> usize {
    16
}
fn default_patch_padding() -> usize {
    2
}
fn default_num_classes() -> usize {
    8
}
fn default_head_embed() -> usize {
    768
}
fn default_head_layers() -> usize {
    2
}
fn default_head_heads() -> usize {
    8
}
fn default_feedforward() -> usize {
    2048
}
fn default_dropout() -> f64 {
    0.1
}

impl Default for HeadConfig {
    fn default() -> Self {
        Self {
            num_classes: default_num_classes(),
            embed_dim: default_head_embed(),
            layers: default_head_layers(),
            heads: default_head_heads(),
            feedforward: default_feedforward(),
            groups: None,
            dropout: default_dropout(),
        }
    }
}

pub const PRESET_NAMES: [&str; 6] = ["tiny", "small", "sapiens-0.3b", "sapiens-0.6b", "sapiens-1b", "sapiens-2b"];

impl EncoderConfig {
    fn sapiens(embed_dim: usize, depth: usize, heads: usize) -> Self {
        Self {
            embed_dim,
            depth,
            heads,
            mlp_ratio: 4.0,
            patch_size: 16,
            patch_padding: 2,
            input_height: 1024,
            input_width: 768,
        }
    }

    /// Patch grid (rows, columns): the conv's output size, floor((H + 2p - k) / k) + 1.
    pub fn grid(&self) -> (usize, usize) {
        let (k, p) = (self.patch_size, self.patch_padding);
        ((self.input_height + 2 * p - k) / k + 1, (self.input_width + 2 * p - k) / k + 1)
    }

    pub fn num_patches(&self) -> usize {
        let (h, w) = self.grid();
        h * w
    }

    pub fn mlp_hidden(&self) -> usize {
        (self.embed_dim as f64 * self.mlp_ratio).round() as usize
    }
}

impl HeadConfig {
    pub fn num_groups(&self) -> usize {
        self.groups.unwrap_or_else(|| self.num_classes.min(100))
    }

    /// Outputs per group in the group fully-connected layer: ceil(num_classes / K).
    pub fn duplicate_factor(&self) -> usize {
        self.num_classes.div_ceil(self.num_groups())
    }
}

impl ModelConfig {
    /// A named preset (`tiny`, `small`, `sapiens-0.3b`, `sapiens-0.6b`, `sapiens-1b`, `sapiens-2b`).
    pub fn preset(name: &str) -> Result<Self> {
        let head = |embed_dim| HeadConfig { embed_dim, ..HeadConfig::default() };
        let cfg = match name {
            "tiny" => Self {
                encoder: EncoderConfig { input_height: 256, input_width: 192, ..EncoderConfig::sapiens(192, 4, 3) },
                head: head(192),
            },
            "small" => Self {
                encoder: EncoderConfig { input_height: 512, input_width: 384, ..EncoderConfig::sapiens(384, 8, 6) },
                head: head(384),
            },
            "sapiens-0.3b" => Self { encoder: EncoderConfig::sapiens(1024, 24, 16), head: head(768) },
            "sapiens-0.6b" => Self { encoder: EncoderConfig::sapiens(1280, 32, 16), head: head(768) },
            // The reference pairs the 1b encoder with a 1152-wide decoder embedding.
            "sapiens-1b" => Self { encoder: EncoderConfig::sapiens(1536, 40, 24), head: head(1152) },
            "sapiens-2b" => Self { encoder: EncoderConfig::sapiens(1920, 48, 32), head: head(768) },
            other => {
                return Err(Error::Config(format!(
                    "unknown model preset '{other}': expected one of {} or a path to a JSON config file",
                    PRESET_NAMES.join(", ")
                )))
            }
        };
        Ok(cfg)
    }

    /// A preset name or a JSON file, whichever `spec` is: presets win over same-named files
    /// only when no file of that name exists.
    pub fn from_preset_or_file(spec: &str) -> Result<Self> {
        let path = Path::new(spec);
        if PRESET_NAMES.contains(&spec) && !path.is_file() {
            return Self::preset(spec);
        }
        if path.is_file() {
            return Self::from_file(path);
        }
        if spec.ends_with(".json") || spec.contains('/') || spec.contains('\\') {
            return Err(Error::Config(format!("model config file {spec} does not exist")));
        }
        Self::preset(spec)
    }

    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        Self::from_json(&text).map_err(|e| Error::Config(format!("{}: {e}", path.display())))
    }

    pub fn from_json(text: &str) -> Result<Self> {
        let cfg: Self = serde_json::from_str(text).map_err(|e| Error::Config(format!("invalid model config: {e}")))?;
        cfg.validate()?;
        Ok(cfg)
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("a config always serialises")
    }

    /// Checks the relations serde cannot: divisibility of heads, sizes that give a grid.
    pub fn validate(&self) -> Result<()> {
        let e = &self.encoder;
        let h = &self.head;
        let fail = |msg: String| Err(Error::Config(msg));
        for (key, v) in [
            ("encoder.embedDim", e.embed_dim),
            ("encoder.depth", e.depth),
            ("encoder.heads", e.heads),
            ("encoder.patchSize", e.patch_size),
            ("head.numClasses", h.num_classes),
            ("head.embedDim", h.embed_dim),
            ("head.heads", h.heads),
            ("head.feedforward", h.feedforward),
        ] {
            if v == 0 {
                return fail(format!("model config: {key} must be at least 1, got 0"));
            }
        }
        if !e.embed_dim.is_multiple_of(e.heads) {
            return fail(format!(
                "model config: encoder.embedDim ({}) must be divisible by encoder.heads ({})",
                e.embed_dim, e.heads
            ));
        }
        if !h.embed_dim.is_multiple_of(h.heads) {
            return fail(format!(
                "model config: head.embedDim ({}) must be divisible by head.heads ({})",
                h.embed_dim, h.heads
            ));
        }
        if !e.mlp_ratio.is_finite() || e.mlp_ratio <= 0.0 || e.mlp_hidden() == 0 {
            return fail(format!("model config: encoder.mlpRatio must be positive, got {}", e.mlp_ratio));
        }
        if e.patch_padding >= e.patch_size {
            return fail(format!(
                "model config: encoder.patchPadding ({}) must be smaller than encoder.patchSize ({})",
                e.patch_padding, e.patch_size
            ));
        }
        if e.input_height + 2 * e.patch_padding < e.patch_size || e.input_width + 2 * e.patch_padding < e.patch_size {
            return fail(format!(
                "model config: input {} x {} (height x width) is smaller than one {}-pixel patch",
                e.input_height, e.input_width, e.patch_size
            ));
        }
        if e.input_height < e.input_width {
            return fail(format!(
                "model config: inputHeight ({}) must be at least inputWidth ({}): letterboxing pads a \
                 W x W square up to H",
                e.input_height, e.input_width
            ));
        }
        if let Some(g) = h.groups {
            if g == 0 || g > h.num_classes {
                return fail(format!("model config: head.groups must be in 1..={}, got {g}", h.num_classes));
            }
        }
        if !(0.0..1.0).contains(&h.dropout) {
            return fail(format!("model config: head.dropout must be in [0, 1), got {}", h.dropout));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_have_the_reference_grid() {
        for name in PRESET_NAMES {
            let cfg = ModelConfig::preset(name).unwrap();
            cfg.validate().unwrap();
        }
        assert_eq!(ModelConfig::preset("sapiens-1b").unwrap().encoder.grid(), (64, 48));
        assert_eq!(ModelConfig::preset("tiny").unwrap().encoder.grid(), (16, 12));
    }

    #[test]
    fn json_round_trip_and_errors() {
        let cfg = ModelConfig::preset("small").unwrap();
        assert_eq!(ModelConfig::from_json(&cfg.to_json()).unwrap(), cfg);
        let err = ModelConfig::from_json(
            r#"{"encoder": {"embedDim": 10, "depth": 1, "heads": 3, "inputHeight": 32, "inputWidth": 32}}"#,
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("embedDim (10)") && err.contains("heads (3)"), "{err}");
        let err = ModelConfig::from_json(
            r#"{"encoder": {"embedDim": 12, "depth": 1, "heads": 3, "inputHeight": 32, "inputWidth": 32, "typo": 1}}"#,
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("typo"), "{err}");
        let err = ModelConfig::from_preset_or_file("huge").unwrap_err().to_string();
        assert!(err.contains("unknown model preset 'huge'") && err.contains("sapiens-1b"), "{err}");
    }
}
