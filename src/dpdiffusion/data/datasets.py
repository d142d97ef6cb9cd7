"""Dataset lookup by name for the run configuration."""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import torch

from dpdiffusion.data.celeba import load_celeba
from dpdiffusion.data.cifar10 import load_cifar10
from dpdiffusion.data.csvfile import load_csv_split
from dpdiffusion.data.dataset import ArrayDataset
from dpdiffusion.data.digits import load_digits
from dpdiffusion.data.fmnist import load_fmnist
from dpdiffusion.data.hf import load_hf_split
from dpdiffusion.data.imagefolder import folder_class_names, load_imagefolder_split
from dpdiffusion.data.imagenet32 import load_imagenet32
from dpdiffusion.data.labels import DECLARED, FROM_FOLDERS, ClassNames
from dpdiffusion.data.mnist import load_mnist
from dpdiffusion.data.npz import load_npz_split
from dpdiffusion.data.transforms import resize, to_model_range
from dpdiffusion.nets.unet import UNetConfig
from dpdiffusion.runconfig import ConfigError, DataConfig, RunConfig

CANONICAL = ("digits", "mnist", "fmnist", "cifar10", "celeba32", "celeba64", "imagenet32")
LOCATED = ("imagefolder", "csv", "npz", "hf")  # the user's own images, read from data.path (which a release withholds)
DATASETS = CANONICAL + LOCATED
ARRAYS = "arrays"  # what a run records for data given as arrays through the Python API


class Split(NamedTuple):
    """One split at its native size: images uint8 [N, C, H, W], labels int64 [N], and the class names its
    layout gives (None where it gives none)."""

    images: torch.Tensor
    labels: torch.Tensor
    class_names: ClassNames | None = None


def read_split(data: DataConfig, split: str) -> Split:
    """The named dataset's split (``Split``); where the data's layout names its classes and the owner declared
    ``data.class_names``, the labels index the declared names (``declared_order``)."""
    found = _read_split(data, split)
    if not data.class_names or found.class_names is None:
        return found
    return declared_order(found, tuple(data.class_names))


def declared_order(found: Split, declared: tuple[str, ...]) -> Split:
    """``found`` with each label the index of its class's name in ``declared``: the indices then follow the
    owner's list, not which names occur in the data (a class whose only image is removed no longer renumbers
    the others), and the names a run records are the names its labels index. A name of the layout that is not
    declared is a ConfigError; a declared name without images is allowed."""
    assert found.class_names is not None
    undeclared = [name for name in found.class_names.names if name not in declared]
    if undeclared:
        raise ConfigError(f"data.class_names: the data's class {undeclared[0]!r} is not declared (declared: "
                          f"{', '.join(declared)})")
    order = torch.tensor([declared.index(name) for name in found.class_names.names], dtype=torch.int64)
    return Split(found.images, order[found.labels], ClassNames(declared, DECLARED))


def _read_split(data: DataConfig, split: str) -> Split:
    """The named dataset's split (see ``Split``)."""
    if data.name == "digits":
        return Split(*load_digits(split, data.resolution))
    if data.name == "mnist":
        return Split(*load_mnist(split, data.data_dir))
    if data.name == "fmnist":
        return Split(*load_fmnist(split, data.data_dir))
    if data.name == "cifar10":
        return Split(*load_cifar10(split, data.data_dir))
    if data.name in ("celeba32", "celeba64"):
        return Split(*load_celeba(split, int(data.name[-2:]), data.label_attribute, data.data_dir))
    if data.name == "imagenet32":
        return Split(*load_imagenet32(split, data.data_dir))
    if data.name == "imagefolder":
        images, labels = load_imagefolder_split(split, data.path, data.test_path, data.resolution, data.channels)
        return Split(images, labels, ClassNames(tuple(folder_class_names(str(data.path))), FROM_FOLDERS))
    if data.name == "csv":
        return Split(*load_csv_split(split, data.path, data.test_path, data.resolution, data.channels))
    if data.name == "npz":
        return Split(*load_npz_split(split, data.path, data.test_path, data.channels))
    if data.name == "hf":
        return Split(*load_hf_split(split, data.path, data.test_path, data.resolution, data.channels,
                                    data.image_column, data.label_column))
    if data.name == ARRAYS:
        raise ConfigError("data.name: 'arrays' records data given as arrays through the Python API, which no "
                          "command can load by name: save them (e.g. as .npz, data.name npz) and point data.path at them")
    raise ConfigError(f"data.name: unknown dataset {data.name!r} (available: {', '.join(DATASETS)})")


def load_images(data: DataConfig, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The named dataset's split at its native size: images uint8 [N, C, H, W], labels int64 [N]."""
    images, labels, _ = read_split(data, split)
    return images, labels


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
    images, labels, names = read_split(data, split)
    if data.subset is not None and split == "train":
        keep = subset_range(data.subset, len(images))
        images, labels = images[keep.start:keep.stop], labels[keep.start:keep.stop]
    return ArrayDataset(resize(images, data.resolution), labels, transform=to_model_range, source=data.name,
                        class_names=names)


def recorded_name(data: DataConfig, dataset: Any = None) -> str:
    """The name a run records for its data: the ``data.name`` that loaded ``dataset``; for arrays given through the
    Python API (no ``source``), ``data.name`` when the user declared one no loader answers to, else "arrays" --
    never the name of a dataset it was not loaded from (e.g. the default "digits")."""
    source = getattr(dataset, "source", None) if dataset is not None else data.name
    if source is not None:
        return source
    return data.name if data.name not in DATASETS else ARRAYS


def named_config(config: RunConfig, dataset: Any) -> RunConfig:
    """``config`` with ``data.name`` the name the run records for ``dataset`` (``recorded_name``): what its
    release and ``config.json`` say the data were."""
    name = recorded_name(config.data, dataset)
    return config if name == config.data.name else dataclasses.replace(
        config, data=dataclasses.replace(config.data, name=name))


def recorded_class_names(data: DataConfig, dataset: Any = None) -> ClassNames | None:
    """The class names a run records: declared (``data.class_names``), else those of the data's layout."""
    if data.class_names:
        return ClassNames(tuple(data.class_names), DECLARED)
    return getattr(dataset, "class_names", None)


def check_fits_model(dataset: ArrayDataset, model: UNetConfig, what: str = "data", *, labels: bool = True) -> None:
    """The images must have the shape the network is built for (a fully convolutional UNet would otherwise
    train on them and sample at another size). The shape is public; no pixel is read. ``labels``: the labels
    are trained on, so they must fit the model too (``check_labels_fit``)."""
    check_shape_fits(tuple(dataset.x.shape[1:]), model, what)
    if labels:
        check_labels_fit(dataset.y, model.num_classes, what)


def check_shape_fits(have: tuple[int, ...], model: UNetConfig, what: str = "data") -> None:
    """Images of shape ``have`` (channels, height, width) fit the network."""
    want = (model.in_channels, model.img_resolution, model.img_resolution)
    if have != want:
        raise ConfigError(f"{what}: the images are {'x'.join(map(str, have))} (channels x height x width) but the "
                          f"model expects {'x'.join(map(str, want))}: set {what}.resolution (or data.channels) or "
                          f"model.img_resolution / model.in_channels to match")


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
