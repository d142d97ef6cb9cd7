"""Clipping: each example's whole gradient (all trainable parameters together) is scaled to norm <= C,
then the clipped gradients are summed. A non-finite per-example gradient contributes zero and is counted."""

from __future__ import annotations

from dataclasses import dataclass

from typing import Dict

import torch

Grads = Dict[str, torch.Tensor]  # {parameter name: [b, *shape]}


# Guards the division for a zero gradient; the clipped norm stays <= C because norm + eps > norm.
_NORM_EPS = 1e-6


@dataclass
class ClipStats:
    """Un-noised statistics of private data: for the data owner's logs only, never for a release."""

    examples: int = 0
    clipped: int = 0
    nonfinite: int = 0

    def add(self, other: "ClipStats") -> None:
        self.examples += other.examples
        self.clipped += other.clipped
        self.nonfinite += other.nonfinite


def per_example_norms(grads: Grads) -> torch.Tensor:
    """The L2 norm of each example's gradient over all parameters, shape [b]."""
    # vector_norm reads each gradient once without a squared copy (b x parameters floats) in memory
    norms = [torch.linalg.vector_norm(g.reshape(g.shape[0], -1), dim=1) for g in grads.values()]
    return torch.linalg.vector_norm(torch.stack(norms, dim=0), dim=0)


def clip_factors(norms: torch.Tensor, *, max_grad_norm: float) -> torch.Tensor:
    """min(1, C / norm) per example, 0 for a non-finite norm."""
    factors = (max_grad_norm / (norms + _NORM_EPS)).clamp(max=1.0)
    return torch.where(torch.isfinite(norms), factors, torch.zeros_like(factors))


def clip_and_sum(grads: Grads, *, max_grad_norm: float) -> tuple[Grads, ClipStats]:
    """Sum over examples of each example's gradient clipped to norm ``max_grad_norm``."""
    first = next(iter(grads.values()))
    b = first.shape[0]
    if b == 0:
        return {n: g.new_zeros(g.shape[1:]) for n, g in grads.items()}, ClipStats()
    norms = per_example_norms(grads)
    finite = torch.isfinite(norms)
    factors = clip_factors(norms, max_grad_norm=max_grad_norm)
    nonfinite = int((~finite).sum())
    summed = {}
    for name, g in grads.items():
        if nonfinite:  # 0 * nan is nan: drop the rows before weighting
            g = torch.where(finite.view(-1, *([1] * (g.dim() - 1))), g, torch.zeros_like(g))
        summed[name] = torch.tensordot(factors.to(g.dtype), g, dims=1)
    clipped = int(((norms > max_grad_norm) & finite).sum())
    return summed, ClipStats(examples=b, clipped=clipped, nonfinite=nonfinite)
