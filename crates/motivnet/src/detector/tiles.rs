//! Small faces in large photographs: the detector run again on overlapping square tiles.
//!
//! The short-range model sees the whole photograph letterboxed into 128 x 128 pixels, and finds
//! faces down to roughly an eighth of that square: in a 1280 x 720 frame, not much under 160
//! px. A tile half the photograph's shorter side wide is seen at least twice as large (3.6
//! times in that frame), so it finds faces as much smaller: the astronaut's 48 px face pasted
//! in such a frame, which the whole frame's pass misses as MediaPipe's does (tests/faces.rs).
//! The price is one more detector pass a tile.
//!
//! The rule ([`tile_side`]): tiles are half the shorter side, but at least 128 px (smaller
//! tiles would be enlarged onto the input, which adds no detail); and there are none when the
//! shorter side is under 128 px, when they would magnify by less than two (the longer side
//! under twice the tile), where tiles see little the whole photograph does not, or when there
//! would be more than [`MAX_TILES`] (a strip). Every photograph whose shorter
//! side is at least 256 px is tiled, squares included (a square's tiles magnify exactly
//! twice); small thumbnails are not. A row of tiles ([`tile_starts`]) spans its side evenly,
//! the first flush with one edge and the last with the other, neighbours overlapping by at
//! least a quarter of a tile: 3 x 3 tiles on a square, 5 x 3 on a 16:9 frame.
//!
//! A face cut by a tile's edge is found there as a part, in the wrong place, so detections that
//! touch an edge of their tile inside the photograph are dropped ([`cut_by_tile`]): a face no
//! wider than the overlap lies whole in a neighbour, and larger ones are the whole
//! photograph's to find. What remains of every pass is merged as each pass merges its own
//! (weighted non-maximum suppression), so a face seen by several passes is one face.

use super::decode::{self, Detection};
use super::input::Square;
use super::BlazeFace;
use crate::error::Result;

/// Tiles are never smaller than the detector's input: a smaller one would only be enlarged.
pub const MIN_TILE: usize = 128;

/// At most this many tiles: a long strip would otherwise take one pass per few pixels of its
/// length (a 65535 x 200 image, hundreds), for faces a strip hardly holds.
pub const MAX_TILES: usize = 64;

/// The least score a face found only in a tile needs. Each tile is another chance at a false
/// face: fifteen passes over magnified parts of a 1280 x 720 frame found a collar at 0.64 on
/// the astronaut at 1920 x 1080 (the small faces of the tests score above 0.8). The whole
/// photograph's pass keeps MediaPipe's threshold.
pub const TILE_MIN_SCORE: f32 = 0.75;

/// How far a detection may come to an inner edge of its tile, as a fraction of the tile's side,
/// and still count as whole.
const EDGE_CLEARANCE: f32 = 1.0 / 32.0;

/// The side of the tiles for a `width` x `height` photograph, None when it is not tiled (see
/// the module's rule).
pub fn tile_side(width: usize, height: usize) -> Option<usize> {
    let (shorter, longer) = (width.min(height), width.max(height));
    let side = (shorter / 2).max(MIN_TILE);
    let count = tile_starts(width, side).len() * tile_starts(height, side).len();
    (shorter >= MIN_TILE && longer >= 2 * side && count <= MAX_TILES).then_some(side)
}

/// Where the tiles of one row (or column) start along a side of `length` pixels: spread evenly
/// from 0 to `length - side`, as few as keep neighbours overlapping by a quarter of a tile.
pub fn tile_starts(length: usize, side: usize) -> Vec<usize> {
    if length <= side {
        return vec![0];
    }
    let span = length - side;
    let step = side - side / 4;
    let gaps = span.div_ceil(step);
    (0..=gaps).map(|i| (i * span + gaps / 2) / gaps).collect()
}

/// The tiles of a `width` x `height` photograph, row by row, as squares of it in pixels; none
/// when it is not tiled.
pub fn tiles(width: usize, height: usize) -> Vec<Square> {
    let Some(side) = tile_side(width, height) else { return Vec::new() };
    let (xs, ys) = (tile_starts(width, side), tile_starts(height, side));
    ys.iter()
        .flat_map(|&y| xs.iter().map(move |&x| Square { left: x as f64, top: y as f64, side: side as f64 }))
        .collect()
}

/// Whether `d` (fractions of the photograph) touches an edge of `tile` that is not an edge of
/// the `width` x `height` photograph: the face may go on past it, cut.
pub fn cut_by_tile(d: &Detection, tile: &Square, width: usize, height: usize) -> bool {
    let clearance = EDGE_CLEARANCE as f64 * tile.side;
    let [l, t, r, b] = d.bbox;
    let (l, r) = (l as f64 * width as f64, r as f64 * width as f64);
    let (t, b) = (t as f64 * height as f64, b as f64 * height as f64);
    let (right, bottom) = (tile.left + tile.side, tile.top + tile.side);
    (tile.left > 0.0 && l < tile.left + clearance)
        || (tile.top > 0.0 && t < tile.top + clearance)
        || (right < width as f64 && r > right - clearance)
        || (bottom < height as f64 && b > bottom - clearance)
}

/// The faces of an RGB photograph found in the whole of it and in its tiles (there scoring at
/// least [`TILE_MIN_SCORE`]), merged, best first; boxes and keypoints in fractions of the
/// photograph, as [`BlazeFace::detect`]'s.
pub fn detect_tiled(detector: &BlazeFace, rgb: &[u8], width: usize, height: usize) -> Result<Vec<Detection>> {
    let mut found = detector.detect(rgb, width, height)?;
    for tile in tiles(width, height) {
        let inside = detector.detect_in(rgb, width, height, &tile)?;
        found.extend(inside.into_iter().filter(|d| d.score >= TILE_MIN_SCORE && !cut_by_tile(d, &tile, width, height)));
    }
    Ok(decode::weighted_nms(found, decode::MIN_SUPPRESSION_IOU))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tiles_are_half_the_shorter_side_and_only_where_they_magnify_twice() {
        assert_eq!(tile_side(1280, 720), Some(360));
        assert_eq!(tile_side(512, 512), Some(256));
        assert_eq!(tile_side(256, 256), Some(128));
        assert_eq!(tile_side(480, 320), Some(160));
        // Thumbnails: the tile's floor of 128 px would magnify less than twice.
        assert_eq!(tile_side(200, 133), None);
        assert_eq!(tile_side(192, 192), None);
        // A strip narrower than the floor, or so long it would take too many tiles: none.
        assert_eq!(tile_side(1000, 100), None);
        assert_eq!(tile_side(150, 100), None);
        assert_eq!(tile_side(65535, 200), None);
        assert_eq!(tile_side(65535, 1), None);
        assert!(tiles(4000, 300).len() <= MAX_TILES);
    }

    #[test]
    fn a_row_of_tiles_spans_its_side_evenly_overlapping_by_at_least_a_quarter() {
        assert_eq!(tile_starts(1280, 360), vec![0, 230, 460, 690, 920]);
        assert_eq!(tile_starts(720, 360), vec![0, 180, 360]);
        assert_eq!(tile_starts(256, 128), vec![0, 64, 128]);
        assert_eq!(tile_starts(100, 100), vec![0]);
        for (length, side) in [(1280, 360), (720, 360), (1001, 130), (4000, 1500), (129, 128)] {
            let starts = tile_starts(length, side);
            assert_eq!((starts[0], *starts.last().unwrap()), (0, length - side));
            for pair in starts.windows(2) {
                assert!(pair[1] > pair[0] && pair[0] + side - pair[1] >= side / 4, "{length} {side}: {starts:?}");
            }
        }
        assert_eq!(tiles(1280, 720).len(), 15);
        assert!(tiles(192, 192).is_empty());
    }

    #[test]
    fn only_detections_at_a_tiles_inner_edges_are_cut() {
        let tile = Square { left: 100.0, top: 0.0, side: 100.0 };
        // Fractions of a 300 x 100 photograph; x in pixels / 300.
        let at =
            |l: f32, r: f32| Detection { bbox: [l / 300.0, 0.3, r / 300.0, 0.6], keypoints: [[0.0; 2]; 6], score: 0.9 };
        assert!(!cut_by_tile(&at(120.0, 180.0), &tile, 300, 100));
        assert!(cut_by_tile(&at(101.0, 150.0), &tile, 300, 100), "left edge, inside the photograph");
        assert!(cut_by_tile(&at(150.0, 199.0), &tile, 300, 100), "right edge, inside the photograph");
        assert!(cut_by_tile(&at(90.0, 150.0), &tile, 300, 100), "past the edge");
        // The top and bottom edges are the photograph's: a face there is cut by the photograph.
        let top = Detection { bbox: [0.4, -0.05, 0.6, 0.4], keypoints: [[0.0; 2]; 6], score: 0.9 };
        assert!(!cut_by_tile(&top, &tile, 300, 100));
    }
}
