"""Image files to uint8 arrays by fixed, data-independent geometry: a centre crop, then a resize."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

from dpdiffusion.data.download import DatasetFileError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")


def decode(source: Path | bytes, name: str, mode: str) -> Image.Image:
    """The image in ``mode`` ("L" or "RGB"); an unreadable file is a DatasetFileError naming it. 16-bit
    grayscale (common in medical imaging) maps to 8 bits by the fixed scale 255 / 65535, never by the image's
    own range; 32-bit integer or float images have no fixed range and are refused."""
    try:
        with Image.open(source if isinstance(source, Path) else io.BytesIO(source)) as image:
            image.load()  # decode now, so a truncated file fails here
            if image.mode.startswith("I;16"):
                wide = np.asarray(image).astype(np.float64)
                image = Image.fromarray(np.rint(wide * (255 / 65535)).astype(np.uint8))
            elif image.mode in ("I", "F"):
                raise DatasetFileError(f"{name} holds 32-bit {'integer' if image.mode == 'I' else 'float'} pixels, "
                                       f"which have no fixed range: save it as 8- or 16-bit")
            return image.convert(mode)
    except DatasetFileError:
        raise
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
        image = image.resize((resolution, resolution), Image.Resampling.BILINEAR)
    array = np.asarray(image, dtype=np.uint8)
    return array[None] if array.ndim == 2 else array.transpose(2, 0, 1)
