"""Kernel Inception Distance (Binkowski et al. 2018, "Demystifying MMD GANs"): the unbiased estimate of the squared
maximum mean discrepancy between two sets of Inception features under the cubic polynomial kernel
k(x, y) = (x . y / d + 1)^3, averaged over random subsets of both sets. Unlike FID it is unbiased at any sample
size, so it can compare sets of a few hundred images; it reads the same features as FID."""

from __future__ import annotations

import numpy as np

SUBSETS = 100  # as in Binkowski et al.'s code and torch-fidelity
SUBSET_SIZE = 1000


def polynomial_kernel(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """k(x_i, y_j) = (x_i . y_j / d + 1)^3 for every pair: [len(x), len(y)]."""
    return (x @ y.T / x.shape[1] + 1.0) ** 3


def mmd2_unbiased(x: np.ndarray, y: np.ndarray) -> float:
    """The unbiased MMD^2 of Gretton et al. (2012, eq. 3):
    sum_{i != j} k(x_i, x_j) / (m (m - 1)) + sum_{i != j} k(y_i, y_j) / (n (n - 1)) - 2 sum_{i, j} k(x_i, y_j) / (m n)."""
    m, n = len(x), len(y)
    if m < 2 or n < 2:
        raise ValueError(f"KID needs at least 2 images on each side, got {m} and {n}")
    k_xx, k_yy, k_xy = polynomial_kernel(x, x), polynomial_kernel(y, y), polynomial_kernel(x, y)
    within_x = (k_xx.sum() - np.trace(k_xx)) / (m * (m - 1))
    within_y = (k_yy.sum() - np.trace(k_yy)) / (n * (n - 1))
    return float(within_x + within_y - 2 * k_xy.sum() / (m * n))


def kernel_inception_distance(fake: np.ndarray, real: np.ndarray, *, subsets: int = SUBSETS,
                              subset_size: int = SUBSET_SIZE, seed: int = 0) -> dict:
    """KID of features ``fake`` [n, d] against ``real`` [m, d]: the mean and standard deviation of
    ``mmd2_unbiased`` over ``subsets`` pairs of subsets of min(``subset_size``, n, m) images each, drawn without
    replacement from a public seed."""
    size = min(subset_size, len(fake), len(real))
    if size < 2:
        raise ValueError(f"KID needs at least 2 images on each side, got {len(fake)} and {len(real)}")
    rng = np.random.default_rng(seed)
    values = np.array([mmd2_unbiased(fake[rng.choice(len(fake), size, replace=False)],
                                     real[rng.choice(len(real), size, replace=False)]) for _ in range(subsets)])
    return {"value": float(values.mean()), "std": float(values.std()), "subsets": subsets, "subset_size": size}
