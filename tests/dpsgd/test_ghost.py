"""The ghost engine's clipped sums equal clipping the slow reference's per-example gradients."""

import pytest
import torch

from dpdiffusion.dpsgd.clipping import clip_and_sum
from dpdiffusion.dpsgd.ghost import GhostEngine, layer_squares
from dpdiffusion.dpsgd.per_layer import RULES
from tests.dpsgd.toys import NoisyRegressionLoss, TinyDenoiser, make_batch, reference_per_example_grads


def reference_clipped_sum(model, loss, batch, draws, c):
    return clip_and_sum(reference_per_example_grads(model, loss, batch, draws), max_grad_norm=c)


def assert_sums_close(actual, expected):
    assert actual.keys() == expected.keys()
    for name in expected:
        torch.testing.assert_close(actual[name], expected[name], atol=1e-5, rtol=1e-4, msg=name)


@pytest.mark.parametrize("policy", ["auto", "always", "never"])
@pytest.mark.parametrize("layers", ["conv", "groupnorm", "linear", "embedding", "attention", "all"])
@pytest.mark.parametrize("k", [1, 3])
@pytest.mark.parametrize("c", [1e-3, 0.05, 1e3])  # all clipped, some clipped, none clipped
def test_clipped_sum_matches_reference(policy, layers, k, c, generator):
    torch.manual_seed(k)
    model = TinyDenoiser(layers=layers, width=6)
    loss = NoisyRegressionLoss(multiplicity=k)
    batch = make_batch(5, generator, size=5)
    draws = loss.draw(batch, generator)
    summed, stats, losses = GhostEngine(model, loss, policy=policy).clipped_sum(batch, draws, max_grad_norm=c)
    expected, expected_stats = reference_clipped_sum(model, loss, batch, draws, c)
    assert_sums_close(summed, expected)
    assert stats == expected_stats
    torch.testing.assert_close(losses, loss(model, batch, draws).detach(), atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("kind", ["linear", "conv"])
def test_ghost_norm_equals_norm_of_materialised_gradient(kind, generator):
    """The Gram-matrix identity |G^T A|^2 = sum((A A^T)(G G^T)), per example, with K rows per example."""
    b, k = 3, 4
    if kind == "linear":
        layer = torch.nn.Linear(7, 5)
        x, grad = torch.randn(b * k, 7, generator=generator), torch.randn(b * k, 5, generator=generator)
    else:
        layer = torch.nn.Conv2d(3, 4, 3, padding=1, stride=2)
        x = torch.randn(b * k, 3, 6, 6, generator=generator)
        grad = torch.randn(b * k, 4, 3, 3, generator=generator)
    names = {"weight": "weight", "bias": "bias"}
    materialised = RULES[type(layer)](layer, x, grad, b)
    expected = sum(g.reshape(b, -1).pow(2).sum(dim=1) for g in materialised.values())
    for policy in ("always", "never"):
        torch.testing.assert_close(layer_squares(layer, x, grad, b, names, policy), expected, rtol=1e-4, atol=1e-5)


def test_nonfinite_example_contributes_zero_and_is_counted(generator):
    torch.manual_seed(0)
    model = TinyDenoiser(width=6)
    loss = NoisyRegressionLoss(multiplicity=2)
    batch = make_batch(4, generator)
    batch["x"][2] = float("inf")
    draws = loss.draw(batch, generator)
    summed, stats, _ = GhostEngine(model, loss, policy="always").clipped_sum(batch, draws, max_grad_norm=1.0)
    assert stats.nonfinite == 1 and stats.examples == 4
    finite = [0, 1, 3]
    expected, _ = reference_clipped_sum(
        model, loss, {n: v[finite] for n, v in batch.items()}, {n: v[finite] for n, v in draws.items()}, 1.0
    )
    assert_sums_close(summed, expected)


def test_frozen_parameters_and_empty_batch(generator):
    torch.manual_seed(2)
    model = TinyDenoiser(width=6)
    model.conv_in.requires_grad_(False)
    loss = NoisyRegressionLoss()
    engine = GhostEngine(model, loss)
    batch = make_batch(3, generator)
    draws = loss.draw(batch, generator)
    summed, _, _ = engine.clipped_sum(batch, draws, max_grad_norm=0.1)
    assert "conv_in.weight" not in summed
    assert_sums_close(summed, reference_clipped_sum(model, loss, batch, draws, 0.1)[0])
    empty = make_batch(0, generator)
    summed, stats, losses = engine.clipped_sum(empty, loss.draw(empty, generator), max_grad_norm=0.1)
    assert stats.examples == 0 and losses.shape == (0,)
    assert all(torch.count_nonzero(s) == 0 for s in summed.values())


def test_unknown_policy_refused():
    with pytest.raises(ValueError, match="ghost norm policy"):
        GhostEngine(TinyDenoiser(), NoisyRegressionLoss(), policy="sometimes")
