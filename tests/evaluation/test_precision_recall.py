import numpy as np
import pytest

from dpdiffusion.evaluation.precision_recall import precision_recall


def brute_force(real: np.ndarray, fake: np.ndarray, k: int) -> tuple[float, float]:
    def radii(x):
        return np.array([sorted(np.linalg.norm(x - v, axis=1))[k] for v in x])

    def share_inside(manifold, r, queries):
        return np.mean([any(np.linalg.norm(m - q) <= rm for m, rm in zip(manifold, r)) for q in queries])

    return share_inside(real, radii(real), fake), share_inside(fake, radii(fake), real)


@pytest.mark.parametrize("k", [3, 5])
def test_matches_a_brute_force_reference(k):
    rng = np.random.default_rng(k)
    real = rng.normal(size=(60, 6))
    fake = rng.normal(size=(50, 6)) * 1.5 + 0.3
    result = precision_recall(real, fake, k=k)
    precision, recall = brute_force(real, fake, k)
    assert result["precision"] == pytest.approx(precision, abs=1e-6)
    assert result["recall"] == pytest.approx(recall, abs=1e-6)


def test_identical_sets_are_perfect_and_distant_sets_score_zero():
    x = np.random.default_rng(0).normal(size=(40, 5))
    same = precision_recall(x, x.copy())
    assert same["precision"] == 1.0 and same["recall"] == 1.0
    far = precision_recall(x, x + 100.0)
    assert far["precision"] == 0.0 and far["recall"] == 0.0


def test_mode_collapse_keeps_precision_and_loses_recall():
    rng = np.random.default_rng(1)
    real = rng.normal(size=(200, 2))
    collapsed = rng.normal(size=(200, 2)) * 0.1  # all near one point of the real distribution
    result = precision_recall(real, collapsed, k=3)
    assert result["precision"] > 0.9 and result["recall"] < 0.5
