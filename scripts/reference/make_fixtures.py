"""Writes the parity fixtures the Rust core (crates/motivnet/tests/fixtures) and the
TypeScript pipeline (test/fixtures/decode) are tested against.

    scripts/reference/setup            # once: a virtual environment with torch, opencv, safetensors
    scripts/reference/.venv/bin/python scripts/reference/make_fixtures.py
    scripts/reference/.venv/bin/python scripts/reference/make_explain_fixture.py  # reads these weights

Everything is seeded, so a rerun on the same library versions writes the same numbers.
The model is deliberately very small (a few hundred KB of weights) so the fixtures stay small.
The photographs come from scikit-image's sample data (public domain and CC0 images).
"""

from __future__ import annotations

import json
import pathlib
import shutil
import struct
import sys

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

sys.path.insert(0, str(pathlib.Path(__file__).parent))
from motivnet_ref import PRESETS, EncoderConfig, HeadConfig, MotivNet, preprocess  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[2]
OUT = ROOT / "crates" / "motivnet" / "tests" / "fixtures"
DECODE_OUT = ROOT / "test" / "fixtures" / "decode"

ENCODER = EncoderConfig(embed_dim=32, depth=2, heads=2, mlp_ratio=4.0, patch_size=16, patch_padding=2,
                        input_height=64, input_width=48)
HEAD = HeadConfig(num_classes=8, embed_dim=32, layers=2, heads=4, feedforward=64, dropout=0.0)

# Two groups with their own learning rate and weight decay, as the training step takes them.
ENCODER_LR, ENCODER_WD = 1e-3, 0.05
DECODER_LR, DECODER_WD = 3e-3, 0.01
CLIP_NORM = 0.1
STEPS = 3


def config_json(h: HeadConfig = HEAD) -> dict:
    e = ENCODER
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

    # A TorchScript archive: candle's pickle reader would return zeros for it, so it must be
    # refused; scripts/convert_torchscript.py turns it into these tensors.
    scripted = torch.jit.script(torch.nn.Linear(2, 2))
    torch.jit.save(scripted, OUT / "torchscript.pt")
    save_file(contiguous(scripted.state_dict()), OUT / "torchscript_expected.safetensors")

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


def dropout_fixtures() -> None:
    """Train mode with dropout 0.1 on the fixture weights: the masks PyTorch drew, in the order
    the model applies dropout, and the logits, loss, gradients and one AdamW step they give."""
    head = HeadConfig(**{**HEAD.__dict__, "dropout": 0.1})
    model = MotivNet(ENCODER, head)
    model.load_state_dict(torch.load(OUT / "weights.pth"))
    b = load_file(OUT / "batch.safetensors")
    x, y = b["x"], b["labels"]
    masks: list[torch.Tensor] = []
    original = F.dropout

    def recording_dropout(input, p=0.5, training=True, inplace=False):
        if not training or p == 0.0:
            return input
        # PyTorch's own draw: each element 0 or 1/(1-p); what was kept is recorded.
        scaled = original(torch.ones_like(input), p, True)
        masks.append(scaled != 0)
        return input * scaled

    torch.manual_seed(5)
    model.train()
    F.dropout = recording_dropout  # nn.Dropout and MultiheadAttention's weight dropout both call it
    try:
        logits = model(x)
    finally:
        F.dropout = original
    loss = F.cross_entropy(logits, y)
    loss.backward()
    expected: dict[str, torch.Tensor] = {"logits_train": logits.detach(), "loss": loss.detach().reshape(1)}
    for n, p in trainable(model).items():
        expected[f"grad.{n}"] = p.grad.detach().clone()
    opt = torch.optim.AdamW(model.param_groups(ENCODER_LR, DECODER_LR, ENCODER_WD, DECODER_WD),
                            betas=(0.9, 0.999), eps=1e-8)
    opt.step()
    for n, p in trainable(model).items():
        expected[f"step1.{n}"] = p.detach().clone()
    # Our layout: queries batch-first (B, K, ...) where PyTorch's decoder runs (K, B, ...), and
    # attention weights (B, heads, K, N) where PyTorch keeps (B * heads, K, N).
    k, bsz = head.num_groups, x.shape[0]
    per_layer = 5  # tgt, attention weights, attention output, feedforward hidden, feedforward output
    assert len(masks) == per_layer * head.layers, f"{len(masks)} dropout calls"
    for i, m in enumerate(masks):
        if i % per_layer == 1:
            m = m.reshape(bsz, head.heads, k, -1)
        else:
            m = m.transpose(0, 1)
        expected[f"mask.{i}"] = m.to(torch.uint8)
    save_file(contiguous(expected), OUT / "dropout.safetensors")
    (OUT / "config_dropout.json").write_text(json.dumps(config_json(head), indent=2) + "\n")


def released_layout_fixture() -> None:
    """A 7-class MotivNet at the fixture size, saved as the released `MotivNet.pth` is: a plain
    state dict of the upstream module, fresh from upstream's init. Its head (7 classes, 8
    attention heads, feedforward 48) is for the loader to take from the file."""
    torch.manual_seed(3)
    head = HeadConfig(num_classes=7, embed_dim=32, layers=2, heads=8, feedforward=48, dropout=0.1)
    model = MotivNet(ENCODER, head)
    with torch.no_grad():  # a trained model's position embedding is not zero
        model.pose_encoder.pos_embed.normal_(0, 0.5)
    torch.save(model.state_dict(), OUT / "motivnet7.pth")
    b = load_file(OUT / "batch.safetensors")
    model.eval()
    with torch.no_grad():
        save_file({"logits_eval": model(b["x"]).contiguous()}, OUT / "motivnet7_expected.safetensors")
    encoder_only = {"encoder": config_json()["encoder"]}
    (OUT / "config_encoder_only.json").write_text(json.dumps(encoder_only, indent=2) + "\n")


class _ShortRebuild:
    """Pickles as a tensor rebuild call with two arguments where PyTorch writes six."""

    def __reduce__(self):
        return (torch._utils._rebuild_tensor_v2, (1, 2))


def malformed_fixture() -> None:
    """A `.pth` whose tensor rebuild tuple is two items long: candle's pickle reader panics on
    it, which must reach the caller as an error naming the file, not a crash."""
    torch.save({"pose_encoder.projection.bias": torch.zeros(4), "pose_encoder.pos_embed": _ShortRebuild()}, OUT / "short_rebuild_tuple.pth")


def released_shapes_fixture() -> None:
    """The key -> shape table of the released checkpoint's module: MotivNet with 7 classes on
    sapiens-1b (decoder embedding 1152), built on the meta device, so no memory is spent."""
    encoder, head = PRESETS["sapiens-1b"]
    with torch.device("meta"):
        model = MotivNet(encoder, HeadConfig(**{**head.__dict__, "num_classes": 7}))
    shapes = {k: list(v.shape) for k, v in model.state_dict().items()}
    (OUT / "released_shapes.json").write_text(json.dumps(shapes, sort_keys=True) + "\n")


# ---------------------------------------------------------------- decoding + resize, as cv2 does it

def with_exif_orientation(jpeg: bytes, orientation: int) -> bytes:
    """The JPEG with an EXIF APP1 segment holding one tag, Orientation, after its APP0."""
    tiff = b"MM\x00\x2a" + struct.pack(">I", 8) + struct.pack(">H", 1)
    tiff += struct.pack(">HHIHH", 0x0112, 3, 1, orientation, 0) + struct.pack(">I", 0)
    payload = b"Exif\x00\x00" + tiff
    app1 = b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload
    assert jpeg[:2] == b"\xff\xd8"
    at = 2
    if jpeg[2:4] == b"\xff\xe0":  # keep JFIF's APP0 first
        at = 4 + struct.unpack(">H", jpeg[4:6])[0]
    return jpeg[:at] + app1 + jpeg[at:]


def sample_photo(name: str) -> np.ndarray:
    """A scikit-image sample photograph as BGR u8 (public domain or CC0)."""
    import skimage.data

    rgb = getattr(skimage.data, name)()
    if rgb.ndim == 2:
        rgb = np.stack([rgb] * 3, axis=-1)
    return cv2.cvtColor(np.ascontiguousarray(rgb[..., :3]), cv2.COLOR_RGB2BGR)


def decode_fixtures() -> None:
    """Image files of every kind the pipeline must decode as `cv2.imread` does, with what
    `cv2.imread` + `cv2.resize(INTER_LINEAR)` make of them at the fixture model's input size
    (stretched to 48 x 64, and the 48 x 48 square the letterbox pads)."""
    if DECODE_OUT.exists():
        shutil.rmtree(DECODE_OUT)
    DECODE_OUT.mkdir(parents=True)
    files: dict[str, bytes] = {}
    jpeg = lambda img, q=90: cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, q])[1].tobytes()
    png = lambda img: cv2.imencode(".png", img)[1].tobytes()
    # Large photographs: upscaled sample photos, far above any input size, JPEG as cameras write.
    up = lambda img, w, h: cv2.resize(img, (w, h), interpolation=cv2.INTER_CUBIC)
    files["astronaut-2048.jpg"] = jpeg(up(sample_photo("astronaut"), 2048, 2048), 60)
    files["chelsea-3000x2000.jpg"] = jpeg(up(sample_photo("chelsea"), 3000, 2000), 60)
    files["coffee-4000x2667.jpg"] = jpeg(up(sample_photo("coffee"), 4000, 2667), 45)
    retina = pathlib.Path(__import__("skimage").__file__).parent / "data" / "retina.jpg"
    files["retina-1411.jpg"] = retina.read_bytes()  # a photograph as its camera wrote it
    # EXIF orientations 1-8 on a small photo crop whose sides differ.
    small = cv2.resize(sample_photo("chelsea"), (72, 48), interpolation=cv2.INTER_AREA)
    for o in range(1, 9):
        files[f"orientation-{o}.jpg"] = with_exif_orientation(jpeg(small, 92), o)
    # Extreme aspect ratios, greyscale, alpha, 16-bit and palette images.
    coffee = sample_photo("coffee")
    files["wide-3000x24.jpg"] = jpeg(up(coffee, 3000, 24), 90)
    files["tall-20x2400.png"] = png(up(coffee, 20, 2400))
    files["grey.jpg"] = jpeg(cv2.cvtColor(up(coffee, 200, 150), cv2.COLOR_BGR2GRAY), 90)
    rgba = cv2.cvtColor(up(coffee, 120, 90), cv2.COLOR_BGR2BGRA)
    rgba[..., 3] = np.linspace(0, 255, 120, dtype=np.uint8)[None, :]
    files["alpha.png"] = png(rgba)
    files["deep-16bit.png"] = png(up(coffee, 120, 90).astype(np.uint16) * 257 + 100)
    expected: dict[str, torch.Tensor] = {}
    for name, data in files.items():
        (DECODE_OUT / name).write_bytes(data)
        img = cv2.imread(str(DECODE_OUT / name), cv2.IMREAD_COLOR)  # applies EXIF orientation
        assert img is not None, name
        rgb = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
        expected[f"{name}:size"] = torch.tensor([rgb.shape[1], rgb.shape[0]], dtype=torch.int32)
        h, w = ENCODER.input_height, ENCODER.input_width
        expected[f"{name}:stretch"] = torch.from_numpy(cv2.resize(rgb, (w, h), interpolation=cv2.INTER_LINEAR))
        expected[f"{name}:square"] = torch.from_numpy(cv2.resize(rgb, (w, w), interpolation=cv2.INTER_LINEAR))
    save_file({k: v.contiguous() for k, v in expected.items()}, DECODE_OUT / "expected.safetensors")
    (DECODE_OUT / "README.md").write_text(
        "Written by `scripts/reference/make_fixtures.py` (decode_fixtures): image files and what\n"
        "`cv2.imread` + `cv2.resize(INTER_LINEAR)` make of them. The photographs are derived from\n"
        "scikit-image's sample data: astronaut (NASA, public domain), chelsea (Stefan van der Walt,\n"
        "CC0), coffee (Rachel Michetti, CC0), retina (Mikael H\u00e4ggstr\u00f6m, CC0).\n"
    )


if __name__ == "__main__":
    OUT.mkdir(parents=True, exist_ok=True)
    torch.use_deterministic_algorithms(True)
    model_fixtures()
    dropout_fixtures()
    released_layout_fixture()
    released_shapes_fixture()
    malformed_fixture()
    resize_fixtures()
    decode_fixtures()
    for out in (OUT, DECODE_OUT):
        total = sum(p.stat().st_size for p in out.iterdir())
        print(f"fixtures written to {out.relative_to(ROOT)} ({total / 1024:.0f} KiB)")
