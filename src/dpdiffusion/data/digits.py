"""scikit-learn's bundled 8x8 digits (1,797 images): the embedded default, no download.

A fixed, public split: every fifth image (index % 5 == 0) is held out for evaluation and never trained on.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

NUM_CLASSES = 10


def load_digits(split: str = "train", resolution: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Images as uint8 [N, 1, R, R] (0..255) and labels int64 [N]; R = 8 unless ``resolution`` is given."""
    from sklearn.datasets import load_digits as sklearn_digits

    if split not in ("train", "test"):
        raise ValueError(f"digits has splits 'train' and 'test', not {split!r}")
    bunch = sklearn_digits()
    images = torch.as_tensor(bunch.images, dtype=torch.float32).unsqueeze(1) * (255.0 / 16.0)  # fixed: 0..16 -> 0..255
    labels = torch.as_tensor(bunch.target, dtype=torch.int64)
    held_out = torch.arange(len(labels)) % 5 == 0
    keep = held_out if split == "test" else ~held_out
    images, labels = images[keep], labels[keep]
    if resolution is not None and resolution != images.shape[-1]:
        images = F.interpolate(images, size=(resolution, resolution), mode="bilinear", align_corners=False)
    return images.round().clamp(0, 255).to(torch.uint8), labels


def to_model_range(images: torch.Tensor) -> torch.Tensor:
    """uint8 0..255 -> float [-1, 1]: a fixed map, no statistic of the data."""
    return images.float() / 127.5 - 1.0
