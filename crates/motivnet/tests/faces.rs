//! The options of `find_faces` past MediaPipe's own detection: small faces in tiles of a large
//! photograph, and crops turned upright by the eyes.

use std::time::Instant;

use motivnet::detector::{crop_levels, find_faces, Face, FaceOptions, PixelSquare};
use motivnet::ops::pixels::Geometry;

mod photos;

fn faces(photo: &photos::Photo, options: FaceOptions) -> Vec<Face> {
    find_faces(&photo.rgb, photo.width, photo.height, &options).unwrap()
}

fn small_faces() -> FaceOptions {
    FaceOptions { small_faces: true, ..FaceOptions::default() }
}

fn upright() -> FaceOptions {
    FaceOptions { upright: true, ..FaceOptions::default() }
}

/// A face's box as (left, top, right, bottom) pixels.
fn corners(face: &Face) -> [f32; 4] {
    let [x, y, w, h] = face.bbox;
    [x, y, x + w, y + h]
}

/// MediaPipe's faces on `photo` (fractions) as (left, top, right, bottom) pixels.
fn expected_in_pixels(photo: &photos::Photo) -> Vec<[f32; 4]> {
    let (w, h) = (photo.width as f32, photo.height as f32);
    photo.expected.iter().map(|(b, _, _)| [b[0] * w, b[1] * h, b[2] * w, b[3] * h]).collect()
}

#[test]
fn a_small_face_in_a_large_frame_is_found_in_its_tiles() {
    let frame = photos::get("small_face");
    assert_eq!((frame.width, frame.height), (1280, 720));
    assert!(faces(&frame, FaceOptions::default()).is_empty(), "the whole frame's pass finds it, as MediaPipe does not");

    let found = faces(&frame, small_faces());
    // Where MediaPipe finds the astronaut alone, pasted at (900, 400).
    let alone = photos::get("astronaut");
    let [l, t, r, b] = expected_in_pixels(&alone)[0];
    let expected = [l + 900.0, t + 400.0, r + 900.0, b + 400.0];
    assert_eq!(found.len(), 1, "{found:?}");
    let iou = photos::iou(&corners(&found[0]), &expected);
    assert!(iou >= 0.8, "box {:?} vs {expected:?}: IoU {iou}", corners(&found[0]));

    let start = Instant::now();
    let runs = 5;
    for _ in 0..runs {
        std::hint::black_box(faces(&frame, small_faces()));
    }
    let tiled = start.elapsed().as_secs_f64() * 1e3 / runs as f64;
    let start = Instant::now();
    for _ in 0..runs {
        std::hint::black_box(faces(&frame, FaceOptions::default()));
    }
    let whole = start.elapsed().as_secs_f64() * 1e3 / runs as f64;
    eprintln!("find_faces on 1280 x 720: small_faces {tiled:.1} ms, whole frame only {whole:.1} ms (one thread)");
}

#[test]
fn tiles_find_the_whole_frames_faces_once_each() {
    for name in ["group", "astronaut"] {
        let photo = photos::get(name);
        let whole = faces(&photo, FaceOptions::default());
        assert_eq!(whole.len(), photo.expected.len(), "{name}");
        let tiled = faces(&photo, small_faces());
        eprintln!("{name}: {} faces in the whole photograph, {} with its tiles", whole.len(), tiled.len());
        for expected in expected_in_pixels(&photo) {
            let matches = tiled.iter().filter(|f| photos::iou(&corners(f), &expected) >= 0.8).count();
            assert_eq!(matches, 1, "{name}: {expected:?} matched by {matches} of {tiled:?}");
        }
        assert!(tiled.windows(2).all(|p| p[0].score >= p[1].score), "{name}: best first");
    }
}

#[test]
fn without_the_options_faces_are_as_before() {
    for photo in photos::all() {
        for face in faces(&photo, FaceOptions::default()) {
            assert_eq!((face.angle, face.square), (0.0, None), "{}", photo.name);
        }
    }
}

/// A crop's levels at 64 x 64 (stretched, as `crop_levels` makes them), in grey, averaged down
/// to 32 x 32.
fn grey_32(rgb: &[u8], width: usize, face: &Face) -> Vec<f32> {
    let levels = crop_levels(rgb, width, std::slice::from_ref(face), Geometry::Stretch, 64, 64).unwrap();
    let grey: Vec<f32> =
        levels.chunks_exact(3).map(|p| 0.299 * p[0] as f32 + 0.587 * p[1] as f32 + 0.114 * p[2] as f32).collect();
    (0..32 * 32)
        .map(|i| {
            let (x, y) = (i % 32 * 2, i / 32 * 2);
            (grey[y * 64 + x] + grey[y * 64 + x + 1] + grey[(y + 1) * 64 + x] + grey[(y + 1) * 64 + x + 1]) / 4.0
        })
        .collect()
}

/// Normalized cross-correlation.
fn correlation(a: &[f32], b: &[f32]) -> f32 {
    let mean = |v: &[f32]| v.iter().sum::<f32>() / v.len() as f32;
    let (ma, mb) = (mean(a), mean(b));
    let (mut ab, mut aa, mut bb) = (0.0, 0.0, 0.0);
    for (x, y) in a.iter().zip(b) {
        ab += (x - ma) * (y - mb);
        aa += (x - ma) * (x - ma);
        bb += (y - mb) * (y - mb);
    }
    ab / (aa * bb).sqrt()
}

fn one_face(photo: &photos::Photo, options: FaceOptions) -> Face {
    let mut found = faces(photo, options);
    assert_eq!(found.len(), 1, "{}: {found:?}", photo.name);
    found.remove(0)
}

#[test]
fn a_face_turned_30_degrees_is_cropped_upright() {
    let alone = photos::get("astronaut");
    let turned = photos::get("astronaut_rotated_30");
    let own = one_face(&alone, upright());
    let level = one_face(&turned, upright());
    let straight = one_face(&turned, FaceOptions::default());
    let deg = |a: f32| a.to_degrees();
    eprintln!("roll: astronaut {:.1} degrees, turned 30: {:.1}", deg(own.angle), deg(level.angle));
    // Turned counter-clockwise as seen (cv2.getRotationMatrix2D's positive angle).
    assert!((deg(level.angle) - 30.0).abs() <= 3.0, "{}", deg(level.angle));
    assert!((deg(level.angle - own.angle) - 30.0).abs() <= 3.0, "{} vs {}", deg(level.angle), deg(own.angle));
    let square = level.square.expect("an upright face's square");
    let crop = level.crop;
    assert!(crop.x + crop.width <= turned.width && crop.y + crop.height <= turned.height, "{crop:?}");
    assert!(crop.width > square.side && crop.height > square.side, "{crop:?} holds the turned {square:?}");

    // Against the astronaut's own crop, framed by the detector on the upright photograph: its
    // box there and on the turned one differ by a few pixels, so the crops differ by as much.
    let own_pixels = grey_32(&alone.rgb, alone.width, &own);
    let upright_ncc = correlation(&grey_32(&turned.rgb, turned.width, &level), &own_pixels);
    let straight_ncc = correlation(&grey_32(&turned.rgb, turned.width, &straight), &own_pixels);
    eprintln!("correlation with the astronaut's own crop: upright {upright_ncc:.3}, straight {straight_ncc:.3}");
    assert!(upright_ncc >= 0.75 && upright_ncc >= straight_ncc + 0.4, "{upright_ncc} vs {straight_ncc}");

    // Against the same square of the astronaut, found through the turn the photograph was made
    // with (about its pixel (96, 96), at 192 px of her 256): the sampling itself.
    let [cx, cy] = square.centre();
    let (sin, cos) = (-30f64).to_radians().sin_cos();
    let (vx, vy) = (cx - 96.5, cy - 96.5);
    let to_256 = 256.0 / 192.0;
    let (ax, ay) = ((vx * cos + vy * sin + 96.5) * to_256, (-vx * sin + vy * cos + 96.5) * to_256);
    let side = (square.side as f64 * to_256).round();
    let there =
        PixelSquare { x: (ax - side / 2.0).round() as i64, y: (ay - side / 2.0).round() as i64, side: side as usize };
    let same = Face { angle: level.angle - 30f32.to_radians(), square: Some(there), ..own.clone() };
    let same_ncc = correlation(&grey_32(&turned.rgb, turned.width, &level), &grey_32(&alone.rgb, alone.width, &same));
    eprintln!("correlation with the same square of the astronaut: {same_ncc:.3}");
    assert!(same_ncc >= 0.95, "{same_ncc}");
}

#[test]
fn a_face_turned_a_quarter_is_cropped_upright() {
    let face = one_face(&photos::get("astronaut_quarter_turn"), upright());
    assert!((face.angle.to_degrees() - 90.0).abs() <= 5.0, "{}", face.angle.to_degrees());
}

#[test]
fn an_upright_face_stays_upright() {
    let face = one_face(&photos::get("astronaut"), upright());
    assert!(face.angle.to_degrees().abs() <= 5.0, "{}", face.angle.to_degrees());
}

#[test]
fn upright_crops_are_whole_squares_about_the_box() {
    let group = photos::get("group");
    let found = faces(&group, upright());
    assert_eq!(found.len(), group.expected.len());
    for face in &found {
        let square = face.square.unwrap();
        let [x, y] = square.centre();
        let [bx, by, bw, bh] = face.bbox;
        assert!((x as f32 - (bx + bw / 2.0)).abs() <= 1.0 && (y as f32 - (by + bh / 2.0)).abs() <= 1.0);
        assert!((square.side as f32 - bw.max(bh) * 1.5).abs() <= 1.0, "{square:?} vs {:?}", face.bbox);
    }
    // The group's astronaut runs past the photograph's top left: her upright crop is the whole
    // square (black past the edges), reported cut to the photograph.
    let astronaut = found.iter().find(|f| f.bbox[0] < 20.0).unwrap();
    let square = astronaut.square.unwrap();
    assert!(square.x < 0 && square.y < 0, "{square:?}");
    assert_eq!((astronaut.crop.x, astronaut.crop.y), (0, 0));
    let side = square.side;
    let levels =
        crop_levels(&group.rgb, group.width, std::slice::from_ref(astronaut), Geometry::Stretch, side, side).unwrap();
    assert_eq!(&levels[..3], &[0, 0, 0], "the top left corner is past the photograph");
    let all = crop_levels(&group.rgb, group.width, &found, Geometry::Stretch, 48, 32).unwrap();
    assert_eq!(all.len(), found.len() * 48 * 32 * 3);
}
