"""DPDM (Dockhorn et al. 2023): DP-SGD from scratch on a UNet with EDM preconditioning and noise multiplicity."""

from __future__ import annotations

from dpdiffusion.diffusion.loss import EDMLoss
from dpdiffusion.diffusion.preconditioning import EDMPrecond
from dpdiffusion.nets.unet import UNet
from dpdiffusion.runconfig import RunConfig


def build(config: RunConfig) -> tuple[EDMPrecond, EDMLoss]:
    """The denoiser D(x, sigma, labels) to train, and its per-example loss with K noise draws."""
    model = EDMPrecond(UNet(config.model), sigma_data=config.diffusion.sigma_data)
    loss = EDMLoss(
        model,
        multiplicity=config.privacy.multiplicity,
        P_mean=config.diffusion.P_mean,
        P_std=config.diffusion.P_std,
        num_classes=config.model.num_classes,
        label_dropout=config.diffusion.label_dropout,
    )
    return model, loss
