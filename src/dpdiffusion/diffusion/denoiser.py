"""The denoiser and its training noise levels from a run configuration (shared by training and sampling)."""

from __future__ import annotations

import itertools

from torch import nn

from dpdiffusion.diffusion.noise_levels import DDPMTimes, LogNormal, LogUniform, Mixture, TanUniform, VPTimes
from dpdiffusion.diffusion.preconditioning import PARAMETERISATIONS, Precond
from dpdiffusion.nets.unet import UNet, UNetConfig
from dpdiffusion.runconfig import ConfigError, DiffusionConfig


def _check(diffusion: DiffusionConfig) -> None:
    if diffusion.parameterisation not in PARAMETERISATIONS:
        raise ConfigError(f"diffusion.parameterisation: unknown {diffusion.parameterisation!r} "
                          f"(choose one of {', '.join(PARAMETERISATIONS)})")


def build_denoiser(model: UNetConfig, diffusion: DiffusionConfig, network: dict | None = None) -> Precond:
    """D(x, sigma, labels): the UNet (``model.architecture``: ours, or diffusers' ``UNet2DModel``) behind the
    configured preconditioning, or -- with ``network``, the
    description a release of a fine-tuned diffusers model carries -- that model's architecture."""
    if network is not None:
        from dpdiffusion.nets.diffusers_unet import build_diffusers_denoiser

        return build_diffusers_denoiser(network["diffusers"])
    _check(diffusion)
    if model.architecture == "unet2d":
        from dpdiffusion.nets.diffusers_unet import DiffusersError, build_unet2d

        try:
            net: nn.Module = build_unet2d(model)
        except (DiffusersError, ValueError) as error:
            raise ConfigError(str(error)) from error
    else:
        net = UNet(model)
    return PARAMETERISATIONS[diffusion.parameterisation](net, sigma_data=diffusion.sigma_data)


def time_mixture(bands: tuple[int, ...], weights: tuple[float, ...]) -> Mixture:
    """Biased timestep sampling: uniform integer DDPM times in band i = [bands[i], bands[i+1]) w.p. weights[i]."""
    if len(bands) < 2 or len(weights) != len(bands) - 1:
        raise ConfigError(f"diffusion.time_bands needs one more entry than time_weights, got {bands} and {weights}")
    try:
        return Mixture(tuple(DDPMTimes(lo, hi) for lo, hi in itertools.pairwise(bands)), tuple(weights))
    except ValueError as error:
        raise ConfigError(f"diffusion.time_bands/time_weights: {error}") from error


def default_levels(diffusion: DiffusionConfig) -> LogNormal | VPTimes | LogUniform | TanUniform:
    """The parameterisation's own p(sigma) (pretraining always uses it)."""
    _check(diffusion)
    if diffusion.parameterisation == "edm":
        return LogNormal(diffusion.P_mean, diffusion.P_std)
    if diffusion.parameterisation == "vp":
        return VPTimes()
    if diffusion.parameterisation == "ve":
        return LogUniform()
    try:
        return TanUniform(diffusion.logsnr_min, diffusion.logsnr_max)
    except ValueError as error:
        raise ConfigError(f"diffusion: {error}") from error


def training_levels(diffusion: DiffusionConfig) -> LogNormal | VPTimes | LogUniform | TanUniform | Mixture:
    """p(sigma) of the (private) training stage: the configured time mixture, else the parameterisation's own."""
    levels = default_levels(diffusion)
    if diffusion.time_bands or diffusion.time_weights:
        return time_mixture(diffusion.time_bands, diffusion.time_weights)
    return levels
