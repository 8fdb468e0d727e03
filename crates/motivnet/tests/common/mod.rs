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
