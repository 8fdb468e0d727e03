"""The reference's loader, timed: OpenCV imread + resize + normalize in one process, as a
PyTorch DataLoader with its default num_workers=0 runs it. Prints one JSON line.

    scripts/reference/.venv/bin/python scripts/reference/bench_loader.py DIR [--height 1024 --width 768]
"""

import argparse
import json
import pathlib
import time

import cv2
import numpy as np

MEAN = np.array((123.5, 116.5, 103.5), np.float32)
STD = np.array((58.5, 57.0, 57.5), np.float32)


def load(path: str, height: int, width: int) -> np.ndarray:
    img = cv2.cvtColor(cv2.imread(path, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    img = cv2.resize(img, (width, height), interpolation=cv2.INTER_LINEAR)
    return ((img.astype(np.float32) - MEAN) / STD).transpose(2, 0, 1).copy()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("dir")
    ap.add_argument("--height", type=int, default=1024)
    ap.add_argument("--width", type=int, default=768)
    ap.add_argument("--warmup", type=int, default=16)
    ap.add_argument("--threads", type=int, default=0, help="cv2.setNumThreads; 0 keeps OpenCV's default")
    args = ap.parse_args()
    if args.threads:
        cv2.setNumThreads(args.threads)
    files = sorted(str(p) for p in pathlib.Path(args.dir).glob("*.jpg"))
    for f in files[: args.warmup]:
        load(f, args.height, args.width)
    start = time.perf_counter()
    for f in files:
        load(f, args.height, args.width)
    elapsed = time.perf_counter() - start
    print(json.dumps({"images": len(files), "seconds": elapsed, "imagesPerSecond": len(files) / elapsed,
                      "opencv": cv2.__version__, "opencvThreads": cv2.getNumThreads()}))


if __name__ == "__main__":
    main()
