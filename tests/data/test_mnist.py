import gzip
import hashlib
import os

import numpy as np
import pytest
import torch

from dpdiffusion.data.download import DatasetFileError, RemoteFile
from dpdiffusion.data.mnist import FILES, load_mnist

SHARED = os.environ.get("DPDIFFUSION_DATA_DIR")


def idx_bytes(array: np.ndarray) -> bytes:
    header = b"\x00\x00\x08" + bytes([array.ndim]) + b"".join(int(n).to_bytes(4, "big") for n in array.shape)
    return header + array.astype(np.uint8).tobytes()


def write_small_mnist(folder, n=5):
    rng = np.random.default_rng(0)
    images, labels = rng.integers(0, 256, (n, 28, 28)), rng.integers(0, 10, n)
    files = {}
    for split in ("train", "test"):
        remotes = []
        for name, array in ((f"{split}-images.gz", images), (f"{split}-labels.gz", labels)):
            content = idx_bytes(array)
            (folder / "mnist").mkdir(parents=True, exist_ok=True)
            with gzip.open(folder / "mnist" / name, "wb") as f:
                f.write(content)
            remotes.append(RemoteFile(name, (f"file://{folder / 'mnist' / name}",), hashlib.md5(content).hexdigest()))
        files[split] = tuple(remotes)
    return images, labels, files


def test_small_files_in_the_canonical_format_round_trip(tmp_path):
    images, labels, files = write_small_mnist(tmp_path)
    x, y = load_mnist("train", data_dir=str(tmp_path), files=files)
    assert x.shape == (5, 1, 28, 28) and x.dtype == torch.uint8
    assert np.array_equal(x[:, 0].numpy(), images) and np.array_equal(y.numpy(), labels)


def test_download_verifies_then_caches(tmp_path, monkeypatch):
    source = tmp_path / "source"
    images, _, files = write_small_mnist(source)
    monkeypatch.delenv("DPDIFFUSION_DATA_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    x, _ = load_mnist("test", files=files)  # fetched through its (file://) address
    assert np.array_equal(x[:, 0].numpy(), images)
    assert (tmp_path / "cache/dpdiffusion/mnist/test-images.gz").exists()


@pytest.mark.parametrize("damage", ["flip", "truncate", "missing"])
def test_damaged_files_name_the_file(tmp_path, damage):
    _, _, files = write_small_mnist(tmp_path)
    path = tmp_path / "mnist" / "train-images.gz"
    raw = path.read_bytes()
    if damage == "flip":
        with gzip.open(path, "wb") as f:  # valid archive, wrong content
            f.write(gzip.decompress(raw)[:-1] + b"\x01")
    elif damage == "truncate":
        path.write_bytes(raw[: len(raw) // 2])
    else:
        path.unlink()
    with pytest.raises(DatasetFileError, match="train-images.gz"):
        load_mnist("train", data_dir=str(tmp_path), files=files)


@pytest.mark.skipif(not SHARED, reason="needs a local copy of MNIST (DPDIFFUSION_DATA_DIR)")
def test_real_mnist_from_the_local_copy():
    x, y = load_mnist("test", data_dir=SHARED)
    assert x.shape == (10000, 1, 28, 28) and torch.equal(torch.bincount(y).gt(800), torch.ones(10, dtype=torch.bool))
    assert FILES["train"][0].content_md5 == "6bbc9ace898e44ae57da46a324031adb"
