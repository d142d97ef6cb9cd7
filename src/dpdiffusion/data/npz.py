"""The user's own images as arrays in a NumPy ``.npz`` file (``data.name: npz``): ``images`` uint8 and ``labels``
integer class indices >= 0, one per image; ``data.test_path`` names an optional held-out file of the same form.
Read with ``allow_pickle=False``: nothing is unpickled.

Accepted layouts of ``images`` (``images_layout``):
- N x H x W: grayscale;
- N x H x W x C (channels last) or N x C x H x W (channels first), C = 1 or 3. When only one of the two
  candidate channel axes has 1 or 3 entries, it is the channel axis. When both do (e.g. N x 3 x 32 x 3), the
  reading whose image is square wins; if both or neither are square, channels last (NumPy's and PIL's order,
  and what ``dpdiffusion sample`` writes).
Non-square images become their centred square (fixed offsets, as an image folder's); channels are converted to
``data.channels`` by PIL's fixed rules (``images.to_channels``); the size is left for ``data.resolution``.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import torch

from dpdiffusion.data.download import DatasetFileError
from dpdiffusion.data.images import MODES, crop_offsets, to_channels
from dpdiffusion.data.labels import check_labels
from dpdiffusion.data.splits import split_file
from dpdiffusion.runconfig import ConfigError

CHANNEL_COUNTS = (1, 3)


def images_layout(shape: tuple[int, ...], name: str = "images") -> str:
    """"NHW", "NHWC" or "NCHW" for an ``images`` array of this shape, by the module's rules; else a one-line error."""
    if len(shape) == 3:
        return "NHW"
    if len(shape) != 4 or (shape[3] not in CHANNEL_COUNTS and shape[1] not in CHANNEL_COUNTS):
        raise DatasetFileError(f"{name} has shape {shape}: expected N x H x W, N x H x W x C or N x C x H x W "
                               f"with C = 1 or 3")
    last, first = shape[3] in CHANNEL_COUNTS, shape[1] in CHANNEL_COUNTS
    if last and first:
        last_square, first_square = shape[1] == shape[2], shape[2] == shape[3]
        return "NCHW" if first_square and not last_square else "NHWC"
    return "NHWC" if last else "NCHW"


def as_nchw(images: np.ndarray, name: str = "images") -> np.ndarray:
    """The array as N x C x H x W (a view), by ``images_layout``."""
    layout = images_layout(tuple(images.shape), name)
    if layout == "NHW":
        return images[:, None]
    return images.transpose(0, 3, 1, 2) if layout == "NHWC" else images


def read_arrays(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """``images`` as stored and ``labels`` as int64 class indices; a missing file or key, a wrong dtype or shape, or a
    negative label is one line."""
    if not path.is_file():
        raise DatasetFileError(f"{path} not found (expected a .npz file with arrays images and labels)")
    try:
        with np.load(path, allow_pickle=False) as arrays:
            missing = [key for key in ("images", "labels") if key not in arrays.files]
            if missing:
                raise DatasetFileError(f"{path} has no array {missing[0]!r} (it has: {', '.join(arrays.files) or 'none'}"
                                       "); expected images (uint8) and labels (integers)")
            images, labels = arrays["images"], arrays["labels"]
    except DatasetFileError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as error:
        raise DatasetFileError(f"{path} is not a readable .npz file of arrays "
                               f"({str(error).splitlines()[0] if str(error) else type(error).__name__})") from error
    if images.dtype != np.uint8:
        raise DatasetFileError(f"{path}: images are {images.dtype}, expected uint8 (pixel values 0..255)")
    if images.ndim not in (3, 4):
        raise DatasetFileError(f"{path}: images have shape {images.shape}, expected N x H x W or N x H x W x C "
                               "(or N x C x H x W)")
    if not np.issubdtype(labels.dtype, np.integer) or labels.ndim != 1:
        raise DatasetFileError(f"{path}: labels are {labels.dtype} of shape {labels.shape}, expected one integer "
                               "class index per image")
    if len(images) != len(labels):
        raise DatasetFileError(f"{path} holds {len(images)} images but {len(labels)} labels: one label per image")
    if not len(images):
        raise DatasetFileError(f"{path} holds no images")
    return images, check_labels(labels.astype(np.int64), lambda row: f"{path}: labels[{row}]")


def load_npz(path: str | Path, channels: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    """Images uint8 [N, C, S, S] (each its centred square, S the shorter side; C = ``channels``) and labels int64."""
    if channels not in MODES:
        raise ConfigError(f"data.channels: expected 1 (grayscale) or 3 (RGB), got {channels!r}")
    path = Path(path).expanduser()
    images, labels = read_arrays(path)
    images = as_nchw(images, f"{path}: images")
    height, width = images.shape[2:]
    size = min(height, width)
    left, top = crop_offsets(width, height, size)
    square = to_channels(images[:, :, top:top + size, left:left + size], channels)
    return torch.from_numpy(np.ascontiguousarray(square)), torch.from_numpy(labels)


def load_npz_split(split: str, path: str | None, test_path: str | None,
                   channels: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    """``split="train"`` reads ``path``; ``split="test"`` reads ``test_path``."""
    return load_npz(split_file("npz", split, path, test_path, "a .npz file with arrays images and labels", "file"),
                    channels)
