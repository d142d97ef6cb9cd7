"""The denoiser and its training noise levels from a run configuration (shared by training and sampling)."""

from __future__ import annotations

from dpdiffusion.diffusion.noise_levels import LogNormal, LogUniform, TanUniform, VPTimes
from dpdiffusion.diffusion.preconditioning import PARAMETERISATIONS, Precond
from dpdiffusion.nets.unet import UNet, UNetConfig
from dpdiffusion.runconfig import ConfigError, DiffusionConfig


def _check(diffusion: DiffusionConfig) -> None:
    if diffusion.parameterisation not in PARAMETERISATIONS:
        raise ConfigError(f"diffusion.parameterisation: unknown {diffusion.parameterisation!r} "
                          f"(choose one of {', '.join(PARAMETERISATIONS)})")


def build_denoiser(model: UNetConfig, diffusion: DiffusionConfig) -> Precond:
    """D(x, sigma, labels): the UNet behind the configured preconditioning."""
    _check(diffusion)
    return PARAMETERISATIONS[diffusion.parameterisation](UNet(model), sigma_data=diffusion.sigma_data)


def training_levels(diffusion: DiffusionConfig) -> LogNormal | VPTimes | LogUniform | TanUniform:
    """p(sigma) during training for the configured parameterisation."""
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
