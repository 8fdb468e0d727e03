"""Converts MediaPipe's short-range face detector (BlazeFace, Apache-2.0) to safetensors for the
core, and writes the parity fixture its test checks against TFLite's own interpreter.

The model comes from the `mediapipe` wheel on PyPI (version 0.10.14, the last that bundles its
models; later wheels download them at run time): `face_detection_short_range.tflite`, 128 x 128
RGB in [-1, 1] -> 896 anchors x (16 box and keypoint regressors, 1 score logit). Its weights are
float16 in the file (TFLite dequantizes them to float32 exactly); they are kept as float16.

The network is a stem convolution and sixteen blocks: depthwise 3 x 3 (stride 1 or 2), pointwise
1 x 1, plus the block's input (max-pooled when the block strides, zero channels appended when
it widens), then ReLU. The heads are 1 x 1 convolutions on the 16 x 16 map (block 11, two
anchors a cell) and on the 8 x 8 one (the last block, six a cell). The architecture is read from
the graph, checked against that description, and written into the file's metadata.

    scripts/detector/setup && scripts/detector/.venv/bin/python scripts/detector/convert_blazeface.py

Writes crates/motivnet/assets/blazeface_short_range.safetensors (with the licence beside it) and
crates/motivnet/tests/fixtures/blazeface_parity.safetensors.
"""
import io
import json
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import tflite
from safetensors.numpy import save_file

ROOT = Path(__file__).resolve().parents[2]
WHEEL = "mediapipe==0.10.14"
MEMBER = "mediapipe/modules/face_detection/face_detection_short_range.tflite"
LICENSE_MEMBER = "mediapipe-0.10.14.dist-info/LICENSE"
OUT = ROOT / "crates/motivnet/assets/blazeface_short_range.safetensors"
FIXTURE = ROOT / "crates/motivnet/tests/fixtures/blazeface_parity.safetensors"

OPS = {v: k for k, v in tflite.BuiltinOperator.__dict__.items() if not k.startswith("_")}
SAME, VALID = 0, 1


def fetch_model() -> tuple[bytes, bytes]:
    """The .tflite file and the licence, from the wheel (downloaded once into .cache)."""
    cache = ROOT / ".cache/detector"
    cache.mkdir(parents=True, exist_ok=True)
    wheels = list(cache.glob("mediapipe-0.10.14-*.whl"))
    if not wheels:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--python-version", "3.11",
             "--platform", "manylinux2014_x86_64", WHEEL, "-d", str(cache)],
            check=True,
        )
        wheels = list(cache.glob("mediapipe-0.10.14-*.whl"))
    with zipfile.ZipFile(wheels[0]) as wheel:
        return wheel.read(MEMBER), wheel.read(LICENSE_MEMBER)


def read_graph(model_bytes: bytes):
    """The operators in order, as (name, input tensor names, output tensor names, options)."""
    m = tflite.Model.GetRootAsModel(model_bytes, 0)
    g = m.Subgraphs(0)
    tensor = lambda j: g.Tensors(j)
    name = lambda j: tensor(j).Name().decode()

    def constant(j):
        t = tensor(j)
        data = m.Buffers(t.Buffer()).DataAsNumpy()
        dtype = {tflite.TensorType.FLOAT16: np.float16, tflite.TensorType.FLOAT32: np.float32, tflite.TensorType.INT32: np.int32}[t.Type()]
        return np.frombuffer(data.tobytes(), dtype=dtype).reshape(t.ShapeAsNumpy())

    dequantized = {}
    ops = []
    for i in range(g.OperatorsLength()):
        op = g.Operators(i)
        code = m.OperatorCodes(op.OpcodeIndex())
        kind = OPS[max(code.BuiltinCode(), code.DeprecatedBuiltinCode())]
        ins = [j for j in op.InputsAsNumpy() if j >= 0]
        outs = list(op.OutputsAsNumpy())
        if kind == "DEQUANTIZE":
            dequantized[name(outs[0])] = (name(ins[0]), constant(ins[0]))
            continue
        opt = op.BuiltinOptions()
        options = {}
        if kind in ("CONV_2D", "DEPTHWISE_CONV_2D"):
            o = tflite.Conv2DOptions() if kind == "CONV_2D" else tflite.DepthwiseConv2DOptions()
            o.Init(opt.Bytes, opt.Pos)
            options = {"stride": (o.StrideH(), o.StrideW()), "padding": o.Padding(), "activation": o.FusedActivationFunction()}
        elif kind == "MAX_POOL_2D":
            o = tflite.Pool2DOptions()
            o.Init(opt.Bytes, opt.Pos)
            options = {"filter": (o.FilterHeight(), o.FilterWidth()), "stride": (o.StrideH(), o.StrideW()), "padding": o.Padding()}
        elif kind == "ADD":
            o = tflite.AddOptions()
            o.Init(opt.Bytes, opt.Pos)
            options = {"activation": o.FusedActivationFunction()}
        elif kind == "PAD":
            options = {"paddings": constant(ins[1]).tolist()}
        ops.append((kind, [name(j) for j in ins], [name(j) for j in outs], options))
    return ops, dequantized


def describe(ops, dequantized):
    """Weights by our names and the block list, checked against the description above."""
    weights = {}
    produced_by = {outs[0]: (kind, ins, opts) for kind, ins, outs, opts in ops}

    def param(ins, which, prefix):
        source, value = dequantized[ins[which]]
        assert source.endswith(("/Kernel", "/Bias")), source
        weights[f"{prefix}.{'weight' if source.endswith('Kernel') else 'bias'}"] = value
        return value

    convs = [(kind, ins, outs, opts) for kind, ins, outs, opts in ops if kind in ("CONV_2D", "DEPTHWISE_CONV_2D")]
    stem = convs[0]
    assert stem[0] == "CONV_2D" and stem[3]["stride"] == (2, 2) and stem[3]["padding"] == SAME and stem[1][0] == "input"
    param(stem[1], 1, "stem")
    param(stem[1], 2, "stem")
    blocks = []
    heads = {}
    rest = convs[1:]
    i = 0
    while i < len(rest):
        kind, ins, outs, opts = rest[i]
        if kind == "DEPTHWISE_CONV_2D":
            pw = rest[i + 1]
            assert pw[0] == "CONV_2D" and pw[3]["padding"] == VALID and pw[3]["stride"] == (1, 1) and opts["padding"] == SAME
            n = len(blocks)
            dw_w = param(ins, 1, f"blocks.{n}.depthwise")
            param(ins, 2, f"blocks.{n}.depthwise")
            pw_w = param(pw[1], 1, f"blocks.{n}.pointwise")
            param(pw[1], 2, f"blocks.{n}.pointwise")
            blocks.append({"stride": opts["stride"][0], "in": int(dw_w.shape[3]), "out": int(pw_w.shape[0])})
            i += 2
        else:
            # 1 x 1 heads: SAME and VALID padding are the same thing.
            name = outs[0]  # classificator_8, regressor_16, ...
            kernel = param(ins, 1, f"heads.{name}")
            assert kernel.shape[1:3] == (1, 1) and opts["stride"] == (1, 1), outs
            param(ins, 2, f"heads.{name}")
            heads[name] = ins[0]
            i += 1
    # Which block feeds each head: the graph names a block's output activation_<n+1>.
    taps = {name: int(src.split("_")[1]) - 1 for name, src in heads.items()}
    # Max-pooled residuals exactly where blocks stride; channel padding where they widen.
    pools = sum(1 for kind, *_ in ops if kind == "MAX_POOL_2D")
    assert pools == sum(1 for b in blocks if b["stride"] == 2)
    return weights, {"blocks": blocks, "heads": {k: {"block": v} for k, v in taps.items()}, "input": [128, 128]}


def parity_fixture(model_bytes: bytes) -> dict:
    """An input and TFLite's outputs for it: a smooth face-like pattern plus noise, in [-1, 1]."""
    from tflite_runtime.interpreter import Interpreter

    with tempfile.NamedTemporaryFile(suffix=".tflite") as f:
        f.write(model_bytes)
        f.flush()
        it = Interpreter(model_path=f.name)
        it.allocate_tensors()
        rng = np.random.RandomState(7)
        y, x = np.mgrid[0:128, 0:128] / 127.0
        blob = np.exp(-((x - 0.5) ** 2 + (y - 0.45) ** 2) / 0.05)
        image = np.stack([blob * 0.9, blob * 0.6, blob * 0.5], -1) * 2 - 1
        image = np.clip(image + rng.normal(0, 0.05, image.shape), -1, 1).astype(np.float32)[None]
        it.set_tensor(it.get_input_details()[0]["index"], image)
        it.invoke()
        out = {o["name"]: it.get_tensor(o["index"]).copy() for o in it.get_output_details()}
    return {"input": image, "regressors": out["regressors"], "classificators": out["classificators"]}


def main() -> None:
    model_bytes, licence = fetch_model()
    ops, dequantized = read_graph(model_bytes)
    weights, arch = describe(ops, dequantized)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    meta = {"architecture": json.dumps(arch), "source": f"{WHEEL}: {MEMBER}", "license": "Apache-2.0"}
    save_file({k: np.ascontiguousarray(v) for k, v in weights.items()}, str(OUT), metadata=meta)
    (OUT.parent / "blazeface_short_range.LICENSE").write_bytes(licence)
    save_file(parity_fixture(model_bytes), str(FIXTURE))
    print(f"wrote {OUT.relative_to(ROOT)} ({OUT.stat().st_size} bytes, {len(weights)} tensors, {len(arch['blocks'])} blocks, heads {arch['heads']})")
    print(f"wrote {FIXTURE.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
