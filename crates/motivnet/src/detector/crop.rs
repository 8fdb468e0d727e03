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
//!
//! A crop turned upright (`FaceOptions::upright`, `super::upright`) is the same square, whole,
//! turned about its centre by the face's roll ([`rotated_square`]): past the photograph's edges
//! it is black, since a turned square cut at the edges would no longer be a rectangle.

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

/// The crop's centre and side in the image's pixels: the box's centre, its larger side widened
/// by `margin` of it on each side.
fn framing(face: &Detection, width: usize, height: usize, margin: f32) -> ([f64; 2], f64) {
    let [l, t, r, b] = face.bbox;
    let (l, r) = (l as f64 * width as f64, r as f64 * width as f64);
    let (t, b) = (t as f64 * height as f64, b as f64 * height as f64);
    ([(l + r) / 2.0, (t + b) / 2.0], (r - l).max(b - t) * (1.0 + 2.0 * margin.max(0.0) as f64))
}

/// The crop of `face` (coordinates in fractions of a `width` x `height` image) with `margin`,
/// cut to the image; None when nothing of it is inside.
pub fn face_crop(face: &Detection, width: usize, height: usize, margin: f32) -> Option<PixelRect> {
    let ([cx, cy], side) = framing(face, width, height, margin);
    let clamp = |v: f64, n: usize| v.round().clamp(0.0, n as f64) as usize;
    let (x0, x1) = (clamp(cx - side / 2.0, width), clamp(cx + side / 2.0, width));
    let (y0, y1) = (clamp(cy - side / 2.0, height), clamp(cy + side / 2.0, height));
    (x1 > x0 && y1 > y0).then_some(PixelRect { x: x0, y: y0, width: x1 - x0, height: y1 - y0 })
}

/// A square of whole pixels that may run past the image's edges: the crop before it is cut, which
/// an upright crop turns about its centre.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PixelSquare {
    pub x: i64,
    pub y: i64,
    pub side: usize,
}

impl PixelSquare {
    pub fn centre(&self) -> [f64; 2] {
        let half = self.side as f64 / 2.0;
        [self.x as f64 + half, self.y as f64 + half]
    }
}

/// The square of `face`'s crop with `margin` (as [`face_crop`] frames it), whole, not cut to the
/// `width` x `height` image: the side rounded to whole pixels, then the corner, so that the
/// square's pixels are the image's own.
pub fn face_square(face: &Detection, width: usize, height: usize, margin: f32) -> PixelSquare {
    let ([cx, cy], side) = framing(face, width, height, margin);
    let side = side.round().max(1.0);
    PixelSquare { x: (cx - side / 2.0).round() as i64, y: (cy - side / 2.0).round() as i64, side: side as usize }
}

/// The rectangle that `square` covers once turned by `angle` about its centre, cut to the
/// `width` x `height` image; None when nothing of it is inside.
pub fn turned_bounds(square: &PixelSquare, angle: f32, width: usize, height: usize) -> Option<PixelRect> {
    let [cx, cy] = square.centre();
    let (sin, cos) = (angle as f64).sin_cos();
    let half = square.side as f64 / 2.0 * (sin.abs() + cos.abs());
    let clamp = |v: f64, n: usize| v.round().clamp(0.0, n as f64) as usize;
    let (x0, x1) = (clamp(cx - half, width), clamp(cx + half, width));
    let (y0, y1) = (clamp(cy - half, height), clamp(cy + half, height));
    (x1 > x0 && y1 > y0).then_some(PixelRect { x: x0, y: y0, width: x1 - x0, height: y1 - y0 })
}

/// `square` of an RGB image (`width` x `height`, HWC) turned by `angle` (radians, counter-clockwise
/// as the image is seen) about its centre, as an image of its own (`side` x `side`, HWC): what
/// shows a face turned by `angle` upright. Each pixel is sampled at its turned position, bilinear
/// between pixel centres, as OpenCV's `warpAffine` with a constant border does: the image's
/// neighbours outside it count as black, and so does everything past its edges. At angle 0 the
/// positions are the pixels themselves: inside the image, the square's own pixels.
pub fn rotated_square(rgb: &[u8], width: usize, height: usize, square: &PixelSquare, angle: f32) -> Vec<u8> {
    sample_turned(rgb, width, height, square, angle, square.side)
}

/// [`rotated_square`] sampled at `size` x `size` pixels instead of the square's own: each output
/// pixel samples the image once, bilinear, at its centre's turned position (no averaging when
/// it shrinks, as the detector's own input is made).
pub fn sample_turned(
    rgb: &[u8],
    width: usize,
    height: usize,
    square: &PixelSquare,
    angle: f32,
    size: usize,
) -> Vec<u8> {
    assert_eq!(rgb.len(), width * height * 3, "rgb: width x height x 3 bytes");
    let [cx, cy] = square.centre();
    let (sin, cos) = (angle as f64).sin_cos();
    let (scale, half) = (square.side as f64 / size as f64, square.side as f64 / 2.0);
    let pixel = |x: i64, y: i64| -> [f64; 3] {
        if x < 0 || y < 0 || x >= width as i64 || y >= height as i64 {
            return [0.0; 3];
        }
        let at = (y as usize * width + x as usize) * 3;
        [rgb[at] as f64, rgb[at + 1] as f64, rgb[at + 2] as f64]
    };
    let mut out = Vec::with_capacity(size * size * 3);
    for j in 0..size {
        let oy = (j as f64 + 0.5) * scale - half;
        for i in 0..size {
            let ox = (i as f64 + 0.5) * scale - half;
            // The upright offset (ox, oy) from the centre, turned counter-clockwise as seen (y
            // grows down), then from pixel-centre coordinates to pixel indices.
            let sx = cx + ox * cos + oy * sin - 0.5;
            let sy = cy - ox * sin + oy * cos - 0.5;
            let (x0, y0) = (sx.floor(), sy.floor());
            let (fx, fy) = (sx - x0, sy - y0);
            let (x0, y0) = (x0 as i64, y0 as i64);
            let (a, b, c, d) = (pixel(x0, y0), pixel(x0 + 1, y0), pixel(x0, y0 + 1), pixel(x0 + 1, y0 + 1));
            for k in 0..3 {
                let top = a[k] + (b[k] - a[k]) * fx;
                let bottom = c[k] + (d[k] - c[k]) * fx;
                out.push((top + (bottom - top) * fy).round().clamp(0.0, 255.0) as u8);
            }
        }
    }
    out
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
    fn the_whole_square_is_the_crop_before_it_is_cut() {
        let square = face_square(&face([0.4, 0.4, 0.6, 0.6]), 200, 100, 0.25);
        assert_eq!(square, PixelSquare { x: 70, y: 20, side: 60 });
        assert_eq!(square.centre(), [100.0, 50.0]);
        let square = face_square(&face([0.0, 0.0, 0.2, 0.2]), 100, 100, 0.25);
        assert_eq!(square, PixelSquare { x: -5, y: -5, side: 30 });
        assert_eq!(turned_bounds(&square, 0.0, 100, 100), Some(PixelRect { x: 0, y: 0, width: 25, height: 25 }));
        // Turned an eighth, the square's corners reach sqrt(2) times as far from its centre.
        let turned = turned_bounds(&PixelSquare { x: 40, y: 40, side: 20 }, std::f32::consts::FRAC_PI_4, 100, 100);
        assert_eq!(turned, Some(PixelRect { x: 36, y: 36, width: 28, height: 28 }));
    }

    /// An image whose levels all differ.
    fn numbered(width: usize, height: usize) -> Vec<u8> {
        (0..width * height * 3).map(|i| (i * 7 % 251) as u8).collect()
    }

    #[test]
    fn unturned_a_square_is_a_copy_of_its_pixels_and_black_outside() {
        let (w, h) = (7, 5);
        let rgb = numbered(w, h);
        let inside = PixelSquare { x: 2, y: 1, side: 3 };
        assert_eq!(
            rotated_square(&rgb, w, h, &inside, 0.0),
            copy_rect(&rgb, w, &PixelRect { x: 2, y: 1, width: 3, height: 3 })
        );
        let past = PixelSquare { x: 5, y: -1, side: 3 };
        let out = rotated_square(&rgb, w, h, &past, 0.0);
        for (j, row) in out.chunks_exact(9).enumerate() {
            for (i, p) in row.chunks_exact(3).enumerate() {
                let (x, y) = (5 + i as i64, j as i64 - 1);
                let expected =
                    if x < w as i64 && y >= 0 { &rgb[(y as usize * w + x as usize) * 3..][..3] } else { &[0u8; 3][..] };
                assert_eq!(p, expected, "({i}, {j})");
            }
        }
    }

    #[test]
    fn a_quarter_turn_reads_columns_as_rows() {
        // Turning by a quarter counter-clockwise shows what was turned that way upright: the
        // output's row j is the image's column j, read from the bottom up.
        let n = 4;
        let rgb = numbered(n, n);
        let out = rotated_square(&rgb, n, n, &PixelSquare { x: 0, y: 0, side: n }, std::f32::consts::FRAC_PI_2);
        for j in 0..n {
            for i in 0..n {
                let (x, y) = (j, n - 1 - i);
                assert_eq!(out[(j * n + i) * 3..][..3], rgb[(y * n + x) * 3..][..3], "({i}, {j})");
            }
        }
    }

    #[test]
    fn sampled_at_half_size_each_pixel_is_between_four() {
        let (w, h) = (6, 6);
        let rgb = numbered(w, h);
        let square = PixelSquare { x: 2, y: 0, side: 4 };
        let out = sample_turned(&rgb, w, h, &square, 0.0, 2);
        for j in 0..2 {
            for i in 0..2 {
                for c in 0..3 {
                    let at = |x: usize, y: usize| rgb[(y * w + x) * 3 + c] as f64;
                    let (x, y) = (2 + 2 * i, 2 * j);
                    let mean = (at(x, y) + at(x + 1, y) + at(x, y + 1) + at(x + 1, y + 1)) / 4.0;
                    assert_eq!(out[(j * 2 + i) * 3 + c], mean.round() as u8, "({i}, {j}) channel {c}");
                }
            }
        }
    }

    #[test]
    fn copy_rect_takes_the_rows_of_the_rectangle() {
        let rgb: Vec<u8> = (0..4 * 3 * 3).map(|i| i as u8).collect(); // 4 wide, 3 high
        let out = copy_rect(&rgb, 4, &PixelRect { x: 1, y: 1, width: 2, height: 2 });
        assert_eq!(out, vec![15, 16, 17, 18, 19, 20, 27, 28, 29, 30, 31, 32]);
    }
}
