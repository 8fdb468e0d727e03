"""OpenVINO on the exported reference model (scripts/reference/export_onnx.py), timed: CPU
plugin, a fixed number of inference threads, one stream, in f32 or in the plugin's own
default precision (bf16 on CPUs with AVX512_BF16 or AMX). Prints one JSON line with the median
milliseconds, the precision it ran in, and the resident memory before compiling the model
(the baseline) and at its peak.

    scripts/reference/.venv/bin/python scripts/reference/bench_openvino.py --onnx tiny-b8.onnx --precision f32 --threads 2
"""

import argparse
import json
import resource
import statistics
import time

import numpy as np
import openvino as ov

from process_memory import rss_mb




def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--onnx", required=True)
    ap.add_argument("--precision", choices=["f32", "default"], default="f32",
                    help="f32, or the plugin's default (bf16 where the CPU has it)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    args = ap.parse_args()
    core = ov.Core()
    baseline = rss_mb("VmRSS:")
    model = core.read_model(args.onnx)
    config = {"INFERENCE_NUM_THREADS": args.threads, "NUM_STREAMS": 1, "PERFORMANCE_HINT": "LATENCY"}
    if args.precision == "f32":
        config["INFERENCE_PRECISION_HINT"] = "f32"
    compiled = core.compile_model(model, "CPU", config)
    request = compiled.create_infer_request()
    shape = [d.get_length() for d in compiled.input(0).get_partial_shape()]
    x = np.random.default_rng(0).standard_normal(shape, dtype=np.float32)
    for _ in range(args.warmup):
        request.infer({0: x})
    times = []
    for _ in range(args.iters):
        start = time.perf_counter()
        request.infer({0: x})
        times.append((time.perf_counter() - start) * 1e3)
    hint = str(compiled.get_property("INFERENCE_PRECISION_HINT")).lower()  # e.g. "<Type: 'bfloat16'>"
    precision = next((short for name, short in (("bfloat16", "bf16"), ("float16", "f16"), ("float32", "f32")) if name in hint), hint)
    print(json.dumps({"engine": "openvino", "version": ov.get_version(), "precision": precision, "threads": args.threads,
                      "ms": statistics.median(times), "peakRssMb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                      "baselineRssMb": baseline}))


if __name__ == "__main__":
    main()
