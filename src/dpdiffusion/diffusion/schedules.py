"""Noise-level schedules for sampling, built apart from the samplers and passed to them as data."""

from __future__ import annotations

import torch


def karras_sigmas(steps: int, *, sigma_min: float = 0.002, sigma_max: float = 80.0, rho: float = 7.0) -> torch.Tensor:
    """EDM's schedule (Karras et al. 2022, eq. 5): ``steps`` levels from sigma_max down to sigma_min, then 0."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if not 0 < sigma_min < sigma_max:
        raise ValueError(f"need 0 < sigma_min < sigma_max, got {sigma_min}, {sigma_max}")
    ramp = torch.linspace(0, 1, steps, dtype=torch.float64)
    # EDM eq. 5: sigma_i = (sigma_max^(1/rho) + i/(N-1) (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho
    inv_rho_min, inv_rho_max = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    sigmas = (inv_rho_max + ramp * (inv_rho_min - inv_rho_max)) ** rho if steps > 1 else torch.tensor([sigma_max], dtype=torch.float64)
    return torch.cat([sigmas, sigmas.new_zeros(1)]).float()


class ImageNoise:
    """Independent Gaussian noise per image, each image with its own seeded generator, so that an image
    depends only on its own seed and never on the batch it was sampled in (EDM's StackedRandomGenerator)."""

    def __init__(self, seeds: list[int] | torch.Tensor, device: torch.device | str = "cpu"):
        self.generators = [torch.Generator(device).manual_seed(int(s)) for s in seeds]
        self.device = torch.device(device)

    def __len__(self) -> int:
        return len(self.generators)

    def randn(self, shape: tuple[int, ...], dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Noise of shape [len(self), *shape]."""
        if not self.generators:
            return torch.zeros((0, *shape), dtype=dtype, device=self.device)
        return torch.stack([torch.randn(shape, generator=g, dtype=dtype, device=self.device) for g in self.generators])
