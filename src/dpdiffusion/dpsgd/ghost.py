"""Ghost norms and book-keeping: a layer's per-example gradient norms without forming the gradients, and its
clipped sum as one batched parameter gradient.

Mixed ghost clipping with book-keeping (Bu et al. 2023, "Differentially private optimization on large model
at small cost"). The weight gradient of a Linear or Conv2d layer for one example is ``G^T A`` over the
example's rows (its K multiplicity draws times its positions): ``A`` the layer's input rows (unfolded for a
convolution), ``G`` its output gradient rows, both stored by the one batched forward and backward. So

- its squared norm is ``sum((A A^T) * (G G^T))``: cost ~ rows^2 per example instead of ~ parameters, and
  nothing of parameter size is written (a *ghost norm*);
- once every example's clip factor is known, the clipped sum over examples is the layer's ordinary batched
  weight gradient with each row of ``G`` scaled by its example's factor (*book-keeping*): no second backward
  pass, and the FLOPs of the plain step's weight gradient.

The layerwise engine (``per_example.LayerwiseEngine``) takes this route layer by layer where
``ghost_cheaper`` says it costs less than materialising the per-example gradients: for DPDM's MNIST UNet
at K = 1, the 3x3 convolutions at 7x7 and the Linear layers; for wider UNets every low-resolution layer
(256 channels at 8x8: 9 ms against 182 ms for 64 examples on 2 CPU cores).

For a convolution, ``A A^T`` is formed without unfolding: the row of output position p holds the padded
input at ``p * stride + offset * dilation`` for each kernel offset, so ``(A A^T)[p, q]`` is the sum over
offsets of the Gram matrix of the padded input's positions at ``(p * stride + offset * dilation,
q * stride + offset * dilation)``: one Gram of ``channels`` columns instead of ``channels x kernel`` ones.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from dpdiffusion.dpsgd.per_layer import RULES


def ghost_applies(module: nn.Module) -> bool:
    """Whether the layer's weight gradient is ``G^T A`` over rows (a ghost norm exists for it)."""
    return isinstance(module, nn.Linear) or (isinstance(module, nn.Conv2d) and module.groups == 1)


def _costs(module: nn.Module, x: torch.Tensor, grad: torch.Tensor, b: int) -> tuple[int, int, int]:
    """(ghost norm FLOPs, materialised gradient FLOPs, Gram bytes) per example."""
    k = x.shape[0] // b
    if isinstance(module, nn.Linear):
        rows = k * (x[0].numel() // module.in_features)
        gram_rows = rows
        ghost = rows * rows * (module.in_features + module.out_features)
        materialised = rows * module.in_features * module.out_features
    else:
        assert isinstance(module, nn.Conv2d) and not isinstance(module.padding, str)  # see ghost_applies, unsupported
        kh, kw = module.kernel_size
        rows = k * grad.shape[2] * grad.shape[3]
        gram_rows = k * (x.shape[2] + 2 * module.padding[0]) * (x.shape[3] + 2 * module.padding[1])
        ghost = gram_rows * gram_rows * module.in_channels + rows * rows * (module.out_channels + kh * kw)
        materialised = rows * module.in_channels * kh * kw * module.out_channels
    return ghost, materialised, 4 * (gram_rows * gram_rows + 2 * rows * rows)


def ghost_cheaper(module: nn.Module, x: torch.Tensor, grad: torch.Tensor, b: int) -> bool:
    """Whether a ghost norm plus book-keeping beats materialising this layer's per-example gradients.

    The ghost route pays the Grams and then the batched weight gradient (as many FLOPs as the per-example
    gradients, but in one large product); materialising pays per-example products (small ones at low
    resolution) and writes, norms and sums b x parameters floats. Measured on 2 CPU cores, 64 examples,
    K = 1, 3x3 convolutions (ghost + book-keeping against materialised + norm): 64 channels at 7x7 3.7 vs
    3.0 ms (plus the weighted sum, about even), 128 -> 64 at 7x7 5.7 vs 6.1, 64 at 14x14 23 vs 6.2,
    128 at 16x16 57 vs 67, 256 at 8x8 25 vs 182. Ghost when its norm FLOPs are under half the materialised
    FLOPs matches every one of these but the near-even 128 at 16x16."""
    ghost, materialised, _ = _costs(module, x, grad, b)
    return 2 * ghost < materialised


def _conv_input_gram(layer: nn.Conv2d, x: torch.Tensor, b: int, out_size: tuple[int, int]) -> torch.Tensor:
    """``A A^T`` of each example's unfolded input rows, [b, K*Ho*Wo, K*Ho*Wo] (see the module docstring)."""
    k, cin = x.shape[0] // b, x.shape[1]
    assert not isinstance(layer.padding, str)  # string padding has no per-layer rule (per_layer.unsupported)
    (ph, pw), (sh, sw), (dh, dw) = layer.padding, layer.stride, layer.dilation
    padded = F.pad(x, (pw, pw, ph, ph))
    hp, wp = padded.shape[2:]
    ho, wo = out_size
    columns = padded.reshape(b, k, cin, hp * wp).transpose(1, 2).reshape(b, cin, k * hp * wp)
    gram = torch.bmm(columns.transpose(1, 2), columns).view(b, k, hp, wp, k, hp, wp)
    total = gram.new_zeros(b, k, ho, wo, k, ho, wo)
    for i in range(layer.kernel_size[0]):
        hs = slice(i * dh, i * dh + sh * (ho - 1) + 1, sh)
        for j in range(layer.kernel_size[1]):
            ws = slice(j * dw, j * dw + sw * (wo - 1) + 1, sw)
            total += gram[:, :, hs, ws, :, hs, ws]
    return total.view(b, k * ho * wo, k * ho * wo)


def _squares(module: nn.Module, x: torch.Tensor, grad: torch.Tensor, b: int, names: dict[str, str]) -> torch.Tensor:
    if isinstance(module, nn.Linear):
        a = x.reshape(b, -1, module.in_features)
        g = grad.reshape(b, -1, module.out_features)
        gram = torch.bmm(a, a.transpose(1, 2))
    else:
        assert isinstance(module, nn.Conv2d)
        k = x.shape[0] // b
        gram = _conv_input_gram(module, x, b, (grad.shape[2], grad.shape[3]))
        g = grad.reshape(b, k, module.out_channels, -1).transpose(2, 3).reshape(b, -1, module.out_channels)
    squares = (gram * torch.bmm(g, g.transpose(1, 2))).sum(dim=(1, 2))
    if "bias" in names:
        squares = squares + g.sum(dim=1).pow(2).sum(dim=1)
    return squares


def ghost_norms(module: nn.Module, x: torch.Tensor, grad: torch.Tensor, b: int, names: dict[str, str],
                max_bytes: int) -> torch.Tensor:
    """Each example's gradient norm over the layer's trained parameters (``names``: local -> global names;
    the weight must be among them), [b]; examples are taken a few at a time so that their Gram matrices
    stay under about ``max_bytes``."""
    rows = x.shape[0] // b
    step = max(1, max_bytes // _costs(module, x, grad, b)[2])
    parts = [_squares(module, x[start * rows : (start + step) * rows], grad[start * rows : (start + step) * rows],
                      min(step, b - start), names) for start in range(0, b, step)]
    return torch.cat(parts).clamp(min=0).sqrt()  # rounding can leave a zero norm's square a hair below 0


def clipped_layer_sum(module: nn.Module, x: torch.Tensor, grad: torch.Tensor, b: int,
                      factors: torch.Tensor) -> dict[str, torch.Tensor]:
    """``sum_i factors[i] * (example i's gradient)`` of each of the layer's parameters, as one batched
    gradient with each example's output-gradient rows scaled by its factor. Examples whose factor is 0 (a
    non-finite norm) have their rows zeroed first: 0 * nan is nan."""
    rows = x.shape[0] // b
    keep = (factors != 0).repeat_interleave(rows)
    if not bool(keep.all()):
        x = torch.where(keep.view(-1, *([1] * (x.dim() - 1))), x, torch.zeros_like(x))
        grad = torch.where(keep.view(-1, *([1] * (grad.dim() - 1))), grad, torch.zeros_like(grad))
    scale = factors.to(grad.dtype).repeat_interleave(rows).view(-1, *([1] * (grad.dim() - 1)))
    # one "example" holding every row: the rule gives the ordinary batched parameter gradient
    return {local: value[0] for local, value in RULES[type(module)](module, x, grad * scale, 1).items()}
