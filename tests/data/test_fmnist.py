import gzip

import numpy as np
import pytest
import torch

from dpdiffusion.data.download import DatasetFileError
from dpdiffusion.data.fmnist import FILES, load_fmnist
from tests.data.fakes import write_idx_gz


def write_small_fmnist(folder, n=6):
    rng = np.random.default_rng(1)
    images, labels = rng.integers(0, 256, (n, 28, 28)), rng.integers(0, 10, n)
    files = {}
    for split in ("train", "test"):
        files[split] = tuple(write_idx_gz(folder / "fmnist" / f"{split}-{kind}.gz", array)
                             for kind, array in (("images", images), ("labels", labels)))
    return images, labels, files


def test_small_files_in_the_canonical_format_round_trip(tmp_path):
    images, labels, files = write_small_fmnist(tmp_path)
    x, y = load_fmnist("test", data_dir=str(tmp_path), files=files)
    assert x.shape == (6, 1, 28, 28) and x.dtype == torch.uint8 and y.dtype == torch.int64
    assert np.array_equal(x[:, 0].numpy(), images) and np.array_equal(y.numpy(), labels)
    with pytest.raises(ValueError, match="valid"):
        load_fmnist("valid", data_dir=str(tmp_path), files=files)


@pytest.mark.parametrize("damage", ["flip", "truncate", "missing"])
def test_damaged_files_name_the_file(tmp_path, damage):
    _, _, files = write_small_fmnist(tmp_path)
    path = tmp_path / "fmnist" / "train-labels.gz"
    if damage == "flip":
        with gzip.open(path, "wb") as f:
            f.write(b"\x00\x00\x08\x01\x00\x00\x00\x01\x07")
    elif damage == "truncate":
        path.write_bytes(path.read_bytes()[:20])
    else:
        path.unlink()
    with pytest.raises(DatasetFileError, match="train-labels.gz"):
        load_fmnist("train", data_dir=str(tmp_path), files=files)


def test_canonical_table():
    image_file, label_file = FILES["train"]
    assert image_file.name == "train-images-idx3-ubyte.gz" and image_file.file_md5 == "8d4fb7e6c68d591d4c3dfef9ec88bf0d"
    assert label_file.urls[0] == "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/train-labels-idx1-ubyte.gz"
    assert FILES["test"][0].name == "t10k-images-idx3-ubyte.gz"
