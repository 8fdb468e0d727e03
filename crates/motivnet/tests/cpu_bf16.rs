//! `precision: 'bf16'` on the CPU: the Linear products on AMX tiles against the f32 reference.
//!
//! On a CPU without AMX the precision is refused, and that refusal is what these tests check
//! there; the products themselves are checked against f32 sums in `kernels::amx`.

mod common;

use candle_core::{DType, Tensor};
use common::*;
use motivnet::{ModelInput, MotivNet, Precision, Trainer, TrainerConfig};

/// The reference model in bf16, or None (after checking the refusal) where the CPU has no AMX.
fn bf16_model() -> Option<MotivNet> {
    let mut model = reference_model();
    match model.set_precision(Precision::Bf16) {
        Ok(()) => Some(model),
        Err(err) => {
            let message = err.to_string();
            assert!(message.contains("CPU with AMX") && message.contains("f32"), "{message}");
            eprintln!("this CPU has no AMX: bf16 is refused, as checked; the products were not run");
            None
        }
    }
}

fn argmax_rows(t: &Tensor) -> Vec<u32> {
    t.argmax(1).unwrap().to_vec1::<u32>().unwrap()
}

#[test]
fn bf16_logits_track_the_f32_reference() {
    let Some(model) = bf16_model() else { return };
    let (x, _) = batch();
    let expected = &read("expected.safetensors")["logits_eval"];
    let logits = model.predict(&ModelInput::Tensor(&x)).unwrap();
    assert_eq!(logits.dtype(), DType::F32, "the CPU's bf16 keeps f32 tensors around its products");
    let diff = max_abs_diff(&logits, expected);
    // bf16 keeps 8 bits of mantissa: each product's operands are off by up to 2^-9 relative.
    assert!(diff < 0.03 * max_abs(expected).max(1.0), "bf16 logits differ from the reference by {diff}");
    assert!(diff > 0.0, "bf16 logits equal f32's exactly: the products did not run in bf16");
    assert_eq!(argmax_rows(&logits), argmax_rows(expected), "bf16 changes a top-1 class");
}

#[test]
fn a_weight_change_repacks_the_bf16_weights() {
    let Some(model) = bf16_model() else { return };
    let (x, _) = batch();
    let input = ModelInput::Tensor(&x);
    let before = model.predict(&input).unwrap();
    // Scale one qkv weight: a stale packed copy would give the old logits.
    let name = "pose_encoder.layers.0.attn.qkv.weight";
    let w = model.params.get(name).unwrap().var.as_tensor().clone();
    model.params.set(name, &(w * 3.0).unwrap()).unwrap();
    let after = model.predict(&input).unwrap();
    assert!(max_abs_diff(&before, &after) > 1e-3, "the bf16 logits ignore the changed weight");

    let mut f32_model = reference_model();
    f32_model.set_precision(Precision::F32).unwrap();
    let w = f32_model.params.get(name).unwrap().var.as_tensor().clone();
    f32_model.params.set(name, &(w * 3.0).unwrap()).unwrap();
    let f32_after = f32_model.predict(&input).unwrap();
    let diff = max_abs_diff(&after, &f32_after);
    assert!(diff < 0.03 * max_abs(&f32_after).max(1.0), "after the change, bf16 is {diff} off f32");
}

#[test]
fn training_refuses_the_cpus_bf16_with_a_clear_error() {
    let Some(model) = bf16_model() else { return };
    let (x, labels) = batch();
    let mut trainer = Trainer::new(model, TrainerConfig::default());
    let lr = motivnet::train::optim::Groups { encoder: 1e-3, decoder: 1e-3 };
    let err = trainer.train_step(&ModelInput::Tensor(&x), &labels, lr, true).unwrap_err();
    assert_eq!(err.code(), "MOTIVNET_CONFIG", "{err}");
    assert!(err.to_string().contains("training on the CPU computes in f32"), "{err}");
}
