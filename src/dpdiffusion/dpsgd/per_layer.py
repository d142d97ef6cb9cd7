"""Per-example parameter gradients of one layer from its input activations and output gradients.

One ordinary batched backward already gives every row its exact output gradient (the backprop); only the
parameter gradient sums over the batch. Each rule here forms that sum per *example* instead: the rows of
an example (its K multiplicity draws, and every spatial position) are contracted together, so the result
is ``[b, *param.shape]`` whatever K is, at the FLOPs of the ordinary parameter gradient.

Rows are example-major: row r belongs to example r // K (the per-example loss contract).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
import torch.nn.grad
from torch import nn

Rule = Callable[[Any, torch.Tensor, torch.Tensor, int], dict[str, torch.Tensor]]  # (layer of its type, x, grad, b)


def _by_example(t: torch.Tensor, b: int) -> torch.Tensor:
    """[b*K, ...] rows -> [b, K, ...]."""
    return t.reshape(b, t.shape[0] // b, *t.shape[1:])


def linear_rule(layer: nn.Linear, x: torch.Tensor, grad: torch.Tensor, b: int) -> dict[str, torch.Tensor]:
    x = _by_example(x, b).reshape(b, -1, layer.in_features)  # K draws and any extra dims are rows of one example
    grad = _by_example(grad, b).reshape(b, -1, layer.out_features)
    out = {"weight": torch.bmm(grad.transpose(1, 2), x)}
    if layer.bias is not None:
        out["bias"] = grad.sum(dim=1)
    return out


def _pointwise(layer: nn.Conv2d) -> bool:
    return layer.kernel_size == (1, 1) and layer.stride == (1, 1) and layer.padding == (0, 0) and layer.groups == 1


def pointwise_conv2d_rule(layer: nn.Conv2d, x: torch.Tensor, grad: torch.Tensor, b: int) -> dict[str, torch.Tensor]:
    # A 1x1 convolution with one row per example is a linear layer over positions: one matrix product per
    # example (3-5x faster here than the grouped convolution below, which stays faster with K > 1 rows).
    x = x.reshape(b, layer.in_channels, -1)
    grad = grad.reshape(b, layer.out_channels, -1)
    out = {"weight": torch.bmm(grad, x.transpose(1, 2)).reshape(b, *layer.weight.shape)}
    if layer.bias is not None:
        out["bias"] = grad.sum(dim=2)
    return out


def conv2d_rule(layer: nn.Conv2d, x: torch.Tensor, grad: torch.Tensor, b: int) -> dict[str, torch.Tensor]:
    if _pointwise(layer) and x.shape[0] == b:
        return pointwise_conv2d_rule(layer, x, grad, b)
    # The weight gradient of a convolution whose groups are the examples: the b examples become b * groups
    # channel groups of one image, and the K draws of each example its batch dimension, which the weight
    # gradient sums over. Only the weight gradient is computed (the input gradient came from the backward).
    k = x.shape[0] // b
    cin, cout = layer.in_channels, layer.out_channels
    x = x.reshape(b, k, cin, *x.shape[2:]).transpose(0, 1).reshape(k, b * cin, *x.shape[2:])
    grad = grad.reshape(b, k, cout, *grad.shape[2:]).transpose(0, 1).reshape(k, b * cout, *grad.shape[2:])
    weight = torch.nn.grad.conv2d_weight(
        x, (b * cout, cin // layer.groups, *layer.kernel_size), grad,
        stride=layer.stride, padding=layer.padding, dilation=layer.dilation, groups=b * layer.groups,
    )
    out = {"weight": weight.reshape(b, *layer.weight.shape)}
    if layer.bias is not None:
        out["bias"] = grad.reshape(k, b, cout, -1).sum(dim=(0, 3))
    return out


def group_norm_rule(layer: nn.GroupNorm, x: torch.Tensor, grad: torch.Tensor, b: int) -> dict[str, torch.Tensor]:
    # [b*K, C, ...] -> [b, K, C, positions], summed over draws and positions (no transposed copy)
    def per_channel(t: torch.Tensor) -> torch.Tensor:
        return _by_example(t, b).flatten(3).sum(dim=(1, 3)) if t.dim() > 2 else _by_example(t, b).sum(dim=1)

    out = {}
    if layer.weight is not None:
        out["weight"] = per_channel(F.group_norm(x, layer.num_groups, eps=layer.eps) * grad)
    if layer.bias is not None:
        out["bias"] = per_channel(grad)
    return out


def embedding_rule(layer: nn.Embedding, x: torch.Tensor, grad: torch.Tensor, b: int) -> dict[str, torch.Tensor]:
    index = _by_example(x, b).reshape(b, -1)
    grad = _by_example(grad, b).reshape(b, index.shape[1], layer.embedding_dim)
    out = grad.new_zeros(b, layer.num_embeddings, layer.embedding_dim)
    out.scatter_add_(1, index.unsqueeze(-1).expand_as(grad), grad)
    return {"weight": out}


RULES: dict[type, Rule] = {
    nn.Linear: linear_rule,
    nn.Conv2d: conv2d_rule,
    nn.GroupNorm: group_norm_rule,
    nn.Embedding: embedding_rule,
}


def unsupported(module: nn.Module) -> str | None:
    """Why the rules above cannot give ``module``'s per-example gradients, or None if they can."""
    kind = type(module)
    if kind not in RULES:
        return f"has parameters but no per-example rule (supported: {', '.join(t.__name__ for t in RULES)})"
    if kind is nn.Conv2d and (module.padding_mode != "zeros" or isinstance(module.padding, str)):
        return "is a non-zero-padded or string-padded convolution"
    if kind is nn.Embedding and (module.padding_idx is not None or module.max_norm is not None or module.scale_grad_by_freq):
        return "uses padding_idx, max_norm or scale_grad_by_freq"
    return None
