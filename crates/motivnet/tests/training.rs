//! The training step beyond parity: gradients reach every parameter, a batch can be overfit,
//! accumulation equals a large batch, dropout behaves, and a saved state resumes exactly.

mod common;

use candle_core::{Device, Tensor};
use common::*;
use motivnet::train::optim::{AdamWConfig, Groups};
use motivnet::{Mode, ModelConfig, ModelInput, MotivNet, Trainer, TrainerConfig};

const LR: Groups<f64> = Groups { encoder: 1e-3, decoder: 1e-3 };

#[test]
fn every_trainable_parameter_gets_a_gradient_and_the_queries_none() {
    let (x, labels) = batch();
    let model = reference_model();
    let mut rng = rand::SeedableRng::seed_from_u64(0);
    let logits = model.forward(&x, &mut Mode::Train(&mut rng)).unwrap();
    let grads = motivnet::nn::loss::cross_entropy(&logits, &labels).unwrap().backward().unwrap();
    let mut trainable = 0;
    for p in model.params.iter() {
        match (p.trainable, grads.get(p.var.as_tensor())) {
            (true, Some(g)) => {
                assert!(max_abs(g) > 0.0, "{} has an all-zero gradient", p.name);
                trainable += 1;
            }
            (true, None) => panic!("{} received no gradient: the graph is cut", p.name),
            (false, Some(_)) => panic!("{} is frozen but received a gradient", p.name),
            (false, None) => assert_eq!(p.name, "decoder.decoder.query_embed.weight"),
        }
    }
    assert_eq!(trainable, model.params.len() - 1);
}

#[test]
fn a_fixed_batch_is_overfit() {
    let (x, labels) = batch();
    let mut trainer = Trainer::new(reference_model(), TrainerConfig::default());
    let input = ModelInput::Tensor(&x);
    let first = trainer.train_step(&input, &labels, LR, true).unwrap().loss;
    let mut last = first;
    for _ in 0..60 {
        last = trainer.train_step(&input, &labels, LR, true).unwrap().loss;
    }
    let (eval_loss, _) = trainer.model.evaluate(&input, &labels).unwrap();
    assert!(last < 0.1 * first && eval_loss < 0.1 * first, "loss {first} -> {last} (eval {eval_loss})");
}

#[test]
fn four_accumulated_micro_batches_equal_one_batch_four_times_larger() {
    let (x, labels) = batch(); // 4 images: 4 micro-batches of 1
    let mut big = Trainer::new(reference_model(), TrainerConfig::default());
    let mut small = Trainer::new(reference_model(), TrainerConfig::default());
    for _ in 0..2 {
        big.train_step(&ModelInput::Tensor(&x), &labels, LR, true).unwrap();
        for i in 0..4 {
            let xi = x.narrow(0, i, 1).unwrap();
            let out = small.train_step(&ModelInput::Tensor(&xi), &labels[i..i + 1], LR, i == 3).unwrap();
            assert_eq!(out.stepped, i == 3);
        }
    }
    assert_eq!(big.optimizer.step_count(), 2);
    assert_eq!(small.optimizer.step_count(), 2);
    let (a, b) = (big.model.params.tensors(), small.model.params.tensors());
    for p in big.model.params.trainable() {
        let (x, y) = (values(&a[&p.name]), values(&b[&p.name]));
        // The key bias (the middle third of qkv.bias and in_proj_bias) has a zero true gradient:
        // softmax is invariant to it, so Adam steps it on rounding noise, by up to lr a step
        // (see parity.rs). Only those elements get that bound; the query and value thirds, and
        // every other parameter, must agree closely.
        let key_bias = p.name.ends_with("qkv.bias") || p.name.ends_with("in_proj_bias");
        let third = x.len() / 3;
        for i in 0..x.len() {
            let noise = key_bias && (third..2 * third).contains(&i);
            let bound = if noise { 2.0 * 2.0 * 1e-3 } else { 2e-5 };
            assert!((x[i] - y[i]).abs() <= bound, "{}[{i}]: {} vs {} (bound {bound:e})", p.name, x[i], y[i]);
        }
    }
}

fn dropout_config() -> ModelConfig {
    let mut cfg = config();
    cfg.head.dropout = 0.1;
    cfg
}

#[test]
fn dropout_acts_in_train_mode_only_and_follows_the_seed() {
    let (x, _) = batch();
    let model = MotivNet::new(&dropout_config(), &Device::Cpu, 1).unwrap();
    model.load_weights(&fixture("weights.safetensors"), false).unwrap();
    let eval = model.forward(&x, &mut Mode::Eval).unwrap();
    assert_eq!(max_abs_diff(&eval, &model.forward(&x, &mut Mode::Eval).unwrap()), 0.0);
    let train = |seed| {
        let mut rng = rand::SeedableRng::seed_from_u64(seed);
        model.forward(&x, &mut Mode::Train(&mut rng)).unwrap()
    };
    assert!(max_abs_diff(&train(5), &eval) > 1e-3, "dropout changed nothing");
    assert_eq!(max_abs_diff(&train(5), &train(5)), 0.0);
    assert!(max_abs_diff(&train(5), &train(6)) > 1e-3);
}

#[test]
fn a_saved_training_state_resumes_exactly() {
    on_both_paths(|| {
        let (x, labels) = batch();
        let input = ModelInput::Tensor(&x);
        let config =
            || TrainerConfig { optimizer: AdamWConfig { max_grad_norm: Some(1.0), ..AdamWConfig::default() }, seed: 3 };
        let new_model = || {
            let m = MotivNet::new(&dropout_config(), &Device::Cpu, 1).unwrap();
            m.load_weights(&fixture("weights.safetensors"), false).unwrap();
            m
        };
        // Six micro-batches with accumulation over 2; the state is saved mid-cycle after the third.
        let run = |trainer: &mut Trainer, range: std::ops::Range<usize>| {
            range.map(|i| trainer.train_step(&input, &labels, LR, i % 2 == 1).unwrap().loss).collect::<Vec<_>>()
        };
        let mut straight = Trainer::new(new_model(), config());
        let losses = run(&mut straight, 0..6);

        let dir = std::env::temp_dir().join(format!("motivnet-resume-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let state = dir.join("state.safetensors");
        let mut first = Trainer::new(new_model(), config());
        let mut resumed_losses = run(&mut first, 0..3);
        first.save_state(&state, Some("{\"epoch\":1}")).unwrap();
        drop(first);
        let mut second = Trainer::new(
            MotivNet::new(&dropout_config(), &Device::Cpu, 99).unwrap(),
            TrainerConfig { seed: 42, ..config() },
        );
        assert_eq!(second.load_state(&state).unwrap().as_deref(), Some("{\"epoch\":1}"));
        assert_eq!(second.pending_micro_batches(), 1);
        resumed_losses.extend(run(&mut second, 3..6));
        assert_eq!(losses, resumed_losses);
        let (a, b) = (straight.model.params.tensors(), second.model.params.tensors());
        for (name, t) in &a {
            assert_eq!(max_abs_diff(t, &b[name]), 0.0, "{name} differs after resume");
        }
        std::fs::remove_dir_all(&dir).ok();
    });
}

#[test]
fn bad_labels_and_learning_rates_are_named() {
    let (x, _) = batch();
    let mut trainer = Trainer::new(reference_model(), TrainerConfig::default());
    let input = ModelInput::Tensor(&x);
    let err = trainer.train_step(&input, &[0, 1, 8, 2], LR, true).unwrap_err().to_string();
    assert!(err.contains("label 8 at index 2") && err.contains("8 classes"), "{err}");
    let err = trainer.train_step(&input, &[0, 1], LR, true).unwrap_err().to_string();
    assert!(err.contains("2 labels for a batch of 4"), "{err}");
    let bad = Groups { encoder: f64::NAN, decoder: 1e-3 };
    let err = trainer.train_step(&input, &[0, 1, 2, 3], bad, true).unwrap_err().to_string();
    assert!(err.contains("encoder learning rate"), "{err}");
    let wrong = Tensor::zeros((1, 3, 32, 48), candle_core::DType::F32, &Device::Cpu).unwrap();
    let err = trainer.model.predict(&ModelInput::Tensor(&wrong)).unwrap_err().to_string();
    assert!(err.contains("3 x 32 x 48") && err.contains("expected 3 x 64 x 48"), "{err}");
}

#[test]
fn state_kept_across_steps_holds_no_graph() {
    // A gradient, moment or sum that kept its op graph would keep every step's activations
    // alive: memory would grow with each step until the process is killed.
    let (x, labels) = batch();
    let mut trainer = Trainer::new(reference_model(), TrainerConfig::default());
    let input = ModelInput::Tensor(&x);
    for i in 0..3 {
        trainer.train_step(&input, &labels, LR, i == 1).unwrap();
    }
    assert_eq!(trainer.pending_micro_batches(), 1);
    let mut checked = 0;
    for (name, g) in trainer.accumulated_gradients() {
        assert!(!g.track_op(), "accumulated gradient of {name} keeps its graph");
        checked += 1;
    }
    for (name, t) in trainer.optimizer.state_tensors().unwrap() {
        assert!(!t.track_op(), "optimizer state {name} keeps its graph");
        checked += 1;
    }
    assert!(checked > 3 * trainer.model.params.len() - 10);
}

#[test]
fn inference_keeps_no_graph() {
    // Parameters are Vars, so ops on them record their inputs; eval mode cuts the graph between
    // layers, or inference would hold every layer's activations until the logits are dropped.
    let (x, _) = batch();
    let model = reference_model();
    assert!(!model.forward(&x, &mut Mode::Eval).unwrap().track_op());
    let mut rng = rand::SeedableRng::seed_from_u64(0);
    assert!(model.forward(&x, &mut Mode::Train(&mut rng)).unwrap().track_op());
}

/// Mean and standard deviation of a tensor's values.
fn stats(t: &Tensor) -> (f64, f64) {
    let v = values(t);
    let n = v.len() as f64;
    let mean = v.iter().map(|&x| x as f64).sum::<f64>() / n;
    let var = v.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / n;
    (mean, var.sqrt())
}

#[test]
fn a_fresh_model_starts_where_the_upstream_code_starts() {
    let config = ModelConfig::preset("tiny").unwrap();
    let model = MotivNet::new(&config, &Device::Cpu, 4).unwrap();
    let t = model.params.tensors();
    // nn.TransformerDecoder deep-copies one layer: both decoder layers start identical.
    let layer0: Vec<_> = t.keys().filter(|k| k.starts_with("decoder.decoder.layers.0.")).collect();
    assert_eq!(layer0.len(), 14);
    for k in layer0 {
        assert_eq!(max_abs_diff(&t[k], &t[&k.replace("layers.0.", "layers.1.")]), 0.0, "{k}");
    }
    assert_eq!(max_abs(&t["pose_encoder.pos_embed"]), 0.0, "pos_embed starts at zero");
    // PyTorch's default Linear/Conv init: weights and biases uniform in +-1/sqrt(fan_in), whose
    // standard deviation is bound/sqrt(3).
    for (name, fan_in) in [
        ("pose_encoder.projection", 3 * 16 * 16),
        ("pose_encoder.layers.0.attn.qkv", 192),
        ("pose_encoder.layers.2.ffn.layers.0.0", 192),
        ("pose_encoder.layers.3.ffn.layers.1", 768),
        ("decoder.decoder.embed_standart", 192),
        ("decoder.decoder.layers.0.linear1", 192),
        ("decoder.decoder.layers.0.linear2", 2048),
    ] {
        let bound = 1.0 / (fan_in as f64).sqrt();
        let (w, b) = (&t[&format!("{name}.weight")], &t[&format!("{name}.bias")]);
        let (mean, std) = stats(w);
        assert!(max_abs(w) as f64 <= bound * (1.0 + 1e-6), "{name}.weight exceeds the bound {bound}");
        assert!(mean.abs() < 0.05 * bound, "{name}.weight mean {mean}");
        assert!((std / (bound / 3f64.sqrt()) - 1.0).abs() < 0.05, "{name}.weight std {std}, bound {bound}");
        assert!(max_abs(b) as f64 <= bound * (1.0 + 1e-6) && max_abs(b) > 0.0, "{name}.bias");
    }
    // MultiheadAttention's own init: Xavier-uniform in_proj, zero in_proj and out_proj biases.
    let e = 192f64;
    let (_, std) = stats(&t["decoder.decoder.layers.0.self_attn.in_proj_weight"]);
    assert!((std / ((6.0 / (4.0 * e)).sqrt() / 3f64.sqrt()) - 1.0).abs() < 0.05, "in_proj std {std}");
    assert_eq!(max_abs(&t["decoder.decoder.layers.0.self_attn.in_proj_bias"]), 0.0);
    // The group FC: Xavier-normal (K, E, 1), zero bias; the queries standard normal.
    let (_, std) = stats(&t["decoder.decoder.duplicate_pooling"]);
    assert!((std / (2.0 / (e + 8.0)).sqrt() - 1.0).abs() < 0.1, "duplicate_pooling std {std}");
    let (_, std) = stats(&t["decoder.decoder.query_embed.weight"]);
    assert!((std - 1.0).abs() < 0.1, "query_embed std {std}");
    // LayerNorms: ones and zeros.
    assert_eq!(stats(&t["pose_encoder.layers.1.ln2.weight"]), (1.0, 0.0));
    assert_eq!(stats(&t["decoder.decoder.layers.1.norm3.bias"]), (0.0, 0.0));
}

#[test]
fn the_vit_init_is_available_by_name() {
    let config = ModelConfig::preset("tiny").unwrap();
    let init: motivnet::InitScheme = "vit".parse().unwrap();
    let model = MotivNet::with_init(&config, &Device::Cpu, 4, init).unwrap();
    let t = model.params.tensors();
    let (_, std) = stats(&t["pose_encoder.pos_embed"]);
    assert!((std - 0.02 * 0.88).abs() < 0.002, "pos_embed std {std}"); // N(0, 0.02) cut at 2 std
    let (_, std) = stats(&t["pose_encoder.layers.0.attn.qkv.weight"]);
    assert!((std - 0.02 * 0.88).abs() < 0.002, "qkv std {std}");
    assert_eq!(max_abs(&t["pose_encoder.layers.0.attn.qkv.bias"]), 0.0);
    let a = &t["decoder.decoder.layers.0.linear1.weight"];
    assert!(max_abs_diff(a, &t["decoder.decoder.layers.1.linear1.weight"]) > 0.0, "layers drawn independently");
    let err = "xavier".parse::<motivnet::InitScheme>().unwrap_err().to_string();
    assert!(err.contains("expected upstream or vit"), "{err}");
}
