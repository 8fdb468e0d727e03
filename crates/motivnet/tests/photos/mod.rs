//! The photographs of the detector's tests, with what MediaPipe 0.10.14's own face detection
//! found on each (scripts/detector/make_photo_fixtures.py). Some are stored as pixels; larger
//! ones are composed here from stored parts, exactly as the script composed them (integer
//! copies, nearest-neighbour enlargement, quarter turns), so the fixture stays small.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::Path;

use candle_core::{Device, Tensor};
use serde_json::Value;

pub struct Photo {
    pub name: String,
    pub rgb: Vec<u8>,
    pub width: usize,
    pub height: usize,
    /// MediaPipe's faces: (box left, top, right, bottom; keypoints; score), in fractions.
    pub expected: Vec<([f32; 4], [[f32; 2]; 6], f32)>,
}

fn floats(v: &Value) -> Vec<f32> {
    v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect()
}

fn usizes(v: &Value) -> Vec<usize> {
    v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as usize).collect()
}

/// (pixels, width, height) of a stored part.
fn part(parts: &HashMap<String, Tensor>, name: &str) -> (Vec<u8>, usize, usize) {
    let t = &parts[name];
    let (h, w, _) = t.dims3().unwrap();
    (t.flatten_all().unwrap().to_vec1::<u8>().unwrap(), w, h)
}

/// The script's `compose`: fill, then each part's rectangle, enlarged, turned, pasted.
fn compose(layout: &Value, parts: &HashMap<String, Tensor>) -> Vec<u8> {
    let (width, height) = (layout["width"].as_u64().unwrap() as usize, layout["height"].as_u64().unwrap() as usize);
    let fill = usizes(&layout["fill"]);
    let mut canvas: Vec<u8> = (0..width * height * 3).map(|i| fill[i % 3] as u8).collect();
    for p in layout["parts"].as_array().unwrap() {
        let (src, sw, _) = part(parts, p["source"].as_str().unwrap());
        let rect = usizes(&p["rect"]);
        let scale = p["scale"].as_u64().unwrap() as usize;
        let turns = p.get("quarter_turns").and_then(Value::as_u64).unwrap_or(0) % 4;
        let at = usizes(&p["at"]);
        let (pw, ph) = (rect[2] * scale, rect[3] * scale);
        // Counter-clockwise quarter turns, as numpy's rot90: output (x, y) reads input
        // (pw - 1 - y, x) for one turn.
        let (ow, oh) = if turns % 2 == 1 { (ph, pw) } else { (pw, ph) };
        for y in 0..oh {
            for x in 0..ow {
                let (ix, iy) = match turns {
                    0 => (x, y),
                    1 => (pw - 1 - y, x),
                    2 => (pw - 1 - x, ph - 1 - y),
                    _ => (y, ph - 1 - x),
                };
                let (sx, sy) = (rect[0] + ix / scale, rect[1] + iy / scale);
                let (cx, cy) = (at[0] + x, at[1] + y);
                if cx < width && cy < height {
                    let from = (sy * sw + sx) * 3;
                    canvas[(cy * width + cx) * 3..][..3].copy_from_slice(&src[from..from + 3]);
                }
            }
        }
    }
    canvas
}

pub fn all() -> Vec<Photo> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let parts = candle_core::safetensors::load(dir.join("face_photos.safetensors"), &Device::Cpu).unwrap();
    let expected: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("face_photos.json")).unwrap()).unwrap();
    expected
        .as_object()
        .unwrap()
        .iter()
        .map(|(name, e)| {
            let (width, height) = (e["width"].as_u64().unwrap() as usize, e["height"].as_u64().unwrap() as usize);
            let rgb = match e.get("compose") {
                Some(layout) => compose(layout, &parts),
                None => part(&parts, name).0,
            };
            assert_eq!(rgb.len(), width * height * 3, "{name}");
            let faces = e["faces"]
                .as_array()
                .unwrap()
                .iter()
                .map(|f| {
                    let b = floats(&f["bbox"]);
                    let k: Vec<Vec<f32>> = f["keypoints"].as_array().unwrap().iter().map(floats).collect();
                    (
                        [b[0], b[1], b[2], b[3]],
                        std::array::from_fn(|i| [k[i][0], k[i][1]]),
                        f["score"].as_f64().unwrap() as f32,
                    )
                })
                .collect();
            Photo { name: name.clone(), rgb, width, height, expected: faces }
        })
        .collect()
}

pub fn get(name: &str) -> Photo {
    all().into_iter().find(|p| p.name == name).unwrap_or_else(|| panic!("no photo {name}"))
}

/// Intersection over union of two (left, top, right, bottom) boxes.
pub fn iou(a: &[f32; 4], b: &[f32; 4]) -> f32 {
    let inter = (a[2].min(b[2]) - a[0].max(b[0])).max(0.0) * (a[3].min(b[3]) - a[1].max(b[1])).max(0.0);
    inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)
}
