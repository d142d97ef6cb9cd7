"""Fashion-MNIST (Xiao et al. 2017) in its canonical IDX files: 60,000 training and 10,000 test images,
28x28 grayscale, 10 clothing classes. Same format as MNIST, so it is read by ``load_mnist``."""

from __future__ import annotations

import torch

from dpdiffusion.data.download import RemoteFile
from dpdiffusion.data.mnist import load_mnist

_MIRRORS = ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
            "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/")


def _remote(name: str, file_md5: str) -> RemoteFile:
    # md5 of the published .gz files (as torchvision and the dataset's README list them)
    return RemoteFile(name, tuple(m + name for m in _MIRRORS), file_md5=file_md5)


FILES = {
    "train": (_remote("train-images-idx3-ubyte.gz", "8d4fb7e6c68d591d4c3dfef9ec88bf0d"),
              _remote("train-labels-idx1-ubyte.gz", "25c81989df183df01b3e8a0aad5dffbe")),
    "test": (_remote("t10k-images-idx3-ubyte.gz", "bef4ecab320f06d8554ea6380940ec79"),
             _remote("t10k-labels-idx1-ubyte.gz", "bb300cfdad3c16e7a12a480ee83cd310")),
}


def load_fmnist(split: str = "train", data_dir: str | None = None,
                files: dict = FILES) -> tuple[torch.Tensor, torch.Tensor]:
    """Images uint8 [N, 1, 28, 28] and labels int64 [N]; local copies in ``<data_dir>/fmnist/``."""
    return load_mnist(split, data_dir, dataset="fmnist", files=files)
