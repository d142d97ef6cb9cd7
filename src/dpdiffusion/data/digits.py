"""scikit-learn's bundled 8x8 digits (1,797 images): the embedded default, no download.

A fixed, public split: every fifth image (index % 5 == 0) is held out for evaluation and never trained on.
"""

from __future__ import annotations

import torch

from dpdiffusion.data.transforms import resize, to_model_range

__all__ = ["NUM_CLASSES", "load_digits", "to_model_range"]

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
    images = resize(images[keep], resolution)  # resized before rounding, as the source pixels are fractional
    return images.round().clamp(0, 255).to(torch.uint8), labels[keep]

