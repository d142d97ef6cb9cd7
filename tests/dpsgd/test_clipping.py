import math

import pytest
import torch

from dpdiffusion.dpsgd.clipping import clip_and_sum, per_example_norms
from dpdiffusion.dpsgd.per_example import make_engine
from tests.dpsgd.toys import NoisyRegressionLoss, TinyDenoiser, make_batch


def random_grads(b, generator, scale=1.0):
    return {
        "w": torch.randn(b, 3, 4, generator=generator) * scale,
        "b": torch.randn(b, 5, generator=generator) * scale,
    }


def test_norm_covers_all_parameters_together(generator):
    grads = random_grads(4, generator)
    flat = torch.cat([grads["w"].reshape(4, -1), grads["b"]], dim=1)
    torch.testing.assert_close(per_example_norms(grads), flat.norm(dim=1))


@pytest.mark.parametrize("c", [0.1, 1.0, 7.5])
def test_each_clipped_gradient_has_norm_at_most_c(c, generator):
    grads = random_grads(6, generator, scale=3.0)
    for i in range(6):  # clip one example at a time: its contribution to the sum
        one = {n: g[i : i + 1] for n, g in grads.items()}
        summed, _ = clip_and_sum(one, max_grad_norm=c)
        norm = math.sqrt(sum(float(s.pow(2).sum()) for s in summed.values()))
        assert norm <= c * (1 + 1e-6)
        original = float(per_example_norms(one)[0])
        if original <= c:  # small gradients pass unchanged
            torch.testing.assert_close(summed["w"], one["w"][0])


def _clipped_sum_norm_difference(with_extra, without, c):
    a, _ = clip_and_sum(with_extra, max_grad_norm=c)
    b, _ = clip_and_sum(without, max_grad_norm=c)
    return math.sqrt(sum(float((a[n] - b[n]).pow(2).sum()) for n in a))


@pytest.mark.parametrize("seed", range(5))
def test_sensitivity_on_neighbouring_datasets(seed):
    """Adding or removing one example moves the clipped sum by at most C, whatever that example is."""
    generator = torch.Generator().manual_seed(seed)
    c = 1.3
    shared = random_grads(7, generator)
    for scale in (1e-3, 1.0, 1e6):
        extra = random_grads(1, generator, scale=scale)
        neighbour = {n: torch.cat([shared[n], extra[n]]) for n in shared}
        assert _clipped_sum_norm_difference(neighbour, shared, c) <= c * (1 + 1e-6)


def test_sensitivity_of_a_whole_model_with_multiplicity(generator):
    """End to end through the engine: the neighbour's clipped sum differs by at most C (K = 4)."""
    torch.manual_seed(3)
    model = TinyDenoiser()
    loss = NoisyRegressionLoss(multiplicity=4)
    batch = make_batch(5, generator)
    batch["x"][-1] *= 100.0  # an outlier: its raw gradient is huge
    draws = loss.draw(batch, generator)
    engine = make_engine("vmap", model, loss)
    full, _ = engine.per_example_grads(batch, draws)
    assert float(per_example_norms(full)[-1]) > 10.0
    removed = {n: g[:-1] for n, g in full.items()}
    assert _clipped_sum_norm_difference(full, removed, 1.0) <= 1.0 + 1e-6


def test_nonfinite_gradient_is_zeroed_and_counted(generator):
    grads = random_grads(4, generator)
    grads["w"][1, 0, 0] = float("nan")
    grads["b"][2, 3] = float("inf")
    summed, stats = clip_and_sum(grads, max_grad_norm=1.0)
    assert stats.nonfinite == 2 and stats.examples == 4
    assert all(torch.isfinite(s).all() for s in summed.values())
    clean = {n: g[[0, 3]] for n, g in grads.items()}
    expected, _ = clip_and_sum(clean, max_grad_norm=1.0)
    for n in summed:
        torch.testing.assert_close(summed[n], expected[n])


def test_empty_batch_sums_to_zero():
    grads = {"w": torch.zeros(0, 3, 4)}
    summed, stats = clip_and_sum(grads, max_grad_norm=1.0)
    assert summed["w"].shape == (3, 4) and float(summed["w"].abs().sum()) == 0.0
    assert stats.examples == 0


def test_clipping_off_is_a_plain_sum(generator):
    grads = random_grads(5, generator, scale=100.0)
    summed, stats = clip_and_sum(grads, max_grad_norm=math.inf)
    torch.testing.assert_close(summed["w"], grads["w"].sum(0))
    assert stats.clipped == 0
