"""Downsampled ImageNet 32x32 (Chrabaszcz et al. 2017), the public pretraining data of Ghalebikesabi et al.:
1,281,167 training and 50,000 validation images, 1,000 classes.

Its files need an image-net.org account, so nothing is downloaded: put the official ``Imagenet32_train_npz``
and ``Imagenet32_val_npz`` contents (``train_data_batch_1.npz`` .. ``train_data_batch_10.npz``,
``val_data.npz``) in ``<data_dir>/imagenet32/``. Each holds ``data`` uint8 [n, 3072] (1,024 red, then green,
then blue values, rows of 32) and ``labels`` 1..1000; they are read with ``allow_pickle=False``.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import torch

from dpdiffusion.data.download import DatasetFileError, local_root

DATASET = "imagenet32"
FILES = {"train": tuple(f"train_data_batch_{i}.npz" for i in range(1, 11)), "test": ("val_data.npz",)}
NUM_CLASSES = 1000


def read_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Images uint8 [n, 3, 32, 32] and labels int64 [n] (0..999) from one npz file."""
    try:
        with np.load(path, allow_pickle=False) as batch:
            data, labels = batch["data"], batch["labels"]
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as error:
        raise DatasetFileError(f"{path} is not a readable ImageNet32 batch (npz with data and labels): {error}") from error
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise DatasetFileError(f"{path}: data is {data.dtype} {tuple(data.shape)}, expected uint8 [n, 3072]")
    labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    if len(labels) != len(data) or len(labels) and (labels.min() < 1 or labels.max() > NUM_CLASSES):
        raise DatasetFileError(f"{path}: expected {len(data)} labels in 1..{NUM_CLASSES}")
    return data.reshape(-1, 3, 32, 32), labels - 1


def load_imagenet32(split: str = "train", data_dir: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Images uint8 [N, 3, 32, 32] and labels int64 [N], files in their canonical order."""
    if split not in FILES:
        raise ValueError(f"{DATASET} has splits {', '.join(FILES)}, not {split!r}")
    root = local_root(data_dir)
    folder = (root if root is not None else Path("<data_dir>")) / DATASET
    missing = [name for name in FILES[split] if not (folder / name).is_file()]
    if root is None or missing:
        raise DatasetFileError(
            f"{folder / (missing or FILES[split])[0]} not found: ImageNet32 needs an image-net.org account; put the "
            f"official npz files in <data_dir>/{DATASET}/ and pass data_dir (or set DPDIFFUSION_DATA_DIR)")
    parts = [read_batch(folder / name) for name in FILES[split]]
    return torch.from_numpy(np.concatenate([p[0] for p in parts])), torch.from_numpy(np.concatenate([p[1] for p in parts]))
