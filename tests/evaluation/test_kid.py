import numpy as np
import pytest

from dpdiffusion.evaluation.kid import kernel_inception_distance, mmd2_unbiased, polynomial_kernel


def slow_mmd2_unbiased(x: np.ndarray, y: np.ndarray) -> float:
    """Binkowski et al.'s estimator written out pair by pair: k(a, b) = (a . b / d + 1)^3."""
    d = x.shape[1]

    def k(a, b):
        return (sum(a[t] * b[t] for t in range(d)) / d + 1) ** 3

    m, n = len(x), len(y)
    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(n)) / (m * n)
    return xx + yy - 2 * xy


@pytest.mark.parametrize("m, n, d", [(2, 2, 1), (5, 7, 3), (12, 9, 6)])
def test_unbiased_mmd2_matches_the_double_loop(m, n, d):
    rng = np.random.default_rng(m * 100 + n)
    x, y = rng.normal(size=(m, d)), rng.normal(0.3, 1.2, size=(n, d))
    assert mmd2_unbiased(x, y) == pytest.approx(slow_mmd2_unbiased(x, y), rel=1e-10, abs=1e-12)


def test_kernel_is_the_cubic_polynomial():
    x, y = np.array([[1.0, 2.0]]), np.array([[3.0, -1.0], [0.0, 0.0]])
    assert polynomial_kernel(x, y).tolist() == [[(1 / 2 + 1) ** 3, 1.0]]


def test_kid_is_zero_in_expectation_for_one_distribution_and_positive_for_a_shift():
    rng = np.random.default_rng(0)
    d = 16
    same = [kernel_inception_distance(rng.normal(size=(200, d)), rng.normal(size=(300, d)), subsets=20, subset_size=100,
                                      seed=s)["value"] for s in range(10)]
    spread = np.std(same) / np.sqrt(len(same))
    assert abs(np.mean(same)) < 4 * spread + 1e-12  # unbiased: no systematic offset, unlike FID at small counts
    assert min(same) < 0 < max(same)  # an unbiased estimate of 0 takes both signs
    shifted = kernel_inception_distance(rng.normal(size=(200, d)), rng.normal(0.5, 1, size=(300, d)), subsets=20,
                                        subset_size=100)
    assert shifted["value"] > 10 * max(abs(v) for v in same) and shifted["std"] < shifted["value"]


def test_subsets_are_of_min_size_and_the_result_is_seeded():
    rng = np.random.default_rng(1)
    fake, real = rng.normal(size=(30, 4)), rng.normal(size=(50, 4))
    a = kernel_inception_distance(fake, real, subsets=5, seed=3)
    assert a["subset_size"] == 30 and a["subsets"] == 5
    assert a == kernel_inception_distance(fake, real, subsets=5, seed=3)
    whole = kernel_inception_distance(fake, real[:30], subsets=3)  # every subset is the whole of both sets
    assert whole["value"] == pytest.approx(mmd2_unbiased(fake, real[:30])) and whole["std"] == pytest.approx(0, abs=1e-12)
    with pytest.raises(ValueError, match="at least 2"):
        kernel_inception_distance(fake[:1], real)
