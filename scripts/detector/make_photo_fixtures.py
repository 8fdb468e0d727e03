"""Photographs and MediaPipe's own face detections on them, for the detector's tests
(crates/motivnet/tests/detector.rs). From scikit-image's sample data: the astronaut (Eileen
Collins, NASA, public domain), the cameraman (greyscale; scikit-image's own, public domain), the
coffee cup (Rachel Michetti, CC0), the brick wall texture, and faces of Labeled Faces in the Wild
(lfw_subset, published for research). MediaPipe 0.10.14's short-range face detection runs on
exactly these pixels.

Some photographs are stored as pixels: the astronaut at 256 x 256 and cropped wide (letterboxed),
the coffee cup (no face), the cameraman (greyscale), the astronaut turned 30 degrees. Larger ones
are composed from stored parts by a layout that the test repeats exactly (integer copies and
nearest-neighbour enlargement, no resampling), so the fixture stays small: several faces on a
brick wall, the astronaut turned a quarter, and a small face in a large frame.

    scripts/detector/.venv/bin/pip install mediapipe==0.10.14 scikit-image
    scripts/detector/.venv/bin/python scripts/detector/make_photo_fixtures.py

It also writes two of them as PNG files, with MediaPipe's detections, to test/fixtures/faces/.
"""
import json
import os
from pathlib import Path

import cv2
import mediapipe as mp
import numpy as np
import skimage
from safetensors.numpy import save_file
from skimage import data

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "crates/motivnet/tests/fixtures"
# Image files of some of them for the TypeScript tests (test/faces.test.ts).
FILES = ROOT / "test/fixtures/faces"

# Labeled Faces in the Wild faces (25 x 25 greyscale) that stand for a group photo.
LFW_FACES = [0, 3, 6, 9, 12]


def stored() -> dict:
    """The photographs and parts kept as pixels (RGB, HWC, u8)."""
    astronaut = cv2.resize(data.astronaut(), (256, 256), interpolation=cv2.INTER_AREA)
    coffee = cv2.resize(data.coffee(), (200, 133), interpolation=cv2.INTER_AREA)
    camera = cv2.resize(data.camera(), (192, 192), interpolation=cv2.INTER_AREA)
    small = cv2.resize(astronaut, (192, 192), interpolation=cv2.INTER_AREA)
    turn = cv2.getRotationMatrix2D((96, 96), 30, 1.0)
    rotated = cv2.warpAffine(small, turn, (192, 192), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
    lfw = np.load(os.path.join(os.path.dirname(skimage.data.__file__), "lfw_subset.npy"))
    out = {
        "astronaut": astronaut,
        "astronaut_wide": np.ascontiguousarray(astronaut[10:170]),
        "coffee": coffee,
        "camera": np.repeat(camera[:, :, None], 3, axis=2),
        "astronaut_rotated_30": rotated,
        "brick": np.repeat(data.brick()[:160, :240, None], 3, axis=2),
    }
    for i in LFW_FACES:
        out[f"lfw_{i}"] = np.repeat((lfw[i] * 255).round().astype(np.uint8)[:, :, None], 3, axis=2)
    return out


# Composed photographs: a size, a fill, then parts pasted in order. A part is a stored image's
# rectangle [x, y, width, height], enlarged `scale` times by repeating pixels, optionally turned
# a quarter counter-clockwise (`quarter_turns`), pasted with its top left at `at`.
LAYOUTS = {
    "group": {
        "width": 480, "height": 320, "fill": [110, 110, 110],
        "parts": [
            {"source": "brick", "rect": [0, 0, 240, 160], "scale": 2, "at": [0, 0]},
            {"source": "astronaut", "rect": [88, 40, 80, 80], "scale": 2, "at": [10, 10]},
            *[
                {"source": f"lfw_{i}", "rect": [0, 0, 25, 25], "scale": 4, "at": at}
                for i, at in zip(LFW_FACES, [[170, 20], [320, 20], [20, 180], [170, 180], [320, 180]])
            ],
        ],
    },
    "astronaut_quarter_turn": {
        "width": 256, "height": 256, "fill": [0, 0, 0],
        "parts": [{"source": "astronaut", "rect": [0, 0, 256, 256], "scale": 1, "quarter_turns": 1, "at": [0, 0]}],
    },
    "small_face": {
        "width": 1280, "height": 720, "fill": [128, 128, 128],
        "parts": [{"source": "astronaut", "rect": [0, 0, 256, 256], "scale": 1, "at": [900, 400]}],
    },
}


def compose(layout: dict, parts: dict) -> np.ndarray:
    canvas = np.empty((layout["height"], layout["width"], 3), np.uint8)
    canvas[:] = layout["fill"]
    for p in layout["parts"]:
        x, y, w, h = p["rect"]
        piece = parts[p["source"]][y:y + h, x:x + w]
        piece = np.repeat(np.repeat(piece, p["scale"], axis=0), p["scale"], axis=1)
        piece = np.rot90(piece, p.get("quarter_turns", 0))
        ax, ay = p["at"]
        canvas[ay:ay + piece.shape[0], ax:ax + piece.shape[1]] = piece
    return np.ascontiguousarray(canvas)


def main() -> None:
    parts = stored()
    photos = {name: parts[name] for name in ["astronaut", "astronaut_wide", "coffee", "camera", "astronaut_rotated_30"]}
    photos.update({name: compose(layout, parts) for name, layout in LAYOUTS.items()})
    expected = {}
    with mp.solutions.face_detection.FaceDetection(model_selection=0, min_detection_confidence=0.5) as detector:
        for name, rgb in photos.items():
            found = []
            for d in detector.process(rgb).detections or []:
                b = d.location_data.relative_bounding_box
                found.append({
                    "score": float(d.score[0]),
                    "bbox": [b.xmin, b.ymin, b.xmin + b.width, b.ymin + b.height],
                    "keypoints": [[k.x, k.y] for k in d.location_data.relative_keypoints],
                })
            entry = {"width": rgb.shape[1], "height": rgb.shape[0], "faces": found}
            if name in LAYOUTS:
                entry["compose"] = LAYOUTS[name]
            expected[name] = entry
    save_file({k: np.ascontiguousarray(v) for k, v in parts.items()}, str(OUT / "face_photos.safetensors"))
    FILES.mkdir(parents=True, exist_ok=True)
    for name in ["group", "camera"]:
        cv2.imwrite(str(FILES / f"{name}.png"), cv2.cvtColor(photos[name], cv2.COLOR_RGB2BGR))
    files = {name: expected[name] for name in ["group", "camera"]}
    (FILES / "expected.json").write_text(json.dumps(files, indent=1) + "\n")
    (OUT / "face_photos.json").write_text(json.dumps(expected, indent=1) + "\n")
    for name, e in expected.items():
        print(name, e["width"], "x", e["height"], [round(f["score"], 4) for f in e["faces"]])


if __name__ == "__main__":
    main()
