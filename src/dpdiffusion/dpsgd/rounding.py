"""Rigorous bounds on floating-point rounding, so that clipping holds for the numbers the computer forms.

The model used (Higham, "Accuracy and Stability of Numerical Algorithms", 2nd ed., sections 2.2 and 3.1):
every float operation is the exact result times ``1 + d`` with ``|d| <= u``, the unit roundoff of its format
(``u = 2^-24`` for float32, ``2^-53`` for float64; underflow aside: the absolute ``_NORM_EPS`` of the clip factor
absorbs it). Then a sum of n products ``x_k * y_k``, added in *any* order (blocked, pairwise or with fused
multiply-adds, as BLAS and convolution kernels do), is off by at most ``gamma(n) * sum_k |x_k * y_k|`` with
``gamma(n) = n u / (1 - n u)``: each product goes through at most n roundings. The clipping code uses this for
a sum of squares (``clipping.row_norm``), for ghost norms (``ghost._gram_terms``) and for book-keeping sums
(``ghost.ghost_norms``).
"""

from __future__ import annotations

import torch

U64 = 2.0**-53  # float64's unit roundoff


def unit_roundoff(dtype: torch.dtype) -> float:
    """Half the gap between 1 and the next float of ``dtype``: the largest relative error of one rounding."""
    return torch.finfo(dtype).eps / 2


def gamma(n: int, unit: float) -> float:
    """Higham's ``gamma_n = n u / (1 - n u)``: the relative error bound of a sum of n products in any order.
    Refused where ``n u`` is not small, where the bound says nothing (e.g. bfloat16 sums of thousands)."""
    if n * unit >= 0.25:
        raise ValueError(f"no useful rounding bound for sums of {n} products at unit roundoff {unit:g}")
    return n * unit / (1 - n * unit)


def product_unit(t: torch.Tensor, convolution: bool) -> float:
    """The unit roundoff of matrix products (``convolution``: of a convolution's weight gradient, by cuDNN or,
    for 1x1 kernels, a matrix product) of ``t``'s dtype on its device. On CUDA, float32 products may round
    their inputs to TF32 (10-bit mantissa, the default for cuDNN convolutions) or bfloat16 (float32 matmul
    precision "medium"): each product then errs by up to about 2 u of that format, which the returned unit
    covers."""
    if t.dtype == torch.float32 and t.is_cuda:
        if torch.get_float32_matmul_precision() == "medium":
            return 2.0**-7
        if torch.backends.cuda.matmul.allow_tf32 or (convolution and torch.backends.cudnn.allow_tf32):
            return 2.0**-10
    return unit_roundoff(t.dtype)


def sqrt_upper(squares: torch.Tensor, relative: float = 0.0) -> torch.Tensor:
    """An upper bound of ``sqrt(s)`` in float64, given float64 ``squares`` within ``relative`` (<= 1/4) of s.

    ``s <= squares / (1 - relative) <= squares * (1 + 1.5 relative)``; the factor used, ``1 + 2 relative + 8 u``,
    also covers the float64 roundings of forming it, of the product and of the square root."""
    assert squares.dtype == torch.float64 and 0 <= relative <= 0.25
    return (squares.clamp(min=0) * (1 + 2 * relative + 8 * U64)).sqrt()


def round_up(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``x`` (float64) in ``dtype``, never below ``x`` (nan and inf are kept): raised by 2 unit roundoffs of
    ``dtype`` first, more than rounding to nearest can take off (below its normal range, where rounding is
    absolute, the clip factor's ``_NORM_EPS`` covers the difference)."""
    if dtype == torch.float64:
        return x
    return (x * (1 + 2 * unit_roundoff(dtype))).to(dtype)
