"""The PyTorch reference model, timed: inference forward or a train step (forward, backward,
AdamW with two groups) on random weights and inputs. Prints one JSON line with the median
milliseconds and the peak resident memory of this process.

    scripts/reference/.venv/bin/python scripts/reference/bench_model.py --case train --preset tiny --batch 8 --threads 2
"""

import argparse
import json
import pathlib
import resource
import statistics
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, str(pathlib.Path(__file__).parent))
from motivnet_ref import from_preset  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--case", choices=["forward", "train"], required=True)
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = from_preset(args.preset)
    enc = model.pose_encoder.cfg
    x = torch.randn(args.batch, 3, enc.input_height, enc.input_width)
    y = torch.arange(args.batch) % 8
    if args.case == "forward":
        model.eval()

        def step() -> None:
            with torch.inference_mode():
                model(x)
    else:
        model.train()
        opt = torch.optim.AdamW(model.param_groups(1e-5, 1e-4, 0.01, 0.01))

        def step() -> None:
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(model(x), y).backward()
            opt.step()

    for _ in range(args.warmup):
        step()
    times = []
    for _ in range(args.iters):
        start = time.perf_counter()
        step()
        times.append((time.perf_counter() - start) * 1e3)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"case": args.case, "preset": args.preset, "batch": args.batch, "threads": torch.get_num_threads(),
                      "ms": statistics.median(times), "peakRssMb": peak_mb, "torch": torch.__version__}))


if __name__ == "__main__":
    main()
