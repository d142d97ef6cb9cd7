"""Noise addition: Gaussian noise N(0, sigma^2 C^2) added once per step to the clipped sum.

The noise comes from a ``SecretStream`` (``dpsgd.secret_random``: a CSPRNG keyed from the OS, float64 Gaussians
as a sum of two, per Holohan & Braghin 2021) and is added in float64 before the sum is rounded to its dtype.
"""

from __future__ import annotations

import torch

from dpdiffusion.dpsgd.per_example import Grads
from dpdiffusion.dpsgd.secret_random import SecretStream


def add_noise(summed: Grads, *, noise_multiplier: float, max_grad_norm: float, stream: SecretStream) -> Grads:
    """The clipped sum plus independent N(0, (noise_multiplier * max_grad_norm)^2) in every coordinate (one draw
    of ``stream`` for all parameters, in the order of ``summed``)."""
    if noise_multiplier < 0:
        raise ValueError(f"noise multiplier must be >= 0, got {noise_multiplier}")
    if noise_multiplier == 0:
        return dict(summed)
    std = noise_multiplier * max_grad_norm
    noise = stream.normal(sum(s.numel() for s in summed.values()))
    noisy, start = {}, 0
    for name, s in summed.items():
        part = noise[start:start + s.numel()].view(s.shape).to(s.device)
        start += s.numel()
        noisy[name] = (s.to(torch.float64) + std * part).to(s.dtype)
    return noisy
