//! A face's roll, from its eyes: the angle that turns its crop upright (`FaceOptions::upright`).
//!
//! AffectNet's faces are mostly upright, and MotivNet learned from them; a face tilted in the
//! photograph is better shown to it level. The line through the eyes (MediaPipe's keypoints 0,
//! the right eye, and 1, the left) gives the roll. But BlazeFace learned from upright faces
//! too, and its eyes on a turned face lean toward upright: on the astronaut turned 30 degrees
//! they tell 15, turned a quarter 66, and upright they tilt her by 6. So the estimate is
//! refined: the face's surroundings, turned upright by it, are shown to the detector again, and
//! the roll it still sees there is added. One pass brings those three within 2 degrees of
//! where further passes settle, a second within 1 (tests/faces.rs); each costs one detector
//! pass on its 128 x 128 input, sampled straight from the photograph.

use std::f32::consts::PI;

use super::crop::{face_square, sample_turned};
use super::decode::Detection;
use super::BlazeFace;
use crate::error::Result;

/// How many times the eyes' angle is refined by detecting again in the turned surroundings.
pub const REFINEMENTS: usize = 2;

/// The surroundings shown to the detector again: the face's box widened by this fraction of its
/// larger side on each side (twice the box's side in all), so that the face is as large in the
/// detector's input as its training faces were, and whole at any turn.
const CONTEXT_MARGIN: f32 = 0.5;

/// How far from the surroundings' centre (a fraction of their side) the face found again may be:
/// further, it is another face, and the refining stops.
const MAX_OFF_CENTRE: f32 = 0.25;

/// The roll of a face whose right and left eyes are at `right` and `left` (x and y in the same
/// unit, y down): radians, counter-clockwise as the face is seen, 0 for level eyes with the
/// right eye on the left, as a face looking out of an upright photograph has them.
pub fn eye_angle(right: [f32; 2], left: [f32; 2]) -> f32 {
    (right[1] - left[1]).atan2(left[0] - right[0])
}

/// The roll of `face` (fractions of the `width` x `height` RGB photograph), refined
/// [`REFINEMENTS`] times; the eyes' own angle where the detector no longer finds the face in
/// its turned surroundings.
pub fn upright_angle(detector: &BlazeFace, rgb: &[u8], width: usize, height: usize, face: &Detection) -> Result<f32> {
    let in_pixels = |[x, y]: [f32; 2]| [x * width as f32, y * height as f32];
    let mut angle = eye_angle(in_pixels(face.keypoints[0]), in_pixels(face.keypoints[1]));
    let context = face_square(face, width, height, CONTEXT_MARGIN);
    let [size, _] = detector.input;
    for _ in 0..REFINEMENTS {
        let turned = sample_turned(rgb, width, height, &context, angle, size);
        // The face is at the centre of its surroundings: the detection nearest it, if near.
        let off_centre = |d: &Detection| {
            let (x, y) = ((d.bbox[0] + d.bbox[2]) / 2.0 - 0.5, (d.bbox[1] + d.bbox[3]) / 2.0 - 0.5);
            x.hypot(y)
        };
        let found = detector.detect(&turned, size, size)?;
        let nearest = found.iter().min_by(|a, b| off_centre(a).total_cmp(&off_centre(b)));
        let Some(face) = nearest.filter(|d| off_centre(d) <= MAX_OFF_CENTRE) else { break };
        angle += eye_angle(face.keypoints[0], face.keypoints[1]);
    }
    // Within a half turn either way.
    Ok((angle + PI).rem_euclid(2.0 * PI) - PI)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_eyes_angle_is_counter_clockwise_as_seen() {
        let deg = |a: f32| a.to_degrees();
        assert_eq!(eye_angle([10.0, 20.0], [30.0, 20.0]), 0.0);
        // The left eye higher on the page (smaller y): the face is turned counter-clockwise.
        assert!((deg(eye_angle([10.0, 20.0], [30.0, 0.0])) - 45.0).abs() < 1e-4);
        assert!((deg(eye_angle([10.0, 20.0], [30.0, 40.0])) + 45.0).abs() < 1e-4);
        // Upside down.
        assert!((deg(eye_angle([30.0, 20.0], [10.0, 20.0])).abs() - 180.0).abs() < 1e-4);
    }
}
