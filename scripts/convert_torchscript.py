"""TorchScript (`torch.jit.save`) or torch.export (`.pt2`) archive -> safetensors state dict.

Rust cannot read these archives (candle's pickle reader would return zero tensors for a
TorchScript file), so this step needs PyTorch (scripts/reference/setup installs it):

    scripts/reference/.venv/bin/python scripts/convert_torchscript.py sapiens_1b_torchscript.pt2 sapiens_1b.safetensors

Official Sapiens releases ship such archives; the reference takes their `.backbone`. Keys are
written with a `backbone.` prefix when the archive is a bare backbone, so `motivnet` reads them
as a Sapiens checkpoint (encoder only, head freshly initialised).
"""

import argparse
import pathlib

import torch
from safetensors.torch import save_file


def load_state_dict(path: pathlib.Path) -> dict:
    if path.suffix == ".pt2":
        program = torch.export.load(str(path))
        return dict(program.state_dict)
    module = torch.jit.load(str(path), map_location="cpu")
    if hasattr(module, "backbone"):
        return {f"backbone.{k}": v for k, v in module.backbone.state_dict().items()}
    return module.state_dict()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("input", type=pathlib.Path)
    ap.add_argument("output", type=pathlib.Path)
    args = ap.parse_args()
    state = {k: v.detach().to(torch.float32).contiguous() for k, v in load_state_dict(args.input).items() if torch.is_tensor(v)}
    if state and not any(k.startswith(("backbone.", "pose_encoder.", "decoder.")) for k in state):
        state = {f"backbone.{k}": v for k, v in state.items()}
    save_file(state, str(args.output))
    print(f"wrote {len(state)} tensors to {args.output}")


if __name__ == "__main__":
    main()
