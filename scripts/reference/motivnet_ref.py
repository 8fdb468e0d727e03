"""MotivNet in PyTorch, as the upstream code builds it: the yardstick the Rust core is
measured by.

Sapiens ViT encoder + ML-Decoder head. Module and parameter names are upstream's, so
`MotivNet().state_dict()` has exactly the checkpoint keys (`pose_encoder.*`,
`decoder.decoder.*`), and it starts where upstream starts: PyTorch's default Linear and Conv
init, a zero position embedding, and decoder layers that are deep copies of one layer (as
`nn.TransformerDecoder` makes them). The encoder's attention is
`F.scaled_dot_product_attention`, as upstream calls it (`ATTENTION = "explicit"` switches to
`softmax(q k^T / sqrt(d)) v`, numerically the same and slower). Used to make parity fixtures
and for benchmarks; never needed by the package's tests at run time.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass
class EncoderConfig:
    embed_dim: int
    depth: int
    heads: int
    mlp_ratio: float = 4.0
    patch_size: int = 16
    patch_padding: int = 2
    input_height: int = 1024
    input_width: int = 768

    @property
    def grid(self) -> tuple[int, int]:
        k, p = self.patch_size, self.patch_padding
        return ((self.input_height + 2 * p - k) // k + 1, (self.input_width + 2 * p - k) // k + 1)


@dataclass
class HeadConfig:
    num_classes: int = 8
    embed_dim: int = 768
    layers: int = 2
    heads: int = 8
    feedforward: int = 2048
    groups: int | None = None
    dropout: float = 0.1

    @property
    def num_groups(self) -> int:
        return self.groups if self.groups else min(100, self.num_classes)


PRESETS = {
    "tiny": (EncoderConfig(192, 4, 3, input_height=256, input_width=192), HeadConfig(embed_dim=192)),
    "small": (EncoderConfig(384, 8, 6, input_height=512, input_width=384), HeadConfig(embed_dim=384)),
    "sapiens-0.3b": (EncoderConfig(1024, 24, 16), HeadConfig(embed_dim=768)),
    "sapiens-0.6b": (EncoderConfig(1280, 32, 16), HeadConfig(embed_dim=768)),
    "sapiens-1b": (EncoderConfig(1536, 40, 24), HeadConfig(embed_dim=1152)),
    "sapiens-2b": (EncoderConfig(1920, 48, 32), HeadConfig(embed_dim=768)),
}


# ---------------------------------------------------------------- encoder (Sapiens ViT)


# "sdpa" (upstream's call) or "explicit".
ATTENTION = "sdpa"


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        if ATTENTION == "sdpa":
            out = F.scaled_dot_product_attention(q, k, v)
        else:
            scores = (q @ k.transpose(-2, -1)) / math.sqrt(d // self.heads)
            out = scores.softmax(dim=-1) @ v
        return self.proj(out.transpose(1, 2).reshape(b, n, d))


class FFN(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        # mmcv's FFN layout: layers.0 = Sequential(fc1, GELU), layers.1 = fc2.
        self.layers = nn.Sequential(nn.Sequential(nn.Linear(dim, hidden), nn.GELU()), nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class Block(nn.Module):
    def __init__(self, dim: int, heads: int, hidden: int):
        super().__init__()
        self.ln1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, heads)
        self.ln2 = nn.LayerNorm(dim, eps=1e-6)
        self.ffn = FFN(dim, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.ffn(self.ln2(x))


class SapiensEncoder(nn.Module):
    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        self.cfg = cfg
        d = cfg.embed_dim
        gh, gw = cfg.grid
        self.projection = nn.Conv2d(3, d, cfg.patch_size, cfg.patch_size, padding=cfg.patch_padding)
        self.pos_embed = nn.Parameter(torch.zeros(1, gh * gw, d))
        self.layers = nn.ModuleList(Block(d, cfg.heads, int(d * cfg.mlp_ratio)) for _ in range(cfg.depth))
        self.ln1 = nn.LayerNorm(d, eps=1e-6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.projection(x)
        b, d, gh, gw = x.shape
        x = x.flatten(2).transpose(1, 2) + self.pos_embed
        for layer in self.layers:
            x = layer(x)
        x = self.ln1(x)
        return x.transpose(1, 2).reshape(b, d, gh, gw)


# ---------------------------------------------------------------- head (ML-Decoder)


class DecoderLayer(nn.Module):
    """ML-Decoder's TransformerDecoderLayerOptimal: cross-attention only, query added to itself."""

    def __init__(self, dim: int, heads: int, feedforward: int, dropout: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-5)
        self.dropout = nn.Dropout(dropout)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)
        self.dropout3 = nn.Dropout(dropout)
        self.self_attn = nn.MultiheadAttention(dim, heads, dropout=dropout)
        self.linear1 = nn.Linear(dim, feedforward)
        self.linear2 = nn.Linear(feedforward, dim)
        self.norm2 = nn.LayerNorm(dim, eps=1e-5)
        self.norm3 = nn.LayerNorm(dim, eps=1e-5)

    def forward(self, tgt: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
        return self.attend(tgt, memory)[0]

    def attend(self, tgt: torch.Tensor, memory: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The layer's output and its cross-attention weights (B, K, N): softmax(q k^T /
        sqrt(d_head)) averaged over heads, as `nn.MultiheadAttention` returns them by default
        (the reference's own call computes and drops them; after dropout in train mode)."""
        tgt = tgt + self.dropout1(tgt)
        tgt = self.norm1(tgt)
        tgt2, weights = self.self_attn(tgt, memory, memory, need_weights=True, average_attn_weights=True)
        tgt = self.norm2(tgt + self.dropout2(tgt2))
        tgt2 = self.linear2(self.dropout(F.relu(self.linear1(tgt))))
        return self.norm3(tgt + self.dropout3(tgt2)), weights


class MLDecoder(nn.Module):
    def __init__(self, cfg: HeadConfig, in_dim: int):
        super().__init__()
        self.cfg = cfg
        k = cfg.num_groups
        e = cfg.embed_dim
        self.factor = math.ceil(cfg.num_classes / k)
        # The reference hangs everything on `self.decoder`, hence the `decoder.decoder.` keys.
        self.decoder = nn.Module()
        self.decoder.embed_standart = nn.Linear(in_dim, e)
        self.decoder.query_embed = nn.Embedding(k, e)
        self.decoder.query_embed.requires_grad_(False)
        # nn.TransformerDecoder(layer, num_layers) deep-copies the one layer it is given.
        layer = DecoderLayer(e, cfg.heads, cfg.feedforward, cfg.dropout)
        self.decoder.layers = nn.ModuleList(copy.deepcopy(layer) for _ in range(cfg.layers))
        self.decoder.duplicate_pooling = nn.Parameter(torch.empty(k, e, self.factor))
        self.decoder.duplicate_pooling_bias = nn.Parameter(torch.empty(cfg.num_classes))
        nn.init.xavier_normal_(self.decoder.duplicate_pooling)
        nn.init.constant_(self.decoder.duplicate_pooling_bias, 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = x.flatten(2).transpose(1, 2)
        memory = F.relu(self.decoder.embed_standart(tokens)).transpose(0, 1)  # (N, B, E)
        b = tokens.shape[0]
        tgt = self.decoder.query_embed.weight.unsqueeze(1).expand(-1, b, -1)  # (K, B, E)
        for layer in self.decoder.layers:
            tgt = layer(tgt, memory)
        return self.pool(tgt)

    def pool(self, tgt: torch.Tensor) -> torch.Tensor:
        """The group fully-connected layer: queries (K, B, E) -> logits (B, num_classes)."""
        h = tgt.transpose(0, 1)  # (B, K, E)
        out = torch.einsum("bke,kef->bkf", h, self.decoder.duplicate_pooling)
        return out.flatten(1)[:, : self.cfg.num_classes] + self.decoder.duplicate_pooling_bias

    def forward_explained(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits (B, num_classes) and where each class looks: the last decoder layer's
        cross-attention weights, averaged over heads, of the query whose group holds the class
        (class c is pooled from query c // factor: logits[:, k * factor + j]), on the encoder's
        grid (B, num_classes, grid_h, grid_w); each map sums to 1."""
        b, _, gh, gw = x.shape
        tokens = x.flatten(2).transpose(1, 2)
        memory = F.relu(self.decoder.embed_standart(tokens)).transpose(0, 1)  # (N, B, E)
        tgt = self.decoder.query_embed.weight.unsqueeze(1).expand(-1, b, -1)  # (K, B, E)
        weights = None
        for layer in self.decoder.layers:
            tgt, weights = layer.attend(tgt, memory)
        assert weights is not None, "a head without decoder layers attends nowhere"
        group = torch.arange(self.cfg.num_classes) // self.factor
        maps = weights[:, group].reshape(b, self.cfg.num_classes, gh, gw)
        return self.pool(tgt), maps


class MotivNet(nn.Module):
    def __init__(self, enc: EncoderConfig, head: HeadConfig):
        super().__init__()
        self.pose_encoder = SapiensEncoder(enc)
        self.decoder = MLDecoder(head, enc.embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.pose_encoder(x))

    def forward_explained(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits and per-class attention maps (B, num_classes, grid_h, grid_w): see
        `MLDecoder.forward_explained`."""
        return self.decoder.forward_explained(self.pose_encoder(x))

    def param_groups(self, encoder_lr: float, decoder_lr: float, encoder_wd: float, decoder_wd: float):
        enc = [p for p in self.pose_encoder.parameters() if p.requires_grad]
        dec = [p for p in self.decoder.parameters() if p.requires_grad]
        return [
            {"params": enc, "lr": encoder_lr, "weight_decay": encoder_wd},
            {"params": dec, "lr": decoder_lr, "weight_decay": decoder_wd},
        ]


def from_preset(name: str, num_classes: int = 8) -> MotivNet:
    enc, head = PRESETS[name]
    head = HeadConfig(**{**head.__dict__, "num_classes": num_classes})
    return MotivNet(enc, head)


# ---------------------------------------------------------------- preprocessing (section 4)

MEAN = (123.5, 116.5, 103.5)
STD = (58.5, 57.0, 57.5)


def preprocess(rgb_u8, height: int, width: int, geometry: str = "stretch"):
    """What the reference does to one decoded RGB image: OpenCV resize, then normalize."""
    import cv2
    import numpy as np

    if geometry == "stretch":
        img = cv2.resize(rgb_u8, (width, height), interpolation=cv2.INTER_LINEAR)
    elif geometry == "letterbox":
        img = cv2.resize(rgb_u8, (width, width), interpolation=cv2.INTER_LINEAR)
        top = (height - width) // 2
        img = cv2.copyMakeBorder(img, top, height - width - top, 0, 0, cv2.BORDER_CONSTANT, value=(255, 255, 255))
    else:
        img = rgb_u8
    x = (img.astype(np.float32) - np.array(MEAN, np.float32)) / np.array(STD, np.float32)
    return torch.from_numpy(x.transpose(2, 0, 1).copy())
