//! Checkpoint I/O: round trips, the reference's and Sapiens' layouts, and readable errors.

mod common;

use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::{Device, Tensor};
use common::*;
use motivnet::{Mode, MotivNet};

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("motivnet-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn fresh() -> MotivNet {
    MotivNet::new(&config(), &Device::Cpu, 11).unwrap()
}

fn write(dir: &std::path::Path, name: &str, tensors: &HashMap<String, Tensor>) -> PathBuf {
    let path = dir.join(name);
    candle_core::safetensors::save(tensors, &path).unwrap();
    path
}

/// A save that cannot land (its final name is taken by a folder) fails naming the file, leaves
/// no temporary file behind and the old state where it was; a save that lands leaves none.
#[test]
fn a_failed_save_leaves_no_temporary_file_and_a_good_one_none_either() {
    let dir = temp_dir("durable");
    let model = reference_model();
    let blocked = dir.join("blocked.safetensors");
    std::fs::create_dir_all(blocked.join("inside")).unwrap();
    let err = model.save_weights(&blocked).unwrap_err().to_string();
    assert!(err.contains("blocked.safetensors"), "{err}");
    assert!(!motivnet::io::durable::temporary_path(&blocked).exists(), "the failed save left its temporary file");
    assert!(blocked.join("inside").is_dir(), "the failed save disturbed what was there");
    let good = dir.join("good.safetensors");
    model.save_weights(&good).unwrap();
    let names: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert!(names.iter().all(|n| !n.to_string_lossy().ends_with(".tmp")), "{names:?}");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn save_then_load_gives_identical_logits_and_reference_names() {
    let dir = temp_dir("roundtrip");
    let (x, _) = batch();
    let model = reference_model();
    let path = dir.join("saved.safetensors");
    model.save_weights(&path).unwrap();
    let saved = candle_core::safetensors::load(&path, &Device::Cpu).unwrap();
    let reference = read("weights.safetensors");
    let mut a: Vec<_> = saved.keys().collect();
    let mut b: Vec<_> = reference.keys().collect();
    a.sort();
    b.sort();
    assert_eq!(a, b, "saved names differ from the reference's state_dict keys");
    let other = fresh();
    other.load_weights(&path, false).unwrap();
    let before = model.forward(&x, &mut Mode::Eval).unwrap();
    let after = other.forward(&x, &mut Mode::Eval).unwrap();
    assert_eq!(max_abs_diff(&before, &after), 0.0);
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn multihead_attn_is_read_as_self_attn() {
    let dir = temp_dir("alias");
    let renamed: HashMap<String, Tensor> = read("weights.safetensors")
        .into_iter()
        .map(|(k, v)| (k.replace(".self_attn.", ".multihead_attn."), v))
        .collect();
    assert!(renamed.keys().any(|k| k.contains("multihead_attn")));
    let path = write(&dir, "mlalias.safetensors", &renamed);
    let model = fresh();
    model.load_weights(&path, false).unwrap();
    let (x, _) = batch();
    let logits = model.forward(&x, &mut Mode::Eval).unwrap();
    assert!(max_abs_diff(&logits, &read("expected.safetensors")["logits_eval"]) < 1e-4);
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn a_sapiens_backbone_loads_the_encoder_alone_and_resizes_pos_embed() {
    let model = fresh();
    let head_before = values(model.params.get("decoder.decoder.embed_standart.weight").unwrap().var.as_tensor());
    let report = model.load_weights(&fixture("sapiens_backbone.pth"), false).unwrap();
    assert!(report.head_initialised);
    assert_eq!(report.resized, vec![("pose_encoder.pos_embed".to_string(), vec![1, 37, 32])]);
    assert!(report.ignored.contains(&"backbone.cls_token".to_string()));
    let pos = model.params.get("pose_encoder.pos_embed").unwrap().var.as_tensor().clone();
    assert_close("bicubic pos_embed", &pos, &read("pos_embed_resized.safetensors")["pos_embed"], 1e-5, 0.0);
    let reference = read("weights.safetensors");
    let qkv = model.params.get("pose_encoder.layers.1.attn.qkv.weight").unwrap().var.as_tensor().clone();
    assert_eq!(max_abs_diff(&qkv, &reference["pose_encoder.layers.1.attn.qkv.weight"]), 0.0);
    let proj = model.params.get("pose_encoder.projection.weight").unwrap().var.as_tensor().clone();
    assert_eq!(max_abs_diff(&proj, &reference["pose_encoder.projection.weight"]), 0.0);
    let head_after = values(model.params.get("decoder.decoder.embed_standart.weight").unwrap().var.as_tensor());
    assert_eq!(head_before, head_after, "the head must keep its fresh initialisation");
}

#[test]
fn encoder_only_load_of_a_motivnet_checkpoint_keeps_the_head() {
    let model = fresh();
    let head_before = values(model.params.get("decoder.decoder.duplicate_pooling").unwrap().var.as_tensor());
    let report = model.load_weights(&fixture("weights.pth"), true).unwrap();
    assert!(report.head_initialised);
    let head_after = values(model.params.get("decoder.decoder.duplicate_pooling").unwrap().var.as_tensor());
    assert_eq!(head_before, head_after);
}

#[test]
fn loading_errors_name_the_file_and_every_bad_key() {
    let dir = temp_dir("errors");
    let mut tensors = read("weights.safetensors");
    tensors.remove("pose_encoder.layers.0.ln1.weight");
    tensors.remove("decoder.decoder.duplicate_pooling_bias");
    tensors.insert(
        "decoder.decoder.extra.weight".into(),
        Tensor::zeros(3, candle_core::DType::F32, &Device::Cpu).unwrap(),
    );
    tensors.insert(
        "pose_encoder.layers.1.attn.proj.weight".into(),
        Tensor::zeros((16, 32), candle_core::DType::F32, &Device::Cpu).unwrap(),
    );
    let path = write(&dir, "broken.safetensors", &tensors);
    let model = reference_model();
    let before = values(model.params.get("pose_encoder.layers.1.ln2.weight").unwrap().var.as_tensor());
    let err = model.load_weights(&path, false).unwrap_err().to_string();
    for needle in [
        "broken.safetensors",
        "missing keys (2): pose_encoder.layers.0.ln1.weight, decoder.decoder.duplicate_pooling_bias",
        "unexpected keys (1): decoder.decoder.extra.weight",
        "mis-shaped keys (1): pose_encoder.layers.1.attn.proj.weight: file [16, 32], model [32, 32]",
    ] {
        assert!(err.contains(needle), "error lacks «{needle}»:\n{err}");
    }
    // All or nothing: nothing was loaded.
    assert_eq!(before, values(model.params.get("pose_encoder.layers.1.ln2.weight").unwrap().var.as_tensor()));

    // A head-less MotivNet file names the missing head and the way out.
    let encoder_only: HashMap<_, _> =
        read("weights.safetensors").into_iter().filter(|(k, _)| k.starts_with("pose_encoder.")).collect();
    let err = model.load_weights(&write(&dir, "enc.safetensors", &encoder_only), false).unwrap_err().to_string();
    assert!(err.contains("missing keys") && err.contains("encoder-only"), "{err}");

    let garbage = dir.join("garbage.bin");
    std::fs::write(&garbage, b"this is not a checkpoint at all").unwrap();
    let err = model.load_weights(&garbage, false).unwrap_err().to_string();
    assert!(err.contains("garbage.bin") && err.contains("neither a safetensors file"), "{err}");

    let err = model.load_weights(&dir.join("absent.safetensors"), false).unwrap_err().to_string();
    assert!(err.contains("absent.safetensors"), "{err}");

    let err = model.load_weights(&fixture("torchscript.pt"), false).unwrap_err().to_string();
    assert!(err.contains("torchscript.pt") && err.contains("TorchScript"), "{err}");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn a_wrong_preset_checkpoint_lists_mismatched_shapes() {
    let tiny = MotivNet::new(&motivnet::ModelConfig::preset("tiny").unwrap(), &Device::Cpu, 0).unwrap();
    let err = tiny.load_weights(&fixture("weights.safetensors"), false).unwrap_err().to_string();
    assert!(err.contains("weights.safetensors") && err.contains("mis-shaped keys"), "{err}");
    assert!(err.contains("pose_encoder.layers.0.attn.qkv.weight: file [96, 32], model [576, 192]"), "{err}");
    assert!(err.contains("missing keys") && err.contains("pose_encoder.layers.3.ln1.weight"), "{err}");
}

/// The released checkpoint's layout at the fixture size: a plain `torch.save(state_dict)` of a
/// 7-class upstream module. A spec that leaves the head open takes it from the file.
#[test]
fn a_seven_class_checkpoint_fixes_the_head_of_an_open_spec() {
    let (x, _) = batch();
    let file = fixture("motivnet7.pth");
    let shapes = motivnet::io::weights::canonical_shapes(&motivnet::io::weights::read_shapes(&file).unwrap());
    let spec = motivnet::ModelSpec::parse(fixture("config_encoder_only.json").to_str().unwrap()).unwrap();
    let config = spec.resolve(Some(("motivnet7.pth", &shapes)), None).unwrap();
    assert_eq!((config.head.num_classes, config.head.embed_dim, config.head.feedforward), (7, 32, 48));
    let model = MotivNet::new(&config, &Device::Cpu, 0).unwrap();
    model.load_weights(&file, false).unwrap();
    let logits = model.forward(&x, &mut Mode::Eval).unwrap();
    assert_close("7-class logits", &logits, &read("motivnet7_expected.safetensors")["logits_eval"], 1e-4, 0.0);

    // A config file that writes its head (8 classes, feedforward 64) contradicts the file.
    let fixed = motivnet::ModelSpec::parse(fixture("config.json").to_str().unwrap()).unwrap();
    let config = fixed.resolve(Some(("motivnet7.pth", &shapes)), None).unwrap();
    let err = MotivNet::new(&config, &Device::Cpu, 0).unwrap().load_weights(&file, false).unwrap_err().to_string();
    assert!(
        err.contains("decoder.decoder.duplicate_pooling_bias: file [7], model [8]")
            && err.contains("decoder.decoder.layers.0.linear1.weight: file [48, 32], model [64, 32]"),
        "{err}"
    );
    // Asked for 8 classes, it says why it cannot and what to do instead.
    let err = spec.resolve(Some(("motivnet7.pth", &shapes)), Some(8)).unwrap_err().to_string();
    assert!(err.contains("holds a 7-class head") && err.contains("encoder-only"), "{err}");
}

#[test]
fn shapes_are_read_without_the_tensor_data() {
    for name in ["weights.safetensors", "weights.pth", "sapiens_backbone.pth"] {
        let shapes = motivnet::io::weights::read_shapes(&fixture(name)).unwrap();
        let tensors = motivnet::io::weights::read_tensors(&fixture(name)).unwrap();
        assert_eq!(shapes.len(), tensors.len(), "{name}");
        for (k, t) in &tensors {
            assert_eq!(&shapes[k], t.dims(), "{name}: {k}");
        }
    }
}

/// Our parameter names and shapes against the released checkpoint's module (its key -> shape
/// table, written by the reference script): the whole head, and the encoder with one of its
/// 40 blocks (the others differ only in their index), resolved from `sapiens-1b`.
#[test]
fn the_released_checkpoints_keys_and_shapes_are_ours() {
    let released: std::collections::BTreeMap<String, Vec<usize>> =
        serde_json::from_str(&std::fs::read_to_string(fixture("released_shapes.json")).unwrap()).unwrap();
    let spec = motivnet::ModelSpec::parse("sapiens-1b").unwrap();
    let mut config = spec.resolve(Some(("MotivNet.pth", &released)), None).unwrap();
    assert_eq!(config.encoder.depth, 40);
    config.encoder.depth = 1;
    let model = MotivNet::new(&config, &Device::Cpu, 0).unwrap();
    let ours: std::collections::BTreeMap<String, Vec<usize>> =
        model.params.iter().map(|p| (p.name.clone(), p.var.dims().to_vec())).collect();
    let wanted: std::collections::BTreeMap<String, Vec<usize>> = released
        .into_iter()
        .filter(|(k, _)| !k.starts_with("pose_encoder.layers.") || k.starts_with("pose_encoder.layers.0."))
        .collect();
    assert_eq!(ours, wanted);
}

/// Files crafted to break readers: a reader's panic is an error naming the file.
#[test]
fn a_malformed_pth_is_an_error_not_a_panic() {
    let file = fixture("short_rebuild_tuple.pth");
    for err in [
        motivnet::io::weights::read_tensors(&file).unwrap_err(),
        motivnet::io::weights::read_shapes(&file).unwrap_err(),
        fresh().load_weights(&file, false).unwrap_err(),
    ] {
        assert_eq!(err.code(), "MOTIVNET_WEIGHTS");
        assert!(err.to_string().contains("short_rebuild_tuple.pth"), "{err}");
        assert!(err.to_string().contains("removal index"), "the file no longer makes the reader panic: {err}");
    }
}

#[test]
fn a_training_state_with_empty_or_missing_tensors_is_refused_whole() {
    use motivnet::{train::optim::Groups, ModelInput, Trainer, TrainerConfig};
    let dir = temp_dir("badstate");
    let (x, labels) = batch();
    let mut trainer = Trainer::new(reference_model(), TrainerConfig::default());
    let lr = Groups { encoder: 1e-3, decoder: 1e-3 };
    trainer.train_step(&ModelInput::Tensor(&x), &labels, lr, true).unwrap();
    let good = dir.join("good.safetensors");
    trainer.save_state(&good, Some("{}")).unwrap();
    let before = trainer.model.params.tensors();
    for (key, why) in [
        ("trainer.accumulated_micro_batches", "must hold one count"),
        ("optimizer.step", "must hold one step count"),
        ("trainer.rng.seed", "must hold 32 bytes"),
        ("trainer.rng.position", "must hold 6 32-bit words"),
    ] {
        let mut tensors = candle_core::safetensors::load(&good, &Device::Cpu).unwrap();
        let dtype = tensors[key].dtype();
        tensors.insert(key.to_string(), Tensor::zeros(0, dtype, &Device::Cpu).unwrap());
        let bad = write(&dir, "bad.safetensors", &tensors);
        // A fresh trainer whose weights differ: nothing of the bad file may reach it.
        let mut other = Trainer::new(fresh(), TrainerConfig::default());
        let err = other.load_state(&bad).unwrap_err();
        assert_eq!(err.code(), "MOTIVNET_STATE", "{key}: {err}");
        assert!(err.to_string().contains("bad.safetensors") && err.to_string().contains(why), "{key}: {err}");
        let untouched = other.model.params.tensors();
        let fresh_weights = fresh().params.tensors();
        assert!(untouched.iter().all(|(k, t)| max_abs_diff(t, &fresh_weights[k]) == 0.0), "{key}: weights changed");
        assert_eq!(other.optimizer.step_count(), 0);
    }
    // The good file still restores.
    let mut other = Trainer::new(fresh(), TrainerConfig::default());
    other.load_state(&good).unwrap();
    let after = other.model.params.tensors();
    assert!(before.iter().all(|(k, t)| max_abs_diff(t, &after[k]) == 0.0));
    std::fs::remove_dir_all(&dir).ok();
}

/// A safetensors file `edit` changed: its header as JSON, and its data bytes.
fn edited_safetensors(
    from: &std::path::Path,
    to: &std::path::Path,
    edit: impl FnOnce(&mut serde_json::Value, &mut Vec<u8>),
) {
    let bytes = std::fs::read(from).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let mut header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    let mut data = bytes[8 + n..].to_vec();
    edit(&mut header, &mut data);
    let header = serde_json::to_vec(&header).unwrap();
    let mut out = (header.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&header);
    out.extend_from_slice(&data);
    std::fs::write(to, out).unwrap();
}

/// Safetensors weights are read one tensor at a time as they are set (never the whole file
/// beside the model): every tensor's bytes are checked against the file from its header first,
/// so a file cut short or a header that lies is refused naming the file and the key, and the
/// model is left untouched; tensors stored in f16 load as their f32 values.
#[test]
fn safetensors_weights_are_checked_whole_then_read_tensor_by_tensor() {
    let dir = temp_dir("streamed");
    let good = dir.join("good.safetensors");
    reference_model().save_weights(&good).unwrap();
    let key = "pose_encoder.layers.1.ffn.layers.0.0.weight";
    let model = fresh();
    let watched = "pose_encoder.layers.0.ln1.weight";
    let before = values(model.params.get(watched).unwrap().var.as_tensor());
    let refused = |name: &str, needles: &[&str], edit: &dyn Fn(&mut serde_json::Value, &mut Vec<u8>)| {
        let path = dir.join(name);
        edited_safetensors(&good, &path, |h, d| {
            assert!(h.get(key).is_some(), "{key} is not in the file");
            edit(h, d)
        });
        let err = model.load_weights(&path, false).unwrap_err().to_string();
        assert!(err.contains(name), "the error does not name the file: {err}");
        for needle in needles {
            assert!(err.contains(needle), "expected «{needle}» in: {err}");
        }
        assert_eq!(before, values(model.params.get(watched).unwrap().var.as_tensor()), "{name} changed the model");
    };
    // The last tensor in the data lies past a file cut short.
    refused("cut.safetensors", &["past the file's end"], &|_, data| data.truncate(data.len() - 64));
    refused("wrong-dtype.safetensors", &[key, "does not take"], &|h, _| h[key]["dtype"] = "F16".into());
    refused("odd-dtype.safetensors", &[key, "unknown dtype Q4"], &|h, _| h[key]["dtype"] = "Q4".into());
    refused("offsets.safetensors", &[key, "data_offsets"], &|h, _| h[key]["data_offsets"] = serde_json::json!([10, 2]));
    refused("bool.safetensors", &[key, "BOOL, a dtype that cannot be loaded"], &|h, _| {
        // The model's shape, a byte an element: a well-formed entry candle cannot hold.
        let start = h[key]["data_offsets"][0].as_u64().unwrap();
        let elements: u64 = h[key]["shape"].as_array().unwrap().iter().map(|d| d.as_u64().unwrap()).product();
        h[key]["data_offsets"] = serde_json::json!([start, start + elements]);
        h[key]["dtype"] = "BOOL".into();
    });

    // f16 in the file: each parameter is its f16 value as f32.
    let half: HashMap<String, Tensor> = candle_core::safetensors::load(&good, &Device::Cpu)
        .unwrap()
        .into_iter()
        .map(|(k, t)| (k, t.to_dtype(candle_core::DType::F16).unwrap()))
        .collect();
    let half_path = write(&dir, "half.safetensors", &half);
    model.load_weights(&half_path, false).unwrap();
    let expected = half[key].to_dtype(candle_core::DType::F32).unwrap();
    assert_eq!(values(&expected), values(model.params.get(key).unwrap().var.as_tensor()));
    std::fs::remove_dir_all(&dir).ok();
}

/// `from_weights_file` skips the initialisation only where the file replaces every parameter:
/// each model it makes computes what one initialised with the same seed and then loaded does,
/// for a full checkpoint in either format, an encoder-only load and a Sapiens backbone (whose
/// heads stay seeded); a file that does not fit is the same error.
#[test]
fn a_model_from_a_weights_file_matches_one_initialised_then_loaded() {
    let (x, _) = batch();
    for (file, encoder_only) in
        [("weights.safetensors", false), ("weights.pth", false), ("weights.pth", true), ("sapiens_backbone.pth", false)]
    {
        let path = fixture(file);
        let loaded = fresh();
        let expected_report = loaded.load_weights(&path, encoder_only).unwrap();
        let (made, report) = MotivNet::from_weights_file(
            &config(),
            &Device::Cpu,
            11,
            motivnet::InitScheme::Upstream,
            &path,
            encoder_only,
        )
        .unwrap();
        assert_eq!(report, expected_report, "{file}");
        let a = loaded.forward(&x, &mut Mode::Eval).unwrap();
        let b = made.forward(&x, &mut Mode::Eval).unwrap();
        assert_eq!(max_abs_diff(&a, &b), 0.0, "{file}, encoder only: {encoder_only}");
    }
    let tiny = motivnet::ModelConfig::preset("tiny").unwrap();
    let path = fixture("weights.safetensors");
    let err = MotivNet::from_weights_file(&tiny, &Device::Cpu, 0, motivnet::InitScheme::Upstream, &path, false)
        .err()
        .expect("a checkpoint of another size was loaded");
    let expected = MotivNet::new(&tiny, &Device::Cpu, 0).unwrap().load_weights(&path, false).unwrap_err();
    assert_eq!(err.to_string(), expected.to_string());
}
