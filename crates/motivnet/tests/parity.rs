//! The Rust model against the PyTorch reference: logits, loss, gradients and AdamW steps.

mod common;

use std::collections::HashMap;

use candle_core::Tensor;
use common::*;
use motivnet::train::optim::{AdamWConfig, GroupConfig, Groups};
use motivnet::{Mode, ModelInput, Trainer, TrainerConfig};

#[test]
fn eval_logits_match_reference_from_safetensors_and_pth() {
    on_both_paths(|| {
        let (x, _) = batch();
        let expected = &read("expected.safetensors")["logits_eval"];
        let model = reference_model();
        let logits = model.forward(&x, &mut Mode::Eval).unwrap();
        assert!(max_abs_diff(&logits, expected) < 1e-4, "safetensors: {}", max_abs_diff(&logits, expected));

        let from_pth = motivnet::MotivNet::new(&config(), x.device(), 7).unwrap();
        from_pth.load_weights(&fixture("weights.pth"), false).unwrap();
        let logits = from_pth.forward(&x, &mut Mode::Eval).unwrap();
        assert!(max_abs_diff(&logits, expected) < 1e-4, "pth: {}", max_abs_diff(&logits, expected));
    });
}

#[test]
fn train_loss_and_every_gradient_match_reference() {
    on_both_paths(|| {
        let (x, labels) = batch();
        let expected = read("expected.safetensors");
        let model = reference_model();
        let mut rng = rand::SeedableRng::seed_from_u64(0);
        let logits = model.forward(&x, &mut Mode::Train(&mut rng)).unwrap();
        assert_close("train logits", &logits, &expected["logits_train"], 1e-4, 0.0);
        let loss = motivnet::nn::loss::cross_entropy(&logits, &labels).unwrap();
        assert_close("loss", &loss.reshape(1).unwrap(), &expected["loss"], 1e-5, 0.0);

        let grads = loss.backward().unwrap();
        let mut checked = 0;
        for p in model.params.trainable() {
            let want = expected
                .get(&format!("grad.{}", p.name))
                .unwrap_or_else(|| panic!("no fixture gradient for {}", p.name));
            let got = grads.get(p.var.as_tensor()).unwrap_or_else(|| panic!("{} has no gradient", p.name));
            assert_close(&format!("grad of {}", p.name), got, want, 1e-6, 1e-3);
            checked += 1;
        }
        assert_eq!(checked, expected.keys().filter(|k| k.starts_with("grad.")).count());
    });
}

#[test]
fn the_trainers_gradients_match_reference() {
    // The trainer runs the encoder's and the head's hand-written passes (encoder_train.rs,
    // head_train.rs), not candle's graph.
    let (x, labels) = batch();
    let expected = read("expected.safetensors");
    let model = reference_model();
    assert!(motivnet::model::encoder_train::supported(&model.encoder, &x));
    let mut trainer = Trainer::new(model, TrainerConfig { seed: 0, ..TrainerConfig::default() });
    let out =
        trainer.train_step(&ModelInput::Tensor(&x), &labels, Groups { encoder: 1e-3, decoder: 1e-3 }, false).unwrap();
    assert!(!out.stepped);
    assert_close("loss", &Tensor::new(&[out.loss], x.device()).unwrap(), &expected["loss"], 1e-5, 0.0);
    let grads: HashMap<&String, &Tensor> = trainer.accumulated_gradients().collect();
    let mut checked = 0;
    for p in trainer.model.params.trainable() {
        let got = grads.get(&p.name).unwrap_or_else(|| panic!("{} has no gradient", p.name));
        assert_close(&format!("grad of {}", p.name), got, &expected[&format!("grad.{}", p.name)], 1e-6, 1e-3);
        checked += 1;
    }
    assert_eq!(checked, expected.keys().filter(|k| k.starts_with("grad.")).count());
}

fn steps_match(prefix: &str, max_grad_norm: Option<f64>) {
    let (x, labels) = batch();
    let expected = read("expected.safetensors");
    let optimizer = AdamWConfig {
        encoder: GroupConfig { weight_decay: 0.05 },
        decoder: GroupConfig { weight_decay: 0.01 },
        max_grad_norm,
        ..AdamWConfig::default()
    };
    let mut trainer = Trainer::new(reference_model(), TrainerConfig { optimizer, seed: 0 });
    let lr = Groups { encoder: 1e-3, decoder: 3e-3 };
    for _ in 0..3 {
        trainer.train_step(&ModelInput::Tensor(&x), &labels, lr, true).unwrap();
    }
    let after: HashMap<String, Tensor> = trainer.model.params.tensors();
    let mut compared = 0;
    for p in trainer.model.params.trainable() {
        let want = values(&expected[&format!("{prefix}.{}", p.name)]);
        let got = values(&after[&p.name]);
        let grad = values(&expected[&format!("grad.{}", p.name)]);
        for i in 0..want.len() {
            let diff = (got[i] - want[i]).abs();
            // Adam divides by sqrt(v): where the true gradient is zero (attention's key bias is
            // invariant under softmax) both sides step on rounding noise, by up to lr a step.
            // Those elements are only held to that bound; every other one must agree closely.
            let (bound, what) =
                if grad[i].abs() < 1e-7 { (3.0 * 3e-3, "noise-gradient") } else { (2e-5 + 1e-4 * want[i].abs(), "") };
            assert!(diff <= bound, "{prefix} {}[{i}] {what}: got {}, expected {}", p.name, got[i], want[i]);
            compared += (what.is_empty()) as usize;
        }
    }
    assert!(compared > 10_000, "only {compared} elements compared tightly");
}

#[test]
fn three_adamw_steps_with_two_groups_match_reference() {
    on_both_paths(|| steps_match("step3", None));
}

#[test]
fn three_clipped_adamw_steps_match_reference() {
    on_both_paths(|| steps_match("step3clip", Some(0.1)));
}

/// The fixture model in train mode with dropout 0.1, on the masks PyTorch drew (recorded by
/// the fixture script): the `t + dropout(t)` of each decoder layer, the attention-weight
/// dropout and the 1/(1-p) scaling all have to agree for this to pass.
#[test]
fn dropout_on_train_step_matches_reference_on_its_masks() {
    on_both_paths(|| {
        let (x, labels) = batch();
        let expected = read("dropout.safetensors");
        let config = motivnet::ModelConfig::from_file(&fixture("config_dropout.json")).unwrap();
        assert_eq!(config.head.dropout, 0.1);
        let masks = |expected: &HashMap<String, Tensor>| {
            let count = expected.keys().filter(|k| k.starts_with("mask.")).count();
            assert_eq!(count, 5 * config.head.layers, "five dropouts per decoder layer");
            motivnet::RecordedMasks::new((0..count).map(|i| expected[&format!("mask.{i}")].clone()).collect())
        };

        // The graph path: logits, loss and every gradient.
        let model = motivnet::MotivNet::new(&config, x.device(), 1).unwrap();
        model.load_weights(&fixture("weights.safetensors"), false).unwrap();
        let mut recorded = masks(&expected);
        let logits = model.forward(&x, &mut Mode::Replay(&mut recorded)).unwrap();
        assert_eq!(recorded.remaining(), 0);
        assert_close("train logits (dropout 0.1)", &logits, &expected["logits_train"], 1e-4, 0.0);
        let no_dropout = read("expected.safetensors");
        assert!(max_abs_diff(&logits, &no_dropout["logits_train"]) > 1e-2, "the masks changed nothing");
        let loss = motivnet::nn::loss::cross_entropy(&logits, &labels).unwrap();
        assert_close("loss (dropout 0.1)", &loss.reshape(1).unwrap(), &expected["loss"], 1e-5, 0.0);
        let grads = loss.backward().unwrap();
        for p in model.params.trainable() {
            let got = grads.get(p.var.as_tensor()).unwrap_or_else(|| panic!("{} has no gradient", p.name));
            assert_close(&format!("grad of {}", p.name), got, &expected[&format!("grad.{}", p.name)], 1e-6, 1e-3);
        }

        // The trainer (the hand-written encoder and head passes) and one AdamW step.
        let optimizer = AdamWConfig {
            encoder: GroupConfig { weight_decay: 0.05 },
            decoder: GroupConfig { weight_decay: 0.01 },
            ..AdamWConfig::default()
        };
        let model = motivnet::MotivNet::new(&config, x.device(), 1).unwrap();
        model.load_weights(&fixture("weights.safetensors"), false).unwrap();
        let mut trainer = Trainer::new(model, TrainerConfig { optimizer, seed: 0 });
        let lr = Groups { encoder: 1e-3, decoder: 3e-3 };
        let out =
            trainer.train_step_replaying(&ModelInput::Tensor(&x), &labels, lr, true, &mut masks(&expected)).unwrap();
        assert_close("trainer loss", &Tensor::new(&[out.loss], x.device()).unwrap(), &expected["loss"], 1e-5, 0.0);
        let after = trainer.model.params.tensors();
        for p in trainer.model.params.trainable() {
            let want = values(&expected[&format!("step1.{}", p.name)]);
            let got = values(&after[&p.name]);
            let grad = values(&expected[&format!("grad.{}", p.name)]);
            for i in 0..want.len() {
                // As in steps_match: a zero true gradient steps on rounding noise, by up to lr.
                let bound = if grad[i].abs() < 1e-7 { 3.0 * 3e-3 } else { 2e-5 + 1e-4 * want[i].abs() };
                assert!(
                    (got[i] - want[i]).abs() <= bound,
                    "step1 {}[{i}]: got {}, expected {}",
                    p.name,
                    got[i],
                    want[i]
                );
            }
        }
        // Too few or too many masks are errors, not silent fallbacks.
        let mut short = motivnet::RecordedMasks::new(vec![expected["mask.0"].clone()]);
        let err = trainer.train_step_replaying(&ModelInput::Tensor(&x), &labels, lr, true, &mut short).unwrap_err();
        assert!(err.to_string().contains("dropout 1 has no recorded mask"), "{err}");
    });
}
