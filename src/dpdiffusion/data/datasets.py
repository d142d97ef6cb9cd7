"""Dataset lookup by name for the run configuration."""

from __future__ import annotations

import torch

from dpdiffusion.data.celeba import load_celeba
from dpdiffusion.data.cifar10 import load_cifar10
from dpdiffusion.data.dataset import ArrayDataset
from dpdiffusion.data.digits import load_digits
from dpdiffusion.data.fmnist import load_fmnist
from dpdiffusion.data.imagefolder import load_imagefolder_split
from dpdiffusion.data.imagenet32 import load_imagenet32
from dpdiffusion.data.mnist import load_mnist
from dpdiffusion.data.transforms import resize, to_model_range
from dpdiffusion.nets.unet import UNetConfig
from dpdiffusion.runconfig import ConfigError, DataConfig

DATASETS = ("digits", "mnist", "fmnist", "cifar10", "celeba32", "celeba64", "imagenet32", "imagefolder")


def load_images(data: DataConfig, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The named dataset's split at its native size: images uint8 [N, C, H, W], labels int64 [N]."""
    if data.name == "digits":
        return load_digits(split, data.resolution)
    if data.name == "mnist":
        return load_mnist(split, data.data_dir)
    if data.name == "fmnist":
        return load_fmnist(split, data.data_dir)
    if data.name == "cifar10":
        return load_cifar10(split, data.data_dir)
    if data.name in ("celeba32", "celeba64"):
        return load_celeba(split, int(data.name[-2:]), data.label_attribute, data.data_dir)
    if data.name == "imagenet32":
        return load_imagenet32(split, data.data_dir)
    if data.name == "imagefolder":
        return load_imagefolder_split(split, data.path, data.test_path, data.resolution, data.channels)
    raise ConfigError(f"data.name: unknown dataset {data.name!r} (available: {', '.join(DATASETS)})")


def subset_range(subset: str, size: int) -> range:
    """The positions ``"start:stop"`` selects (Python slice rules, no step) of a split with ``size`` images."""
    parts = subset.split(":")
    try:
        if len(parts) != 2:
            raise ValueError
        start, stop = (int(p) if p.strip() else None for p in parts)
    except ValueError:
        raise ConfigError(f"data.subset: expected 'start:stop' (e.g. '10000:'), got {subset!r}") from None
    selected = range(size)[slice(start, stop)]
    if not selected:
        raise ConfigError(f"data.subset {subset!r} selects no image of the {size} in the split")
    return selected


def load_dataset(data: DataConfig, split: str) -> ArrayDataset:
    """The named dataset's split, resized to ``data.resolution`` if given, images mapped to [-1, 1] batch by
    batch by a fixed map (no statistic of the data). ``data.subset`` keeps a fixed range of the training split
    (chosen by position, never by content), e.g. to hold some of it out as public data."""
    images, labels = load_images(data, split)
    if data.subset is not None and split == "train":
        keep = subset_range(data.subset, len(images))
        images, labels = images[keep.start:keep.stop], labels[keep.start:keep.stop]
    return ArrayDataset(resize(images, data.resolution), labels, transform=to_model_range)


def check_fits_model(dataset: ArrayDataset, model: UNetConfig, what: str = "data", *, labels: bool = True) -> None:
    """The images must have the shape the network is built for (a fully convolutional UNet would otherwise
    train on them and sample at another size). The shape is public; no pixel is read. ``labels``: the labels
    are trained on, so they must fit the model too (``check_labels_fit``)."""
    have = tuple(dataset.x.shape[1:])
    want = (model.in_channels, model.img_resolution, model.img_resolution)
    if have != want:
        raise ConfigError(f"{what}: the images are {'x'.join(map(str, have))} (channels x height x width) but the "
                          f"model expects {'x'.join(map(str, want))}: set {what}.resolution (or data.channels) or "
                          f"model.img_resolution / model.in_channels to match")
    if labels:
        check_labels_fit(dataset.y, model.num_classes, what)


def check_labels_fit(labels: torch.Tensor, num_classes: int, what: str = "data") -> None:
    """A class-conditional model (``num_classes`` > 0) takes labels in [0, num_classes): the index num_classes is
    classifier-free guidance's "no label", so a further class would silently train as unlabelled (and a larger
    one fail mid-training). An unconditional model ignores labels. An owner-side check, before training: the
    error names the largest label, which only the owner's terminal sees."""
    if not num_classes or not len(labels):
        return
    low, high = int(labels.min()), int(labels.max())
    if low < 0:
        raise ConfigError(f"{what}: a label is negative ({low}); labels must lie in [0, model.num_classes)")
    if high >= num_classes:
        raise ConfigError(f"{what}: the labels go up to {high} ({high + 1} classes, e.g. class folders) but "
                          f"model.num_classes is {num_classes}: set model.num_classes to {high + 1} (the index "
                          f"num_classes is classifier-free guidance's \"no label\")")
