"""A DDPM++-style UNet (Song et al. 2021, as EDM's ``SongUNet`` and DPDM's MNIST model): GroupNorm, SiLU,
residual blocks that carry the noise (and class) embedding, self-attention at chosen resolutions.

Every layer treats examples independently (GroupNorm, no running statistics), so the network works with
per-example gradients (``torch.func.vmap``) and with Opacus hooks. The attention is written out from 1x1
convolutions and a softmax for the same reason.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class UNetConfig:
    img_resolution: int = 28
    in_channels: int = 1
    out_channels: int = 1
    model_channels: int = 32
    channel_mult: tuple[int, ...] = (1, 2, 2)
    num_blocks: int = 2
    attn_resolutions: tuple[int, ...] = (7,)
    num_classes: int = 0  # 0: unconditional; else labels in [0, num_classes], num_classes meaning "no label"
    dropout: float = 0.0
    embedding_mult: int = 4  # embedding width = model_channels * embedding_mult

    def __post_init__(self) -> None:
        object.__setattr__(self, "channel_mult", tuple(self.channel_mult))
        object.__setattr__(self, "attn_resolutions", tuple(self.attn_resolutions))
        if not self.channel_mult or min(self.channel_mult) < 1:
            raise ValueError(f"channel_mult must be a non-empty list of positive integers, got {self.channel_mult}")
        factor = 2 ** (len(self.channel_mult) - 1)
        if self.img_resolution < 1 or self.img_resolution % factor:
            raise ValueError(
                f"img_resolution {self.img_resolution} must be divisible by 2**(levels-1) = {factor} "
                f"for channel_mult {self.channel_mult}"
            )
        for name in ("in_channels", "out_channels", "model_channels", "num_blocks", "embedding_mult"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.model_channels % 4:
            raise ValueError(f"model_channels must be a multiple of 4 (GroupNorm groups), got {self.model_channels}")
        if self.num_classes < 0:
            raise ValueError(f"num_classes must be >= 0, got {self.num_classes}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"dropout must lie in [0, 1), got {self.dropout}")
        resolutions = {self.img_resolution // 2**i for i in range(len(self.channel_mult))}
        if not set(self.attn_resolutions) <= resolutions:
            raise ValueError(f"attn_resolutions {self.attn_resolutions} not among the UNet's resolutions {sorted(resolutions)}")


def group_norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(min(32, channels // 4), channels, eps=1e-6)


def zero_init(module: nn.Module) -> nn.Module:
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class PositionalEmbedding(nn.Module):
    """Sinusoidal embedding of the noise label (Transformer-style, as DDPM++)."""

    def __init__(self, channels: int, max_positions: int = 10000):
        super().__init__()
        self.channels = channels
        self.max_positions = max_positions

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        freqs = torch.arange(self.channels // 2, dtype=torch.float32, device=x.device) / (self.channels // 2)
        freqs = (1 / self.max_positions) ** freqs
        angles = x.float().unsqueeze(-1) * freqs
        return torch.cat([angles.cos(), angles.sin()], dim=-1).to(x.dtype)


class Attention(nn.Module):
    """Single-head self-attention over the spatial positions, residual, scaled by 1/sqrt(2)."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm = group_norm(channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = zero_init(nn.Conv2d(channels, channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(b, 3, c, h * w).unbind(1)
        weights = torch.softmax(torch.einsum("bci,bcj->bij", q, k) / math.sqrt(c), dim=-1)
        out = torch.einsum("bij,bcj->bci", weights, v).reshape(b, c, h, w)
        return (x + self.proj(out)) / math.sqrt(2)


class ResBlock(nn.Module):
    """GN-SiLU-conv, + embedding, GN-SiLU-dropout-conv; optional 2x down/up-sampling; skip; / sqrt(2)."""

    def __init__(self, cin: int, cout: int, emb: int, *, dropout: float, resample: str = "none", attention: bool = False):
        super().__init__()
        self.resample = resample
        self.norm0 = group_norm(cin)
        self.conv0 = nn.Conv2d(cin, cout, 3, padding=1)
        self.affine = nn.Linear(emb, cout)
        self.norm1 = group_norm(cout)
        self.dropout = nn.Dropout(dropout)
        self.conv1 = zero_init(nn.Conv2d(cout, cout, 3, padding=1))
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else None
        self.attention = Attention(cout) if attention else None

    def _resample(self, x: torch.Tensor) -> torch.Tensor:
        if self.resample == "down":
            return F.avg_pool2d(x, 2)
        if self.resample == "up":
            return F.interpolate(x, scale_factor=2.0, mode="nearest")
        return x

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv0(self._resample(F.silu(self.norm0(x))))
        h = h + self.affine(emb)[:, :, None, None]
        h = self.conv1(self.dropout(F.silu(self.norm1(h))))
        skip = self._resample(x)
        if self.skip is not None:
            skip = self.skip(skip)
        out = (h + skip) / math.sqrt(2)
        return self.attention(out) if self.attention is not None else out


class UNet(nn.Module):
    """Raw network F_x(x, noise_labels, class_labels) of the DDPM++ family."""

    def __init__(self, config: UNetConfig = UNetConfig()):
        super().__init__()
        self.config = cfg = config
        emb = cfg.model_channels * cfg.embedding_mult
        self.map_noise = PositionalEmbedding(cfg.model_channels)
        self.map_layer0 = nn.Linear(cfg.model_channels, emb)
        self.map_layer1 = nn.Linear(emb, emb)
        self.map_label = nn.Embedding(cfg.num_classes + 1, emb) if cfg.num_classes else None

        def block(cin, cout, res, resample="none"):
            return ResBlock(cin, cout, emb, dropout=cfg.dropout, resample=resample,
                            attention=res in cfg.attn_resolutions and resample == "none")

        self.conv_in = nn.Conv2d(cfg.in_channels, cfg.model_channels, 3, padding=1)
        self.enc = nn.ModuleList()
        skips = [cfg.model_channels]
        cout = cfg.model_channels
        for level, mult in enumerate(cfg.channel_mult):
            res = cfg.img_resolution >> level
            if level > 0:
                self.enc.append(block(cout, cout, res, "down"))
                skips.append(cout)
            for _ in range(cfg.num_blocks):
                cin, cout = cout, cfg.model_channels * mult
                self.enc.append(block(cin, cout, res))
                skips.append(cout)

        self.mid = nn.ModuleList([
            ResBlock(cout, cout, emb, dropout=cfg.dropout, attention=True),
            ResBlock(cout, cout, emb, dropout=cfg.dropout),
        ])
        self.dec = nn.ModuleList()
        for level, mult in reversed(list(enumerate(cfg.channel_mult))):
            res = cfg.img_resolution >> level
            if level < len(cfg.channel_mult) - 1:
                self.dec.append(block(cout, cout, res, "up"))
            for _ in range(cfg.num_blocks + 1):
                cin, cout = cout + skips.pop(), cfg.model_channels * mult
                self.dec.append(block(cin, cout, res))
        self.norm_out = group_norm(cout)
        self.conv_out = zero_init(nn.Conv2d(cout, cfg.out_channels, 3, padding=1))

    def forward(self, x: torch.Tensor, noise_labels: torch.Tensor, class_labels: torch.Tensor | None = None) -> torch.Tensor:
        emb = self.map_noise(noise_labels.reshape(-1))
        emb = F.silu(self.map_layer0(emb))
        emb = self.map_layer1(emb)
        if self.map_label is not None:
            if class_labels is None:  # no label: the classifier-free "null" class
                class_labels = torch.full((x.shape[0],), self.config.num_classes, dtype=torch.long, device=x.device)
            emb = emb + self.map_label(class_labels)
        emb = F.silu(emb)

        h = self.conv_in(x)
        skips = [h]
        for block in self.enc:
            h = block(h, emb)
            skips.append(h)
        for block in self.mid:
            h = block(h, emb)
        for block in self.dec:
            if block.resample != "up":
                h = torch.cat([h, skips.pop()], dim=1)
            h = block(h, emb)
        return self.conv_out(F.silu(self.norm_out(h)))


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
