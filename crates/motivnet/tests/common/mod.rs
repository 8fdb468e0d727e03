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
