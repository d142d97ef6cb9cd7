"""Augmentation multiplicity (Ghalebikesabi et al. 2023): each example's K draws see K label-preserving
augmentations of it -- random horizontal flips and random translations (reflect-padded crops) -- each with its
own noise level and noise. The augmented copies are made in the loss's ``draw`` (no parameters involved), and
every copy of an example stays in that example's row, so clipping still bounds the example's whole contribution.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class Augment:
    flip: bool = False  # horizontal flips: for natural images, not for digits or text
    crop_padding: int = 0  # random translations by up to this many pixels (reflect padding, then a crop)

    def __post_init__(self) -> None:
        if self.crop_padding < 0:
            raise ValueError(f"crop_padding must be >= 0, got {self.crop_padding}")

    @property
    def active(self) -> bool:
        return self.flip or self.crop_padding > 0

    def __call__(self, x: torch.Tensor, multiplicity: int, generator: torch.Generator) -> torch.Tensor:
        """[b, C, H, W] -> [b, K, C, H, W]: K independently augmented copies of each image."""
        b, k = x.shape[0], multiplicity
        shape = x.shape[1:]
        copies = x.unsqueeze(1).expand(b, k, *shape).reshape(b * k, *shape)
        flips = torch.rand(b * k, generator=generator) < 0.5 if self.flip else None
        p = self.crop_padding
        shifts = torch.randint(-p, p + 1, (b * k, 2), generator=generator) if p else None
        if flips is not None:
            copies = torch.where(flips.to(x.device).view(-1, 1, 1, 1), copies.flip(-1), copies)
        if shifts is not None:
            copies = translate(copies, shifts.to(x.device), p)
        return copies.reshape(b, k, *shape)


def translate(images: torch.Tensor, shifts: torch.Tensor, padding: int) -> torch.Tensor:
    """Shift each image [N, C, H, W] by (dy, dx) = shifts[n] (|d| <= padding), filling from a reflection."""
    n, _, h, w = images.shape
    padded = F.pad(images, (padding,) * 4, mode="reflect")
    rows = torch.arange(h, device=images.device).unsqueeze(0) + padding - shifts[:, :1]  # [N, H]
    cols = torch.arange(w, device=images.device).unsqueeze(0) + padding - shifts[:, 1:]  # [N, W]
    index = torch.arange(n, device=images.device).view(-1, 1, 1)
    return padded[index, :, rows.unsqueeze(2), cols.unsqueeze(1)].permute(0, 3, 1, 2)
