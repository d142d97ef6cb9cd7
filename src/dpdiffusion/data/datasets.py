"""Dataset lookup by name for the run configuration."""

from __future__ import annotations

import torch.nn.functional as F

from dpdiffusion.data.digits import load_digits, to_model_range
from dpdiffusion.data.mnist import load_mnist
from dpdiffusion.runconfig import ConfigError, DataConfig
from dpdiffusion.training import ArrayDataset

DATASETS = ("digits", "mnist")


def load_dataset(data: DataConfig, split: str) -> ArrayDataset:
    """The named dataset's split, images mapped to [-1, 1] batch by batch."""
    if data.name == "digits":
        images, labels = load_digits(split, data.resolution)
    elif data.name == "mnist":
        images, labels = load_mnist(split, data.data_dir)
        if data.resolution is not None and data.resolution != images.shape[-1]:
            resized = F.interpolate(images.float(), size=(data.resolution,) * 2, mode="bilinear", align_corners=False)
            images = resized.round().clamp(0, 255).to(images.dtype)
    else:
        raise ConfigError(f"data.name: unknown dataset {data.name!r} (available: {', '.join(DATASETS)})")
    return ArrayDataset(images, labels, transform=to_model_range)
