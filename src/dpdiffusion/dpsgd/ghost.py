"""Clipped sums without keeping per-example gradients: per-layer norms, then book-keeping.

Mixed ghost clipping with book-keeping (Bu et al. 2023, "Differentially private optimization on large model
at small cost"): one batched forward and backward give every layer's input activations and output
gradients (as in the layerwise engine). Then

1. each example's squared gradient norm is summed layer by layer, from a *ghost norm* where that is cheaper
   (the per-example gradient of a layer is ``G^T A`` over the example's rows, and
   ``|G^T A|^2 = sum((A A^T) * (G G^T))``: cost ~ rows^2 instead of ~ parameters), else from the layer's
   materialised per-example gradient, which is dropped right away;
2. the clip factors ``min(1, C / norm)`` are formed;
3. the clipped sum of every layer is its ordinary batched parameter gradient with each row's output gradient
   scaled by its example's factor: no second backward pass, and never more than one layer's per-example
   gradients in memory.

The K multiplicity draws of an example are rows of that example, so norms are norms of the sum over draws.
The result equals ``clip_and_sum`` of the layerwise engine's per-example gradients (tests check this).
"""

from __future__ import annotations

from typing import Dict

import torch
import torch.nn.functional as F
from torch import nn
from torch.profiler import record_function

from dpdiffusion.dpsgd.clipping import ClipStats, clip_factors
from dpdiffusion.dpsgd.per_example import Batch, Grads, LayerwiseEngine, batch_size_of, trainable_parameters
from dpdiffusion.dpsgd.per_layer import RULES


def _rows(a: torch.Tensor, b: int) -> torch.Tensor:
    """[b*K, ..., d] -> [b, rows of one example, d]."""
    return a.reshape(b, -1, a.shape[-1])


def _ghost_square(a: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Squared Frobenius norm of ``g[i]^T a[i]`` for each example i, from the rows' Gram matrices."""
    return (torch.bmm(a, a.transpose(1, 2)) * torch.bmm(g, g.transpose(1, 2))).sum(dim=(1, 2))


def _cheaper(rows: int, d_in: int, d_out: int, policy: str) -> bool:
    """Whether a ghost norm (~ rows^2 (d_in + d_out) per example) beats materialising (~ rows d_in d_out)."""
    return policy == "always" or (policy == "auto" and rows * (d_in + d_out) < d_in * d_out)


def _ghost_operands(module: nn.Module, x: torch.Tensor, grad: torch.Tensor, b: int, policy: str = "auto"):
    """(activations [b, R, d_in], output gradients [b, R, d_out]) of a layer whose weight gradient is G^T A,
    or None where a ghost norm does not apply or (``policy`` "auto") would cost more than the materialised
    gradient; "always" and "never" force the choice where a ghost norm applies (for tests and benchmarks)."""
    if policy == "never":
        return None
    if isinstance(module, nn.Linear):
        a, g = _rows(x, b), _rows(grad, b)
    elif isinstance(module, nn.Conv2d) and module.groups == 1:
        rows = grad.shape[2] * grad.shape[3] * (x.shape[0] // b)
        d_in = module.in_channels * module.kernel_size[0] * module.kernel_size[1]
        if not _cheaper(rows, d_in, module.out_channels, policy):
            return None  # checked before unfolding, which is the costly part
        unfolded = F.unfold(x, module.kernel_size, module.dilation, module.padding, module.stride)
        a = unfolded.transpose(1, 2).reshape(b, -1, d_in)
        g = grad.flatten(2).transpose(1, 2).reshape(b, -1, module.out_channels)
    else:
        return None
    return (a, g) if _cheaper(a.shape[1], a.shape[2], g.shape[2], policy) else None


def layer_squares(
    module: nn.Module, x: torch.Tensor, grad: torch.Tensor, b: int, names: Dict[str, str], policy: str = "auto"
) -> torch.Tensor:
    """Each example's squared gradient norm over this layer's trainable parameters (``names``: local name ->
    global name of those), [b]."""
    operands = _ghost_operands(module, x, grad, b, policy) if "weight" in names else None
    if operands is None:
        grads = RULES[type(module)](module, x, grad, b)
        return sum(grads[local].reshape(b, -1).pow(2).sum(dim=1) for local in names)
    a, g = operands
    squares = _ghost_square(a, g)
    if "bias" in names:
        squares = squares + g.sum(dim=1).pow(2).sum(dim=1)
    return squares


class GhostEngine(LayerwiseEngine):
    """The layerwise engine's forward and backward; clipped sums by per-layer norms and book-keeping."""

    name = "ghost"

    def __init__(self, model: nn.Module, loss, policy: str = "auto"):
        if policy not in ("auto", "always", "never"):
            raise ValueError(f"unknown ghost norm policy {policy!r}; choose auto, always or never")
        super().__init__(model, loss)
        self.policy = policy

    def per_example_grads(self, batch: Batch, draws: Batch) -> tuple[Grads, torch.Tensor]:
        raise NotImplementedError("the ghost engine forms clipped sums only; use clipped_sum")

    def clipped_sum(self, batch: Batch, draws: Batch, *, max_grad_norm: float) -> tuple[Grads, ClipStats, torch.Tensor]:
        """Sum over examples of each example's gradient clipped to ``max_grad_norm``; statistics; losses [b]."""
        params = trainable_parameters(self.model)
        total = {n: torch.zeros_like(p) for n, p in params.items()}
        b = batch_size_of(batch)
        if b == 0:
            return total, ClipStats(), next(iter(params.values())).new_zeros(0)
        records, backprops, losses = self._forward_backward(batch, draws, b)
        layers = []
        for (module, x, _), grad in zip(records, backprops):
            names = {local: self.layers[module] + local for local, p in module.named_parameters(recurse=False)
                     if self.layers[module] + local in params}
            if grad is not None and names:
                layers.append((module, x, grad, names))
        with record_function("dp:norms"):
            squares = sum(layer_squares(module, x, grad, b, names, self.policy) for module, x, grad, names in layers)
            norms = squares.sqrt() if torch.is_tensor(squares) else torch.zeros(b)
            finite = torch.isfinite(norms)
            factors = clip_factors(norms, max_grad_norm=max_grad_norm)
        with record_function("dp:clipped_sum"):
            for module, x, grad, names in layers:
                rows = x.shape[0] // b
                scale = factors.to(grad.dtype).repeat_interleave(rows).view(-1, *([1] * (grad.dim() - 1)))
                if not bool(finite.all()):  # 0 * nan is nan: drop the rows of non-finite examples
                    keep = finite.repeat_interleave(rows)
                    x = torch.where(keep.view(-1, *([1] * (x.dim() - 1))), x, torch.zeros_like(x))
                    grad = torch.where(keep.view(-1, *([1] * (grad.dim() - 1))), grad, torch.zeros_like(grad))
                # one "example" holding every row: the rule gives the ordinary batched parameter gradient
                for local, value in RULES[type(module)](module, x, grad * scale, 1).items():
                    if local in names:
                        total[names[local]] += value[0]
        nonfinite = int((~finite).sum())
        clipped = int(((norms > max_grad_norm) & finite).sum())
        return total, ClipStats(examples=b, clipped=clipped, nonfinite=nonfinite), losses.detach()
