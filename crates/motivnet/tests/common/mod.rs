//! Shared helpers for the parity tests: the fixtures written by
//! `scripts/reference/make_fixtures.py` from the PyTorch reference.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::{Device, Tensor};
use motivnet::{ModelConfig, MotivNet};

pub fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}

pub fn config() -> ModelConfig {
    ModelConfig::from_file(&fixture("config.json")).unwrap()
}

pub fn read(name: &str) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(fixture(name), &Device::Cpu).unwrap()
}

/// The fixture model with the reference's weights.
pub fn reference_model() -> MotivNet {
    let model = MotivNet::new(&config(), &Device::Cpu, 123).unwrap();
    model.load_weights(&fixture("weights.safetensors"), false).unwrap();
    model
}

/// The reference model set to compute in `precision`, or None where this machine refuses it:
/// then the refusal is checked to name one of `reasons` and to point to f32, and what was not
/// run is said on the test's output.
pub fn reference_model_in(precision: motivnet::Precision, reasons: &[&str]) -> Option<MotivNet> {
    let mut model = reference_model();
    match model.set_precision(precision) {
        Ok(()) => Some(model),
        Err(err) => {
            let message = err.to_string();
            assert!(reasons.iter().any(|r| message.contains(r)) && message.contains("f32"), "{message}");
            eprintln!(
                "{} does not run here ({message}): its refusal was checked; the products were not run",
                precision.name()
            );
            None
        }
    }
}

/// Scales an encoder qkv weight, then the head's last cross-attention projection, of `model`
/// (which computes in a lower precision from a packed copy of its weights) and of the f32
/// reference model: `model`'s logits move each time (a stale copy would give the old ones) and
/// land within `tolerance` of the largest f32 logit of f32's.
pub fn a_weight_change_reaches_the_packed_products(model: &MotivNet, tolerance: f32) {
    let (x, _) = batch();
    let input = motivnet::ModelInput::Tensor(&x);
    let precision = model.precision().name();
    let f32_model = reference_model();
    // An encoder weight, and the head's cross-attention projection (whose query and memory
    // projections are views of it, packed once and kept).
    for name in ["pose_encoder.layers.0.attn.qkv.weight", "decoder.decoder.layers.1.self_attn.in_proj_weight"] {
        let before = model.predict(&input).unwrap();
        let scale = |m: &MotivNet| {
            let w = m.params.get(name).unwrap().var.as_tensor().clone();
            m.params.set(name, &(w * 3.0).unwrap()).unwrap();
        };
        scale(model);
        let after = model.predict(&input).unwrap();
        assert!(max_abs_diff(&before, &after) > 1e-3, "the {precision} logits ignore the change of {name}");
        scale(&f32_model);
        let f32_after = f32_model.predict(&input).unwrap();
        let diff = max_abs_diff(&after, &f32_after);
        assert!(
            diff < tolerance * max_abs(&f32_after).max(1.0),
            "after the change of {name}, {precision} is {diff} off f32"
        );
    }
}

/// The index of each row's largest value: the top-1 classes of (B, classes) logits.
pub fn argmax_rows(t: &Tensor) -> Vec<u32> {
    t.argmax(1).unwrap().to_vec1::<u32>().unwrap()
}

/// The fixture batch: (B, 3, 64, 48) normalized images and labels.
pub fn batch() -> (Tensor, Vec<u32>) {
    let b = read("batch.safetensors");
    let labels = b["labels"].to_vec1::<i64>().unwrap().into_iter().map(|l| l as u32).collect();
    (b["x"].clone(), labels)
}

pub fn values(t: &Tensor) -> Vec<f32> {
    t.to_dtype(candle_core::DType::F32).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap()
}

pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims(), "shapes differ");
    values(a).iter().zip(values(b)).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

pub fn max_abs(t: &Tensor) -> f32 {
    values(t).iter().fold(0.0, |m, v| m.max(v.abs()))
}

/// |a - b| <= atol + rtol * max|b| over the whole tensor, with a message naming it.
pub fn assert_close(name: &str, actual: &Tensor, expected: &Tensor, atol: f32, rtol: f32) {
    let diff = max_abs_diff(actual, expected);
    let bound = atol + rtol * max_abs(expected);
    assert!(
        diff <= bound,
        "{name}: max abs difference {diff:e} exceeds {bound:e} (max |expected| {:e})",
        max_abs(expected)
    );
}

/// Runs `check` on the fused CPU kernels, then on the composed, device-generic path that a GPU
/// runs (forced on the CPU); the test's output names the path a failure happened on.
pub fn on_both_paths(check: impl Fn()) {
    eprintln!("on the fused CPU path");
    check();
    eprintln!("on the composed (GPU) path");
    motivnet::ops::dispatch::composed(check);
}

/// At `small`'s shapes (768 tokens: several of the attention's key blocks, so its running
/// softmax moves from block to block; heads of 64 values) with two of its layers and its
/// attention sharpened (the qkv weights scaled up), `precision` tracks f32 on random images:
/// logits within 3% of the largest, not equal to f32's, and the top-1 class kept wherever
/// f32's margin is wider than twice that difference. Where this machine refuses `precision`,
/// the refusal is checked to name one of `reasons` and nothing else is.
pub fn tracks_f32_at_small_shapes(precision: motivnet::Precision, reasons: &[&str]) {
    let mut config = motivnet::ModelConfig::preset("small").unwrap();
    config.encoder.depth = 2;
    let mut model = MotivNet::new(&config, &Device::Cpu, 11).unwrap();
    for layer in 0..config.encoder.depth {
        let name = format!("pose_encoder.layers.{layer}.attn.qkv.weight");
        let w = model.params.get(&name).unwrap().var.as_tensor().clone();
        model.params.set(&name, &(w * 4.0).unwrap()).unwrap();
    }
    let (h, w) = (config.encoder.input_height, config.encoder.input_width);
    let x = Tensor::randn(0f32, 1.0, (3, 3, h, w), &Device::Cpu).unwrap();
    let input = motivnet::ModelInput::Tensor(&x);
    let f32_logits = model.predict(&input).unwrap();
    let name = precision.name();
    if let Err(err) = model.set_precision(precision) {
        let message = err.to_string();
        assert!(reasons.iter().any(|r| message.contains(r)), "{message}");
        eprintln!("{name} does not run here ({message}): not checked");
        return;
    }
    let logits = model.predict(&input).unwrap();
    let diff = max_abs_diff(&logits, &f32_logits);
    eprintln!("{name} at small's shapes: largest logit difference {diff} (largest logit {})", max_abs(&f32_logits));
    assert!(diff > 0.0, "{name} logits equal f32's exactly: {name} did not run");
    assert!(diff < 0.03 * max_abs(&f32_logits).max(1.0), "{name} logits differ from f32's by {diff}");
    let rows = f32_logits.to_vec2::<f32>().unwrap();
    let (top, f32_top) = (argmax_rows(&logits), argmax_rows(&f32_logits));
    for (i, row) in rows.iter().enumerate() {
        let mut sorted = row.clone();
        sorted.sort_by(|a, b| b.total_cmp(a));
        if sorted[0] - sorted[1] > 2.0 * diff {
            assert_eq!(top[i], f32_top[i], "image {i}: {name} changes a clear top-1 class");
        }
    }
}
