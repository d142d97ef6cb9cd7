"""Planning a canonical dataset without its files: the public sizes of its splits.

``train --dry-run`` needs the training split's size N (the plan's q = B / N, steps from epochs, delta < 1 / N),
the images' shape and the number of classes -- all published with the dataset. When its files are not on disk
(neither local copies nor the download cache), the dry-run plans from this table instead of downloading them,
and says so. Training itself always reads the files.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from dpdiffusion.data import celeba, cifar10, fmnist, imagenet32, mnist
from dpdiffusion.data.datasets import check_labels_fit, check_shape_fits, subset_range
from dpdiffusion.data.download import cache_dir, local_root
from dpdiffusion.nets.unet import UNetConfig
from dpdiffusion.runconfig import DataConfig


@dataclass(frozen=True)
class KnownSplits:
    """A canonical dataset as published: its split sizes, one image's shape (channels, height, width), classes."""

    sizes: dict[str, int]
    shape: tuple[int, int, int]
    num_classes: int


_CELEBA = {"train": 162_770, "valid": 19_867, "test": 19_962}  # list_eval_partition.txt (celeba.SPLITS)
KNOWN = {
    "mnist": KnownSplits({"train": 60_000, "test": 10_000}, (1, 28, 28), 10),
    "fmnist": KnownSplits({"train": 60_000, "test": 10_000}, (1, 28, 28), 10),
    "cifar10": KnownSplits({"train": 50_000, "test": 10_000}, (3, 32, 32), cifar10.NUM_CLASSES),
    "celeba32": KnownSplits(_CELEBA, (3, 32, 32), celeba.NUM_CLASSES),  # the label is one binary attribute
    "celeba64": KnownSplits(_CELEBA, (3, 64, 64), celeba.NUM_CLASSES),
    "imagenet32": KnownSplits({"train": 1_281_167, "test": 50_000}, (3, 32, 32), imagenet32.NUM_CLASSES),
}


def needed_files(data: DataConfig) -> list[Path] | None:
    """The files the loader of ``data.name``'s training split reads, where it looks for them (local copies, else
    the download cache; an extracted folder where the loader prefers it); None for a dataset outside the table."""
    if data.name not in KNOWN:
        return None
    root = local_root(data.data_dir)
    name = {"celeba32": celeba.DATASET, "celeba64": celeba.DATASET}.get(data.name, data.name)
    folder = (root if root is not None else cache_dir()) / name
    if data.name in ("mnist", "fmnist"):
        files = (mnist.FILES if data.name == "mnist" else fmnist.FILES)["train"]
        return [folder / f.name for f in files]
    if data.name == "cifar10":
        extracted = folder / cifar10.FOLDER
        if root is not None and extracted.is_dir() and not (folder / cifar10.ARCHIVE.name).exists():
            return [extracted / batch for batch in cifar10.BATCHES["train"]]
        return [folder / cifar10.ARCHIVE.name]
    if data.name == "imagenet32":  # never downloaded: local copies only
        return [(root if root is not None else Path("<data_dir>")) / name / f for f in imagenet32.FILES["train"]]
    images = folder / celeba.IMAGE_FOLDER
    if not (root is not None and images.is_dir() and not (folder / celeba.FILES["images"].name).exists()):
        images = folder / celeba.FILES["images"].name
    return [folder / celeba.FILES["partition"].name, folder / celeba.FILES["attributes"].name, images]


class KnownSize:
    """A canonical dataset's training split known by its published size alone: enough to plan, nothing to train
    on (``batch`` refuses). ``note``: the one line a dry-run prints about it."""

    def __init__(self, name: str, size: int, note: str):
        self.source, self.class_names, self.size, self.note = name, None, size, note

    def __len__(self) -> int:
        return self.size

    def batch(self, indices: torch.Tensor):
        raise RuntimeError(f"{self.source} is not on disk: a dry-run plans from its published size, training reads "
                           "its files")


def planned_without_files(data: DataConfig, model: UNetConfig) -> KnownSize | None:
    """For a dry-run: None when any of ``data``'s files is on disk or it is not in the table (load it: a damaged or
    incomplete copy is then named), else its training split by the published size (``data.subset`` applied),
    checked against the model as loaded data would be."""
    files = needed_files(data) or []
    if not files or any(f.exists() for f in files):
        return None
    missing = files[0]
    known = KNOWN[data.name]
    size = len(subset_range(data.subset, known.sizes["train"])) if data.subset is not None else known.sizes["train"]
    channels, height, _ = known.shape
    side = data.resolution or height
    check_shape_fits((channels, side, side), model)
    check_labels_fit(torch.tensor([0, known.num_classes - 1]), model.num_classes)
    return KnownSize(data.name, size, f"{missing} not found: planned with {data.name}'s published training-split "
                                      f"size N = {size} (training reads the files)")
