"""Photographs and MediaPipe's own face detections on them, for the detector's parity test
(crates/motivnet/tests/detector.rs): scikit-image's astronaut (public domain, NASA), at 256 x 256
and cropped to 256 x 160 (a letterboxed input), and its coffee cup (no face). MediaPipe 0.10.14's
short-range face detection runs on exactly these pixels.

    scripts/detector/.venv/bin/pip install mediapipe==0.10.14 scikit-image
    scripts/detector/.venv/bin/python scripts/detector/make_photo_fixtures.py
"""
import json
from pathlib import Path

import cv2
import mediapipe as mp
import numpy as np
from safetensors.numpy import save_file
from skimage import data

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "crates/motivnet/tests/fixtures"


def photos() -> dict:
    astronaut = cv2.resize(data.astronaut(), (256, 256), interpolation=cv2.INTER_AREA)
    coffee = cv2.resize(data.coffee(), (200, 133), interpolation=cv2.INTER_AREA)
    return {"astronaut": astronaut, "astronaut_wide": np.ascontiguousarray(astronaut[10:170]), "coffee": coffee}


def main() -> None:
    images = photos()
    expected = {}
    with mp.solutions.face_detection.FaceDetection(model_selection=0, min_detection_confidence=0.5) as detector:
        for name, rgb in images.items():
            found = []
            for d in detector.process(rgb).detections or []:
                b = d.location_data.relative_bounding_box
                found.append({
                    "score": float(d.score[0]),
                    "bbox": [b.xmin, b.ymin, b.xmin + b.width, b.ymin + b.height],
                    "keypoints": [[k.x, k.y] for k in d.location_data.relative_keypoints],
                })
            expected[name] = {"width": rgb.shape[1], "height": rgb.shape[0], "faces": found}
    save_file({k: np.ascontiguousarray(v) for k, v in images.items()}, str(OUT / "face_photos.safetensors"))
    (OUT / "face_photos.json").write_text(json.dumps(expected, indent=1) + "\n")
    for name, e in expected.items():
        print(name, e["width"], "x", e["height"], [round(f["score"], 4) for f in e["faces"]])


if __name__ == "__main__":
    main()
