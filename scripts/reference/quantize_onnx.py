"""The exported reference model quantized to int8 as an ONNX Runtime user would: ONNX Runtime's
dynamic quantization (`onnxruntime.quantization.quantize_dynamic`), int8 weights with a scale
per output channel, activations quantized to uint8 at run time. What `npm run bench` compares
our `precision: 'int8'` with.

    scripts/reference/.venv/bin/python scripts/reference/quantize_onnx.py --onnx tiny-b8.onnx --out tiny-b8-int8.onnx
"""

import argparse
import pathlib

from onnxruntime.quantization import QuantType, quantize_dynamic
from onnxruntime.quantization.shape_inference import quant_pre_process


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--onnx", type=pathlib.Path, required=True, help="the f32 model from export_onnx.py")
    ap.add_argument("--out", type=pathlib.Path, required=True)
    args = ap.parse_args()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    # The pre-processing ONNX Runtime recommends before quantizing (shape inference and graph
    # optimisation), into a file beside the output.
    prepared = args.out.with_suffix(".prepared.onnx")
    quant_pre_process(str(args.onnx), str(prepared))
    quantize_dynamic(str(prepared), str(args.out), weight_type=QuantType.QInt8, per_channel=True)
    prepared.unlink()
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
