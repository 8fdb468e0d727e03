//! The face detector against the original: our BlazeFace's raw outputs on the converter's input
//! (scripts/detector/convert_blazeface.py) against those of TFLite's own interpreter running
//! MediaPipe's model file.

use std::path::Path;

use candle_core::{Device, Tensor};
use motivnet::detector::BlazeFace;

mod photos;

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

/// Photographs and what MediaPipe 0.10.14's own face detection found on them: one face (square,
/// and wide: letterboxed), no face, several faces, a greyscale photo, faces turned 30 degrees
/// and a quarter, and a small face in a large frame (which the short-range model, like
/// MediaPipe's, does not find in the whole frame: `faces.rs` tests the tiled search for it).
#[test]
fn on_photographs_finds_what_mediapipe_finds() {
    let detector = BlazeFace::embedded().unwrap();
    let photos = photos::all();
    assert!(photos.len() >= 8, "{} photographs", photos.len());
    for photo in photos {
        let name = &photo.name;
        let ours = detector.detect(&photo.rgb, photo.width, photo.height).unwrap();
        assert_eq!(ours.len(), photo.expected.len(), "{name}: {ours:?}");
        for (a, (bbox, keypoints, score)) in ours.iter().zip(&photo.expected) {
            assert!(photos::iou(&a.bbox, bbox) >= 0.95, "{name}: box {:?} vs {bbox:?}", a.bbox);
            assert!((a.score - score).abs() <= 1e-3, "{name}: score {} vs {score}", a.score);
            for (k, kp) in a.keypoints.iter().zip(keypoints) {
                for (x, y) in k.iter().zip(kp) {
                    assert!((x - y).abs() < 2e-3, "{name}: keypoints {:?} vs {keypoints:?}", a.keypoints);
                }
            }
        }
    }
}
