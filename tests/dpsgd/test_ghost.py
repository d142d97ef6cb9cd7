"""Ghost norms and book-keeping sums equal norms and clipped sums of the slow reference's per-example gradients."""

import pytest
import torch

from dpdiffusion.dpsgd import ghost
from dpdiffusion.dpsgd.clipping import clip_and_sum, clip_factors
from dpdiffusion.dpsgd.ghost import _gram_terms, clipped_layer_sum, ghost_applies, ghost_cheaper, ghost_norms
from dpdiffusion.dpsgd.per_example import LayerwiseEngine
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
    summed, stats, losses = LayerwiseEngine(model, loss, ghost=policy).clipped_sum(batch, draws, max_grad_norm=c)
    expected, expected_stats = reference_clipped_sum(model, loss, batch, draws, c)
    assert_sums_close(summed, expected)
    assert stats == expected_stats
    torch.testing.assert_close(losses, loss(model, batch, draws).detach(), atol=1e-6, rtol=1e-5)


def materialised_norms(layer, x, grad, b, names):
    """The norm of each example's gradient over the parameters in ``names``, formed in float64 (exact enough)."""
    grads = RULES[type(layer)](layer, x.double(), grad.double(), b)
    return torch.stack([grads[local].reshape(b, -1).pow(2).sum(dim=1) for local in names]).sum(dim=0).sqrt()


def assert_ghost_norms_bound_exact_norms(layer, x, grad, b, names):
    """The Gram identity holds to float64 rounding, and ``ghost_norms`` is an upper bound of the exact norm,
    above it by no more than its rounding allowances (a fraction of a percent here)."""
    exact = materialised_norms(layer, x, grad, b, names)
    squares, _, _ = _gram_terms(layer, x, grad, b, names)
    torch.testing.assert_close(squares.sqrt(), exact, rtol=1e-10, atol=1e-12)
    norms = ghost_norms(layer, x, grad, b, names, max_bytes=2**30).double()
    assert (norms >= exact).all() and (norms <= exact * 1.01).all()


CONVS = [
    dict(kernel_size=3, padding=1),
    dict(kernel_size=3, padding=1, stride=2),
    dict(kernel_size=3, padding=2, dilation=2),
    dict(kernel_size=(3, 1), padding=(1, 0), stride=(2, 1)),
    dict(kernel_size=1),
    dict(kernel_size=4, padding=0, stride=3, dilation=1),
    dict(kernel_size=2, padding=3, stride=2, dilation=3),
]


@pytest.mark.parametrize("conv", CONVS)
@pytest.mark.parametrize("k", [1, 4])
def test_conv_ghost_norm_equals_norm_of_materialised_gradient(conv, k, generator):
    """|G^T A|^2 = sum((A A^T)(G G^T)) per example, with A A^T from the padded input's Gram matrix: any
    kernel, padding, stride and dilation, K rows per example, and odd image sizes."""
    b = 3
    layer = torch.nn.Conv2d(3, 4, **conv)
    x = torch.randn(b * k, 3, 9, 7, generator=generator)
    grad = torch.randn(layer(x).shape, generator=generator)
    assert_ghost_norms_bound_exact_norms(layer, x, grad, b, {"weight": "weight", "bias": "bias"})


@pytest.mark.parametrize("shape", [(7,), (2, 7), (3, 2, 7)])
@pytest.mark.parametrize("k", [1, 4])
def test_linear_ghost_norm_equals_norm_of_materialised_gradient(shape, k, generator):
    b = 3
    layer = torch.nn.Linear(7, 5)
    x = torch.randn(b * k, *shape, generator=generator)
    grad = torch.randn(b * k, *shape[:-1], 5, generator=generator)
    for names in ({"weight": "w", "bias": "b"}, {"weight": "w"}):
        assert_ghost_norms_bound_exact_norms(layer, x, grad, b, names)


def test_ghost_norms_in_slices_of_examples_equal_all_at_once(generator):
    """``max_bytes`` only changes how many examples' Gram matrices are formed at a time."""
    b, k = 5, 2
    layer = torch.nn.Conv2d(2, 3, 3, padding=1)
    x = torch.randn(b * k, 2, 6, 6, generator=generator)
    grad = torch.randn(b * k, 3, 6, 6, generator=generator)
    names = {"weight": "weight", "bias": "bias"}
    whole = ghost_norms(layer, x, grad, b, names, max_bytes=2**30)
    for max_bytes in (1, 70_000, 150_000):  # one, two and four examples at a time
        torch.testing.assert_close(ghost_norms(layer, x, grad, b, names, max_bytes=max_bytes), whole)


@pytest.mark.parametrize("bookkeeping_rows", [1, 100, 256])  # one example per product, two, all four
def test_book_keeping_sum_is_the_weighted_sum_of_per_example_gradients(bookkeeping_rows, generator, monkeypatch):
    """Batched gradients with output-gradient rows scaled by their example's factor, one per group of
    examples; an example with factor 0 (non-finite norm) adds nothing even where its rows hold inf or nan."""
    monkeypatch.setattr(ghost, "_BOOKKEEPING_ROWS", bookkeeping_rows)
    b, k = 4, 3
    layer = torch.nn.Conv2d(2, 3, 3, padding=1, stride=2)
    x = torch.randn(b * k, 2, 7, 7, generator=generator)
    grad = torch.randn(b * k, 3, 4, 4, generator=generator)
    factors = torch.tensor([0.5, 1.0, 0.0, 0.25])
    x[2 * k], grad[2 * k + 1] = float("inf"), float("nan")
    summed = clipped_layer_sum(layer, x, grad, b, factors)
    grads = RULES[torch.nn.Conv2d](layer, x, grad, b)
    for name, g in grads.items():
        expected = sum(factors[i] * g[i] for i in (0, 1, 3))
        torch.testing.assert_close(summed[name], expected, rtol=1e-5, atol=1e-5)


def test_cost_rule_picks_ghost_norms_at_low_resolution_and_materialises_at_high():
    """At 64 examples and K = 1: ghost for wide 3x3 convolutions at 8x8 and below and for Linear layers with
    one row per example; materialised for narrow ones at 7x7 (since float64 Grams and book-keeping in groups)
    and up, and with many draws per example."""

    def cheaper(cin, cout, size, k=1, b=64):
        layer = torch.nn.Conv2d(cin, cout, 3, padding=1)
        return ghost_cheaper(layer, torch.zeros(b * k, cin, size, size), torch.zeros(b * k, cout, size, size), b)

    assert cheaper(256, 256, 8) and cheaper(256, 256, 4) and cheaper(128, 128, 8)
    assert not cheaper(128, 64, 7) and not cheaper(64, 64, 7)
    assert not cheaper(64, 64, 14) and not cheaper(32, 32, 28) and not cheaper(32, 1, 28)
    assert not cheaper(64, 64, 7, k=32)
    linear = torch.nn.Linear(128, 512)
    assert ghost_cheaper(linear, torch.zeros(64, 128), torch.zeros(64, 512), 64)
    assert ghost_applies(linear) and ghost_applies(torch.nn.Conv2d(2, 2, 3))
    assert not ghost_applies(torch.nn.Conv2d(2, 2, 3, groups=2)) and not ghost_applies(torch.nn.GroupNorm(1, 2))


def test_nonfinite_example_contributes_zero_and_is_counted(generator):
    torch.manual_seed(0)
    model = TinyDenoiser(width=6)
    loss = NoisyRegressionLoss(multiplicity=2)
    batch = make_batch(4, generator)
    batch["x"][2] = float("inf")
    draws = loss.draw(batch, generator)
    summed, stats, _ = LayerwiseEngine(model, loss, ghost="always").clipped_sum(batch, draws, max_grad_norm=1.0)
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
    engine = LayerwiseEngine(model, loss, ghost="always")
    batch = make_batch(3, generator)
    draws = loss.draw(batch, generator)
    summed, _, _ = engine.clipped_sum(batch, draws, max_grad_norm=0.1)
    assert "conv_in.weight" not in summed
    assert_sums_close(summed, reference_clipped_sum(model, loss, batch, draws, 0.1)[0])
    empty = make_batch(0, generator)
    summed, stats, losses = engine.clipped_sum(empty, loss.draw(empty, generator), max_grad_norm=0.1)
    assert stats.examples == 0 and losses.shape == (0,)
    assert all(torch.count_nonzero(s) == 0 for s in summed.values())


def test_every_layer_ghosted_or_none(generator):
    """With only ghost layers (no materialised slice at all) and with none, the same clipped sum."""
    torch.manual_seed(4)
    model = TinyDenoiser(layers="linear", width=6)
    loss = NoisyRegressionLoss(multiplicity=2)
    batch = make_batch(6, generator)
    draws = loss.draw(batch, generator)
    expected, expected_stats = reference_clipped_sum(model, loss, batch, draws, 0.02)
    for policy in ("always", "never"):
        summed, stats, _ = LayerwiseEngine(model, loss, ghost=policy).clipped_sum(batch, draws, max_grad_norm=0.02)
        assert_sums_close(summed, expected)
        assert stats == expected_stats and stats.clipped > 0


def test_clip_factor_zero_only_for_nonfinite_norms():
    """Book-keeping zeroes the rows of examples whose factor is 0: that must mean a non-finite norm only."""
    norms = torch.tensor([0.0, 1e-30, 1.0, 3e38, float("inf"), float("nan")])
    factors = clip_factors(norms, max_grad_norm=1e-3)
    assert (factors[:4] > 0).all() and (factors[4:] == 0).all()


def test_unknown_policy_refused():
    with pytest.raises(ValueError, match="ghost norm policy"):
        LayerwiseEngine(TinyDenoiser(), NoisyRegressionLoss(), ghost="sometimes")
