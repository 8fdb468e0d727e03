//! From BlazeFace's raw outputs to faces, as MediaPipe's short-range face detection graph does
//! it: SSD anchors (its `SsdAnchorsCalculator` options), boxes and keypoints decoded against
//! them and scored by a sigmoid (`TensorsToDetectionsCalculator`), then weighted non-maximum
//! suppression (`NonMaxSuppressionCalculator`, WEIGHTED, IoU 0.3). Coordinates are fractions of
//! the detector's input square, as MediaPipe's are before it maps them back to the image.

/// One face: its box, six keypoints (right eye, left eye, nose tip, mouth, right ear tragion,
/// left ear tragion, as MediaPipe orders them) and the probability that it is a face.
#[derive(Debug, Clone, PartialEq)]
pub struct Detection {
    /// Left, top, right, bottom.
    pub bbox: [f32; 4],
    pub keypoints: [[f32; 2]; 6],
    pub score: f32,
}

/// The short-range model's anchor layout: a 16 x 16 grid with two anchors a cell (stride 8),
/// then an 8 x 8 grid with six (three stride-16 layers merged). With MediaPipe's fixed anchor
/// size, an anchor is only its centre: each value's scale is the input size itself.
pub fn anchors() -> Vec<[f32; 2]> {
    let mut out = Vec::with_capacity(896);
    for (grid, per_cell) in [(16usize, 2usize), (8, 6)] {
        for y in 0..grid {
            for x in 0..grid {
                let centre = [(x as f32 + 0.5) / grid as f32, (y as f32 + 0.5) / grid as f32];
                out.extend(std::iter::repeat_n(centre, per_cell));
            }
        }
    }
    out
}

/// What MediaPipe's short-range graph uses.
pub const INPUT_SIZE: f32 = 128.0;
pub const MIN_SCORE: f32 = 0.5;
pub const MIN_SUPPRESSION_IOU: f32 = 0.3;
const SCORE_CLIPPING: f32 = 100.0;

/// Decodes one image's outputs (`regressors`: anchors x 16, `logits`: anchors) into the
/// detections scoring at least `min_score`, before suppression.
pub fn decode(regressors: &[f32], logits: &[f32], anchors: &[[f32; 2]], min_score: f32) -> Vec<Detection> {
    assert_eq!(regressors.len(), anchors.len() * 16, "regressors: 16 values per anchor");
    assert_eq!(logits.len(), anchors.len(), "one score per anchor");
    let mut out = Vec::new();
    for (i, anchor) in anchors.iter().enumerate() {
        let score = 1.0 / (1.0 + (-logits[i].clamp(-SCORE_CLIPPING, SCORE_CLIPPING)).exp());
        if score < min_score {
            continue;
        }
        let r = &regressors[i * 16..(i + 1) * 16];
        // x before y (MediaPipe's `reverse_output_order`), in input pixels from the anchor.
        let (cx, cy) = (r[0] / INPUT_SIZE + anchor[0], r[1] / INPUT_SIZE + anchor[1]);
        let (w, h) = (r[2] / INPUT_SIZE, r[3] / INPUT_SIZE);
        let keypoints =
            std::array::from_fn(|k| [r[4 + 2 * k] / INPUT_SIZE + anchor[0], r[5 + 2 * k] / INPUT_SIZE + anchor[1]]);
        out.push(Detection { bbox: [cx - w / 2.0, cy - h / 2.0, cx + w / 2.0, cy + h / 2.0], keypoints, score });
    }
    out
}

fn iou(a: &[f32; 4], b: &[f32; 4]) -> f32 {
    let (w, h) = ((a[2].min(b[2]) - a[0].max(b[0])).max(0.0), (a[3].min(b[3]) - a[1].max(b[1])).max(0.0));
    let inter = w * h;
    let union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter;
    if union > 0.0 {
        inter / union
    } else {
        0.0
    }
}

/// Weighted non-maximum suppression: the best remaining detection takes every other that
/// overlaps it by more than `min_iou`, and becomes their score-weighted average (box and
/// keypoints), keeping its own score. Highest score first.
pub fn weighted_nms(mut detections: Vec<Detection>, min_iou: f32) -> Vec<Detection> {
    detections.sort_by(|a, b| b.score.total_cmp(&a.score));
    let mut out = Vec::new();
    while !detections.is_empty() {
        let best = detections[0].clone();
        let (cluster, rest): (Vec<_>, Vec<_>) =
            detections.into_iter().partition(|d| iou(&best.bbox, &d.bbox) > min_iou || *d == best);
        detections = rest;
        let total: f32 = cluster.iter().map(|d| d.score).sum();
        let mut merged = Detection { bbox: [0.0; 4], keypoints: [[0.0; 2]; 6], score: best.score };
        for d in &cluster {
            let w = d.score / total;
            for (m, v) in merged.bbox.iter_mut().zip(d.bbox) {
                *m += v * w;
            }
            for (m, v) in merged.keypoints.iter_mut().zip(d.keypoints) {
                m[0] += v[0] * w;
                m[1] += v[1] * w;
            }
        }
        out.push(merged);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn anchors_follow_the_short_range_layout() {
        let a = anchors();
        assert_eq!(a.len(), 896);
        assert_eq!(a[0], [0.5 / 16.0, 0.5 / 16.0]);
        assert_eq!(a[1], a[0]);
        assert_eq!(a[2], [1.5 / 16.0, 0.5 / 16.0]);
        assert_eq!(a[512], [0.5 / 8.0, 0.5 / 8.0]);
        assert_eq!(a[895], [7.5 / 8.0, 7.5 / 8.0]);
    }

    #[test]
    fn decoding_puts_boxes_and_keypoints_around_their_anchor() {
        let anchors = [[0.5, 0.25]];
        let mut r = [0f32; 16];
        r[..4].copy_from_slice(&[12.8, 0.0, 32.0, 64.0]); // 0.1 right, a quarter wide, half high
        r[4] = -6.4;
        let d = decode(&r, &[2.0], &anchors, 0.5);
        assert_eq!(d.len(), 1);
        let close = |a: f32, b: f32| (a - b).abs() < 1e-6;
        assert!(close(d[0].bbox[0], 0.6 - 0.125) && close(d[0].bbox[3], 0.25 + 0.25), "{:?}", d[0].bbox);
        assert!(close(d[0].keypoints[0][0], 0.45) && close(d[0].keypoints[1][1], 0.25));
        assert!(close(d[0].score, 1.0 / (1.0 + (-2.0f32).exp())));
        assert!(decode(&r, &[-1.0], &anchors, 0.5).is_empty());
    }

    #[test]
    fn weighted_nms_merges_overlaps_by_score_and_keeps_separate_faces() {
        let face = |x: f32, score: f32| Detection { bbox: [x, 0.0, x + 1.0, 1.0], keypoints: [[x, 0.0]; 6], score };
        let out = weighted_nms(vec![face(0.0, 0.9), face(0.1, 0.6), face(5.0, 0.7)], 0.3);
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].score, 0.9);
        let expected = (0.0 * 0.9 + 0.1 * 0.6) / 1.5;
        assert!((out[0].bbox[0] - expected).abs() < 1e-6 && (out[0].keypoints[3][0] - expected).abs() < 1e-6);
        assert_eq!(out[1].bbox[0], 5.0);
    }
}
