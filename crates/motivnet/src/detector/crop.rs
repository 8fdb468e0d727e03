//! From a detected face to the picture the classifier sees: a square around the face framed
//! as AffectNet's images frame theirs.
//!
//! AffectNet's images are the owners' crops of each photograph around its face, and MotivNet
//! learned from those crops whole. They show the whole head: the face about two thirds of the
//! width, the hair and the chin inside. BlazeFace's box is tighter (brows to just under the
//! mouth, cheek to cheek), so the crop is that box's larger side widened by `margin` of it on
//! every side, about the box's centre, as a square. The default margin (0.25) was chosen by
//! comparing crops of the same faces at 0, 0.25 and 0.5 with that framing (docs/DETECTOR.md).
//!
//! Where the square runs past the photograph, it is cut at the edges (AffectNet's crops of
//! faces near an edge are cut the same way) and the geometry the caller chose (letterbox by
//! default) fits the cut crop to the model's input, as it would any image.

use super::decode::Detection;

/// The crop's default margin, as a fraction of the face box's larger side on each side.
pub const DEFAULT_MARGIN: f32 = 0.25;

/// A rectangle of whole pixels inside an image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PixelRect {
    pub x: usize,
    pub y: usize,
    pub width: usize,
    pub height: usize,
}

/// The crop of `face` (coordinates in fractions of a `width` x `height` image) with `margin`,
/// cut to the image; None when nothing of it is inside.
pub fn face_crop(face: &Detection, width: usize, height: usize, margin: f32) -> Option<PixelRect> {
    let [l, t, r, b] = face.bbox;
    let (l, r) = (l as f64 * width as f64, r as f64 * width as f64);
    let (t, b) = (t as f64 * height as f64, b as f64 * height as f64);
    let side = (r - l).max(b - t) * (1.0 + 2.0 * margin.max(0.0) as f64);
    let (cx, cy) = ((l + r) / 2.0, (t + b) / 2.0);
    let clamp = |v: f64, n: usize| v.round().clamp(0.0, n as f64) as usize;
    let (x0, x1) = (clamp(cx - side / 2.0, width), clamp(cx + side / 2.0, width));
    let (y0, y1) = (clamp(cy - side / 2.0, height), clamp(cy + side / 2.0, height));
    (x1 > x0 && y1 > y0).then_some(PixelRect { x: x0, y: y0, width: x1 - x0, height: y1 - y0 })
}

/// The pixels of `rect` out of an RGB image `width` pixels wide (HWC), as an image of its own.
pub fn copy_rect(rgb: &[u8], width: usize, rect: &PixelRect) -> Vec<u8> {
    let mut out = Vec::with_capacity(rect.width * rect.height * 3);
    for y in rect.y..rect.y + rect.height {
        out.extend_from_slice(&rgb[(y * width + rect.x) * 3..(y * width + rect.x + rect.width) * 3]);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn face(bbox: [f32; 4]) -> Detection {
        Detection { bbox, keypoints: [[0.0; 2]; 6], score: 0.9 }
    }

    #[test]
    fn the_crop_is_a_square_about_the_box_widened_by_the_margin() {
        // A 40 x 20 px box centred at (100, 50) in a 200 x 100 image: side 40 * 1.5 = 60.
        let crop = face_crop(&face([0.4, 0.4, 0.6, 0.6]), 200, 100, 0.25).unwrap();
        assert_eq!(crop, PixelRect { x: 70, y: 20, width: 60, height: 60 });
    }

    #[test]
    fn the_crop_is_cut_at_the_image_edges_and_empty_outside() {
        let crop = face_crop(&face([0.0, 0.0, 0.2, 0.2]), 100, 100, 0.25).unwrap();
        assert_eq!(crop, PixelRect { x: 0, y: 0, width: 25, height: 25 });
        assert_eq!(face_crop(&face([1.5, 1.5, 1.6, 1.6]), 100, 100, 0.25), None);
    }

    #[test]
    fn copy_rect_takes_the_rows_of_the_rectangle() {
        let rgb: Vec<u8> = (0..4 * 3 * 3).map(|i| i as u8).collect(); // 4 wide, 3 high
        let out = copy_rect(&rgb, 4, &PixelRect { x: 1, y: 1, width: 2, height: 2 });
        assert_eq!(out, vec![15, 16, 17, 18, 19, 20, 27, 28, 29, 30, 31, 32]);
    }
}
