"""What training reads: a dataset of examples addressed by index, and content fingerprints of one.

A ``Dataset`` gives batches for index tensors (the Poisson sample of a step). Fingerprints are computed from
the decoded images themselves, never from names or paths: ``fingerprint`` (the whole dataset, kept in the
owner's checkpoints so that a resume on other data is refused) and ``image_hashes`` (one per image, to find
images shared by a public and a private dataset however either is named).
"""

from __future__ import annotations

import hashlib
from typing import Protocol

import torch
import torch.nn.functional as F

from dpdiffusion.data.labels import ClassNames

Batch = dict[str, torch.Tensor]


class Dataset(Protocol):
    def __len__(self) -> int: ...

    def batch(self, indices: torch.Tensor) -> Batch: ...


class ArrayDataset:
    """In-memory examples: ``x`` images (any dtype; ``transform`` maps them to the model's input) and ``y``.
    ``source``: the ``data.name`` it was loaded by (``data.datasets.load_dataset``; None: arrays given directly);
    ``class_names``: the names its layout gives its classes (a ``data.labels.ClassNames``), if any."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, transform=None, *, source: str | None = None,
                 class_names: ClassNames | None = None):
        if len(x) != len(y):
            raise ValueError(f"{len(x)} images but {len(y)} labels")
        self.x, self.y, self.transform = x, y, transform
        self.source, self.class_names = source, class_names

    def __len__(self) -> int:
        return len(self.x)

    def batch(self, indices: torch.Tensor) -> Batch:
        x = self.x[indices]
        return {"x": self.transform(x) if self.transform else x, "y": self.y[indices]}


class DeclaredSize:
    """``dataset`` with a public size N^ declared for it (``privacy.public_dataset_size``): its plan is for N^
    (``planned_size``, which the DP mechanism checks), while Poisson sampling still runs over every one of its
    examples, each included with the public probability q = B / N^. Images, labels and the rest are
    ``dataset``'s."""

    def __init__(self, dataset: Dataset, planned_size: int):
        self.dataset, self.planned_size = dataset, planned_size

    def __len__(self) -> int:
        return len(self.dataset)

    def batch(self, indices: torch.Tensor) -> Batch:
        return self.dataset.batch(indices)

    def __getattr__(self, name: str):
        if name == "dataset":  # not set yet
            raise AttributeError(name)
        return getattr(self.dataset, name)


def planned_size(dataset: Dataset) -> int:
    """The N a plan for ``dataset`` is made for: a declared public size, else its private examples (audit
    canaries come on top), else its length."""
    return int(getattr(dataset, "planned_size", len(dataset)))


def with_declared_size(dataset: Dataset, size: int | None) -> Dataset:
    """``dataset`` planned for the declared public size ``size`` (None: for its own)."""
    if size is None or (isinstance(dataset, DeclaredSize) and dataset.planned_size == size):
        return dataset
    return DeclaredSize(dataset, size)


def _bytes(t: torch.Tensor) -> bytes:
    return t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes()


def fingerprint(dataset: Dataset) -> str | None:
    """sha256 of an in-memory dataset's images and labels (None for other datasets). Un-noised and computed
    from private data: it stays in the owner's checkpoints."""
    x, y = getattr(dataset, "x", None), getattr(dataset, "y", None)
    if not (isinstance(x, torch.Tensor) and isinstance(y, torch.Tensor)):
        return None
    digest = hashlib.sha256()
    for t in (x, y):
        digest.update(str((tuple(t.shape), str(t.dtype))).encode())
        digest.update(_bytes(t))
    return digest.hexdigest()


def image_hashes(images: torch.Tensor) -> list[bytes]:
    """One sha256 per decoded image (its shape, dtype and pixels): equal images, equal hashes, whatever the
    file names, folders or dataset names they came from."""
    head = str((tuple(images.shape[1:]), str(images.dtype))).encode()
    return [hashlib.sha256(head + _bytes(image)).digest() for image in images]


SIGNATURE_SIZE = 8  # images are compared as 8x8 area averages per channel
SIGNATURE_RMS = 4.0  # pixel levels (0..255): the largest RMS difference of two signatures called one image


def signatures(images: torch.Tensor) -> torch.Tensor:
    """[N, C*8*8] float32: each image's channels averaged over an 8x8 grid of areas. Resampling one image to
    another size (bilinear, area, from a larger or smaller copy) moves these by a pixel level or two; different
    photographs or handwritten digits differ by far more."""
    size = min(SIGNATURE_SIZE, images.shape[-1])
    return F.adaptive_avg_pool2d(images.float(), size).flatten(1)


def shared_images(public: torch.Tensor, private: torch.Tensor, *, chunk: int = 1024) -> tuple[int, int]:
    """How many public images are images of the private dataset: (exact, near) -- pixel for pixel (sha256),
    and otherwise up to resampling (signatures within ``SIGNATURE_RMS``). Both are uint8 [N, C, H, W] at one
    size (the model's), so one image decoded from a larger and from a smaller copy still matches."""
    if tuple(public.shape[1:]) != tuple(private.shape[1:]):
        raise ValueError(f"compare images of one shape: {tuple(public.shape[1:])} vs {tuple(private.shape[1:])}")
    if not len(public) or not len(private):
        return 0, 0
    exact = set(image_hashes(private))
    matched = torch.tensor([h in exact for h in image_hashes(public)])
    a, b = signatures(public[~matched]), signatures(private)
    limit = SIGNATURE_RMS ** 2 * b.shape[1]
    b_sq = b.pow(2).sum(1)
    near = 0
    for start in range(0, len(a), chunk):
        part = a[start:start + chunk]
        distance = part.pow(2).sum(1, keepdim=True) + b_sq - 2 * part @ b.T  # squared L2, all pairs
        near += int((distance.min(1).values <= limit).sum())
    return int(matched.sum()), near
