"""The user's own images as a Hugging Face ``datasets`` dataset (``data.name: hf``, the optional extra
``pip install 'dpdiffusion[datasets]'``): ``data.path`` is a folder written by ``save_to_disk`` (read with
``load_from_disk``), or else a hub name (``load_dataset(name, split=...)``, which needs the network).

A saved ``DatasetDict`` gives its "train" split (or its only one) and, without ``data.test_path``, its "test"
split; a saved ``Dataset`` is the training split and ``data.test_path`` the held-out one. ``data.image_column``
(default "image") must be an Image feature: its encoded files are decoded, cropped and resized as an image
folder's (``images.read_images``). ``data.label_column`` (default "label") holds class indices, or class names
numbered in sorted order; a ClassLabel feature gives the class names.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from dpdiffusion.data.download import DatasetFileError
from dpdiffusion.data.images import check_image_settings, read_images
from dpdiffusion.data.labels import FROM_CLASS_LABEL, FROM_COLUMN, ClassNames, check_labels, index_labels
from dpdiffusion.runconfig import ConfigError

INSTALL = "pip install 'dpdiffusion[datasets]'"


def hf_datasets() -> Any:
    """The ``datasets`` package, imported on first use."""
    try:
        import datasets
    except ImportError as error:
        raise ConfigError(f"data.name hf needs the Hugging Face datasets package: {INSTALL}") from error
    return datasets


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def open_source(source: str, split: str) -> tuple[Any, bool]:
    """A saved folder's dataset (a Dataset or a DatasetDict) and True, or the hub dataset's ``split`` and False."""
    datasets = hf_datasets()
    local = Path(source).expanduser()
    if local.exists():
        try:
            return datasets.load_from_disk(str(local)), True
        except (OSError, ValueError) as error:
            raise DatasetFileError(f"{local} is not a dataset saved by save_to_disk ({_first_line(error)})") from error
    try:
        return datasets.load_dataset(source, split=split), False
    except Exception as error:  # the hub client raises many kinds (no network, no such dataset, no such split)
        raise DatasetFileError(f"{source} is not a local folder, and loading it from the Hugging Face hub (split "
                               f"{split!r}) failed: {_first_line(error)}") from error


def pick_split(loaded: Any, split: str, source: str, *, required: bool = True) -> Any:
    """``split`` of a DatasetDict (its only split for "train"), or a Dataset itself for "train"."""
    if not hasattr(loaded, "keys"):  # a Dataset
        return loaded if split == "train" else None
    names = list(loaded.keys())
    if split in names:
        return loaded[split]
    if split == "train" and len(names) == 1:
        return loaded[names[0]]
    if required:
        raise DatasetFileError(f"{source} has no {split!r} split (it has: {', '.join(names)})")
    return None


def split_dataset(split: str, path: str, test_path: str | None) -> tuple[Any, str]:
    """The Dataset of ``split`` and the name it goes by in errors."""
    if split == "train":
        loaded, _ = open_source(path, "train")
        return pick_split(loaded, "train", path), path
    if split != "test":
        raise ValueError(f"hf has splits train and test, not {split!r}")
    if test_path is not None:  # a saved Dataset, a DatasetDict's "test" (or only) split, or a hub dataset's "test"
        loaded, _ = open_source(test_path, "test")
        chosen = "test" if hasattr(loaded, "keys") and "test" in loaded.keys() else "train"
        return pick_split(loaded, chosen, test_path), test_path
    loaded, local = open_source(path, "test")
    found = pick_split(loaded, "test", path, required=False) if local else loaded
    if found is None:
        raise ConfigError(f"data.test_path: not set, and {path} has no test split")
    return found, path


def column(dataset: Any, name: str, setting: str, source: str) -> Any:
    if name not in dataset.column_names:
        raise DatasetFileError(f"{source} has no column {name!r} ({setting}; its columns: "
                               f"{', '.join(dataset.column_names)})")
    return dataset.features[name]


def hf_labels(dataset: Any, label_column: str, source: str, known: tuple[str, ...] | None = None, *,
              indices_allowed: bool = True) -> tuple[np.ndarray, ClassNames | None]:
    """The labels, and the class names of a ClassLabel feature or of a column of names."""
    datasets = hf_datasets()
    feature = column(dataset, label_column, "data.label_column", source)
    values = list(dataset[label_column])
    where = lambda row: f"{source} row {row} ({label_column})"  # noqa: E731
    if isinstance(feature, datasets.ClassLabel):
        labels = check_labels(np.asarray(values, dtype=np.int64).reshape(-1), where)
        return labels, ClassNames(tuple(feature.names), FROM_CLASS_LABEL)
    labels, names = index_labels(values, where, known, indices_allowed=indices_allowed)
    return labels, ClassNames(names, FROM_COLUMN) if names is not None else None


def hf_images(dataset: Any, image_column: str, source: str, resolution: int, channels: int) -> np.ndarray:
    """uint8 [N, C, R, R] from an Image column's encoded files."""
    datasets = hf_datasets()
    feature = column(dataset, image_column, "data.image_column", source)
    if not isinstance(feature, datasets.Image):
        raise DatasetFileError(f"{source}: column {image_column!r} is a {type(feature).__name__} feature, not an "
                               "Image feature (set data.image_column to the images' column)")
    encoded = dataset.cast_column(image_column, datasets.Image(decode=False))[image_column]
    sources: list[tuple[Path | bytes, str]] = []
    for row, value in enumerate(encoded):
        name = f"{source} row {row} ({image_column})"
        if value and value.get("bytes"):
            sources.append((value["bytes"], name))
        elif value and value.get("path"):
            sources.append((Path(value["path"]), name))
        else:
            raise DatasetFileError(f"{name}: no image")
    return read_images(sources, resolution, channels, f"images in {Path(source).name}")


def load_hf_split(split: str, path: str | None, test_path: str | None, resolution: int | None, channels: int = 3,
                  image_column: str = "image", label_column: str = "label"
                  ) -> tuple[torch.Tensor, torch.Tensor, ClassNames | None]:
    """Images uint8 [N, C, R, R], labels int64 [N] and the class names, if the dataset has them (those of the
    training split, for both splits)."""
    if path is None:
        raise ConfigError("data.path: required for hf (a folder saved by save_to_disk, or a hub dataset's name)")
    resolution = check_image_settings(resolution, channels, "hf")
    dataset, source = split_dataset(split, path, test_path)
    if not len(dataset):
        raise DatasetFileError(f"{source} ({split}) holds no images")
    names, known, indices_allowed = None, None, True
    if split == "test":  # the training split's class names (or (): its labels are indices)
        train, train_source = split_dataset("train", path, None)
        names = hf_labels(train, label_column, train_source)[1]
        known = names.names if names else ()
        indices_allowed = names is None or names.source == FROM_CLASS_LABEL  # a ClassLabel's are indices too
    labels, found = hf_labels(dataset, label_column, source, known, indices_allowed=indices_allowed)
    images = hf_images(dataset, image_column, source, resolution, channels)
    return torch.from_numpy(images), torch.from_numpy(labels), names or found
