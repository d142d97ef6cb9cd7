"""MNIST in its canonical IDX files (60,000 training and 10,000 test images, 28x28 grayscale)."""

from __future__ import annotations

import math

import numpy as np
import torch

from dpdiffusion.data.download import DatasetFileError, RemoteFile, fetch

_MIRRORS = ("https://ossci-datasets.s3.amazonaws.com/mnist/", "http://yann.lecun.com/exdb/mnist/")


def _remote(name: str, content_md5: str) -> RemoteFile:
    return RemoteFile(name, tuple(m + name for m in _MIRRORS), content_md5)


FILES = {
    "train": (_remote("train-images-idx3-ubyte.gz", "6bbc9ace898e44ae57da46a324031adb"),
              _remote("train-labels-idx1-ubyte.gz", "a25bea736e30d166cdddb491f175f624")),
    "test": (_remote("t10k-images-idx3-ubyte.gz", "2646ac647ad5339dbf082846283269ea"),
             _remote("t10k-labels-idx1-ubyte.gz", "27ae3e4e09519cfbb04c329615203637")),
}


def parse_idx(content: bytes, name: str) -> np.ndarray:
    """An IDX array (unsigned bytes): magic 0x00 0x00 0x08 ndim, then ndim big-endian sizes, then the data."""
    if len(content) < 4 or content[:3] != b"\x00\x00\x08":
        raise DatasetFileError(f"{name} is not an IDX file of unsigned bytes")
    ndim = content[3]
    header = 4 + 4 * ndim
    shape = tuple(int.from_bytes(content[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    if len(content) != header + math.prod(shape):  # exact integers: a crafted header cannot overflow
        raise DatasetFileError(f"{name} holds {len(content) - header} bytes of data, expected {math.prod(shape)} for shape {shape}")
    try:
        return np.frombuffer(content, dtype=np.uint8, offset=header).reshape(shape)
    except ValueError as error:  # e.g. a zero dimension beside sizes no array can have
        raise DatasetFileError(f"{name} declares the impossible shape {shape}") from error


def load_mnist(split: str = "train", data_dir: str | None = None, dataset: str = "mnist",
               files: dict = FILES) -> tuple[torch.Tensor, torch.Tensor]:
    """Images uint8 [N, 1, 28, 28] and labels int64 [N]."""
    if split not in files:
        raise ValueError(f"{dataset} has splits {', '.join(files)}, not {split!r}")
    image_file, label_file = files[split]
    images = parse_idx(fetch(dataset, image_file, data_dir), image_file.name)
    labels = parse_idx(fetch(dataset, label_file, data_dir), label_file.name)
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise DatasetFileError(f"{dataset} {split}: {images.shape} images do not match {labels.shape} labels")
    return torch.from_numpy(images.copy()).unsqueeze(1), torch.from_numpy(labels.astype(np.int64))
