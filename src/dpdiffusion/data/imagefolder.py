"""The user's own images: one sub-folder per class, ``<folder>/<class>/<image>``; class indices follow the
sorted sub-folder names of the training folder. Every image becomes its centred square, resized to
``resolution`` (fixed and data-independent, so images of any size mix), in mode "L" (1 channel) or "RGB"
(3). Hidden entries (".name") and files without an image suffix are skipped."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from dpdiffusion.data.download import DatasetFileError
from dpdiffusion.data.images import IMAGE_SUFFIXES, MODES, check_image_settings, read_images
from dpdiffusion.data.splits import split_file

__all__ = ["MODES", "class_folders", "folder_class_names", "image_files", "load_image_folder",
           "load_imagefolder_split"]


def class_folders(folder: Path) -> list[Path]:
    """The class sub-folders, sorted by name; a missing folder or one without sub-folders is an error."""
    if not folder.is_dir():
        raise DatasetFileError(f"{folder} not found (expected a folder with one sub-folder of images per class)")
    classes = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise DatasetFileError(f"{folder} has no class sub-folders (expected <folder>/<class>/<image>)")
    return classes


def folder_class_names(folder: str | Path) -> list[str]:
    """The class names of an image folder: its sorted sub-folder names (its layout, not its images)."""
    return [c.name for c in class_folders(Path(folder).expanduser())]


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
    check_image_settings(resolution, channels, "imagefolder")
    folder = Path(folder).expanduser()
    classes = class_folders(folder)
    names = class_names if class_names is not None else [c.name for c in classes]
    unknown = [c.name for c in classes if c.name not in names]
    if unknown:
        raise DatasetFileError(f"{folder / unknown[0]} is a class the training folder lacks "
                               f"(training classes: {', '.join(names)})")
    examples = [(path, names.index(c.name)) for c in classes for path in image_files(c)]
    images = read_images([(path, str(path)) for path, _ in examples], resolution, channels, f"images in {folder.name}")
    labels = np.array([label for _, label in examples], dtype=np.int64)
    return torch.from_numpy(images), torch.from_numpy(labels)


def load_imagefolder_split(split: str, path: str | None, test_path: str | None, resolution: int | None,
                           channels: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    """``split="train"`` reads ``path``; ``split="test"`` reads ``test_path`` with the training classes."""
    folder = split_file("imagefolder", split, path, test_path,
                        "a folder with one sub-folder of images per class", "folder")
    resolution = check_image_settings(resolution, channels, "imagefolder")
    if split == "train":
        return load_image_folder(folder, resolution, channels)
    return load_image_folder(folder, resolution, channels, class_names=folder_class_names(str(path)))
