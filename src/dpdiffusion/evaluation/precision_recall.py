"""Improved precision and recall (Kynkaanniemi et al. 2019): each set's manifold is the union of balls around
its feature vectors with radius the distance to the k-th nearest neighbour within the set. Precision is the
share of generated samples inside the real manifold; recall the share of real samples inside the generated one."""

from __future__ import annotations

import numpy as np
import torch


def _distances(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.cdist(a, b, compute_mode="donot_use_mm_for_euclid_dist")


def knn_radii(features: torch.Tensor, k: int, chunk: int = 1024) -> torch.Tensor:
    """Distance from each vector to its k-th nearest neighbour in the set (itself excluded)."""
    radii = []
    for start in range(0, len(features), chunk):
        d = _distances(features[start : start + chunk], features)
        radii.append(d.kthvalue(k + 1, dim=1).values)  # the smallest distance is the vector itself (0)
    return torch.cat(radii)


def coverage(manifold: torch.Tensor, radii: torch.Tensor, queries: torch.Tensor, chunk: int = 1024) -> float:
    """Share of ``queries`` within radius of at least one manifold vector."""
    inside = []
    for start in range(0, len(queries), chunk):
        d = _distances(queries[start : start + chunk], manifold)
        inside.append((d <= radii.unsqueeze(0)).any(dim=1))
    return float(torch.cat(inside).float().mean())


def precision_recall(real: np.ndarray, fake: np.ndarray, k: int = 3) -> dict[str, float]:
    if min(len(real), len(fake)) <= k:
        raise ValueError(f"precision/recall with k = {k} needs more than {k} images on each side")
    real_t, fake_t = torch.from_numpy(real).float(), torch.from_numpy(fake).float()
    precision = coverage(real_t, knn_radii(real_t, k), fake_t)
    recall = coverage(fake_t, knn_radii(fake_t, k), real_t)
    return {"precision": precision, "recall": recall, "k": k}
