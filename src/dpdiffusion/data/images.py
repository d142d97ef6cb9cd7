"""Image files to uint8 arrays by fixed, data-independent geometry: a centre crop, then a resize."""

from __future__ import annotations

import io
import struct
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from dpdiffusion.data.download import DatasetFileError
from dpdiffusion.runconfig import ConfigError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
MODES = {1: "L", 3: "RGB"}  # data.channels -> the PIL mode images are read in


def decode(source: Path | bytes, name: str, mode: str) -> Image.Image:
    """The image in ``mode`` ("L" or "RGB"); an unreadable file is a DatasetFileError naming it. 16-bit
    grayscale (common in medical imaging) maps to 8 bits by the fixed scale 255 / 65535, never by the image's
    own range; 32-bit integer or float images have no fixed range and are refused."""
    try:
        with Image.open(source if isinstance(source, Path) else io.BytesIO(source)) as image:
            image.load()  # decode now, so a truncated file fails here
            return in_mode(image, name, mode)
    except DatasetFileError:
        raise
    # Pillow's decoders raise more than OSError on malformed files (EOFError, struct.error, IndexError, ...)
    except (OSError, SyntaxError, ValueError, EOFError, IndexError, struct.error, Image.DecompressionBombError) as error:
        raise DatasetFileError(f"{name} is not a readable image ({error})") from error


def in_mode(image: Image.Image, name: str, mode: str) -> Image.Image:
    """A decoded image in ``mode`` by ``decode``'s fixed rules (16-bit scaled by 255 / 65535, 32-bit refused)."""
    if image.mode.startswith("I;16"):
        wide = np.asarray(image).astype(np.float64)
        image = Image.fromarray(np.rint(wide * (255 / 65535)).astype(np.uint8))
    elif image.mode in ("I", "F"):
        raise DatasetFileError(f"{name} holds 32-bit {'integer' if image.mode == 'I' else 'float'} pixels, "
                               f"which have no fixed range: save it as 8- or 16-bit")
    return image.convert(mode)


def center_crop(image: Image.Image, size: int | None = None) -> Image.Image:
    """The centred ``size`` x ``size`` square (None: the largest one), offsets rounded as torchvision does."""
    width, height = image.size
    size = min(width, height) if size is None else size
    left, top = crop_offsets(width, height, size)
    return image.crop((left, top, left + size, top + size))


def crop_offsets(width: int, height: int, size: int) -> tuple[int, int]:
    """(left, top) of the centred ``size`` x ``size`` square, rounded as torchvision does."""
    if size > min(width, height):
        raise ValueError(f"cannot crop {size}x{size} from a {width}x{height} image")
    return round((width - size) / 2), round((height - size) / 2)


def to_array(image: Image.Image, resolution: int) -> np.ndarray:
    """uint8 [C, R, R] from a square image, resized by PIL's (antialiased) bilinear filter."""
    if image.size != (resolution, resolution):
        image = image.resize((resolution, resolution), Image.Resampling.BILINEAR)
    array = np.asarray(image, dtype=np.uint8)
    return array[None] if array.ndim == 2 else array.transpose(2, 0, 1)


def check_image_settings(resolution: int | None, channels: int, source: str) -> int:
    """``data.resolution`` and ``data.channels`` for a source of image files, which are cropped and resized to it."""
    if channels not in MODES:
        raise ConfigError(f"data.channels: expected 1 (grayscale) or 3 (RGB), got {channels!r}")
    if resolution is None:
        raise ConfigError(f"data.resolution: required for {source} (every image is cropped and resized to it)")
    if isinstance(resolution, bool) or not isinstance(resolution, int) or resolution < 1:
        raise ConfigError(f"data.resolution: expected a positive whole number of pixels, got {resolution!r}")
    return resolution


def read_images(sources: Sequence[tuple[Path | bytes | Image.Image, str]], resolution: int, channels: int,
                desc: str) -> np.ndarray:
    """uint8 [N, C, R, R] from (file, bytes or decoded image; its name for errors) pairs: each in mode "L" or
    "RGB", its centred square, resized to ``resolution``. The one pipeline of every source of image files."""
    images = np.empty((len(sources), channels, resolution, resolution), dtype=np.uint8)
    for i, (source, name) in enumerate(tqdm(sources, desc=desc, unit="img", disable=None)):
        image = in_mode(source, name, MODES[channels]) if isinstance(source, Image.Image) else \
            decode(source, name, MODES[channels])
        images[i] = to_array(center_crop(image), resolution)
    return images


def to_channels(images: np.ndarray, channels: int) -> np.ndarray:
    """uint8 [N, C, H, W] with C in (1, 3) as ``channels`` channels, by PIL's fixed conversions: grayscale to RGB
    repeats the channel; RGB to grayscale is ITU-R 601-2 luma, L = (19595 R + 38470 G + 7471 B + 2^15) >> 16."""
    have = images.shape[1]
    if have == channels:
        return images
    if channels not in MODES:
        raise ConfigError(f"data.channels: expected 1 (grayscale) or 3 (RGB), got {channels!r}")
    if have == 1:
        return np.repeat(images, 3, axis=1)
    r, g, b = (images[:, i].astype(np.uint32) for i in range(3))
    return ((19595 * r + 38470 * g + 7471 * b + 0x8000) >> 16).astype(np.uint8)[:, None]
