"""Image files to uint8 arrays by fixed, data-independent geometry: a centre crop, then a resize."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

from dpdiffusion.data.download import DatasetFileError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")


def decode(source: Path | bytes, name: str, mode: str) -> Image.Image:
    """The image in ``mode`` ("L" or "RGB"); an unreadable file is a DatasetFileError naming it."""
    try:
        with Image.open(source if isinstance(source, Path) else io.BytesIO(source)) as image:
            image.load()  # decode now, so a truncated file fails here
            return image.convert(mode)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        raise DatasetFileError(f"{name} is not a readable image ({error})") from error


def center_crop(image: Image.Image, size: int | None = None) -> Image.Image:
    """The centred ``size`` x ``size`` square (None: the largest one), offsets rounded as torchvision does."""
    width, height = image.size
    size = min(width, height) if size is None else size
    if size > min(width, height):
        raise ValueError(f"cannot crop {size}x{size} from a {width}x{height} image")
    left, top = round((width - size) / 2), round((height - size) / 2)
    return image.crop((left, top, left + size, top + size))


def to_array(image: Image.Image, resolution: int) -> np.ndarray:
    """uint8 [C, R, R] from a square image, resized by PIL's (antialiased) bilinear filter."""
    if image.size != (resolution, resolution):
        image = image.resize((resolution, resolution), Image.BILINEAR)
    array = np.asarray(image, dtype=np.uint8)
    return array[None] if array.ndim == 2 else array.transpose(2, 0, 1)
