"""The user's own images: one sub-folder per class, ``<folder>/<class>/<image>``; class indices follow the
sorted sub-folder names of the training folder. Every image becomes its centred square, resized to
``resolution`` (fixed and data-independent, so images of any size mix), in mode "L" (1 channel) or "RGB"
(3). Hidden entries (".name") and files without an image suffix are skipped."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from dpdiffusion.data.download import DatasetFileError
from dpdiffusion.data.images import IMAGE_SUFFIXES, center_crop, decode, to_array
from dpdiffusion.runconfig import ConfigError

MODES = {1: "L", 3: "RGB"}


def class_folders(folder: Path) -> list[Path]:
    """The class sub-folders, sorted by name; a missing folder or one without sub-folders is an error."""
    if not folder.is_dir():
        raise DatasetFileError(f"{folder} not found (expected a folder with one sub-folder of images per class)")
    classes = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise DatasetFileError(f"{folder} has no class sub-folders (expected <folder>/<class>/<image>)")
    return classes


def image_files(folder: Path) -> list[Path]:
    """The images of one class folder, sorted by name; a class without images is an error."""
    files = sorted(p for p in folder.iterdir()
                   if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise DatasetFileError(f"{folder} has no images (suffixes {', '.join(IMAGE_SUFFIXES)})")
    return files


def load_image_folder(folder: str | Path, resolution: int, channels: int = 3,
                      class_names: list[str] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Images uint8 [N, C, R, R] and labels int64 [N]. ``class_names`` (those of the training folder) fixes
    the label indices of a test folder, which may lack classes but not add any."""
    if channels not in MODES:
        raise ConfigError(f"data.channels: expected 1 (grayscale) or 3 (RGB), got {channels!r}")
    if isinstance(resolution, bool) or not isinstance(resolution, int) or resolution < 1:
        raise ConfigError(f"data.resolution: expected a positive whole number of pixels, got {resolution!r}")
    folder = Path(folder).expanduser()
    classes = class_folders(folder)
    names = class_names if class_names is not None else [c.name for c in classes]
    unknown = [c.name for c in classes if c.name not in names]
    if unknown:
        raise DatasetFileError(f"{folder / unknown[0]} is a class the training folder lacks "
                               f"(training classes: {', '.join(names)})")
    examples = [(path, names.index(c.name)) for c in classes for path in image_files(c)]
    images = np.empty((len(examples), channels, resolution, resolution), dtype=np.uint8)
    for i, (path, _) in enumerate(tqdm(examples, desc=f"images in {folder.name}", unit="img", disable=None)):
        images[i] = to_array(center_crop(decode(path, str(path), MODES[channels])), resolution)
    labels = np.array([label for _, label in examples], dtype=np.int64)
    return torch.from_numpy(images), torch.from_numpy(labels)


def load_imagefolder_split(split: str, path: str | None, test_path: str | None, resolution: int | None,
                           channels: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    """``split="train"`` reads ``path``; ``split="test"`` reads ``test_path`` with the training classes."""
    if path is None:
        raise ConfigError("data.path: required for imagefolder (a folder with one sub-folder of images per class)")
    if resolution is None:
        raise ConfigError("data.resolution: required for imagefolder (every image is cropped and resized to it)")
    if split == "train":
        return load_image_folder(path, resolution, channels)
    if split == "test":
        if test_path is None:
            raise ConfigError("data.test_path: not set, and imagefolder has a test split only from that folder")
        train_classes = [c.name for c in class_folders(Path(path).expanduser())]
        return load_image_folder(test_path, resolution, channels, class_names=train_classes)
    raise ValueError(f"imagefolder has splits train and test, not {split!r}")
