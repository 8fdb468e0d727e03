"""The PyTorch reference model, timed: inference forward or a train step (forward, backward,
AdamW with two groups) on random weights and inputs, in eager mode (attention through
`scaled_dot_product_attention`, as the upstream code) or under `torch.compile`; or the end to
end case, JPEG files through the reference's loader (in this process, or a DataLoader with
worker processes) into train steps; or the roofline, a large matmul in f32 and bf16. Prints
one JSON line with the median milliseconds and the resident memory before the model is built
(the baseline, with torch loaded) and at the peak.

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
from process_memory import rss_mb  # noqa: E402




def roofline(iters: int) -> dict:
    """GFLOP/s of a 2048^3 matmul in f32 and bf16 on this process's threads."""
    out = {"case": "roofline", "threads": torch.get_num_threads(), "torch": torch.__version__}
    n = 2048
    for name, dtype in (("f32", torch.float32), ("bf16", torch.bfloat16)):
        a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
        for _ in range(2):
            a @ b
        times = []
        for _ in range(max(iters, 3)):
            start = time.perf_counter()
            a @ b
            times.append(time.perf_counter() - start)
        out[f"{name}Gflops"] = 2 * n**3 / statistics.median(times) / 1e9
    return out


class JpegFiles(torch.utils.data.Dataset):
    """The reference's loading: OpenCV read, resize (stretch) and normalize a file."""

    def __init__(self, files: list, height: int, width: int):
        self.files, self.height, self.width = files, height, width

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> torch.Tensor:
        import cv2
        import numpy as np

        from motivnet_ref import MEAN, STD

        img = cv2.cvtColor(cv2.imread(self.files[i], cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
        img = cv2.resize(img, (self.width, self.height), interpolation=cv2.INTER_LINEAR)
        x = (img.astype(np.float32) - np.array(MEAN, np.float32)) / np.array(STD, np.float32)
        return torch.from_numpy(x.transpose(2, 0, 1).copy())


class Autocast(torch.nn.Module):
    """The model's forward under torch.autocast in bf16; its weights and the optimizer stay f32."""

    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(x.device.type, dtype=torch.bfloat16):
            return self.inner(x).float()

    def param_groups(self, *args):
        return self.inner.param_groups(*args)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--case", choices=["forward", "train", "e2e", "roofline"], required=True)
    ap.add_argument("--dir", help="e2e: folder of JPEG files, read as the reference's loader does")
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--device", default="cpu", help="cpu or cuda (forward and train cases)")
    ap.add_argument("--autocast", choices=["none", "bf16"], default="none",
                    help="bf16: forward under torch.autocast (weights and optimizer stay f32)")
    ap.add_argument("--compile", action="store_true", help="torch.compile the model (forward and train cases)")
    ap.add_argument("--workers", type=int, default=0,
                    help="e2e: DataLoader worker processes (0: load in this process, DataLoader's default)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    if args.case == "roofline":
        print(json.dumps(roofline(args.iters)))
        return
    baseline_mb = rss_mb("VmRSS:")
    model = from_preset(args.preset)
    enc = model.pose_encoder.cfg
    device = torch.device(args.device)
    model = model.to(device)
    x = torch.randn(args.batch, 3, enc.input_height, enc.input_width, device=device)
    y = (torch.arange(args.batch) % 8).to(device)
    # CUDA runs asynchronously: a step's time counts only once its kernels have finished.
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    if args.autocast == "bf16":
        model = Autocast(model)
    compiled = torch.compile(model) if args.compile else model
    if args.case == "e2e":
        # The reference's loader in one process (DataLoader's default num_workers=0): OpenCV
        # read, resize (stretch) and normalize each file, then a train step per batch.
        import cv2
        import numpy as np

        from motivnet_ref import MEAN, STD

        files = sorted(str(p) for p in pathlib.Path(args.dir).glob("*.jpg"))
        model.train()
        opt = torch.optim.AdamW(model.param_groups(1e-5, 1e-4, 0.01, 0.01))
        total = (args.warmup + args.iters) * args.batch
        dataset = JpegFiles([files[i % len(files)] for i in range(total)], enc.input_height, enc.input_width)
        loader = iter(torch.utils.data.DataLoader(dataset, batch_size=args.batch, num_workers=args.workers,
                                                  persistent_workers=args.workers > 0))

        def step() -> None:
            xb = next(loader)
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(model(xb), y).backward()
            opt.step()
    elif args.case == "forward":
        model.eval()

        def step() -> None:
            with torch.inference_mode():
                compiled(x)
    else:
        model.train()
        opt = torch.optim.AdamW(model.param_groups(1e-5, 1e-4, 0.01, 0.01))

        def step() -> None:
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(compiled(x), y).backward()
            opt.step()

    for _ in range(args.warmup):
        step()
    times = []
    for _ in range(args.iters):
        start = time.perf_counter()
        step()
        sync()
        times.append((time.perf_counter() - start) * 1e3)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    report = {"case": args.case, "preset": args.preset, "batch": args.batch, "threads": torch.get_num_threads(),
              "ms": statistics.median(times), "peakRssMb": peak_mb, "baselineRssMb": baseline_mb,
              "torch": torch.__version__, "device": args.device, "autocast": args.autocast, "compile": args.compile,
              "workers": args.workers}
    if device.type == "cuda":
        report["peakGpuMib"] = torch.cuda.max_memory_reserved(device) / 2**20
        report["gpu"] = torch.cuda.get_device_name(device)
    print(json.dumps(report))


if __name__ == "__main__":
    main()
