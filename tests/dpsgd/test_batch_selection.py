import pytest
import torch
from scipy import stats

from dpdiffusion.dpsgd.batch_selection import PoissonBatchSampler, poisson_sample
from dpdiffusion.dpsgd.secret_random import SecretStream


def test_each_example_included_independently_with_rate_q():
    stream = SecretStream.fresh(b"sampling")
    n, q, steps = 50, 0.1, 4000
    counts = torch.zeros(n)
    sizes = []
    for batch in PoissonBatchSampler(n, q, steps, stream=stream):
        counts[batch] += 1
        sizes.append(len(batch))
    # per-example inclusion frequency ~ Binomial(steps, q)
    assert stats.chisquare(counts.numpy(), f_exp=[counts.sum().item() / n] * n).pvalue > 1e-3
    assert abs(counts.mean().item() / steps - q) < 0.01
    # batch sizes ~ Binomial(n, q), empty batches included
    observed = torch.bincount(torch.tensor(sizes), minlength=n + 1).numpy()
    assert observed[0] > 0
    expected = stats.binom.pmf(range(n + 1), n, q) * steps
    keep = expected > 5
    assert stats.chisquare(observed[keep], expected[keep] * observed[keep].sum() / expected[keep].sum()).pvalue > 1e-3


def test_indices_are_unique_sorted_and_in_range():
    stream = SecretStream.fresh(b"sampling")
    batch = poisson_sample(1000, 0.3, stream=stream)
    assert batch.unique().numel() == batch.numel()
    assert torch.equal(batch, batch.sort().values)
    assert batch.min() >= 0 and batch.max() < 1000


def test_same_key_same_batches_other_key_other_batches():
    key = bytes(range(32))
    a = list(PoissonBatchSampler(100, 0.2, 5, stream=SecretStream(key, b"sampling")))
    b = list(PoissonBatchSampler(100, 0.2, 5, stream=SecretStream(key, b"sampling")))
    c = list(PoissonBatchSampler(100, 0.2, 5, stream=SecretStream.fresh(b"sampling")))
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    assert not all(torch.equal(x, y) for x, y in zip(a, c, strict=True))


@pytest.mark.parametrize("q", [0.0, -0.1, 1.5])
def test_bad_rate_refused(q):
    with pytest.raises(ValueError, match="sample rate"):
        poisson_sample(10, q, stream=SecretStream.fresh(b"sampling"))
