"""The reference model as ONNX, for the engines a Node backend would otherwise embed (ONNX
Runtime, OpenVINO): `torch.onnx.export` of `motivnet_ref.MotivNet` in eval mode, opset 18,
random weights (seed 0), a fixed batch.

    scripts/reference/.venv/bin/python scripts/reference/export_onnx.py --preset tiny --batch 8 --out tiny-b8.onnx
"""

import argparse
import pathlib
import sys

import torch

sys.path.insert(0, str(pathlib.Path(__file__).parent))
from motivnet_ref import from_preset  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--out", type=pathlib.Path, required=True)
    args = ap.parse_args()
    torch.manual_seed(0)
    model = from_preset(args.preset).eval()
    enc = model.pose_encoder.cfg
    x = torch.randn(args.batch, 3, enc.input_height, enc.input_width)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with torch.inference_mode():
        torch.onnx.export(model, (x,), str(args.out), input_names=["images"], output_names=["logits"], opset_version=18,
                          dynamo=True, external_data=False)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
