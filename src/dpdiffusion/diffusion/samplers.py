"""Samplers: pure functions ``sample_*(denoiser, x, sigmas, *, noise)`` over a schedule passed in as data.

``denoiser(x, sigma) -> denoised`` (labels and guidance are bound beforehand with ``guided``); ``x`` is the
initial noise already scaled by ``sigmas[0]``; ``noise`` gives each image its own random stream, so an
image depends only on its seed. All samplers follow the probability-flow / reverse SDE of
x = y + sigma * n (EDM's formulation), whatever the training parameterisation.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from dpdiffusion.diffusion.schedules import ImageNoise

Denoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def guided(model, labels: torch.Tensor | None, *, guidance: float = 1.0, null_label: int | None = None) -> Denoiser:
    """Bind labels to ``model(x, sigma, labels)``; with classifier-free guidance weight w != 1:
    D = D_null + w (D_label - D_null) (w = 1: conditional only, w = 0: unconditional)."""

    def denoise(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        sigma = sigma.expand(x.shape[0]) if sigma.dim() == 0 else sigma
        if labels is None or guidance == 1.0:
            return model(x, sigma, labels)
        if null_label is None:
            raise ValueError("classifier-free guidance (guidance != 1) needs the 'no label' index null_label")
        null = torch.full_like(labels, null_label)
        both = model(torch.cat([x, x]), torch.cat([sigma, sigma]), torch.cat([labels, null]))
        cond, uncond = both.chunk(2)
        return uncond + guidance * (cond - uncond)

    return denoise


def _d(denoiser: Denoiser, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """The probability-flow ODE's derivative dx/dsigma = (x - D(x, sigma)) / sigma (EDM eq. 3 with s = 1)."""
    return (x - denoiser(x, sigma.expand(x.shape[0]))) / sigma


@torch.no_grad()
def sample_heun(
    denoiser: Denoiser,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    noise: ImageNoise | None = None,
    S_churn: float = 0.0,
    S_min: float = 0.0,
    S_max: float = math.inf,
    S_noise: float = 1.0,
) -> torch.Tensor:
    """EDM Algorithm 2: Heun's 2nd-order steps; with S_churn > 0 the stochastic "churn" sampler, with
    S_churn = 0 (default) the deterministic sampler of EDM Algorithm 1."""
    steps = len(sigmas) - 1
    for i in range(steps):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        gamma = min(S_churn / steps, math.sqrt(2) - 1) if S_min <= float(sigma) <= S_max else 0.0
        sigma_hat = sigma * (1 + gamma)
        if gamma > 0:
            if noise is None:
                raise ValueError("the stochastic sampler needs per-image noise")
            x = x + (sigma_hat**2 - sigma**2).sqrt() * S_noise * noise.randn(x.shape[1:]).to(x)
        d = _d(denoiser, x, sigma_hat)
        x_next = x + (sigma_next - sigma_hat) * d
        if sigma_next > 0:  # second-order correction (EDM Alg. 2, lines 9-11)
            d_next = _d(denoiser, x_next, sigma_next)
            x_next = x + (sigma_next - sigma_hat) * (d + d_next) / 2
        x = x_next
    return x


@torch.no_grad()
def sample_ddim(
    denoiser: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, *, noise: ImageNoise | None = None, eta: float = 0.0
) -> torch.Tensor:
    """DDIM (Song et al. 2021) in sigma space: eta = 0 is deterministic (Euler on the probability-flow ODE),
    eta = 1 is ancestral sampling; in between, part of each step's noise is re-drawn."""
    if eta < 0:
        raise ValueError(f"eta must be >= 0, got {eta}")
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = denoiser(x, sigma.expand(x.shape[0]))
        # split the step into a deterministic move to sigma_down and fresh noise of std sigma_up,
        # with sigma_down^2 + sigma_up^2 = sigma_next^2 (DDIM's eta-parameterised posterior)
        sigma_up = min(float(sigma_next), eta * math.sqrt(max(float(sigma_next**2 * (sigma**2 - sigma_next**2) / sigma**2), 0.0)))
        sigma_down = math.sqrt(max(float(sigma_next) ** 2 - sigma_up**2, 0.0))
        x = denoised + sigma_down * (x - denoised) / sigma
        if sigma_up > 0:
            if noise is None:
                raise ValueError("stochastic DDIM needs per-image noise")
            x = x + sigma_up * noise.randn(x.shape[1:]).to(x)
    return x


def sample_ancestral(denoiser: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, *, noise: ImageNoise) -> torch.Tensor:
    """Ancestral sampling: every step draws the full posterior noise (DDIM with eta = 1)."""
    return sample_ddim(denoiser, x, sigmas, noise=noise, eta=1.0)


@torch.no_grad()
def sample_dpmpp_2m(denoiser: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, *, noise: ImageNoise | None = None) -> torch.Tensor:
    """DPM-Solver++(2M) (Lu et al. 2022, Algorithm 2): a multistep second-order solver of the probability-flow ODE
    in data prediction, one network evaluation per level (Heun needs two).

    In EDM's formulation (alpha = 1) the half log-SNR is lambda = -log sigma, and with the denoised estimate held
    fixed over a step of h = lambda_next - lambda the ODE is solved exactly:
    x_next = (sigma_next / sigma) x - expm1(-h) D. The multistep correction replaces D by the linear extrapolation
    (1 + 1/(2r)) D_i - 1/(2r) D_{i-1}, r = h_{i-1} / h_i, built from the previous level's evaluation. The first step
    and the last one (to sigma = 0, where x_next = D) are first order. ``noise`` is unused (deterministic)."""
    del noise
    previous: torch.Tensor | None = None
    h_previous = 0.0
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = denoiser(x, sigma.expand(x.shape[0]))
        if sigma_next == 0:
            x = denoised
            break
        h = math.log(float(sigma) / float(sigma_next))
        target = denoised
        if previous is not None:
            r = h_previous / h
            target = (1 + 1 / (2 * r)) * denoised - 1 / (2 * r) * previous
        x = (sigma_next / sigma) * x - math.expm1(-h) * target
        previous, h_previous = denoised, h
    return x


@torch.no_grad()
def sample_dpmpp_3m(denoiser: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, *, noise: ImageNoise | None = None) -> torch.Tensor:
    """DPM-Solver++(3M): the multistep solver of ``sample_dpmpp_2m`` with the denoised estimate interpolated by a
    quadratic through the last three evaluations (third order), one network evaluation per level.

    With lambda = -log sigma and h = lambda_next - lambda, the exact step for D(lambda) = D + D' u + D'' u^2 / 2
    (u = lambda' - lambda) is x_next = e^-h x + I0 D + I1 D' + I2 D'' / 2, where I_k = int_0^h e^-(h-u) u^k du:
    I0 = 1 - e^-h, I1 = h - I0, I2 = h^2 - 2 I1. D' and D'' come from the Newton interpolant through the
    previous levels' estimates; the first steps use as many as there are, the last step (to sigma = 0) is x = D."""
    del noise
    history: list[tuple[float, torch.Tensor]] = []  # (lambda, denoised), newest last
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = denoiser(x, sigma.expand(x.shape[0]))
        if sigma_next == 0:
            return denoised
        lam, h = -math.log(float(sigma)), math.log(float(sigma) / float(sigma_next))
        i0 = -math.expm1(-h)
        i1 = h - i0
        x = (sigma_next / sigma) * x + i0 * denoised
        if history:
            lam1, d1 = history[-1]
            h1 = lam - lam1
            slope = (denoised - d1) / h1  # first divided difference
            curvature = torch.zeros_like(slope)
            if len(history) > 1:
                lam2, d2 = history[-2]
                curvature = (slope - (d1 - d2) / (lam1 - lam2)) / (lam - lam2)  # second divided difference
            # the interpolant's derivatives at lambda: D' = slope + curvature h1, D'' / 2 = curvature
            x = x + i1 * (slope + curvature * h1) + (h * h - 2 * i1) * curvature
        history = [*history[-1:], (lam, denoised)]
    return x


def network_evaluations(sampler: str, steps: int) -> int:
    """Denoiser calls per image for ``steps`` noise levels of ``karras_sigmas`` (a guided call counts once):
    Heun's last step to sigma = 0 is a single Euler step."""
    return 2 * steps - 1 if sampler in ("heun", "churn") else steps


SAMPLERS: dict[str, Callable[..., torch.Tensor]] = {
    "heun": sample_heun, "churn": sample_heun, "ddim": sample_ddim, "ancestral": sample_ancestral,
    "dpmpp2m": sample_dpmpp_2m, "dpmpp3m": sample_dpmpp_3m,
}
