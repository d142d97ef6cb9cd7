import numpy as np
import pytest
import torch

from dpdiffusion.data.download import DatasetFileError
from dpdiffusion.data.imagenet32 import FILES, load_imagenet32


def write_batches(folder, split, rng, n=6):
    folder.mkdir(parents=True, exist_ok=True)
    arrays = []
    for name in FILES[split]:
        data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        labels = rng.integers(1, 1001, n)
        np.savez(folder / name, data=data, labels=labels, mean=np.zeros(3072))
        arrays.append((data, labels))
    return arrays


def test_reads_the_official_npz_layout(tmp_path):
    arrays = write_batches(tmp_path / "imagenet32", "train", np.random.default_rng(0))
    images, labels = load_imagenet32("train", str(tmp_path))
    assert images.shape == (60, 3, 32, 32) and images.dtype == torch.uint8
    data, raw_labels = arrays[1]
    # planes: 1,024 red values, then green, then blue, rows of 32
    assert torch.equal(images[6 + 2, 1, 3, 5], torch.tensor(data[2, 1024 + 3 * 32 + 5]))
    assert labels[6 + 2] == raw_labels[2] - 1 and 0 <= int(labels.min()) and int(labels.max()) <= 999


def test_missing_or_bad_files_name_what_is_wrong(tmp_path):
    with pytest.raises(DatasetFileError, match="image-net.org account"):
        load_imagenet32("test", str(tmp_path))
    folder = tmp_path / "imagenet32"
    folder.mkdir()
    (folder / "val_data.npz").write_bytes(b"not a zip")
    with pytest.raises(DatasetFileError, match="val_data.npz is not a readable ImageNet32 batch"):
        load_imagenet32("test", str(tmp_path))
    np.savez(folder / "val_data.npz", data=np.zeros((2, 100), np.uint8), labels=np.ones(2))
    with pytest.raises(DatasetFileError, match=r"expected uint8 \[n, 3072\]"):
        load_imagenet32("test", str(tmp_path))
    np.savez(folder / "val_data.npz", data=np.zeros((2, 3072), np.uint8), labels=np.array([0, 5]))
    with pytest.raises(DatasetFileError, match="labels in 1..1000"):
        load_imagenet32("test", str(tmp_path))
    np.savez(folder / "val_data.npz", data=np.zeros((2, 3072), object), labels=np.ones(2))  # would need pickles
    with pytest.raises(DatasetFileError):
        load_imagenet32("test", str(tmp_path))
