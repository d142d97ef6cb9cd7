"""The user's own images listed in a CSV file (``data.name: csv``): a header row with the columns ``path`` and
``label`` (others are ignored), then one row per image. A relative path is resolved against the CSV's folder.
Labels are class indices (whole numbers >= 0) or class names, numbered in sorted order as an image folder's
sub-folders are (``labels.index_labels``); ``data.test_path`` names an optional held-out CSV, whose class names
must be the training CSV's. Images are decoded, cropped and resized as an image folder's (``images.read_images``).
"""

from __future__ import annotations

import csv
from pathlib import Path

import torch

from dpdiffusion.data.download import DatasetFileError
from dpdiffusion.data.images import check_image_settings, read_images
from dpdiffusion.data.labels import FROM_CSV, ClassNames, index_labels
from dpdiffusion.data.splits import split_file

COLUMNS = ("path", "label")


def read_rows(path: Path) -> list[tuple[str, str]]:
    """The (path, label) rows of a CSV file; a missing file or column, or an empty table, is one line."""
    if not path.is_file():
        raise DatasetFileError(f"{path} not found (expected a CSV file with the columns path,label)")
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            missing = [c for c in COLUMNS if c not in (reader.fieldnames or ())]
            if missing:
                raise DatasetFileError(f"{path} has no column {missing[0]!r} in its header (expected the header "
                                       f"path,label; found {','.join(reader.fieldnames or ()) or 'nothing'})")
            rows = [(row["path"] or "", row["label"] or "") for row in reader]
    except (UnicodeDecodeError, csv.Error) as error:
        raise DatasetFileError(f"{path} is not a readable CSV file ({error})") from error
    if not rows:
        raise DatasetFileError(f"{path} lists no images (expected one row path,label per image after the header)")
    return rows


def _line(path: Path):
    return lambda row: f"{path} line {row + 2}"  # after the header, counting from 1


def csv_labels(path: str | Path, known: tuple[str, ...] | None = None) -> tuple[torch.Tensor, ClassNames | None]:
    """The labels of a CSV file and, when they are class names, the names (``known``: the training CSV's)."""
    path = Path(path).expanduser()
    labels, names = index_labels([label for _, label in read_rows(path)], _line(path), known,
                                 indices_allowed=not known)  # a training CSV of names: its test CSV gives names
    return torch.from_numpy(labels), ClassNames(names, FROM_CSV) if names is not None else None


def image_paths(path: Path) -> list[Path]:
    """The image files a CSV lists, resolved against its folder; an empty or missing one is one line."""
    files = []
    for row, (name, _) in enumerate(read_rows(path)):
        if not name.strip():
            raise DatasetFileError(f"{_line(path)(row)}: the path is empty")
        file = (path.parent / Path(name.strip()).expanduser())
        if not file.is_file():
            raise DatasetFileError(f"{_line(path)(row)}: {name.strip()} not found (relative paths are resolved "
                                   f"against {path.parent})")
        files.append(file)
    return files


def load_csv(path: str | Path, resolution: int, channels: int = 3, known: tuple[str, ...] | None = None
             ) -> tuple[torch.Tensor, torch.Tensor, ClassNames | None]:
    """Images uint8 [N, C, R, R], labels int64 [N] and the class names when the labels are names."""
    check_image_settings(resolution, channels, "csv")
    path = Path(path).expanduser()
    labels, names = csv_labels(path, known)
    files = image_paths(path)
    images = read_images([(file, str(file)) for file in files], resolution, channels, f"images in {path.name}")
    return torch.from_numpy(images), labels, names


def load_csv_split(split: str, path: str | None, test_path: str | None, resolution: int | None,
                   channels: int = 3) -> tuple[torch.Tensor, torch.Tensor, ClassNames | None]:
    """``split="train"`` reads ``path``; ``split="test"`` reads ``test_path`` with the training class names."""
    file = split_file("csv", split, path, test_path, "a CSV file of path,label rows", "file")
    resolution = check_image_settings(resolution, channels, "csv")
    if split == "train":
        return load_csv(file, resolution, channels)
    names = csv_labels(str(path))[1]  # the test split takes the training split's class names (or indices: ())
    images, labels, _ = load_csv(file, resolution, channels, names.names if names else ())
    return images, labels, names
