"""Clipping: each example's whole gradient (all trainable parameters together) is scaled to norm <= C,
then the clipped gradients are summed. A non-finite per-example gradient contributes zero and is counted.

It holds in floating point: every norm here is an upper bound of the norm of the float vector it measures,
rounding included (``dpsgd.rounding``), and the clip factor leaves room for its own rounding and that of the
product, so the float vector an example adds has norm <= C (``tests/dpsgd/test_clipping_exact.py``)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from dpdiffusion.dpsgd.rounding import U64, gamma, round_up, sqrt_upper, unit_roundoff

Grads = dict[str, torch.Tensor]  # {parameter name: [b, *shape]}


# Guards the division for a zero gradient; the clipped norm stays <= C because norm + eps > norm. It also
# covers squares lost to underflow (each below 2^-126 in float32).
_NORM_EPS = 1e-6
# Elements per float32 partial sum of squares in ``row_norm``: its relative rounding error is at most
# gamma(258) = 1.5e-5 whatever the reduction order (as fast as one sum over the whole row; blocks of 16, for
# 1e-6, took 4x as long), and the partial sums are added in float64.
_BLOCK = 256


@dataclass
class ClipStats:
    """Un-noised statistics of private data: for the data owner's logs only, never for a release."""

    examples: int = 0
    clipped: int = 0
    nonfinite: int = 0

    def add(self, other: ClipStats) -> None:
        self.examples += other.examples
        self.clipped += other.clipped
        self.nonfinite += other.nonfinite


def row_norm(g: torch.Tensor) -> torch.Tensor:
    """A per-example gradient's L2 norm for each example, shape [b], never below the exact norm of the float
    vector. A float32 sum of n squares may be off by gamma(n) = n * 2^-24 relative (6% for a million
    parameters, were its order adversarial), so squares are summed in blocks of ``_BLOCK`` in the gradient's
    precision, the blocks' norms squared (exactly) and added in float64, and the result raised by the bound of
    both; a row of at most ``_BLOCK`` elements is one block, raised in its own precision (the +2 and 4 u:
    the square root and the roundings of raising it)."""
    if g.dtype not in (torch.float32, torch.float64):
        g = g.float()
    b = g.shape[0]
    flat = g.reshape(b, -1)  # vector_norm reads the gradient once without a squared copy in memory
    n, unit = flat.shape[1], unit_roundoff(g.dtype)
    if n <= _BLOCK:
        return torch.linalg.vector_norm(flat, dim=1) * (1 + gamma(n + 2, unit) + 4 * unit)
    whole = n - n % _BLOCK
    blocks = torch.linalg.vector_norm(flat[:, :whole].view(b, -1, _BLOCK), dim=2)
    if n > whole:
        blocks = torch.cat([blocks, torch.linalg.vector_norm(flat[:, whole:], dim=1, keepdim=True)], dim=1)
    norms = torch.linalg.vector_norm(blocks.double(), dim=1)
    return round_up(norms * (1 + gamma(_BLOCK + 4, unit) + gamma(blocks.shape[1] + 2, U64)), g.dtype)


def combine_norms(parts: list[torch.Tensor]) -> torch.Tensor:
    """The norm over all parameters from per-parameter norms, shape [b]: never below the exact norm of the
    parts (float64, rounded up)."""
    squares = torch.stack(parts, dim=0).double().pow(2).sum(dim=0)
    return round_up(sqrt_upper(squares, gamma(len(parts) + 1, U64)), parts[0].dtype)


def per_example_norms(grads: Grads) -> torch.Tensor:
    """The L2 norm of each example's gradient over all parameters, shape [b]."""
    return combine_norms([row_norm(g) for g in grads.values()])


def clip_factors(norms: torch.Tensor, *, max_grad_norm: float) -> torch.Tensor:
    """min(1, C / norm) per example in the norms' dtype, 0 for a non-finite norm.

    Formed in float64 and shrunk by ``gamma(b + 4)`` in the unit roundoff u of that dtype: rounding the factor
    to it (at most 1 u up), multiplying a gradient by it (1 u per element) and adding up the b examples'
    products (``weighted_sum``; book-keeping adds its groups in float64 and rounds once) then cannot lift an
    example's part of the clipped sum above C. A factor of exactly 1 (norm + eps <= C (1 - gamma)) multiplies
    exactly."""
    margin = 1 - gamma(norms.shape[0] + 4, unit_roundoff(norms.dtype))
    factors = (max_grad_norm / (norms.double() + _NORM_EPS) * margin).clamp(max=1.0).to(norms.dtype)
    return torch.where(torch.isfinite(norms), factors, torch.zeros_like(factors))


def weighted_sum(grads: Grads, factors: torch.Tensor, finite: torch.Tensor) -> Grads:
    """sum_i factors[i] * grads[i] over the examples whose norm is finite (the others contribute zero)."""
    drop = not bool(finite.all())
    summed = {}
    for name, g in grads.items():
        if drop:  # 0 * nan is nan: drop the rows before weighting
            g = torch.where(finite.view(-1, *([1] * (g.dim() - 1))), g, torch.zeros_like(g))
        summed[name] = torch.tensordot(factors.to(g.dtype), g, dims=1)
    return summed


def clip_stats(norms: torch.Tensor, *, max_grad_norm: float) -> ClipStats:
    finite = torch.isfinite(norms)
    return ClipStats(examples=norms.shape[0], clipped=int(((norms > max_grad_norm) & finite).sum()),
                     nonfinite=int((~finite).sum()))


def clip_with_norms(grads: Grads, norms: torch.Tensor, *, max_grad_norm: float) -> tuple[Grads, ClipStats]:
    """``clip_and_sum`` given each example's norm over *all* its parameters (``grads`` may hold only some)."""
    summed = weighted_sum(grads, clip_factors(norms, max_grad_norm=max_grad_norm), torch.isfinite(norms))
    return summed, clip_stats(norms, max_grad_norm=max_grad_norm)


def clip_and_sum(grads: Grads, *, max_grad_norm: float) -> tuple[Grads, ClipStats]:
    """Sum over examples of each example's gradient clipped to norm ``max_grad_norm``."""
    first = next(iter(grads.values()))
    if first.shape[0] == 0:
        return {n: g.new_zeros(g.shape[1:]) for n, g in grads.items()}, ClipStats()
    return clip_with_norms(grads, per_example_norms(grads), max_grad_norm=max_grad_norm)
