"""Preconditioning: wraps a raw network F into a denoiser D(x, sigma, labels) = c_skip x + c_out F(c_in x,
c_noise, labels), for each parameterisation DPDM compares (EDM Table 1; Salimans & Ho's v-prediction).

Every parameterisation trains and samples through the same denoiser interface, so the loss, the samplers and
the DP engine do not depend on which one is used.
"""

from __future__ import annotations

import abc
import math

import torch
from torch import nn

from dpdiffusion.diffusion.noise_levels import vp_sigma_inv

Coefficients = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


class Precond(nn.Module, abc.ABC):
    """D(x, sigma, labels) = c_skip x + c_out F(c_in x, c_noise, labels); subclasses give the coefficients and
    the loss weight lambda(sigma) that makes the effective training target of F unit-variance."""

    def __init__(self, net: nn.Module, *, sigma_data: float = 0.5):
        super().__init__()
        self.net = net
        self.sigma_data = sigma_data

    @abc.abstractmethod
    def coefficients(self, sigma: torch.Tensor) -> Coefficients:
        """(c_skip, c_out, c_in, c_noise), each shaped like ``sigma``."""

    @abc.abstractmethod
    def loss_weight(self, sigma: torch.Tensor) -> torch.Tensor:
        """lambda(sigma) = 1 / c_out^2."""

    def forward(self, x: torch.Tensor, sigma: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        sigma = sigma.to(x.dtype).reshape(-1)
        c_skip, c_out, c_in, c_noise = self.coefficients(sigma)
        c_skip, c_out, c_in = (c.view(-1, 1, 1, 1) for c in (c_skip, c_out, c_in))
        F_x = self.net(c_in * x, c_noise.flatten(), labels)
        return c_skip * x + c_out * F_x


class EDMPrecond(Precond):
    """EDM (Karras et al. 2022, Table 1, "Ours"), with the data's standard deviation sigma_data."""

    def coefficients(self, sigma: torch.Tensor) -> Coefficients:
        sd = self.sigma_data
        c_skip = sd**2 / (sigma**2 + sd**2)
        c_out = sigma * sd / (sigma**2 + sd**2).sqrt()
        c_in = 1 / (sd**2 + sigma**2).sqrt()
        c_noise = sigma.log() / 4
        return c_skip, c_out, c_in, c_noise

    def loss_weight(self, sigma: torch.Tensor) -> torch.Tensor:
        # EDM Table 1: lambda(sigma) = (sigma^2 + sigma_data^2) / (sigma sigma_data)^2
        return (sigma**2 + self.sigma_data**2) / (sigma * self.sigma_data) ** 2


class VPPrecond(Precond):
    """VP (Song et al. 2021 in EDM's Table 1): F predicts the noise; c_noise = (M - 1) t(sigma)."""

    def __init__(self, net: nn.Module, *, sigma_data: float = 0.5, beta_d: float = 19.9, beta_min: float = 0.1,
                 M: int = 1000):
        super().__init__(net, sigma_data=sigma_data)
        self.beta_d, self.beta_min, self.M = beta_d, beta_min, M

    def coefficients(self, sigma: torch.Tensor) -> Coefficients:
        c_skip = torch.ones_like(sigma)
        c_out = -sigma
        c_in = 1 / (sigma**2 + 1).sqrt()
        c_noise = (self.M - 1) * vp_sigma_inv(sigma, self.beta_d, self.beta_min)
        return c_skip, c_out, c_in, c_noise

    def loss_weight(self, sigma: torch.Tensor) -> torch.Tensor:
        return 1 / sigma**2


class VEPrecond(Precond):
    """VE (Song et al. 2021 in EDM's Table 1): F predicts the scaled noise; c_noise = ln(sigma / 2)."""

    def coefficients(self, sigma: torch.Tensor) -> Coefficients:
        c_skip = torch.ones_like(sigma)
        c_out = sigma
        c_in = torch.ones_like(sigma)
        c_noise = (0.5 * sigma).log()
        return c_skip, c_out, c_in, c_noise

    def loss_weight(self, sigma: torch.Tensor) -> torch.Tensor:
        return 1 / sigma**2


class VPredPrecond(Precond):
    """v-prediction (Salimans & Ho 2022; DPDM's epsilon = 0.2 setting). With alpha = 1 / sqrt(1 + sigma^2) and
    s = sigma alpha, the variance-preserving input is z = alpha x_noisy and F predicts v = alpha n' - s x, where
    n' is the unit noise; then D = alpha z - s F, i.e. c_skip = alpha^2, c_out = -s, c_in = alpha, and the loss
    ||v - F||^2 equals (1 + sigma^2) / sigma^2 ||D - x||^2. The network is conditioned on the time
    t = (2 / pi) atan(sigma) in [0, 1], as in DPDM. sigma_data is not used: v-prediction assumes unit scale."""

    def coefficients(self, sigma: torch.Tensor) -> Coefficients:
        alpha = 1 / (1 + sigma**2).sqrt()
        return alpha**2, -sigma * alpha, alpha, torch.atan(sigma) * (2 / math.pi)

    def loss_weight(self, sigma: torch.Tensor) -> torch.Tensor:
        return (1 + sigma**2) / sigma**2


PARAMETERISATIONS: dict[str, type[Precond]] = {"edm": EDMPrecond, "vp": VPPrecond, "ve": VEPrecond, "v": VPredPrecond}
