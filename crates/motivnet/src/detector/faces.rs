//! A photograph's faces, ready for the classifier: detected, framed as AffectNet frames its
//! faces ([`super::crop`]), and each crop resized to the model's input exactly as a whole image
//! would be. What `faces: 'detect'` runs, in a decoding worker or on the addon's threads.

use std::sync::OnceLock;

use super::crop::{copy_rect, face_crop, PixelRect, DEFAULT_MARGIN};
use super::{BlazeFace, Detection};
use crate::error::{Error, Result};
use crate::kernels::resize::{Geometry, ImageBatch};

/// How faces are found and framed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FaceOptions {
    /// The crop's margin around the face box, a fraction of its larger side on each side.
    pub margin: f32,
    /// Faces scoring below this are dropped (the detector itself keeps from 0.5, MediaPipe's
    /// threshold).
    pub min_score: f32,
    /// At most this many faces an image, the best-scoring first: a bound on the work one image
    /// can cause.
    pub max_faces: usize,
}

impl Default for FaceOptions {
    fn default() -> Self {
        Self { margin: DEFAULT_MARGIN, min_score: super::decode::MIN_SCORE, max_faces: 16 }
    }
}

impl FaceOptions {
    pub fn validate(&self) -> Result<()> {
        if !(0.0..=4.0).contains(&self.margin) {
            return Err(Error::Input(format!("margin must be between 0 and 4, got {}", self.margin)));
        }
        if !(0.0..=1.0).contains(&self.min_score) {
            return Err(Error::Input(format!("minScore must be between 0 and 1, got {}", self.min_score)));
        }
        if self.max_faces == 0 {
            return Err(Error::Input("maxFaces must be at least 1".into()));
        }
        Ok(())
    }
}

/// One face of a photograph, in its pixels.
#[derive(Debug, Clone, PartialEq)]
pub struct Face {
    /// The detector's box: x, y, width, height.
    pub bbox: [f32; 4],
    /// Right eye, left eye, nose tip, mouth, right ear tragion, left ear tragion: x, y.
    pub keypoints: [[f32; 2]; 6],
    pub score: f32,
    /// What the classifier sees of the photograph.
    pub crop: PixelRect,
}

/// The detector the core ships, read once per process.
pub fn shared_detector() -> Result<&'static BlazeFace> {
    static DETECTOR: OnceLock<std::result::Result<BlazeFace, String>> = OnceLock::new();
    DETECTOR
        .get_or_init(|| BlazeFace::embedded().map_err(|e| e.to_string()))
        .as_ref()
        .map_err(|e| Error::Weights(e.clone()))
}

/// The faces of an RGB photograph (`width` x `height`, HWC), best first.
pub fn find_faces(rgb: &[u8], width: usize, height: usize, options: &FaceOptions) -> Result<Vec<Face>> {
    options.validate()?;
    let detections = shared_detector()?.detect(rgb, width, height)?;
    Ok(detections
        .iter()
        .filter(|d| d.score >= options.min_score)
        .filter_map(|d| in_pixels(d, width, height, options.margin))
        .take(options.max_faces)
        .collect())
}

fn in_pixels(d: &Detection, width: usize, height: usize, margin: f32) -> Option<Face> {
    let crop = face_crop(d, width, height, margin)?;
    let (w, h) = (width as f32, height as f32);
    let [l, t, r, b] = d.bbox;
    Some(Face {
        bbox: [l * w, t * h, (r - l) * w, (b - t) * h],
        keypoints: d.keypoints.map(|[x, y]| [x * w, y * h]),
        score: d.score,
        crop,
    })
}

/// Each face's crop resized to `out_w` x `out_h` levels (HWC, back to back), as the model's
/// resize makes them from a whole image under `geometry`: a batch of these with geometry
/// `none` classifies as the crops themselves would.
pub fn crop_levels(
    rgb: &[u8],
    width: usize,
    faces: &[Face],
    geometry: Geometry,
    out_h: usize,
    out_w: usize,
) -> Result<Vec<u8>> {
    if faces.is_empty() {
        return Ok(Vec::new());
    }
    let mut pixels = Vec::new();
    let mut sizes = Vec::with_capacity(faces.len());
    for face in faces {
        pixels.extend(copy_rect(rgb, width, &face.crop));
        sizes.push((face.crop.width, face.crop.height));
    }
    crate::ops::pixels::resize_levels(&ImageBatch::new(&pixels, &sizes)?, geometry, out_h, out_w)
}
