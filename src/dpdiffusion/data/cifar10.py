"""CIFAR-10 (Krizhevsky 2009) in its binary version: 50,000 training and 10,000 test images, 32x32 RGB,
10 classes. Never the Python version: its batches are pickles, and nothing here is ever unpickled.

Each batch file holds fixed-size records: one label byte, then 3,072 bytes of pixels (1,024 red, 1,024
green, 1,024 blue, each 32 rows of 32). Read from ``<data_dir>/cifar10/cifar-10-binary.tar.gz`` (verified
against the published md5), else from the extracted folder ``<data_dir>/cifar10/cifar-10-batches-bin/``
(checked by size only: no checksums are published for the members), else downloaded."""

from __future__ import annotations

import tarfile
import zlib
from pathlib import Path

import numpy as np
import torch

from dpdiffusion.data.download import DatasetFileError, RemoteFile, fetch_path, local_root

DATASET = "cifar10"
ARCHIVE = RemoteFile("cifar-10-binary.tar.gz", ("https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz",),
                     file_md5="c32a1d4ab5d03f1284b67883e8d87530")  # as published on the dataset's page
FOLDER = "cifar-10-batches-bin"
BATCHES = {"train": tuple(f"data_batch_{i}.bin" for i in range(1, 6)), "test": ("test_batch.bin",)}
RECORD_BYTES = 1 + 3 * 32 * 32
RECORDS_PER_BATCH = 10_000
NUM_CLASSES = 10


def parse_batch(content: bytes, name: str, records: int = RECORDS_PER_BATCH) -> tuple[np.ndarray, np.ndarray]:
    """Images uint8 [records, 3, 32, 32] and labels uint8 [records] from one batch file's bytes."""
    if len(content) != records * RECORD_BYTES:
        raise DatasetFileError(
            f"{name} holds {len(content)} bytes, expected {records} records of {RECORD_BYTES} bytes "
            f"({records * RECORD_BYTES}): the file is truncated or not a CIFAR-10 binary batch"
        )
    rows = np.frombuffer(content, dtype=np.uint8).reshape(records, RECORD_BYTES)
    labels = rows[:, 0]
    if labels.max(initial=0) >= NUM_CLASSES:
        raise DatasetFileError(f"{name} has a label byte {int(labels.max())}, expected 0..{NUM_CLASSES - 1}")
    return rows[:, 1:].reshape(records, 3, 32, 32), labels


def _read_archive(path: Path, members: tuple[str, ...]) -> dict[str, bytes]:
    """The named members' bytes, read in one pass over the compressed archive."""
    wanted = {f"{FOLDER}/{name}": name for name in members}
    found: dict[str, bytes] = {}
    try:
        with tarfile.open(path, "r:gz") as archive:
            for member in archive:
                content = archive.extractfile(member) if member.name in wanted and member.isfile() else None
                if content is not None:
                    found[wanted[member.name]] = content.read()
    except (tarfile.TarError, OSError, EOFError, zlib.error) as error:
        raise DatasetFileError(f"{path} is truncated or corrupted ({error})") from error
    for full, name in wanted.items():
        if name not in found:
            raise DatasetFileError(f"{path} has no member {full}: not the canonical {ARCHIVE.name}")
    return found


def _read_folder(folder: Path, members: tuple[str, ...]) -> dict[str, bytes]:
    found = {}
    for name in members:
        path = folder / name
        if not path.is_file():
            raise DatasetFileError(f"{path} not found (expected the extracted {ARCHIVE.name} in {folder})")
        found[name] = path.read_bytes()
    return found


def load_cifar10(split: str = "train", data_dir: str | None = None, archive: RemoteFile = ARCHIVE,
                 records_per_batch: int = RECORDS_PER_BATCH) -> tuple[torch.Tensor, torch.Tensor]:
    """Images uint8 [N, 3, 32, 32] and labels int64 [N], batches in their canonical order."""
    if split not in BATCHES:
        raise ValueError(f"{DATASET} has splits {', '.join(BATCHES)}, not {split!r}")
    members = BATCHES[split]
    root = local_root(data_dir)
    folder = root / DATASET / FOLDER if root is not None else None
    if root is not None and folder is not None and folder.is_dir() and not (root / DATASET / archive.name).exists():
        contents = _read_folder(folder, members)
        names = {name: str(folder / name) for name in members}
    else:
        path = fetch_path(DATASET, archive, data_dir)
        contents = _read_archive(path, members)
        names = {name: f"{path} (member {FOLDER}/{name})" for name in members}
    parts = [parse_batch(contents[name], names[name], records_per_batch) for name in members]
    images = np.concatenate([p[0] for p in parts])
    labels = np.concatenate([p[1] for p in parts])
    return torch.from_numpy(images), torch.from_numpy(labels.astype(np.int64))
