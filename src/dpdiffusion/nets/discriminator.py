"""DP-SAD's discriminator: it sees two denoised images side by side -- the teacher's and the student's, in
either order -- and says whether the teacher's comes first. Conditioned on the noise level (and the label)
the pair was denoised at. Only layers with per-example rules (Conv2d, GroupNorm, Linear, Embedding): no
BatchNorm, nothing that mixes the examples of a batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from dpdiffusion.nets.unet import PositionalEmbedding


@dataclass(frozen=True)
class DiscriminatorConfig:
    channels: int = 32  # at full resolution; doubled at each of ``levels`` stride-2 convolutions
    levels: int = 2

    def __post_init__(self) -> None:
        if self.channels < 4 or self.channels % 4 or self.levels < 1:
            raise ValueError(f"discriminator: channels must be a multiple of 4 (>= 4) and levels >= 1, got "
                             f"{self.channels}, {self.levels}")


class PairDiscriminator(nn.Module):
    """logit(first image is the teacher's) for pairs [B, 2C, H, W], at noise level c_noise [B]."""

    def __init__(self, config: DiscriminatorConfig, *, in_channels: int, num_classes: int = 0):
        super().__init__()
        self.num_classes = num_classes
        width = config.channels
        self.conv_in = nn.Conv2d(2 * in_channels, width, 3, padding=1)
        self.noise_embedding = PositionalEmbedding(width)
        self.map = nn.Linear(width, width)
        self.label_embedding = nn.Embedding(num_classes + 1, width) if num_classes else None
        blocks = []
        for _ in range(config.levels):
            blocks += [nn.GroupNorm(4, width), nn.SiLU(), nn.Conv2d(width, 2 * width, 3, stride=2, padding=1)]
            width *= 2
        self.blocks = nn.Sequential(*blocks)
        self.norm_out = nn.GroupNorm(4, width)
        self.out = nn.Linear(width, 1)

    def forward(self, first: torch.Tensor, second: torch.Tensor, c_noise: torch.Tensor,
                labels: torch.Tensor | None = None) -> torch.Tensor:
        emb = self.map(self.noise_embedding(c_noise.reshape(-1).to(first.dtype)))
        if self.label_embedding is not None:
            if labels is None:
                labels = torch.full((first.shape[0],), self.num_classes, dtype=torch.long, device=first.device)
            emb = emb + self.label_embedding(labels.long())
        h = self.conv_in(torch.cat([first, second], dim=1)) + emb[:, :, None, None]
        h = F.silu(self.norm_out(self.blocks(h)))
        return self.out(h.mean(dim=(2, 3))).squeeze(1)
