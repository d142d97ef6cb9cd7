"""Dataset lookup by name for the run configuration."""

from __future__ import annotations

from dpdiffusion.data.digits import load_digits
from dpdiffusion.data.mnist import load_mnist
from dpdiffusion.data.transforms import resize, to_model_range
from dpdiffusion.runconfig import ConfigError, DataConfig
from dpdiffusion.training import ArrayDataset

DATASETS = ("digits", "mnist")


def load_dataset(data: DataConfig, split: str) -> ArrayDataset:
    """The named dataset's split, images mapped to [-1, 1] batch by batch."""
    if data.name == "digits":
        images, labels = load_digits(split, data.resolution)
    elif data.name == "mnist":
        images, labels = load_mnist(split, data.data_dir)
    else:
        raise ConfigError(f"data.name: unknown dataset {data.name!r} (available: {', '.join(DATASETS)})")
    return ArrayDataset(resize(images, data.resolution), labels, transform=to_model_range)
