//! `precision: 'int8'` on the CPU: the Linear and attention products on VNNI against f32.
//!
//! On a CPU without AVX512-VNNI the precision is refused, and that refusal is what these tests
//! check there; the kernels themselves are checked against the quantized operands' exact
//! product in `kernels::int8` and against an exact softmax in `kernels::flash_attention_int8`.

mod common;

use candle_core::DType;
use common::*;
use motivnet::{Mode, ModelInput, MotivNet, Precision, Trainer, TrainerConfig};

/// The reference model in int8, or None (after checking the refusal) where int8 does not run:
/// no VNNI, or the kernel or the fused path turned off.
fn int8_model() -> Option<MotivNet> {
    reference_model_in(Precision::Int8, &["AVX512-VNNI", "MOTIVNET_INT8=off", "MOTIVNET_KERNELS=composed"])
}

/// The logits and the attention maps near f32's, with the same top-1 classes, and not equal
/// to them (the products did run in int8).
#[test]
fn int8_logits_and_maps_track_the_f32_reference() {
    let Some(model) = int8_model() else { return };
    let (x, _) = batch();
    let expected = &read("expected.safetensors")["logits_eval"];
    let input = ModelInput::Tensor(&x);
    let logits = model.predict(&input).unwrap();
    assert_eq!(logits.dtype(), DType::F32, "int8 keeps f32 tensors around its products");
    let diff = max_abs_diff(&logits, expected);
    eprintln!("int8 logits: largest difference {diff} (largest logit {})", max_abs(expected));
    assert!(diff < 0.01 * max_abs(expected).max(1.0), "int8 logits differ from the reference by {diff}");
    assert!(diff > 0.0, "int8 logits equal f32's exactly: the products did not run in int8");
    assert_eq!(argmax_rows(&logits), argmax_rows(expected), "int8 changes a top-1 class");

    let (explained, maps) = model.predict_explained(&input).unwrap();
    assert_eq!(max_abs_diff(&explained, &logits), 0.0, "explaining changes int8 logits");
    let mut f32_model = reference_model();
    f32_model.set_precision(Precision::F32).unwrap();
    let (_, f32_maps) = f32_model.predict_explained(&input).unwrap();
    let map_diff = max_abs_diff(&maps, &f32_maps);
    assert!(map_diff > 0.0 && map_diff < 0.02, "int8 maps are {map_diff} off f32's");
}

#[test]
fn a_weight_change_requantizes_the_int8_weights() {
    let Some(model) = int8_model() else { return };
    a_weight_change_reaches_the_packed_products(&model, 0.05);
}

/// int8 has no backward: a train step is refused with what to do instead, and nothing moves.
#[test]
fn an_int8_train_step_is_refused() {
    let Some(model) = int8_model() else { return };
    let (x, labels) = batch();
    let before = model.params.get("pose_encoder.layers.0.attn.qkv.weight").unwrap().var.as_tensor().clone();
    let mut trainer = Trainer::new(model, TrainerConfig::default());
    let lr = motivnet::train::optim::Groups { encoder: 1e-3, decoder: 1e-3 };
    let err = trainer.train_step(&ModelInput::Tensor(&x), &labels, lr, true).unwrap_err().to_string();
    assert!(err.contains("inference only") && err.contains("precision 'f32'"), "{err}");
    let after = trainer.model.params.get("pose_encoder.layers.0.attn.qkv.weight").unwrap().var.as_tensor().clone();
    assert_eq!(max_abs_diff(&before, &after), 0.0, "a refused step changed a weight");
}

/// A model that keeps its Linear weights only quantized (how a model loaded for int8 inference
/// holds them) gives the same logits and maps, lets the f32 values go, and refuses with the
/// reason whatever would need them, bf16 included.
#[test]
fn keeping_linear_weights_in_int8_only_changes_no_logit_and_refuses_what_needs_f32() {
    let Some(mut model) = int8_model() else { return };
    let (x, labels) = batch();
    let input = ModelInput::Tensor(&x);
    let (logits, maps) = model.predict_explained(&input).unwrap();
    let held = model.params.len();

    let released = model.keep_linear_weights_packed_only().unwrap();
    // The patch embedding and four a block (qkv, proj, fc1, fc2); the head keeps its f32
    // weights for its f32 pass.
    assert_eq!(released, 1 + 4 * model.config.encoder.depth);
    assert_eq!(model.params.len(), held - released, "the store still holds the f32 weights");
    assert!(model.params.get("pose_encoder.layers.0.attn.proj.weight").is_none());
    assert!(model.params.get("decoder.decoder.embed_standart.weight").is_some(), "the head's weights were let go");
    assert_eq!(model.keep_linear_weights_packed_only().unwrap(), 0, "a second call let more go");
    let (after, maps_after) = model.predict_explained(&input).unwrap();
    assert_eq!(max_abs_diff(&logits, &after), 0.0, "the logits changed");
    assert_eq!(max_abs_diff(&maps, &maps_after), 0.0, "the maps changed");

    let refused = |err: motivnet::Error, what: &str| {
        let message = err.to_string();
        assert!(message.contains(what) && message.contains("precision 'f32'"), "{message}");
    };
    refused(model.set_precision(Precision::F32).unwrap_err(), "cannot compute in f32");
    if let Err(err) = model.set_precision(Precision::Bf16) {
        // Refused on a CPU without AMX for that reason, and with one for the weights.
        let message = err.to_string();
        assert!(message.contains("AMX") || message.contains("cannot compute in bf16"), "{message}");
    } else {
        panic!("an int8-only model switched to bf16");
    }
    let dir = std::env::temp_dir().join(format!("motivnet-int8-only-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    refused(model.save_weights(&dir.join("w.safetensors")).unwrap_err(), "cannot save the weights");
    assert!(!dir.join("w.safetensors").exists(), "a refused save wrote a file");
    std::fs::remove_dir_all(&dir).unwrap();
    // Outside the int8 products a Linear has nothing to multiply by: an error, not zeros.
    refused(model.forward(&x, &mut Mode::Eval).unwrap_err(), "only in int8");
    let mut trainer = Trainer::new(model, TrainerConfig::default());
    let lr = motivnet::train::optim::Groups { encoder: 1e-3, decoder: 1e-3 };
    refused(trainer.train_step(&input, &labels, lr, true).unwrap_err(), "inference only");
}

/// At a preset's shapes int8 tracks f32 over many of the attention's key blocks (the fixture
/// model's heads are 16 values over 12 tokens, one block).
#[test]
fn int8_tracks_f32_at_a_preset_shape_over_many_key_blocks() {
    tracks_f32_at_small_shapes(Precision::Int8, &["AVX512-VNNI", "MOTIVNET_INT8=off", "MOTIVNET_KERNELS=composed"]);
}
