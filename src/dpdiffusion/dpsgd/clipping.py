"""Clipping: each example's whole gradient (all trainable parameters together) is scaled to norm <= C,
then the clipped gradients are summed. A non-finite per-example gradient contributes zero and is counted."""

from __future__ import annotations

from dataclasses import dataclass

import torch

Grads = dict[str, torch.Tensor]  # {parameter name: [b, *shape]}


# Guards the division for a zero gradient; the clipped norm stays <= C because norm + eps > norm.
_NORM_EPS = 1e-6


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
    """A per-example gradient's L2 norm for each example, shape [b]."""
    # vector_norm reads the gradient once without a squared copy (b x parameters floats) in memory
    return torch.linalg.vector_norm(g.reshape(g.shape[0], -1), dim=1)


def combine_norms(parts: list[torch.Tensor]) -> torch.Tensor:
    """The norm over all parameters from per-parameter norms, shape [b]."""
    return torch.linalg.vector_norm(torch.stack(parts, dim=0), dim=0)


def per_example_norms(grads: Grads) -> torch.Tensor:
    """The L2 norm of each example's gradient over all parameters, shape [b]."""
    return combine_norms([row_norm(g) for g in grads.values()])


def clip_factors(norms: torch.Tensor, *, max_grad_norm: float) -> torch.Tensor:
    """min(1, C / norm) per example, 0 for a non-finite norm."""
    factors = (max_grad_norm / (norms + _NORM_EPS)).clamp(max=1.0)
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
