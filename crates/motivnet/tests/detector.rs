//! The face detector against the original: our BlazeFace's raw outputs on the converter's input
//! (scripts/detector/convert_blazeface.py) against those of TFLite's own interpreter running
//! MediaPipe's model file.

use std::path::Path;

use candle_core::{Device, Tensor};
use motivnet::detector::BlazeFace;

#[test]
fn raw_outputs_match_tflite() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/blazeface_parity.safetensors");
    let fixture = candle_core::safetensors::load(path, &Device::Cpu).unwrap();
    let detector = BlazeFace::embedded().unwrap();
    assert_eq!(detector.input, [128, 128]);
    let (regressors, scores) = detector.forward_raw(&fixture["input"]).unwrap();
    for (name, ours, theirs) in
        [("regressors", &regressors, &fixture["regressors"]), ("scores", &scores, &fixture["classificators"])]
    {
        assert_eq!(ours.dims(), theirs.dims(), "{name}");
        let diff =
            (ours - theirs).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap();
        let scale = theirs.abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap();
        assert!(diff <= 1e-4 * scale.max(1.0), "{name}: largest difference {diff} (largest value {scale})");
    }
}

#[test]
fn a_batch_gives_each_image_its_own_outputs() {
    let detector = BlazeFace::embedded().unwrap();
    let a = Tensor::rand(-1f32, 1f32, (1, 128, 128, 3), &Device::Cpu).unwrap();
    let b = Tensor::rand(-1f32, 1f32, (1, 128, 128, 3), &Device::Cpu).unwrap();
    let (both, _) = detector.forward_raw(&Tensor::cat(&[&a, &b], 0).unwrap()).unwrap();
    let (alone, _) = detector.forward_raw(&b).unwrap();
    let diff =
        (both.get(1).unwrap() - alone.get(0).unwrap()).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap();
    assert!(diff.to_scalar::<f32>().unwrap() < 1e-4);
}

#[test]
fn detections_from_our_outputs_are_those_from_tflites() {
    use motivnet::detector::decode;
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/blazeface_parity.safetensors");
    let fixture = candle_core::safetensors::load(path, &Device::Cpu).unwrap();
    let (regressors, scores) = BlazeFace::embedded().unwrap().forward_raw(&fixture["input"]).unwrap();
    let flat = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    // A threshold far below the graph's, so the fixture's blob gives many candidates to compare.
    let detect = |r: &Tensor, l: &Tensor| {
        decode::weighted_nms(decode::decode(&flat(r), &flat(l), &decode::anchors(), 0.001), decode::MIN_SUPPRESSION_IOU)
    };
    let (ours, theirs) = (detect(&regressors, &scores), detect(&fixture["regressors"], &fixture["classificators"]));
    assert!(ours.len() >= 5, "{} candidates", ours.len());
    assert_eq!(ours.len(), theirs.len());
    for (a, b) in ours.iter().zip(&theirs) {
        assert!((a.score - b.score).abs() < 1e-4, "{} vs {}", a.score, b.score);
        for (x, y) in
            a.bbox.iter().zip(b.bbox).chain(a.keypoints.iter().flatten().zip(b.keypoints.iter().flatten().copied()))
        {
            assert!((x - y).abs() < 1e-4, "{a:?} vs {b:?}");
        }
    }
}

/// Photographs and what MediaPipe 0.10.14's own face detection found on them
/// (scripts/detector/make_photo_fixtures.py): a square one, a wide one (letterboxed), one
/// without a face.
#[test]
fn on_photographs_finds_what_mediapipe_finds() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let photos = candle_core::safetensors::load(dir.join("face_photos.safetensors"), &Device::Cpu).unwrap();
    let expected: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("face_photos.json")).unwrap()).unwrap();
    let detector = BlazeFace::embedded().unwrap();
    let iou = |a: &[f32], b: &[f32]| {
        let inter = (a[2].min(b[2]) - a[0].max(b[0])).max(0.0) * (a[3].min(b[3]) - a[1].max(b[1])).max(0.0);
        inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)
    };
    for (name, photo) in expected.as_object().unwrap() {
        let (w, h) = (photo["width"].as_u64().unwrap() as usize, photo["height"].as_u64().unwrap() as usize);
        let rgb = photos[name.as_str()].flatten_all().unwrap().to_vec1::<u8>().unwrap();
        let ours = detector.detect(&rgb, w, h).unwrap();
        let theirs = photo["faces"].as_array().unwrap();
        assert_eq!(ours.len(), theirs.len(), "{name}: {ours:?}");
        for (a, b) in ours.iter().zip(theirs) {
            let bbox: Vec<f32> = b["bbox"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap() as f32).collect();
            let score = b["score"].as_f64().unwrap() as f32;
            assert!(iou(&a.bbox, &bbox) >= 0.95, "{name}: box {:?} vs {bbox:?}", a.bbox);
            assert!((a.score - score).abs() <= 1e-3, "{name}: score {} vs {score}", a.score);
            for (k, kp) in a.keypoints.iter().zip(b["keypoints"].as_array().unwrap()) {
                for (x, y) in k.iter().zip(kp.as_array().unwrap()) {
                    assert!((x - y.as_f64().unwrap() as f32).abs() < 2e-3, "{name}: keypoints {:?}", a.keypoints);
                }
            }
        }
    }
}
