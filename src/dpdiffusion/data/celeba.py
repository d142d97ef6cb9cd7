"""CelebA (Liu et al. 2015), aligned and cropped: 202,599 face JPEGs of 178x218 with 40 binary attributes,
split by ``list_eval_partition.txt`` into train (162,770), valid (19,867) and test (19,962).

Files, in ``<data_dir>/celeba/`` or downloaded from the authors' Google Drive: ``img_align_celeba.zip``
(or its extracted folder ``img_align_celeba/``), ``list_attr_celeba.txt``, ``list_eval_partition.txt``.

Preprocessing, fixed and data-independent: the centred 140x140 square of each image (the face), resized to
32x32 or 64x64 by PIL's bilinear filter. The label is one attribute (``Male`` by default, DPDM's conditional
CelebA): 1 where the file says +1, else 0. Decoding ~160k JPEGs takes minutes, so the preprocessed images
read from the verified zip are cached as ``.npy`` (no pickle) under the cache folder, keyed by the zip's
checksum, the split's file list, the crop and the resolution."""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
import zipfile
import zlib
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from dpdiffusion.data.download import DatasetFileError, RemoteFile, cache_dir, fetch, fetch_path, local_root
from dpdiffusion.data.images import center_crop, decode, to_array
from dpdiffusion.runconfig import ConfigError

DATASET = "celeba"
# Google Drive: "confirm=t" skips the page that asks to confirm a file too large to scan for viruses.
_DRIVE = ("https://drive.usercontent.google.com/download?id={}&export=download&confirm=t",
          "https://drive.google.com/uc?export=download&id={}&confirm=t")


def _remote(name: str, drive_id: str, file_md5: str) -> RemoteFile:
    return RemoteFile(name, tuple(url.format(drive_id) for url in _DRIVE), file_md5=file_md5)


# Drive ids and md5s of the published files, as torchvision lists them.
FILES = {
    "images": _remote("img_align_celeba.zip", "0B7EVK8r0v71pZjFTYXZWM3FlRnM", "00d2c5bc6d35e252742224ab0c1e8fcb"),
    "attributes": _remote("list_attr_celeba.txt", "0B7EVK8r0v71pblRyaVFSWGxPY0U",
                          "75e246fa4810816ffd6ee81facbd244c"),
    "partition": _remote("list_eval_partition.txt", "0B7EVK8r0v71pY0NSMzRuSXJEVkk",
                         "d32c9cbf5e040fd4025c592c306e6668"),
}
IMAGE_FOLDER = "img_align_celeba"
SPLITS = {"train": 0, "valid": 1, "test": 2}
CROP = 140
NUM_CLASSES = 2


def _text(content: bytes, name: str) -> list[str]:
    try:
        return [line for line in content.decode("ascii").splitlines() if line.strip()]
    except UnicodeDecodeError as error:
        raise DatasetFileError(f"{name} is not a text file ({error})") from error


def parse_partition(content: bytes, name: str) -> dict[str, int]:
    """Image file -> split number (0 train, 1 valid, 2 test), one "000001.jpg 0" line per image."""
    partition = {}
    for number, line in enumerate(_text(content, name), start=1):
        parts = line.split()
        if len(parts) != 2 or parts[1] not in ("0", "1", "2"):
            raise DatasetFileError(f"{name} line {number}: expected '<image> <0|1|2>', got {line!r}")
        partition[parts[0]] = int(parts[1])
    return partition


def parse_attributes(content: bytes, name: str) -> tuple[list[str], dict[str, np.ndarray]]:
    """Attribute names and image file -> bool values (True where 1, False where -1), from a count line, a
    names line, then one "<image> v1 ... v40" line per image."""
    lines = _text(content, name)
    if len(lines) < 2 or not lines[0].strip().isdigit():
        raise DatasetFileError(f"{name}: expected a count line and a line of attribute names first")
    names, rows = lines[1].split(), lines[2:]
    if len(rows) != int(lines[0]):
        raise DatasetFileError(f"{name} announces {int(lines[0])} images but lists {len(rows)}: truncated?")
    files, table, allowed = [], [], {"1", "-1"}
    for number, line in enumerate(rows, start=3):
        parts = line.split()
        if len(parts) != 1 + len(names) or not allowed.issuperset(parts[1:]):
            raise DatasetFileError(f"{name} line {number}: expected an image and {len(names)} values of 1 or -1")
        files.append(parts[0])
        table.append("".join(parts[1:]).replace("-1", "0"))  # "-" only ever starts a "-1"
    values = np.frombuffer("".join(table).encode(), dtype=np.uint8).reshape(len(files), len(names)) == ord("1")
    return names, dict(zip(files, values, strict=True))


def _image_source(data_dir: str | None, remote: RemoteFile) -> tuple[Path, str | None]:
    """The verified zip and its checksum, or the extracted folder (a local copy without the zip) and None."""
    root = local_root(data_dir)
    if root is not None and (root / DATASET / IMAGE_FOLDER).is_dir() and not (root / DATASET / remote.name).exists():
        return root / DATASET / IMAGE_FOLDER, None
    return fetch_path(DATASET, remote, data_dir), remote.file_md5 or remote.content_md5


def _decode_all(files: list[str], source: Path, resolution: int, crop: int, desc: str) -> np.ndarray:
    images = np.empty((len(files), 3, resolution, resolution), dtype=np.uint8)
    with contextlib.ExitStack() as stack:
        archive = None
        if source.is_file():
            try:
                archive = stack.enter_context(zipfile.ZipFile(source))
            except (zipfile.BadZipFile, OSError) as error:
                raise DatasetFileError(f"{source} is truncated or corrupted ({error})") from error
        for i, file in enumerate(tqdm(files, desc=desc, unit="img", disable=None)):
            member = f"{IMAGE_FOLDER}/{file}"
            where = f"{source} (member {member})" if archive else str(source / file)
            try:
                content = archive.read(member) if archive else source / file
                images[i] = to_array(center_crop(decode(content, where, "RGB"), crop), resolution)
            except DatasetFileError:
                raise
            except KeyError as error:
                raise DatasetFileError(f"{source} has no member {member}") from error
            except (ValueError, OSError, EOFError, zlib.error) as error:  # BadZipFile is a ValueError
                raise DatasetFileError(f"{where}: {error}") from error
    return images


def _cached(path: Path, shape: tuple[int, ...]) -> np.ndarray | None:
    try:
        images = np.load(path, allow_pickle=False)
    except (OSError, ValueError):
        return None
    return images if images.shape == shape and images.dtype == np.uint8 else None


def _save(path: Path, images: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".npy")
    try:
        with os.fdopen(fd, "wb") as f:
            np.save(f, images, allow_pickle=False)
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)


def load_celeba(split: str = "train", resolution: int = 32, label_attribute: str = "Male", data_dir: str | None = None,
                files: dict = FILES, crop: int = CROP) -> tuple[torch.Tensor, torch.Tensor]:
    """Images uint8 [N, 3, R, R] and labels int64 [N] (1 where ``label_attribute`` is +1), in partition order."""
    if split not in SPLITS:
        raise ValueError(f"{DATASET} has splits {', '.join(SPLITS)}, not {split!r}")
    partition = parse_partition(fetch(DATASET, files["partition"], data_dir), files["partition"].name)
    names, attributes = parse_attributes(fetch(DATASET, files["attributes"], data_dir), files["attributes"].name)
    if label_attribute not in names:
        raise ConfigError(f"data.label_attribute: {label_attribute!r} is not a CelebA attribute "
                          f"(one of {', '.join(names)})")
    selected = [file for file, number in partition.items() if number == SPLITS[split]]
    unlabelled = [file for file in selected if file not in attributes]
    if unlabelled:
        raise DatasetFileError(f"{files['attributes'].name} has no line for {unlabelled[0]} "
                               f"({len(unlabelled)} images of {files['partition'].name} missing)")
    column = names.index(label_attribute)
    labels = np.array([attributes[file][column] for file in selected], dtype=np.int64)

    source, checksum = _image_source(data_dir, files["images"])
    shape = (len(selected), 3, resolution, resolution)
    cache = None
    if checksum is not None:
        key = hashlib.md5(f"{checksum} {crop} {resolution} {' '.join(selected)}".encode()).hexdigest()[:16]
        cache = cache_dir() / DATASET / "preprocessed" / f"{split}-{resolution}px-{key}.npy"
    images = _cached(cache, shape) if cache is not None and cache.exists() else None
    if images is None:
        images = _decode_all(selected, source, resolution, crop, desc=f"{DATASET} {split} {resolution}px")
        if cache is not None:
            _save(cache, images)
    return torch.from_numpy(images), torch.from_numpy(labels)
