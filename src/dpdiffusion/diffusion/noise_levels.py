"""Training noise-level distributions p(sigma), one per parameterisation (EDM Table 1; DPDM's v-prediction).

Each is a small frozen description with ``sample(shape, generator) -> sigma``; the loss draws from it once per
example and multiplicity draw, so the draws stay inside the clipped per-example loss.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

import torch

from dpdiffusion.diffusion.schedules import karras_sigmas


class NoiseLevels(Protocol):
    """A training noise-level distribution: ``sample(shape, generator)`` gives sigma of that shape."""

    def sample(self, shape: tuple[int, ...], generator: torch.Generator) -> torch.Tensor: ...


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


def ddpm_sigma(t: torch.Tensor, T: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> torch.Tensor:
    """sigma of DDPM's discrete linear schedule at integer times t in [0, T): sqrt(1 / alpha_bar_t - 1), the
    noise level of x_t / sqrt(alpha_bar_t) in EDM's variance-exploding form."""
    betas = torch.linspace(beta_start, beta_end, T, dtype=torch.float64)
    alpha_bar = torch.cumprod(1 - betas, dim=0)
    return (1 / alpha_bar[t.long()] - 1).sqrt()


@dataclass(frozen=True)
class DDPMTimes:
    """t uniform on the integers [t_min, t_max) of DDPM's linear schedule (T steps), as the level sigma(t)."""

    t_min: int = 0
    t_max: int = 1000
    T: int = 1000

    def __post_init__(self) -> None:
        if not 0 <= self.t_min < self.t_max <= self.T:
            raise ValueError(f"need 0 <= t_min < t_max <= T, got {self.t_min}, {self.t_max}, {self.T}")

    def sample(self, shape: tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
        t = torch.randint(self.t_min, self.t_max, shape, generator=generator)
        return ddpm_sigma(t, self.T).float()


@dataclass(frozen=True)
class Mixture:
    """Biased timestep sampling: draw from component i with probability weights[i] (the weights sum to 1)."""

    components: tuple
    weights: tuple[float, ...]

    def __post_init__(self) -> None:
        if len(self.components) != len(self.weights) or not self.components:
            raise ValueError("a mixture needs one weight per component, and at least one component")
        if min(self.weights) < 0 or abs(sum(self.weights) - 1) > 1e-6:
            raise ValueError(f"mixture weights must be >= 0 and sum to 1, got {self.weights}")

    def sample(self, shape: tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
        which = torch.multinomial(torch.tensor(self.weights, dtype=torch.float64), int(torch.Size(shape).numel()),
                                  replacement=True, generator=generator).reshape(shape)
        out = torch.empty(shape)
        for i, component in enumerate(self.components):  # every component draws the full shape: fixed RNG use
            out = torch.where(which == i, component.sample(shape, generator), out)
        return out


@dataclass(frozen=True)
class KarrasLevels:
    """One of the T levels of EDM's sampling schedule (eq. 5), uniformly: "a random timestep r of T"
    (DP-SAD) for a denoiser that is sampled on that schedule."""

    T: int = 500
    sigma_min: float = 0.002
    sigma_max: float = 80.0
    rho: float = 7.0

    def __post_init__(self) -> None:
        if self.T < 1 or not 0 < self.sigma_min < self.sigma_max:
            raise ValueError(f"need T >= 1 and 0 < sigma_min < sigma_max, got {self.T}, {self.sigma_min}, {self.sigma_max}")

    def sample(self, shape: tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
        levels = karras_sigmas(self.T, sigma_min=self.sigma_min, sigma_max=self.sigma_max, rho=self.rho)[:-1]
        return levels[torch.randint(0, self.T, shape, generator=generator)]
