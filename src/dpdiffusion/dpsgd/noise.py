"""Noise addition: Gaussian noise N(0, sigma^2 C^2) added once per step to the clipped sum."""

from __future__ import annotations

import torch

from dpdiffusion.dpsgd.per_example import Grads


def add_noise(
    summed: Grads, *, noise_multiplier: float, max_grad_norm: float, generator: torch.Generator
) -> Grads:
    """The clipped sum plus independent N(0, (noise_multiplier * max_grad_norm)^2) in every coordinate."""
    if noise_multiplier < 0:
        raise ValueError(f"noise multiplier must be >= 0, got {noise_multiplier}")
    if noise_multiplier == 0:
        return dict(summed)
    std = noise_multiplier * max_grad_norm
    noisy = {}
    for name, s in summed.items():
        noise = torch.randn(s.shape, generator=generator, dtype=s.dtype, device=generator.device)
        noisy[name] = s + std * noise.to(s.device)
    return noisy
