//! Where the model looks, against the PyTorch reference: the ML-Decoder's last-layer
//! cross-attention weights, averaged over heads, per class on the encoder grid
//! (`scripts/reference/make_explain_fixture.py` writes explain_expected.safetensors).

mod common;

use candle_core::{Device, Tensor};
use common::*;
use motivnet::{ModelConfig, ModelInput, MotivNet};

/// Each class map: non-negative, summing to 1 over the grid, and the same for the classes
/// of one query group.
fn check_maps(name: &str, maps: &Tensor, factor: usize) {
    let (b, c, h, w) = maps.dims4().unwrap();
    let rows = maps.reshape((b * c, h * w)).unwrap().to_vec2::<f32>().unwrap();
    for (i, row) in rows.iter().enumerate() {
        let sum: f32 = row.iter().sum();
        assert!((sum - 1.0).abs() < 1e-5, "{name}: map {i} sums to {sum}");
        assert!(row.iter().all(|&v| v >= 0.0), "{name}: map {i} has a negative weight");
        let (image, class) = (i / c, i % c);
        assert_eq!(row, &rows[image * c + class / factor * factor], "{name}: class {class} leaves its group's map");
    }
    // The fixture's maps are not flat: a constant 1 / N map would fail the comparison.
    let flat = 1.0 / (h * w) as f32;
    assert!(rows.iter().flatten().any(|&v| (v - flat).abs() > 1e-2), "{name}: the maps are uniform");
}

#[test]
fn attention_maps_and_logits_match_reference() {
    on_both_paths(|| {
        let (x, _) = batch();
        let expected = read("explain_expected.safetensors");
        let model = reference_model();
        assert_eq!(model.config.head.duplicate_factor(), 1);
        let input = ModelInput::Tensor(&x);
        let (logits, maps) = model.predict_explained(&input).unwrap();
        let (gh, gw) = model.attention_grid();
        assert_eq!((gh, gw), (4, 3));
        assert_eq!(maps.dims(), &[4, 8, gh, gw]);
        assert_close("attention maps", &maps, &expected["attention"], 1e-5, 0.0);
        assert_close("logits", &logits, &expected["logits"], 1e-4, 0.0);
        assert_eq!(values(&logits), values(&model.predict(&input).unwrap()), "explaining changes the logits");
        check_maps("fixture model", &maps, 1);
        // Every class has a query of its own here: its map differs from the next class's.
        let rows = maps.reshape((4 * 8, gh * gw)).unwrap().to_vec2::<f32>().unwrap();
        assert!(rows.windows(2).all(|pair| pair[0] != pair[1]), "two classes share a map");
    });
}

/// 8 classes in 3 query groups (factor 3): classes 0-2, 3-5 and 6-7 share a query, and so a
/// map. The head's weights come with the fixture; the encoder is the fixture model's.
#[test]
fn grouped_classes_share_their_querys_map_as_in_reference() {
    on_both_paths(|| {
        let (x, _) = batch();
        let expected = read("explain_expected.safetensors");
        let config = ModelConfig::from_file(&fixture("config_explain_grouped.json")).unwrap();
        assert_eq!((config.head.num_groups(), config.head.duplicate_factor()), (3, 3));
        let model = MotivNet::new(&config, &Device::Cpu, 9).unwrap();
        let report = model.load_weights(&fixture("weights.safetensors"), true).unwrap();
        assert!(report.head_initialised);
        let mut set = 0;
        for (key, value) in expected.iter().filter(|(k, _)| k.starts_with("grouped.decoder.")) {
            let name = &key["grouped.".len()..];
            let param = model.params.get(name).unwrap_or_else(|| panic!("the model has no {name}"));
            assert_eq!(param.var.dims(), value.dims(), "{name}");
            model.params.set(name, value).unwrap();
            set += 1;
        }
        assert_eq!(set, model.params.iter().filter(|p| p.name.starts_with("decoder.")).count());

        let input = ModelInput::Tensor(&x);
        let (logits, maps) = model.predict_explained(&input).unwrap();
        assert_eq!(maps.dims(), &[4, 8, 4, 3]);
        assert_close("grouped attention maps", &maps, &expected["grouped.attention"], 1e-5, 0.0);
        assert_close("grouped logits", &logits, &expected["grouped.logits"], 1e-4, 0.0);
        assert_eq!(values(&logits), values(&model.predict(&input).unwrap()), "explaining changes the logits");
        check_maps("grouped model", &maps, 3);
        let rows = maps.reshape((4 * 8, 12)).unwrap().to_vec2::<f32>().unwrap();
        assert!(rows[0] != rows[3] && rows[3] != rows[6], "two groups share a map");
    });
}

#[test]
fn classify_explained_is_classify_with_the_maps() {
    let (x, _) = batch();
    let expected = read("explain_expected.safetensors");
    let model = reference_model();
    let input = ModelInput::Tensor(&x);
    let (prediction, maps) = model.classify_explained(&input).unwrap();
    let plain = model.classify(&input).unwrap();
    assert_eq!(prediction.logits, plain.logits);
    assert_eq!(prediction.probabilities, plain.probabilities);
    assert_eq!((maps.batch_size, maps.num_classes, maps.grid_height, maps.grid_width), (4, 8, 4, 3));
    let want = values(&expected["attention"]);
    assert_eq!(maps.values.len(), want.len());
    let diff = maps.values.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
    assert!(diff < 1e-5, "flat maps differ from the reference by {diff}");
}
