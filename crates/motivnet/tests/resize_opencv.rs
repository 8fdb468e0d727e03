//! The fused resize + normalize pass against OpenCV's `cv2.resize(INTER_LINEAR)`, the
//! reference's loader, on upscales, exact and odd downscales, identity and extreme aspects.

mod common;

use candle_core::Device;
use common::*;
use motivnet::ops::pixels::to_input_tensor;
use motivnet::{Geometry, ImageBatch, Normalization};

const H: usize = 64;
const W: usize = 48;

fn u8s(t: &candle_core::Tensor) -> Vec<u8> {
    t.flatten_all().unwrap().to_vec1::<u8>().unwrap()
}

/// Undo the normalization back to 0..255 levels, in HWC order, for comparison with cv2.
fn levels(chw: &[f32], norm: &Normalization) -> Vec<f32> {
    let mut out = vec![0f32; H * W * 3];
    for c in 0..3 {
        for i in 0..H * W {
            out[i * 3 + c] = chw[c * H * W + i] * norm.std[c] + norm.mean[c];
        }
    }
    out
}

#[test]
fn stretch_and_letterbox_match_opencv_within_one_level() {
    let fixtures = read("resize.safetensors");
    let norm = Normalization::default();
    let count = fixtures.keys().filter(|k| k.starts_with("src")).count();
    assert!(count >= 6);
    // The fused CPU pass, and the tensor-op path a GPU runs.
    on_both_paths(|| {
        for i in 0..count {
            let src = &fixtures[&format!("src{i}")];
            let (h, w, _) = src.dims3().unwrap();
            let data = u8s(src);
            let sizes = [(w, h)];
            let batch = ImageBatch::new(&data, &sizes).unwrap();
            let input = |geometry| values(&to_input_tensor(&batch, geometry, H, W, &norm, &Device::Cpu).unwrap());
            for (geometry, key) in [(Geometry::Stretch, "stretch"), (Geometry::Letterbox, "letterbox")] {
                let ours = levels(&input(geometry), &norm);
                let theirs = u8s(&fixtures[&format!("{key}{i}")]);
                let worst = ours.iter().zip(&theirs).map(|(a, &b)| (a - b as f32).abs()).fold(0f32, f32::max);
                assert!(worst <= 1.0 + 1e-3, "image {i} ({w} x {h}) {key}: off by {worst} levels");
            }
            // Normalization as the reference's preprocess(): (resized - mean) / std, CHW.
            let ours = input(Geometry::Stretch);
            let theirs = values(&fixtures[&format!("normalized{i}")]);
            let worst = ours.iter().zip(&theirs).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
            assert!(worst <= 1.0 / 57.0 + 1e-4, "image {i} normalized: off by {worst}");
        }
    });
}

#[test]
fn a_mixed_size_batch_lands_in_one_tensor_and_none_checks_sizes() {
    let fixtures = read("resize.safetensors");
    let (a, b) = (&fixtures["src0"], &fixtures["src3"]);
    let mut data = u8s(a);
    data.extend(u8s(b));
    let sizes = [(a.dim(1).unwrap(), a.dim(0).unwrap()), (b.dim(1).unwrap(), b.dim(0).unwrap())];
    let batch = ImageBatch::new(&data, &sizes).unwrap();
    let norm = Normalization::default();
    let t = to_input_tensor(&batch, Geometry::Stretch, H, W, &norm, &Device::Cpu).unwrap();
    assert_eq!(t.dims(), &[2, 3, H, W]);
    let err = to_input_tensor(&batch, Geometry::None, H, W, &norm, &Device::Cpu).unwrap_err().to_string();
    assert!(err.contains("image 0 is 30 x 40") && err.contains("exactly 48 x 64"), "{err}");
    // src3 is already 48 x 64: 'none' takes it as it is.
    let one = ImageBatch::new(&data[a.elem_count()..], &sizes[1..]).unwrap();
    let none = to_input_tensor(&one, Geometry::None, H, W, &norm, &Device::Cpu).unwrap();
    let stretch = to_input_tensor(&one, Geometry::Stretch, H, W, &norm, &Device::Cpu).unwrap();
    assert_eq!(max_abs_diff(&none, &stretch), 0.0);
}

#[test]
fn pixel_input_reaches_the_model() {
    let fixtures = read("resize.safetensors");
    let src = &fixtures["src6"];
    let data = u8s(src);
    let sizes = [(src.dim(1).unwrap(), src.dim(0).unwrap())];
    let batch = ImageBatch::new(&data, &sizes).unwrap();
    let model = reference_model();
    let via_pixels = model.predict(&motivnet::ModelInput::Pixels { batch, geometry: Geometry::Stretch }).unwrap();
    let x = fixtures["normalized6"].unsqueeze(0).unwrap();
    let via_reference = model.predict(&motivnet::ModelInput::Tensor(&x)).unwrap();
    assert_close("logits from pixels vs the reference's preprocessing", &via_pixels, &via_reference, 2e-2, 0.0);
}
