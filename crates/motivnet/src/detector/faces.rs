//! A photograph's faces, ready for the classifier: detected, framed as AffectNet frames its
//! faces ([`super::crop`]), and each crop resized to the model's input exactly as a whole image
//! would be. What `faces: 'detect'` runs, in a decoding worker or on the addon's threads.

use std::sync::OnceLock;

use super::crop::{
    copy_rect, face_crop, face_square, sample_turned, turned_bounds, PixelRect, PixelSquare, DEFAULT_MARGIN,
};
use super::{tiles, upright, BlazeFace, Detection};
use crate::error::{Error, Result};
use crate::kernels::resize::{Geometry, ImageBatch};

/// How faces are found and framed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FaceOptions {
    /// The crop's margin around the face box, a fraction of its larger side on each side.
    pub margin: f32,
    /// Faces scoring below this are dropped: at least 0.5, the detector's own threshold
    /// (MediaPipe's).
    pub min_score: f32,
    /// At most this many faces an image, the best-scoring first: a bound on the work one image
    /// can cause.
    pub max_faces: usize,
    /// Also look for faces too small for the whole photograph's pass, in overlapping tiles of it
    /// (`super::tiles`): one more detector pass a tile, up to 15 on a 16:9 frame. Off by
    /// default, where the faces are MediaPipe's own.
    pub small_faces: bool,
    /// Turn each crop so that the face's eyes are level (`super::upright`), instead of cutting
    /// it straight out of the photograph: two more detector passes a face, on its surroundings.
    /// Off by default.
    pub upright: bool,
}

impl Default for FaceOptions {
    fn default() -> Self {
        Self {
            margin: DEFAULT_MARGIN,
            min_score: super::decode::MIN_SCORE,
            max_faces: 16,
            small_faces: false,
            upright: false,
        }
    }
}

impl FaceOptions {
    pub fn validate(&self) -> Result<()> {
        if !(0.0..=4.0).contains(&self.margin) {
            return Err(Error::Input(format!("margin must be between 0 and 4, got {}", self.margin)));
        }
        // The detector keeps nothing under MediaPipe's 0.5 (`decode::MIN_SCORE`): a lower
        // threshold would promise faces it never sees.
        if !(super::decode::MIN_SCORE..=1.0).contains(&self.min_score) {
            return Err(Error::Input(format!(
                "minScore must be between {} and 1, got {}",
                super::decode::MIN_SCORE,
                self.min_score
            )));
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
    /// What the classifier sees of the photograph, cut to it: the crop's square, or with
    /// `upright` the rectangle its turned square covers.
    pub crop: PixelRect,
    /// The turn the crop undoes: the face's roll, radians counter-clockwise as the photograph is
    /// seen (`upright::eye_angle`). 0 without `upright`.
    pub angle: f32,
    /// With `upright`, the crop's whole square, which [`crop_levels`] turns by `angle` about its
    /// centre (black where it runs past the photograph); None without, where the crop is `crop`.
    pub square: Option<PixelSquare>,
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
    let detector = shared_detector()?;
    let detections = if options.small_faces {
        tiles::detect_tiled(detector, rgb, width, height)?
    } else {
        detector.detect(rgb, width, height)?
    };
    let mut faces = Vec::new();
    for d in detections.iter().filter(|d| d.score >= options.min_score) {
        if faces.len() == options.max_faces {
            break;
        }
        let face = if options.upright {
            let angle = upright::upright_angle(detector, rgb, width, height, d)?;
            let square = face_square(d, width, height, options.margin);
            turned_bounds(&square, angle, width, height).map(|crop| Face {
                angle,
                square: Some(square),
                ..in_pixels(d, width, height, crop)
            })
        } else {
            face_crop(d, width, height, options.margin).map(|crop| in_pixels(d, width, height, crop))
        };
        faces.extend(face);
    }
    Ok(faces)
}

/// `d` (fractions of the photograph) in its pixels, with `crop` as it is cut, unturned.
fn in_pixels(d: &Detection, width: usize, height: usize, crop: PixelRect) -> Face {
    let (w, h) = (width as f32, height as f32);
    let [l, t, r, b] = d.bbox;
    Face {
        bbox: [l * w, t * h, (r - l) * w, (b - t) * h],
        keypoints: d.keypoints.map(|[x, y]| [x * w, y * h]),
        score: d.score,
        crop,
        angle: 0.0,
        square: None,
    }
}

/// Each face's crop resized to `out_w` x `out_h` levels (HWC, back to back), as the model's
/// resize makes them from a whole image under `geometry`: a batch of these with geometry
/// `none` classifies as the crops themselves would. Any face's crop is its rectangle's pixels,
/// as they are; an upright face's is its whole square turned by its angle, sampled at no more
/// than the model's input side ([`sample_turned`]: a square far larger than the input, a
/// close-up with a wide margin, would otherwise be made whole only to be shrunk). One crop at a
/// time, so a photograph's faces never hold more than one full-size crop at once.
pub fn crop_levels(
    rgb: &[u8],
    width: usize,
    faces: &[Face],
    geometry: Geometry,
    out_h: usize,
    out_w: usize,
) -> Result<Vec<u8>> {
    let height = rgb.len() / (width * 3).max(1);
    if rgb.len() != width * height * 3 {
        return Err(Error::Input(format!("{} bytes are not rows of {width} RGB pixels", rgb.len())));
    }
    let mut out = Vec::with_capacity(faces.len() * out_h * out_w * 3);
    for face in faces {
        let (pixels, size) = match &face.square {
            Some(square) => {
                let side = square.side.min(out_h.max(out_w));
                (sample_turned(rgb, width, height, square, face.angle, side), (side, side))
            }
            None => (copy_rect(rgb, width, &face.crop), (face.crop.width, face.crop.height)),
        };
        let sizes = [size];
        out.extend(crate::ops::pixels::resize_levels(&ImageBatch::new(&pixels, &sizes)?, geometry, out_h, out_w)?);
    }
    Ok(out)
}
