"""Clipping holds in floating point: no example's contribution to the clipped sum exceeds C, even one built so
that its rows nearly cancel and rounding error dwarfs its true gradient norm (``ghost._gram_terms``)."""

import copy
import math

import pytest
import torch
from torch import nn

from dpdiffusion.dpsgd import ghost
from dpdiffusion.dpsgd.clipping import clip_and_sum, per_example_norms
from dpdiffusion.dpsgd.ghost import ghost_cheaper
from dpdiffusion.dpsgd.per_example import LayerwiseEngine, make_engine
from dpdiffusion.dpsgd.rounding import gamma, round_up, sqrt_upper

NEAR_ONE = 1 - 1e-4  # the second row's output gradient is -NEAR_ONE times the first's
ROW_SQUARED_NORM = 1e9  # each row's input squared norm: the true gradient norm is 1e-4 * sqrt(1e9) ~ 3.16
ENGINES = ["layerwise", "auto", "ghost", "vmap", "opacus", "never"]  # "never": layerwise, every layer materialised


class CancellingLoss:
    """Loss ``out[row p, 0] - NEAR_ONE * out[row q, 0]`` of the model's first output channel: the output gradient
    is +1 at one row and -NEAR_ONE at the other, so with identical input rows the weight gradient is 1e-4 times
    one row. No randomness: a single dummy draw gives K = 1."""

    def __init__(self, first: tuple[int, ...], second: tuple[int, ...]):
        self.first, self.second = first, second

    def draw(self, batch, generator):
        return {"unused": torch.zeros(batch["x"].shape[0], 1)}

    def __call__(self, model, batch, draws):
        out = model(batch["x"])
        return out[(slice(None), *self.first)] - NEAR_ONE * out[(slice(None), *self.second)]


def hostile_linear():
    """``Linear(1000, 64)`` seeing input [1, 2, 1000] (two positions) with identical rows of squared norm 1e9."""
    torch.manual_seed(0)
    model = nn.Linear(1000, 64)
    x = torch.full((1, 2, 1000), math.sqrt(ROW_SQUARED_NORM / 1000))
    return model, CancellingLoss((0, 0), (1, 0)), {"x": x}


def hostile_conv():
    """``Conv2d(100, 64, 3)`` on a constant image: every 3x3 patch is the same, of squared norm 1e9; the output
    gradient is +1 at position (0, 0) and -NEAR_ONE at (1, 1)."""
    torch.manual_seed(0)
    model = nn.Conv2d(100, 64, 3)
    x = torch.full((1, 100, 4, 4), math.sqrt(ROW_SQUARED_NORM / 900))
    return model, CancellingLoss((0, 0, 0), (0, 1, 1)), {"x": x}


def build_engine(name, model, loss):
    if name == "never":
        return LayerwiseEngine(model, loss, ghost="never")
    return make_engine(name, model, loss)


def clipped_sum(engine, batch, draws, c):
    """The clipped sum as ``DPSGD.clipped_sum`` forms it for one micro-batch."""
    if hasattr(engine, "clipped_sum"):
        return engine.clipped_sum(batch, draws, max_grad_norm=c)[0]
    grads, _ = engine.per_example_grads(batch, draws)
    return clip_and_sum(grads, max_grad_norm=c)[0]


def true_norm(model, loss, batch):
    """The gradient norm in float64 (the slow, exact-enough reference)."""
    model64 = copy.deepcopy(model).double()
    value = loss(model64, {"x": batch["x"].double()}, {}).sum()
    grads = torch.autograd.grad(value, list(model64.parameters()))
    return math.sqrt(sum(float(g.pow(2).sum()) for g in grads))


@pytest.mark.parametrize("engine_name", ENGINES)
@pytest.mark.parametrize("build", [hostile_linear, hostile_conv], ids=["linear", "conv"])
@pytest.mark.parametrize("c", [1.0, 0.1])
def test_near_cancelling_example_contributes_at_most_c(engine_name, build, c):
    model, loss, batch = build()
    draws = loss.draw(batch, torch.Generator())
    assert true_norm(model, loss, batch) > 3 * c  # the example must be clipped
    summed = clipped_sum(build_engine(engine_name, model, loss), batch, draws, c)
    norm = math.sqrt(sum(float(s.double().pow(2).sum()) for s in summed.values()))
    assert norm <= c * (1 + 1e-6), f"{engine_name}: the example adds {norm} > C = {c}"
    assert norm >= 0.1 * c  # and the bound does not clip it to nothing


@pytest.mark.parametrize("engine_name", ENGINES)
@pytest.mark.parametrize("build", [hostile_linear, hostile_conv], ids=["linear", "conv"])
@pytest.mark.parametrize("bookkeeping_rows", [1, 256, 4096])  # book-keeping one example at a time, or more
def test_near_cancelling_example_moves_a_batch_sum_by_at_most_c(engine_name, build, bookkeeping_rows, monkeypatch):
    """Neighbouring batches: three ordinary examples with and without the hostile one (which shares the
    book-keeping products of the others) have clipped sums at most C apart."""
    monkeypatch.setattr(ghost, "_BOOKKEEPING_ROWS", bookkeeping_rows)
    model, loss, hostile = build()
    others = torch.randn(3, *hostile["x"].shape[1:], generator=torch.Generator().manual_seed(5))
    batches = [{"x": torch.cat([others, hostile["x"]])}, {"x": others}]
    engine = build_engine(engine_name, model, loss)
    sums = [clipped_sum(engine, batch, loss.draw(batch, torch.Generator()), 1.0) for batch in batches]
    difference = math.sqrt(sum(float((sums[0][n].double() - sums[1][n].double()).pow(2).sum()) for n in sums[0]))
    assert 0.1 <= difference <= 1 + 1e-6, f"{engine_name}: the example moves the sum by {difference}"


@pytest.mark.parametrize("build", [hostile_linear, hostile_conv], ids=["linear", "conv"])
def test_auto_policy_takes_the_ghost_route_for_the_hostile_layers(build):
    """So that the "layerwise" (auto) cases above test ghost norms, not materialised ones."""
    model, loss, batch = build()
    x = batch["x"]
    grad = torch.zeros_like(model(x))
    assert ghost_cheaper(model, x, grad, 1)


def test_norms_are_upper_bounds_of_the_float_vectors(generator):
    """``per_example_norms`` never rounds below the norm of the float32 vector it is given (float64 reference),
    also for a vector whose small squares a float32 running sum would drop (each under half an ulp of 1)."""
    lost = torch.full((2, 300_000), 2.0**-13)
    lost[:, 0] = 1.0
    for grads in ({"w": torch.randn(5, 300, 7, generator=generator), "b": torch.randn(5, 11, generator=generator) * 1e3},
                  {"w": lost}):
        b = next(iter(grads.values())).shape[0]
        exact = torch.cat([g.double().reshape(b, -1) for g in grads.values()], dim=1).norm(dim=1)
        norms = per_example_norms(grads).double()
        assert (norms >= exact).all() and (norms <= exact * (1 + 1e-4)).all()


def test_rounding_helpers():
    x = torch.tensor([1 / 3, 1e-30, 3e38, 0.0, float("inf")], dtype=torch.float64)
    up = round_up(x, torch.float32)
    assert up.dtype == torch.float32 and (up.double() >= x).all()
    assert (up.double() <= x * (1 + 2**-21)).all()  # at most a few ulps above
    assert gamma(10, 2.0**-24) == pytest.approx(10 * 2.0**-24, rel=1e-5)
    with pytest.raises(ValueError, match="no useful rounding bound"):
        gamma(2**22, 2.0**-24)
    squares = torch.tensor([4.0, 0.0, -1e-300], dtype=torch.float64)
    assert (sqrt_upper(squares, 1e-3) >= squares.clamp(min=0).sqrt() * (1 + 5e-4)).all()
