"""Writes the parity fixtures the Rust core is tested against (crates/motivnet/tests/fixtures).

    scripts/reference/setup            # once: a virtual environment with torch, opencv, safetensors
    scripts/reference/.venv/bin/python scripts/reference/make_fixtures.py

Everything is seeded, so a rerun on the same library versions writes the same numbers.
The model is deliberately very small (a few hundred KB of weights) so the fixtures stay small.
"""

from __future__ import annotations

import json
import pathlib
import sys

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

sys.path.insert(0, str(pathlib.Path(__file__).parent))
from motivnet_ref import EncoderConfig, HeadConfig, MotivNet, preprocess  # noqa: E402

OUT = pathlib.Path(__file__).resolve().parents[2] / "crates" / "motivnet" / "tests" / "fixtures"

ENCODER = EncoderConfig(embed_dim=32, depth=2, heads=2, mlp_ratio=4.0, patch_size=16, patch_padding=2,
                        input_height=64, input_width=48)
HEAD = HeadConfig(num_classes=8, embed_dim=32, layers=2, heads=4, feedforward=64, dropout=0.0)

# Two groups with their own learning rate and weight decay, as the training step takes them.
ENCODER_LR, ENCODER_WD = 1e-3, 0.05
DECODER_LR, DECODER_WD = 3e-3, 0.01
CLIP_NORM = 0.1
STEPS = 3


def config_json() -> dict:
    e, h = ENCODER, HEAD
    return {
        "encoder": {"embedDim": e.embed_dim, "depth": e.depth, "heads": e.heads, "mlpRatio": e.mlp_ratio,
                    "patchSize": e.patch_size, "patchPadding": e.patch_padding,
                    "inputHeight": e.input_height, "inputWidth": e.input_width},
        "head": {"numClasses": h.num_classes, "embedDim": h.embed_dim, "layers": h.layers, "heads": h.heads,
                 "feedforward": h.feedforward, "groups": h.num_groups, "dropout": h.dropout},
    }


def contiguous(sd: dict) -> dict:
    return {k: v.detach().contiguous().clone() for k, v in sd.items()}


def trainable(model: MotivNet) -> dict:
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


def run_steps(model: MotivNet, x: torch.Tensor, y: torch.Tensor, clip: float | None) -> dict:
    opt = torch.optim.AdamW(model.param_groups(ENCODER_LR, DECODER_LR, ENCODER_WD, DECODER_WD),
                            betas=(0.9, 0.999), eps=1e-8)
    model.train()
    for _ in range(STEPS):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        if clip is not None:
            torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], clip)
        opt.step()
    return contiguous(trainable(model))


def model_fixtures() -> None:
    torch.manual_seed(0)
    model = MotivNet(ENCODER, HEAD)
    # Larger than default biases and norms so that a mix-up between weight and bias shows.
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n.endswith(".bias") or "norm" in n or ".ln" in n:
                p.add_(torch.randn_like(p) * 0.1)
    state = contiguous(model.state_dict())
    save_file(state, OUT / "weights.safetensors")
    torch.save(state, OUT / "weights.pth")

    g = torch.Generator().manual_seed(1)
    x = torch.randn(4, 3, ENCODER.input_height, ENCODER.input_width, generator=g)
    y = torch.tensor([0, 3, 7, 5], dtype=torch.int64)
    save_file({"x": x, "labels": y}, OUT / "batch.safetensors")

    expected: dict[str, torch.Tensor] = {}
    model.eval()
    with torch.no_grad():
        expected["logits_eval"] = model(x)
    model.train()  # dropout is 0 in this config, so train mode is deterministic
    model.zero_grad()
    logits = model(x)
    loss = F.cross_entropy(logits, y)
    loss.backward()
    expected["logits_train"] = logits.detach()
    expected["loss"] = loss.detach().reshape(1)
    for n, p in trainable(model).items():
        expected[f"grad.{n}"] = p.grad.detach().clone()

    model.load_state_dict(state)
    for n, p in run_steps(model, x, y, None).items():
        expected[f"step{STEPS}.{n}"] = p
    model.load_state_dict(state)
    for n, p in run_steps(model, x, y, CLIP_NORM).items():
        expected[f"step{STEPS}clip.{n}"] = p
    save_file(contiguous(expected), OUT / "expected.safetensors")

    # A Sapiens (mmpose) backbone checkpoint: `backbone.` prefix, patch_embed.projection, a
    # `state_dict` wrapper, and a position embedding for another grid with a class-token slot.
    gh, gw = 6, 6
    pos = torch.randn(1, 1 + gh * gw, ENCODER.embed_dim, generator=g)
    backbone = {}
    for k, v in state.items():
        if not k.startswith("pose_encoder."):
            continue
        k = k[len("pose_encoder."):]
        k = "patch_embed." + k if k.startswith("projection.") else k
        backbone["backbone." + k] = v
    backbone["backbone.pos_embed"] = pos
    backbone["backbone.cls_token"] = torch.zeros(1, 1, ENCODER.embed_dim)
    torch.save({"state_dict": backbone, "meta": {"note": "fixture"}}, OUT / "sapiens_backbone.pth")
    th, tw = ENCODER.grid
    grid = pos[:, 1:].reshape(1, gh, gw, -1).permute(0, 3, 1, 2)
    resized = F.interpolate(grid, size=(th, tw), mode="bicubic", align_corners=False)
    save_file({"pos_embed": resized.flatten(2).transpose(1, 2).contiguous()}, OUT / "pos_embed_resized.safetensors")

    # A TorchScript archive: candle's pickle reader would return zeros for it, so it must be refused.
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), OUT / "torchscript.pt")

    (OUT / "config.json").write_text(json.dumps(config_json(), indent=2) + "\n")


def resize_fixtures() -> None:
    """OpenCV's INTER_LINEAR (what the reference loads with) on odd, exact and extreme sizes."""
    rng = np.random.default_rng(2)
    h, w = ENCODER.input_height, ENCODER.input_width
    sizes = [(40, 30), (128, 96), (100, 77), (64, 48), (17, 200), (3, 2), (301, 149)]
    out: dict[str, torch.Tensor] = {}
    for i, (sh, sw) in enumerate(sizes):
        # Smooth content plus noise: both the interpolation weights and the rounding are exercised.
        yy, xx = np.mgrid[0:sh, 0:sw]
        base = np.stack([(yy * 7 + xx * 3) % 256, (xx * 11) % 256, (yy * 5 + 40) % 256], axis=-1)
        img = np.clip(base + rng.integers(-30, 30, size=base.shape), 0, 255).astype(np.uint8)
        stretch = cv2.resize(img, (w, h), interpolation=cv2.INTER_LINEAR)
        square = cv2.resize(img, (w, w), interpolation=cv2.INTER_LINEAR)
        top = (h - w) // 2
        letterbox = cv2.copyMakeBorder(square, top, h - w - top, 0, 0, cv2.BORDER_CONSTANT, value=(255, 255, 255))
        out[f"src{i}"] = torch.from_numpy(img)
        out[f"stretch{i}"] = torch.from_numpy(stretch)
        out[f"letterbox{i}"] = torch.from_numpy(letterbox)
        out[f"normalized{i}"] = preprocess(img, h, w, "stretch")
    save_file(out, OUT / "resize.safetensors")


if __name__ == "__main__":
    OUT.mkdir(parents=True, exist_ok=True)
    torch.use_deterministic_algorithms(True)
    model_fixtures()
    resize_fixtures()
    total = sum(p.stat().st_size for p in OUT.iterdir())
    print(f"fixtures written to {OUT.relative_to(OUT.parents[3])} ({total / 1024:.0f} KiB)")
