"""Ghost norms and book-keeping: a layer's per-example gradient norms without forming the gradients, and its
clipped sum as a few batched parameter gradients.

Mixed ghost clipping with book-keeping (Bu et al. 2023, "Differentially private optimization on large model
at small cost"). The weight gradient of a Linear or Conv2d layer for one example is ``G^T A`` over the
example's rows (its K multiplicity draws times its positions): ``A`` the layer's input rows (unfolded for a
convolution), ``G`` its output gradient rows, both stored by the one batched forward and backward. So

- its squared norm is ``sum((A A^T) * (G G^T))``: cost ~ rows^2 per example instead of ~ parameters, and
  nothing of parameter size is written (a *ghost norm*);
- once every example's clip factor is known, the clipped sum over examples is the layer's ordinary batched
  weight gradient with each row of ``G`` scaled by its example's factor (*book-keeping*): no second backward
  pass, and the FLOPs of the plain step's weight gradient.

Both are exact only in real numbers. Rows that nearly cancel make ``sum((A A^T) * (G G^T))`` a difference of
large numbers, and the float32 book-keeping product of such an example errs in proportion to its rows, not
to its norm; so the Grams are contracted in float64, and the norm handed to clipping adds rigorous bounds of
both errors (``ghost_norms``): no example adds more than C, however its rows are built.

The layerwise engine (``per_example.LayerwiseEngine``) takes this route layer by layer where
``ghost_cheaper`` says it costs less than materialising the per-example gradients: for DPDM's MNIST UNet
at K = 1, the Linear layers; for wider UNets every low-resolution layer (256 channels at 8x8: 46 ms against
178 ms for 64 examples on 2 CPU cores).

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
from dpdiffusion.dpsgd.rounding import U64, gamma, product_unit, round_up, sqrt_upper


def ghost_applies(module: nn.Module) -> bool:
    """Whether the layer's weight gradient is ``G^T A`` over rows (a ghost norm exists for it)."""
    return isinstance(module, nn.Linear) or (isinstance(module, nn.Conv2d) and module.groups == 1)


def _costs(module: nn.Module, x: torch.Tensor, grad: torch.Tensor, b: int) -> tuple[int, int, int]:
    """(ghost norm FLOPs, materialised gradient FLOPs, float64 Gram bytes) per example."""
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
    return ghost, materialised, 8 * (gram_rows * gram_rows + 2 * rows * rows)  # float64 Grams


def ghost_cheaper(module: nn.Module, x: torch.Tensor, grad: torch.Tensor, b: int) -> bool:
    """Whether a ghost norm plus book-keeping beats materialising this layer's per-example gradients.

    The ghost route pays the Grams and then the batched weight gradient (as many FLOPs as the per-example
    gradients, but in one large product); materialising pays per-example products (small ones at low
    resolution) and writes, norms and sums b x parameters floats. Measured on 2 CPU cores, 64 examples,
    K = 1, 3x3 convolutions (ghost + book-keeping against materialised + norm): 64 channels at 7x7 3.7 vs
    3.0 ms (plus the weighted sum, about even), 128 -> 64 at 7x7 5.7 vs 6.1, 64 at 14x14 23 vs 6.2,
    128 at 16x16 57 vs 67, 256 at 8x8 25 vs 182. Since the Grams are contracted in float64 and book-keeping
    runs in groups of at most ``_BOOKKEEPING_ROWS`` rows (rounding bounds, ``ghost_norms``), the ghost route
    costs about 3x as much at 7x7 (64 channels: 9.7 ms with book-keeping) and 1.7x at 8x8 (256 channels: 46
    ms against 178 materialised; 128 channels 16 against 37), and DPDM's MNIST UNet stepped faster with its
    7x7 convolutions materialised (benchmarks/results/ghost_float64.md). Ghost when its norm FLOPs are under a
    quarter of the materialised FLOPs (3.0x and 3.6x at 7x7, 5.1x at 128 channels at 8x8, 10x at 256)."""
    ghost, materialised, _ = _costs(module, x, grad, b)
    return 4 * ghost < materialised


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


def _gram_terms(module: nn.Module, x: torch.Tensor, grad: torch.Tensor, b: int,
                names: dict[str, str]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per example, in float64, [b] each: the squared norm ``sum((A A^T) * (G G^T))`` (plus the bias's
    ``|sum_t g_t|^2``) as computed, a bound on its rounding error, and ``M = sum_t |a_t| |g_t|`` (plus
    ``sum_t |g_t|`` for the bias), the size of the example's rows before they cancel.

    The float32 rows are exact in float64. With d the inner length of an ``A A^T`` entry (the input features
    or channels x kernel taps), p that of ``G G^T`` (the output features) and T rows, each Gram entry errs by
    at most ``gamma(d) |a_s| |a_t|`` resp. ``gamma(p) |g_s| |g_t|`` (Cauchy-Schwarz on the error bound of
    ``rounding``), so their product by ``gamma(d + p)`` times ``|a_s| |a_t| |g_s| |g_t|``, and the sum of the T^2
    products adds ``gamma(T^2)`` of the same: in all at most ``gamma(d + p + T^2) M^2``; the bias's sum of T rows,
    its squares and their sum at most ``gamma(2T + p + 1) (sum_t |g_t|)^2``. Row norms are read off the Grams'
    diagonals; the bound taken is twice ``gamma(d + p + T^2 + 2T + 1)`` times both, which also covers the
    rounding of the row norms, of the bound itself and of the final additions."""
    if isinstance(module, nn.Linear):
        a = x.reshape(b, -1, module.in_features).double()
        g = grad.reshape(b, -1, module.out_features).double()
        gram, inner = torch.bmm(a, a.transpose(1, 2)), module.in_features
    else:
        assert isinstance(module, nn.Conv2d)
        k = x.shape[0] // b
        gram = _conv_input_gram(module, x.double(), b, (grad.shape[2], grad.shape[3]))
        g = grad.reshape(b, k, module.out_channels, -1).transpose(2, 3).reshape(b, -1, module.out_channels).double()
        taps = module.kernel_size[0] * module.kernel_size[1]
        inner = module.in_channels * taps + taps  # a sum over channels, then one over kernel offsets
    grad_gram = torch.bmm(g, g.transpose(1, 2))
    squares = (gram * grad_gram).sum(dim=(1, 2))
    row_norms = grad_gram.diagonal(dim1=1, dim2=2).clamp(min=0).sqrt()  # |g_t|
    mass = (gram.diagonal(dim1=1, dim2=2).clamp(min=0).sqrt() * row_norms).sum(dim=1)  # sum_t |a_t| |g_t|
    rows = g.shape[1]
    masses = mass.pow(2)
    if "bias" in names:
        squares = squares + g.sum(dim=1).pow(2).sum(dim=1)
        bias_mass = row_norms.sum(dim=1)
        masses, mass = masses + bias_mass.pow(2), mass + bias_mass
    error = 2 * gamma(inner + g.shape[2] + rows * rows + 2 * rows + 1, U64) * masses
    return squares, error, mass


# Rows (examples x draws x positions) that one book-keeping product contracts at most, in whole examples and at
# least one. Its float32 rounding allowance (``ghost_norms``) grows with them: gamma_32(256) = 1.5e-5 times M,
# which is about sqrt(rows per example) times an ordinary example's norm; fewer, larger products are faster.
_BOOKKEEPING_ROWS = 256


def _contracted_rows(module: nn.Module, grad: torch.Tensor) -> int:
    """How many rows the layer's weight gradient sums over: every position of every row of ``grad``."""
    return grad.numel() // (grad.shape[1] if isinstance(module, nn.Conv2d) else grad.shape[-1])


def _bookkeeping_step(module: nn.Module, grad: torch.Tensor, b: int) -> int:
    """Examples per book-keeping product (``_BOOKKEEPING_ROWS``)."""
    return max(1, _BOOKKEEPING_ROWS // max(1, _contracted_rows(module, grad) // b))


def ghost_norms(module: nn.Module, x: torch.Tensor, grad: torch.Tensor, b: int, names: dict[str, str],
                max_bytes: int) -> torch.Tensor:
    """Each example's gradient norm over the layer's trained parameters (``names``: local -> global names;
    the weight must be among them), [b], as an upper bound that clipping can rely on; examples are taken a
    few at a time so that their Gram matrices stay under about ``max_bytes``.

    Two roundings are bounded (``rounding``). The Gram contraction, in float64 with its error bound added
    (``_gram_terms``): in float32 an example whose rows nearly cancel (two equal input rows with output
    gradients 1 and -0.9999) had its rounding error exceed its true squared norm, which came out 0 and left
    it unclipped. And the book-keeping sum (``clipped_layer_sum``), which forms the clipped example's gradient
    in float32 inside a product over the n rows of its group of examples: the product errs by at most
    ``gamma_32(n + 1)`` (the +1: scaling the rows by the factor) times the factor times M (``_gram_terms``)
    in the example's part, and this allowance is added to the norm, so that the float vector the example adds
    stays within C (the groups' float64 sum adds ``gamma_64(groups)``, its rounding to float32 is left to the
    margin of ``clip_factors``). In float32 the allowance grows with n where the clip factor does not shrink:
    that is why the groups hold at most ``_BOOKKEEPING_ROWS`` rows."""
    rows = x.shape[0] // b
    step = max(1, max_bytes // _costs(module, x, grad, b)[2])
    parts = [_gram_terms(module, x[start * rows : (start + step) * rows], grad[start * rows : (start + step) * rows],
                         min(step, b - start), names) for start in range(0, b, step)]
    squares, error, mass = (torch.cat(terms) for terms in zip(*parts, strict=True))
    step = _bookkeeping_step(module, grad, b)
    contracted = step * (_contracted_rows(module, grad) // b)  # not min(step, b): micro-batching changes nothing
    allowance = gamma(contracted + 1, product_unit(x, convolution=isinstance(module, nn.Conv2d))) * mass
    groups = -(-b // step)  # their float64 sum errs by gamma(groups) of the example's part
    return round_up((sqrt_upper(squares + error) + allowance) * (1 + gamma(groups + 2, U64)), x.dtype)


def clipped_layer_sum(module: nn.Module, x: torch.Tensor, grad: torch.Tensor, b: int,
                      factors: torch.Tensor) -> dict[str, torch.Tensor]:
    """``sum_i factors[i] * (example i's gradient)`` of each of the layer's parameters, as batched gradients
    with each example's output-gradient rows scaled by its factor: one per group of ``_bookkeeping_step``
    examples, added up in float64. Examples whose factor is 0 (a non-finite norm) have their rows zeroed
    first: 0 * nan is nan."""
    rows = x.shape[0] // b
    keep = (factors != 0).repeat_interleave(rows)
    if not bool(keep.all()):
        x = torch.where(keep.view(-1, *([1] * (x.dim() - 1))), x, torch.zeros_like(x))
        grad = torch.where(keep.view(-1, *([1] * (grad.dim() - 1))), grad, torch.zeros_like(grad))
    scale = factors.to(grad.dtype).repeat_interleave(rows).view(-1, *([1] * (grad.dim() - 1)))
    grad = grad * scale
    step = _bookkeeping_step(module, grad, b)
    sums: dict[str, torch.Tensor] = {}
    for start in range(0, b, step):
        # one "example" holding every row of the group: the rule gives the group's ordinary batched gradient
        part = RULES[type(module)](module, x[start * rows : (start + step) * rows], grad[start * rows : (start + step) * rows], 1)
        for local, value in part.items():
            sums[local] = sums[local] + value[0].double() if local in sums else value[0].double()
    return {local: value.to(grad.dtype) for local, value in sums.items()}
