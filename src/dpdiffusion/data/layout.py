"""What ``dpdiffusion init`` learns about the user's own images from their layout: which source they are (an image
folder, a CSV, an npz, a Hugging Face dataset), how many images and classes, the class names the layout gives,
and one image's size and channels (the first image's: no statistic of the pixels is computed). The same readers
as training check the data on the way, so bad files or columns fail here in one line too."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from dpdiffusion.data.csvfile import csv_labels, image_paths, read_rows
from dpdiffusion.data.download import DatasetFileError
from dpdiffusion.data.hf import hf_datasets, hf_labels, split_dataset
from dpdiffusion.data.imagefolder import class_folders, image_files
from dpdiffusion.data.npz import as_nchw, read_arrays

GRAYSCALE_MODES = ("1", "L", "LA", "I", "F", "I;16", "I;16B", "I;16L", "I;16N")
HF_SAVED = ("dataset_info.json", "state.json", "dataset_dict.json")  # what save_to_disk writes


@dataclass(frozen=True)
class Layout:
    """The user's data as ``init`` sees them. ``side``: the shorter side of the first image (the square it is
    cropped to); ``class_names``: those the layout gives (sub-folders, names in a label column, a ClassLabel)."""

    source: str  # a data.name: imagefolder, csv, npz or hf
    path: str
    size: int
    num_classes: int
    side: int
    channels: int
    class_names: tuple[str, ...] = ()
    image_column: str | None = None  # hf
    label_column: str | None = None  # hf


def source_of(path: str) -> str:
    """The ``data.name`` for ``path``: a folder written by ``save_to_disk`` is hf, another folder imagefolder, a
    .npz file npz, a .csv file csv; a name that is no file is taken as a hub dataset (hf)."""
    local = Path(path).expanduser()
    if local.is_dir():
        return "hf" if any((local / marker).is_file() for marker in HF_SAVED) else "imagefolder"
    if local.is_file():
        if local.suffix.lower() in (".npz", ".csv"):
            return local.suffix.lower()[1:]
        raise DatasetFileError(f"{local}: expected an image folder, a .csv, a .npz or a folder saved by datasets' "
                               "save_to_disk")
    if path.count("/") <= 1 and not path.startswith((".", "~")) and local.suffix.lower() not in (".csv", ".npz"):
        return "hf"
    raise DatasetFileError(f"{local} not found")


def image_header(source: Path | bytes, name: str) -> tuple[int, int]:
    """(shorter side, channels) of one image file, from its header."""
    import io

    try:
        with Image.open(source if isinstance(source, Path) else io.BytesIO(source)) as image:
            return min(image.size), 1 if image.mode in GRAYSCALE_MODES else 3
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        raise DatasetFileError(f"{name} is not a readable image ({error})") from error


def inspect_layout(path: str) -> Layout:
    """The layout of the data at ``path`` (see ``source_of``)."""
    source = source_of(path)
    local = Path(path).expanduser()
    where = str(local.resolve()) if local.exists() else path
    if source == "imagefolder":
        classes = class_folders(local)
        files = [image_files(c) for c in classes]
        side, channels = image_header(files[0][0], str(files[0][0]))
        return Layout(source, where, sum(map(len, files)), len(classes), side, channels,
                      tuple(c.name for c in classes))
    if source == "csv":
        listed, names = csv_labels(local)
        first = image_paths(local)[0]
        side, channels = image_header(first, str(first))
        return Layout(source, where, len(read_rows(local)), classes_of(listed.tolist(), names), side, channels,
                      names.names if names else ())
    if source == "npz":
        images, labels = read_arrays(local)
        shape = as_nchw(images, f"{local}: images").shape
        return Layout(source, where, len(images), classes_of(labels.tolist(), None), min(shape[2:]), shape[1])
    return inspect_hf(path, where)


def classes_of(labels: list[int], names: Any) -> int:
    return len(names.names) if names else max(labels, default=-1) + 1


def inspect_hf(path: str, where: str) -> Layout:
    """A Hugging Face dataset's layout; its image column is "image" or else its first Image feature, its label
    column "label" or else its first ClassLabel feature."""
    datasets = hf_datasets()
    dataset, _ = split_dataset("train", path, None)
    features = dataset.features
    images = [c for c in dataset.column_names if isinstance(features[c], datasets.Image)]
    if not images:
        raise DatasetFileError(f"{path} has no Image column (its columns: {', '.join(dataset.column_names)})")
    image_column = "image" if "image" in images else images[0]
    labels = [c for c in dataset.column_names if isinstance(features[c], datasets.ClassLabel)]
    label_column = "label" if "label" in dataset.column_names else labels[0] if labels else None
    if label_column is None:
        raise DatasetFileError(f"{path} has no label column (its columns: {', '.join(dataset.column_names)}); "
                               "add one (class indices or names), e.g. all 0 for one class")
    values, names = hf_labels(dataset, label_column, path)
    first = dataset.cast_column(image_column, datasets.Image(decode=False))[0][image_column]
    encoded = first.get("bytes") or Path(first.get("path") or "")
    side, channels = image_header(encoded, f"{path} row 0 ({image_column})")
    return Layout("hf", where, len(dataset), classes_of(values.tolist(), names), side, channels,
                  names.names if names else (), image_column, label_column)
