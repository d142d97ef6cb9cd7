"""DPDM (Dockhorn et al. 2023): DP-SGD from scratch on a UNet with EDM preconditioning and noise multiplicity."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from dpdiffusion.diffusion.augment import Augment
from dpdiffusion.diffusion.denoiser import build_denoiser, training_levels
from dpdiffusion.diffusion.loss import DenoisingLoss
from dpdiffusion.diffusion.preconditioning import Precond
from dpdiffusion.io import write_json_atomic
from dpdiffusion.methods.finetune import apply_freezing, describe_data, start_model
from dpdiffusion.privacy.plan import PrivacyPlan
from dpdiffusion.runconfig import RunConfig
from dpdiffusion.training import Dataset, Trainer, TrainSettings


def build(config: RunConfig, model: Precond | None = None) -> tuple[Precond, DenoisingLoss]:
    """The denoiser D(x, sigma, labels) to train (new, or ``model``), and its per-example loss with K draws of
    noise level, noise and -- with augmentation multiplicity -- augmentation."""
    model = model if model is not None else build_denoiser(config.model, config.diffusion)
    loss = DenoisingLoss(
        model,
        multiplicity=config.privacy.multiplicity,
        levels=training_levels(config.diffusion),
        num_classes=config.model.num_classes,
        label_dropout=config.diffusion.label_dropout,
        augment=Augment(flip=config.diffusion.augment_flip, crop_padding=config.diffusion.augment_translate),
    )
    return model, loss


def train(config: RunConfig, dataset: Dataset, plan: PrivacyPlan, run_dir: str | Path, *, resume: bool = False,
          progress: bool = True) -> Trainer:
    """Train (or resume) a run in ``run_dir`` to its planned steps: from a random initialisation (DPDM), or from
    public pretraining or a checkpoint (``methods.finetune``). The run's config.json is written after training
    starts cleanly (a folder that already holds another run is refused first)."""
    if config.performance.threads:
        torch.set_num_threads(config.performance.threads)
    torch.manual_seed(config.training.seed)
    start, network, provenance = start_model(config, run_dir, resume=resume, progress=progress)
    apply_freezing(start, config)
    model, loss = build(config, start)
    settings = TrainSettings(**dataclasses.asdict(config.training), progress=progress)
    planned = getattr(dataset, "planned_size", len(dataset))
    provenance = {"private": describe_data(config.data, planned), **provenance}
    drawn = getattr(dataset, "canaries_drawn", 0)
    if drawn:  # how many canaries were drawn is public; which (and how many) went in is not
        provenance["audit_canaries"] = {"drawn": drawn,
                                        "note": "random binary images added with probability 1/2 each (audit)"}
    trainer = Trainer(model, loss, dataset, plan=plan, run_dir=run_dir, performance=config.performance,
                      settings=settings, config=config.to_dict(), provenance=provenance, network=network)
    trainer.fit(resume=resume)
    if trainer.world.is_main:
        write_json_atomic(Path(run_dir) / "config.json", config.to_dict())
    return trainer
