//! A photograph to the detector's input, as MediaPipe's face detection makes it: the smallest
//! square around the image's centre that holds it (letterboxed), warped onto the 128 x 128
//! input the way OpenCV's `warpPerspective` samples (bilinear with weights in 32nds, fixed-point
//! rounding, zeros outside), then scaled to [-1, 1]. Boxes found in that square map back to the
//! photograph with [`Square::to_image`].

/// The square of the photograph the detector sees, in image pixels.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Square {
    pub left: f64,
    pub top: f64,
    pub side: f64,
}

impl Square {
    /// MediaPipe's letterbox: the image's own rectangle, widened to a square about its centre.
    pub fn around(width: usize, height: usize) -> Self {
        let side = width.max(height) as f64;
        Self { left: (width as f64 - side) / 2.0, top: (height as f64 - side) / 2.0, side }
    }

    /// A point in fractions of the square -> fractions of the image.
    pub fn to_image(&self, [x, y]: [f32; 2], width: usize, height: usize) -> [f32; 2] {
        [
            ((self.left + x as f64 * self.side) / width as f64) as f32,
            ((self.top + y as f64 * self.side) / height as f64) as f32,
        ]
    }
}

/// OpenCV's warps resolve source positions to 1/32 of a pixel.
const TAB: i64 = 32;

/// `rgb` (width x height, HWC) -> the detector's input (size x size x 3, HWC) in [-1, 1].
pub fn warp_to_input(rgb: &[u8], width: usize, height: usize, square: &Square, size: usize) -> Vec<f32> {
    assert_eq!(rgb.len(), width * height * 3, "rgb: width x height x 3 bytes");
    let scale = square.side / size as f64;
    // Where each output column and row samples, in 32nds of a source pixel (rounded half to
    // even, as OpenCV's saturate_cast of a double).
    let positions = |n: usize, origin: f64| -> Vec<i64> {
        (0..n).map(|d| ((origin + d as f64 * scale) * TAB as f64).round_ties_even() as i64).collect()
    };
    let (xs, ys) = (positions(size, square.left), positions(size, square.top));
    let pixel = |x: i64, y: i64, c: usize| -> i64 {
        if x < 0 || y < 0 || x >= width as i64 || y >= height as i64 {
            0
        } else {
            rgb[(y as usize * width + x as usize) * 3 + c] as i64
        }
    };
    let mut out = Vec::with_capacity(size * size * 3);
    for &py in &ys {
        let (y0, fy) = (py.div_euclid(TAB), py.rem_euclid(TAB));
        for &px in &xs {
            let (x0, fx) = (px.div_euclid(TAB), px.rem_euclid(TAB));
            // Bilinear weights in 32768ths: exact products of 32nds, summing to 32768.
            let w = [(TAB - fx) * (TAB - fy) * 32, fx * (TAB - fy) * 32, (TAB - fx) * fy * 32, fx * fy * 32];
            for c in 0..3 {
                let sum = pixel(x0, y0, c) * w[0]
                    + pixel(x0 + 1, y0, c) * w[1]
                    + pixel(x0, y0 + 1, c) * w[2]
                    + pixel(x0 + 1, y0 + 1, c) * w[3];
                let level = ((sum + (1 << 14)) >> 15).clamp(0, 255);
                out.push(level as f32 * (2.0 / 255.0) - 1.0);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_integer_scale_samples_pixels_exactly_and_letterbox_bands_are_black() {
        // 8 x 4 -> a square of side 8 around the centre, onto 4 x 4: every second pixel.
        let rgb: Vec<u8> = (0..8 * 4 * 3).map(|i| (i * 5 % 256) as u8).collect();
        let square = Square::around(8, 4);
        assert_eq!(square, Square { left: 0.0, top: -2.0, side: 8.0 });
        let out = warp_to_input(&rgb, 8, 4, &square, 4);
        let level = |v: f32| ((v + 1.0) * 255.0 / 2.0).round() as u8;
        // Output row 0 samples source row -2: outside, black.
        assert!(out[..12].iter().all(|&v| v == -1.0));
        // Output row 1 samples source row 0, output column 1 source column 2.
        let at = (4 + 1) * 3;
        assert_eq!([level(out[at]), level(out[at + 1]), level(out[at + 2])], [rgb[6], rgb[7], rgb[8]]);
        assert_eq!(square.to_image([0.5, 0.5], 8, 4), [0.5, 0.5]);
        assert_eq!(square.to_image([0.0, 0.25], 8, 4), [0.0, 0.0]);
    }
}
