"""Frechet Inception Distance (Heusel et al. 2017) between two sets of Inception features."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dpdiffusion.data.download import cache_dir


@dataclass(frozen=True)
class Statistics:
    mu: np.ndarray  # [D]
    sigma: np.ndarray  # [D, D]
    count: int

    @classmethod
    def of(cls, features: np.ndarray) -> Statistics:
        if len(features) < 2:
            raise ValueError(f"FID needs at least 2 images, got {len(features)}")
        return cls(features.mean(axis=0), np.cov(features, rowvar=False), len(features))


def _psd_sqrt(matrix: np.ndarray) -> np.ndarray:
    values, vectors = np.linalg.eigh((matrix + matrix.T) / 2)
    return (vectors * np.sqrt(np.clip(values, 0, None))) @ vectors.T


def frechet_distance(a: Statistics, b: Statistics) -> float:
    """||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a S_b)^(1/2)).

    Tr((S_a S_b)^(1/2)) is the sum of the square roots of the eigenvalues of S_a^(1/2) S_b S_a^(1/2), a symmetric
    positive semi-definite matrix with the same eigenvalues as S_a S_b: stable where S_a S_b is singular.
    """
    root_a = _psd_sqrt(a.sigma)
    middle = root_a @ b.sigma @ root_a
    trace_sqrt = np.sqrt(np.clip(np.linalg.eigvalsh((middle + middle.T) / 2), 0, None)).sum()
    diff = a.mu - b.mu
    return float(diff @ diff + np.trace(a.sigma) + np.trace(b.sigma) - 2 * trace_sqrt)


def shared_cache() -> Path:
    """The shared cache of reference features (outside any run folder): for evaluations of a samples file."""
    return cache_dir() / "fid"


def reference_path(dataset: str, split: str, resolution: int, count: int, source: str = "",
                   root: Path | None = None) -> Path:
    """Where the reference features are cached in ``root`` (default ``shared_cache()``; a run's evaluation
    keeps them on the owner's side, ``RUN_DIR/owner/cache``: features of a private split are un-noised functions
    of private data); ``source`` (what identifies the files and the detector) is hashed into the name so that
    two image folders or two detectors never share an entry."""
    tag = hashlib.sha256(source.encode()).hexdigest()[:12]
    return (root or shared_cache()) / f"{dataset}-{split}-{resolution}px-{count}-{tag}.features.npy"


def clear_reference_cache(root: Path) -> list[Path]:
    """Remove the cached reference features in ``root`` (whole files, unfinished chunks, temporary files) and
    nothing else; return the removed files."""
    if not root.is_dir():
        return []
    removed = [p for p in sorted(root.iterdir()) if p.is_file() and ".features" in p.name and p.name.endswith(".npy")]
    for p in removed:
        p.unlink()
    return removed


def reference_subset(size: int, count: int | None) -> np.ndarray:
    """The indices of the reference images: all of the split, or a fixed public subset (seeded, not chosen by
    looking at the data)."""
    if count is None or count >= size:
        return np.arange(size)
    return np.sort(np.random.default_rng(0).permutation(size)[:count])
