//! `precision: 'bf16'` on the CPU: the Linear products on AMX tiles against the f32 reference.
//!
//! On a CPU without AMX the precision is refused, and that refusal is what these tests check
//! there; the products themselves are checked against f32 sums in `kernels::amx`.

mod common;

use candle_core::{DType, Tensor};
use common::*;
use motivnet::{Mode, ModelInput, MotivNet, Precision, Trainer, TrainerConfig};

/// The reference model in bf16, or None (after checking the refusal) where the CPU has no AMX.
fn bf16_model() -> Option<MotivNet> {
    reference_model_in(Precision::Bf16, &["CPU with AMX"])
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
    a_weight_change_reaches_the_packed_products(&model, 0.03);
}

/// A train step in the CPU's bf16 (the encoder's Linear products on the tiles, forward and
/// backward) against the f32 reference: the loss and every gradient within bf16's precision,
/// not equal to f32's, and the weights, gradients and optimizer state in f32.
#[test]
fn a_bf16_train_step_tracks_the_reference_gradients() {
    let Some(model) = bf16_model() else { return };
    let (x, labels) = batch();
    let expected = read("expected.safetensors");
    let mut trainer = Trainer::new(model, TrainerConfig::default());
    let lr = motivnet::train::optim::Groups { encoder: 1e-3, decoder: 1e-3 };
    let out = trainer.train_step(&ModelInput::Tensor(&x), &labels, lr, false).unwrap();
    let want_loss = expected["loss"].flatten_all().unwrap().to_vec1::<f32>().unwrap()[0];
    assert!((out.loss - want_loss).abs() < 1e-2 * want_loss.abs().max(1.0), "loss {} against {want_loss}", out.loss);
    let grads: std::collections::HashMap<&String, &Tensor> = trainer.accumulated_gradients().collect();
    let mut worst = (0f32, String::new());
    for p in trainer.model.params.trainable() {
        let (got, want) = (grads[&p.name], &expected[&format!("grad.{}", p.name)]);
        assert_eq!(got.dtype(), DType::F32, "gradient of {}", p.name);
        let diff = max_abs_diff(got, want) / max_abs(want).max(1e-6);
        assert!(diff < 2e-2, "grad of {}: {diff} of its largest value off the reference", p.name);
        if diff > worst.0 {
            worst = (diff, p.name.clone());
        }
    }
    assert!(worst.0 > 0.0, "every gradient equals f32's: the products did not run in bf16");
    eprintln!("largest gradient difference from the reference: {} ({})", worst.0, worst.1);
    trainer.train_step(&ModelInput::Tensor(&x), &labels, lr, true).unwrap();
    assert!(trainer.model.params.iter().all(|p| p.var.dtype() == DType::F32), "a weight left f32");
}

/// A model that keeps its Linear weights only as their bf16 packing (how a model loaded for
/// bf16 inference on the CPU holds them) gives the same logits and maps, lets the f32 values
/// go, and refuses with the reason whatever would need them.
#[test]
fn keeping_linear_weights_in_bf16_only_changes_no_logit_and_refuses_what_needs_f32() {
    let mut f32_model = reference_model();
    let err = f32_model.keep_linear_weights_packed_only().unwrap_err();
    assert!(err.to_string().contains("computes in f32"), "an f32 model let its weights go: {err}");
    let Some(mut model) = bf16_model() else { return };
    let (x, labels) = batch();
    let input = ModelInput::Tensor(&x);
    let (logits, maps) = model.predict_explained(&input).unwrap();
    let (counts, held) = (model.params.counts(), model.params.len());

    let released = model.keep_linear_weights_packed_only().unwrap();
    let cfg = &model.config;
    // The patch embedding, four a block (qkv, proj, fc1, fc2), the head's embedding and three
    // a decoder layer (out_proj, linear1, linear2).
    assert_eq!(released, 1 + 4 * cfg.encoder.depth + 1 + 3 * cfg.head.layers);
    assert_eq!(model.params.len(), held - released, "the store still holds the f32 weights");
    assert!(model.params.get("pose_encoder.layers.0.ffn.layers.0.0.weight").is_none());
    assert!(model.params.get("pose_encoder.layers.0.ln1.weight").is_some(), "a norm was let go");
    assert_eq!(model.params.counts(), counts, "the parameter counts changed");
    assert_eq!(model.keep_linear_weights_packed_only().unwrap(), 0, "a second call let more go");
    let (after, maps_after) = model.predict_explained(&input).unwrap();
    assert_eq!(max_abs_diff(&logits, &after), 0.0, "the logits changed");
    assert_eq!(max_abs_diff(&maps, &maps_after), 0.0, "the maps changed");
    assert_eq!(max_abs_diff(&model.predict(&input).unwrap(), &logits), 0.0);

    let refused = |err: motivnet::Error, what: &str| {
        let message = err.to_string();
        assert!(message.contains(what) && message.contains("precision 'f32'"), "{message}");
    };
    let dir = std::env::temp_dir().join(format!("motivnet-bf16-only-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    refused(model.save_weights(&dir.join("w.safetensors")).unwrap_err(), "cannot save the weights");
    assert!(!dir.join("w.safetensors").exists(), "a refused save wrote a file");
    refused(model.load_weights(&fixture("weights.safetensors"), false).unwrap_err(), "cannot load weights");
    refused(model.set_precision(Precision::F32).unwrap_err(), "cannot compute in f32");
    // Outside the bf16 products a Linear has nothing to multiply by: an error, not zeros.
    refused(model.forward(&x, &mut Mode::Eval).unwrap_err(), "only in bf16");
    let mut trainer = Trainer::new(model, TrainerConfig::default());
    refused(trainer.save_state(&dir.join("s.safetensors"), None).unwrap_err(), "cannot save a training state");
    refused(trainer.load_state(&dir.join("s.safetensors")).unwrap_err(), "cannot load a training state");
    let lr = motivnet::train::optim::Groups { encoder: 1e-3, decoder: 1e-3 };
    refused(trainer.train_step(&input, &labels, lr, true).unwrap_err(), "cannot train");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// At a preset's shapes each block's attention branch runs as one op whose q, k, v and
/// attention output stay in bf16 panels (the fixture model's 12 tokens do not fill a panel, so
/// its blocks compose the branch): bf16 tracks f32 there as int8 does.
#[test]
fn bf16_tracks_f32_at_a_preset_shape_with_the_branch_in_panels() {
    tracks_f32_at_small_shapes(Precision::Bf16, &["CPU with AMX"]);
}
