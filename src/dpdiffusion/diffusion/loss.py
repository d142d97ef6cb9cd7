"""The per-example denoising loss with noise multiplicity (DPDM): each example's loss is the mean over K
independent draws of noise level and noise, so that clipping bounds the whole example's contribution."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from dpdiffusion.diffusion.augment import Augment
from dpdiffusion.diffusion.noise_levels import LogNormal, NoiseLevels
from dpdiffusion.diffusion.preconditioning import Precond


@dataclass(frozen=True)
class DenoisingLoss:
    """Per-example denoising loss, shape [b], over K draws: sigma ~ ``levels`` (EDM's log-normal by default) and
    n ~ N(0, sigma^2), weighted by the preconditioning's lambda(sigma).

    Classifier-free guidance: each example keeps its label with probability 1 - label_dropout (one draw shared
    by its K draws, as in DPDM), else uses the "no label" index ``num_classes``. The draw is per example, so it
    stays inside the clipped per-example loss.

    Augmentation multiplicity: with an active ``augment``, each of the K draws denoises its own augmented copy of
    the example (made in ``draw``, kept in the example's row), so the K draws average over augmentations too.
    """

    precond: Precond
    multiplicity: int = 1
    levels: NoiseLevels = field(default_factory=LogNormal)
    num_classes: int = 0
    label_dropout: float = 0.1
    augment: Augment = field(default_factory=Augment)

    def draw(self, batch: dict[str, torch.Tensor], generator: torch.Generator) -> dict[str, torch.Tensor]:
        x = batch["x"]
        b, k = x.shape[0], self.multiplicity
        draws = {
            "sigma": self.levels.sample((b, k), generator),
            "noise": torch.randn(b, k, *x.shape[1:], generator=generator),
        }
        if self.num_classes:
            # one draw per example, shared by its K draws (as in DPDM)
            draws["keep_label"] = (torch.rand(b, 1, generator=generator) >= self.label_dropout).expand(b, k)
        if self.augment.active:
            draws["clean"] = self.augment(x.detach(), k, generator)
        return {name: t.to(x.device) for name, t in draws.items()}

    def __call__(self, model, batch: dict[str, torch.Tensor], draws: dict[str, torch.Tensor]) -> torch.Tensor:
        x = batch["x"]
        b, k = draws["sigma"].shape
        shape = x.shape[1:]
        clean = draws["clean"].to(x.dtype) if "clean" in draws else x.unsqueeze(1).expand(b, k, *shape)
        y = clean.reshape(b * k, *shape)
        sigma = draws["sigma"].reshape(b * k).to(x.dtype)
        noisy = y + sigma.view(-1, 1, 1, 1) * draws["noise"].reshape(b * k, *shape).to(x.dtype)
        labels = None
        if self.num_classes:
            given = batch["y"].unsqueeze(1).expand(b, k).reshape(b * k)
            labels = torch.where(draws["keep_label"].reshape(b * k), given, torch.full_like(given, self.num_classes))
        denoised = model(noisy, sigma, labels)
        weight = self.precond.loss_weight(sigma)
        per_draw = weight * (denoised - y).pow(2).reshape(b * k, -1).mean(dim=1)
        return per_draw.reshape(b, k).mean(dim=1)
