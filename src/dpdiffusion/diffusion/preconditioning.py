"""Preconditioning: wraps a raw network F_x into a denoiser D_x(x, sigma, labels) (Karras et al. 2022, EDM)."""

from __future__ import annotations

import torch
from torch import nn


class EDMPrecond(nn.Module):
    """D_x = c_skip x + c_out F_x(c_in x, c_noise, labels) with EDM's choices (EDM, Table 1)."""

    def __init__(self, net: nn.Module, *, sigma_data: float = 0.5):
        super().__init__()
        self.net = net
        self.sigma_data = sigma_data

    def coefficients(self, sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        sd = self.sigma_data
        # EDM Table 1, "Ours": skip, output and input scalings, and the noise conditioning
        c_skip = sd**2 / (sigma**2 + sd**2)
        c_out = sigma * sd / (sigma**2 + sd**2).sqrt()
        c_in = 1 / (sd**2 + sigma**2).sqrt()
        c_noise = sigma.log() / 4
        return c_skip, c_out, c_in, c_noise

    def loss_weight(self, sigma: torch.Tensor) -> torch.Tensor:
        # EDM Table 1: lambda(sigma) = (sigma^2 + sigma_data^2) / (sigma sigma_data)^2
        return (sigma**2 + self.sigma_data**2) / (sigma * self.sigma_data) ** 2

    def forward(self, x: torch.Tensor, sigma: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        sigma = sigma.to(x.dtype).reshape(-1)
        c_skip, c_out, c_in, c_noise = (c.view(-1, 1, 1, 1) for c in self.coefficients(sigma))
        F_x = self.net(c_in * x, c_noise.flatten(), labels)
        return c_skip * x + c_out * F_x
