"""Writes crates/motivnet/tests/fixtures/explain_expected.safetensors: where the ML-Decoder
looks, as the PyTorch reference computes it, for `crates/motivnet/tests/explain.rs`.

    scripts/reference/.venv/bin/python scripts/reference/make_explain_fixture.py

Run after make_fixtures.py: it reads that script's weights.pth and batch.safetensors.

The maps are the last decoder layer's cross-attention weights (`nn.MultiheadAttention` with
`need_weights=True, average_attn_weights=True`: softmax(q k^T / sqrt(d_head)) averaged over
heads), of the query each class is pooled from, on the encoder's grid (B, C, grid_h, grid_w).

Keys:
- `logits`, `attention`: the fixture model (config.json, weights.pth) on the fixture batch.
- `grouped.logits`, `grouped.attention`: a head with fewer query groups than classes
  (config_explain_grouped.json: 8 classes in 3 groups, so 3 classes share a query), on the
  fixture model's encoder; its head's parameters under `grouped.` + their checkpoint names.
"""

from __future__ import annotations

import json
import pathlib
import sys

import torch
from safetensors.torch import load_file, save_file

sys.path.insert(0, str(pathlib.Path(__file__).parent))
from make_fixtures import ENCODER, HEAD, OUT, config_json, contiguous  # noqa: E402
from motivnet_ref import HeadConfig, MotivNet  # noqa: E402

# Small on purpose: its head's weights travel in the fixture (about 20 KB).
GROUPED = HeadConfig(num_classes=8, embed_dim=16, layers=2, heads=2, feedforward=32, groups=3, dropout=0.0)


def explained(model: MotivNet, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    model.eval()
    with torch.no_grad():
        logits, maps = model.forward_explained(x)
        assert torch.equal(logits, model(x)), "explaining changes the logits"
    assert torch.allclose(maps.sum(dim=(2, 3)), torch.ones(maps.shape[:2]), atol=1e-6)
    return logits, maps


def main() -> None:
    torch.use_deterministic_algorithms(True)
    state = torch.load(OUT / "weights.pth")
    b = load_file(OUT / "batch.safetensors")
    x = b["x"]
    out: dict[str, torch.Tensor] = {}

    model = MotivNet(ENCODER, HEAD)
    model.load_state_dict(state)
    out["logits"], out["attention"] = explained(model, x)

    torch.manual_seed(11)
    grouped = MotivNet(ENCODER, GROUPED)
    encoder = {k: v for k, v in state.items() if k.startswith("pose_encoder.")}
    missing, unexpected = grouped.load_state_dict(encoder, strict=False)
    assert not unexpected and all(k.startswith("decoder.") for k in missing)
    with torch.no_grad():  # as make_fixtures.py: biases and norms off their defaults
        for n, p in grouped.decoder.named_parameters():
            if n.endswith(".bias") or "norm" in n:
                p.add_(torch.randn_like(p) * 0.1)
    out["grouped.logits"], out["grouped.attention"] = explained(grouped, x)
    for k, v in grouped.state_dict().items():
        if k.startswith("decoder."):
            out[f"grouped.{k}"] = v
    factor = grouped.decoder.factor
    assert factor > 1
    a = out["grouped.attention"]
    for c in range(GROUPED.num_classes):
        assert torch.equal(a[:, c], a[:, (c // factor) * factor])

    save_file(contiguous(out), OUT / "explain_expected.safetensors")
    (OUT / "config_explain_grouped.json").write_text(json.dumps(config_json(GROUPED), indent=2) + "\n")
    size = (OUT / "explain_expected.safetensors").stat().st_size
    spread = [(n, float(out[n].min()), float(out[n].max())) for n in ("attention", "grouped.attention")]
    print(f"wrote {OUT / 'explain_expected.safetensors'} ({size / 1024:.1f} KiB); map min/max {spread}")


if __name__ == "__main__":
    main()
