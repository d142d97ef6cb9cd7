"""Training noise-level distributions p(sigma), one per parameterisation (EDM Table 1; DPDM's v-prediction).

Each is a small frozen description with ``sample(shape, generator) -> sigma``; the loss draws from it once per
example and multiplicity draw, so the draws stay inside the clipped per-example loss.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class LogNormal:
    """EDM: ln(sigma) ~ N(P_mean, P_std^2)."""

    P_mean: float = -1.2
    P_std: float = 1.2

    def sample(self, shape: tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
        return (torch.randn(shape, generator=generator) * self.P_std + self.P_mean).exp()


def vp_sigma(t: torch.Tensor, beta_d: float = 19.9, beta_min: float = 0.1) -> torch.Tensor:
    """VP SDE (Song et al. 2021): sigma(t) = sqrt(exp(beta_d t^2 / 2 + beta_min t) - 1)."""
    return torch.expm1(0.5 * beta_d * t**2 + beta_min * t).sqrt()


def vp_sigma_inv(sigma: torch.Tensor, beta_d: float = 19.9, beta_min: float = 0.1) -> torch.Tensor:
    """The t with vp_sigma(t) = sigma."""
    return ((beta_min**2 + 2 * beta_d * torch.log1p(sigma**2)).sqrt() - beta_min) / beta_d


@dataclass(frozen=True)
class VPTimes:
    """VP: t ~ U(epsilon_t, 1), sigma = vp_sigma(t) (EDM Table 1, "VP")."""

    beta_d: float = 19.9
    beta_min: float = 0.1
    epsilon_t: float = 1e-5

    def sample(self, shape: tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
        t = self.epsilon_t + (1 - self.epsilon_t) * torch.rand(shape, generator=generator)
        return vp_sigma(t, self.beta_d, self.beta_min)


@dataclass(frozen=True)
class LogUniform:
    """VE: ln(sigma) ~ U(ln sigma_min, ln sigma_max) (EDM Table 1, "VE")."""

    sigma_min: float = 0.02
    sigma_max: float = 100.0

    def sample(self, shape: tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
        lo, hi = math.log(self.sigma_min), math.log(self.sigma_max)
        return (lo + (hi - lo) * torch.rand(shape, generator=generator)).exp()


@dataclass(frozen=True)
class TanUniform:
    """v-prediction (DPDM's epsilon = 0.2 setting): sigma = tan(pi t / 2) with t uniform over the times whose
    log-SNR = -2 ln(sigma) lies in [logsnr_min, logsnr_max]."""

    logsnr_min: float = -9.0
    logsnr_max: float = 13.0

    def __post_init__(self) -> None:
        if not self.logsnr_min < self.logsnr_max:
            raise ValueError(f"need logsnr_min < logsnr_max, got {self.logsnr_min}, {self.logsnr_max}")

    def time_range(self) -> tuple[float, float]:
        # sigma = exp(-logsnr / 2), t = (2 / pi) atan(sigma): high log-SNR is the low end of t
        t_lo = 2 / math.pi * math.atan(math.exp(-self.logsnr_max / 2))
        t_hi = 2 / math.pi * math.atan(math.exp(-self.logsnr_min / 2))
        return t_lo, t_hi

    def sample(self, shape: tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
        t_lo, t_hi = self.time_range()
        t = t_lo + (t_hi - t_lo) * torch.rand(shape, generator=generator, dtype=torch.float64)
        return torch.tan(math.pi * t / 2).float()
