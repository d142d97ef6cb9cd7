"""Fixed, data-independent image transforms: nothing here looks at a statistic of the data."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def resize(images: torch.Tensor, resolution: int | None) -> torch.Tensor:
    """[N, C, H, W] pixels in 0..255 -> uint8 [N, C, R, R] by bilinear interpolation; None or the same size:
    unchanged."""
    if resolution is None or resolution == images.shape[-1]:
        return images
    resized = F.interpolate(images.float(), size=(resolution, resolution), mode="bilinear", align_corners=False)
    return resized.round().clamp(0, 255).to(torch.uint8)


def to_model_range(images: torch.Tensor) -> torch.Tensor:
    """uint8 0..255 -> float [-1, 1]: a fixed map, no statistic of the data."""
    return images.float() / 127.5 - 1.0
