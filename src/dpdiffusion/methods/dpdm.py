"""DPDM (Dockhorn et al. 2023): DP-SGD from scratch on a UNet with EDM preconditioning and noise multiplicity --
and DP fine-tuning (Ghalebikesabi et al. 2023) when the run starts from public pretraining or a checkpoint.

Stages: [public pretraining | a given start | a DP start on this run's data (its events, spent before)], then
``dpsgd`` on the private data. One plan composes every DP stage; sigma of ``dpsgd`` is calibrated for the total.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch

from dpdiffusion.data.dataset import Dataset, planned_size, with_declared_size
from dpdiffusion.data.datasets import named_config
from dpdiffusion.diffusion.augment import Augment
from dpdiffusion.diffusion.denoiser import build_denoiser, training_levels
from dpdiffusion.diffusion.loss import DenoisingLoss
from dpdiffusion.diffusion.preconditioning import Precond
from dpdiffusion.io import write_json_atomic
from dpdiffusion.methods.pretrain import public_stage
from dpdiffusion.methods.start import (
    NOT_PRIVATE_START,
    Start,
    apply_freezing,
    check_one_start,
    describe_data,
    load_init,
    start_model,
)
from dpdiffusion.nets.unet import count_parameters
from dpdiffusion.privacy.composition import ComposedPlan
from dpdiffusion.privacy.plan import PrivacyPlan, PrivacyPlanError
from dpdiffusion.privacy.report import Provenance
from dpdiffusion.release import released_start
from dpdiffusion.run_folder import RunFolder
from dpdiffusion.runconfig import ConfigError, RunConfig, resolve_plan
from dpdiffusion.stages import RunPlan, Stage
from dpdiffusion.training import MAIN, Trainer
from dpdiffusion.warmup import stages as warmup


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


def plan(config: RunConfig, dataset_size: int, *, allow_non_private: bool = False) -> RunPlan:
    """The run's stages and composed plan. A DP start trained on this run's private data is composed in (its
    sigma fixed, this run's calibrated for the total target); a non-private one is marked (training refuses it unless allowed)."""
    check_one_start(config)
    warmup.check(config)
    draft = resolve_plan(config.privacy, dataset_size, calibrate=False)  # calibrated below, alone or composed
    if warmup.enabled(config):
        return warmup_plan(config, dataset_size, draft)
    stages: list[Stage] = []
    start = load_init(config, draft.delta)[2] if config.finetune.init else None
    if config.pretrain.data is not None:
        stages.append(public_stage(config))
    elif start is not None and start.private_without_privacy:
        stages.append(Stage("start", "private-without-privacy"))
    elif start is not None and not start.dp_parts:
        stages.append(Stage("start", "nothing"))
    if start is None or not start.dp_parts:
        return RunPlan.single(MAIN, resolve_plan(config.privacy, dataset_size), tuple(stages))
    stages += [Stage(name, "private", part, spent_before=True) for name, part in start.dp_parts]
    fixed = tuple(name for name, _ in start.dp_parts)
    draft = dataclasses.replace(draft, target_epsilon=None)
    target = config.privacy.target_epsilon
    if config.privacy.noise_multiplier is not None:
        composed = ComposedPlan((*start.dp_parts, (MAIN, draft)), target_epsilon=target, fixed=fixed)
        if target is not None and composed.planned_epsilon > target:
            raise PrivacyPlanError(f"with the DP start's spend, the run spends epsilon {composed.planned_epsilon:.4g}, "
                                   f"more than its target {target:g}")
    else:
        assert target is not None  # resolve_plan checked
        composed = ComposedPlan.calibrated(target_epsilon=target, fixed=fixed, parts=(
            *start.dp_parts, (MAIN, dataclasses.replace(draft, noise_multiplier=1.0))))
    stages.append(Stage(MAIN, "private", composed.plan(MAIN)))
    return RunPlan(tuple(stages), composed, MAIN, composed.plan(MAIN))


def warmup_plan(config: RunConfig, dataset_size: int, draft: PrivacyPlan) -> RunPlan:
    """DP central images, warm-up training on them, then ``dpsgd``: one plan, sigma of both DP stages calibrated
    together (the central images' at ``warmup.central_noise_ratio`` times DP-SGD's) to meet the target."""
    central, frequency = warmup.central_draft(config, dataset_size), warmup.frequency_draft(config, dataset_size)
    releases = ((warmup.CENTRAL, central), *(((warmup.FREQUENCY, frequency),) if frequency is not None else ()))
    target = config.privacy.target_epsilon
    main = dataclasses.replace(draft, target_epsilon=None)
    if config.privacy.noise_multiplier is not None:
        scaled = tuple((name, dataclasses.replace(p, noise_multiplier=p.noise_multiplier * main.noise_multiplier))
                       for name, p in releases)
        composed = ComposedPlan((*scaled, (MAIN, main)), target_epsilon=target)
        if target is not None and composed.planned_epsilon > target:
            raise PrivacyPlanError(f"with the warm-up releases, the run spends epsilon {composed.planned_epsilon:.4g}, "
                                   f"more than its target {target:g}")
    else:
        assert target is not None  # resolve_plan checked
        composed = ComposedPlan.calibrated(target_epsilon=target, parts=(
            *releases, (MAIN, dataclasses.replace(main, noise_multiplier=1.0))))
    frequency_plan = composed.plan(warmup.FREQUENCY) if frequency is not None else None
    stages = (*warmup.stages(config, composed.plan(warmup.CENTRAL), frequency_plan),
              Stage(MAIN, "private", composed.plan(MAIN)))
    return RunPlan(stages, composed, MAIN, composed.plan(MAIN))


def describe(config: RunConfig, dataset: Dataset, run_plan: RunPlan) -> dict[str, Any]:
    """What ``train --dry-run`` shows: data, start, trainable parameters, stages and the composed plan."""
    from dpdiffusion.methods.pretrain import load_public

    size = planned_size(dataset)  # owner-side output: the private dataset's own size
    model = build_denoiser(config.model, config.diffusion)
    start: dict[str, Any]
    public = None
    if config.finetune.init:
        model, _, begin = load_init(config, run_plan.main_plan.delta)
        start = begin.to_dict()
    elif config.pretrain.data is not None:
        public = {**describe_data(config.pretrain.data, len(load_public(config, dataset))).to_dict(),  # type: ignore[arg-type]
                  "steps": config.pretrain.steps, "batch_size": config.pretrain.batch_size}
        start = {"kind": "pretrained on the public data in this run"}
    elif warmup.enabled(config):
        start = {"kind": "warm-up on this run's DP central images", "warmup_steps": config.warmup.steps}
    else:
        start = {"kind": "random initialisation"}
    training_levels(config.diffusion)  # checks the noise-level settings
    return {"config": config.to_dict(), "method": config.method,
            "model": {"parameters": count_parameters(model), "parameterisation": config.diffusion.parameterisation},
            "dataset": {"name": config.data.name, "split": "train", "size": size},
            "stages": {"public": public, "private": describe_data(config.data, size, dataset).to_dict(), "start": start,
                       "trainable_parameters": apply_freezing(model, config)},
            "privacy": run_plan.to_dict()}


def train(config: RunConfig, dataset: Dataset, run_plan: RunPlan | PrivacyPlan, run_dir: str | Path, *,
          resume: bool = False, progress: bool = True, allow_non_private: bool = False,
          secret_seed: int | None = None) -> Trainer:
    """Train (or resume) a run in ``run_dir`` to its planned steps: from a random initialisation (DPDM), or from
    public pretraining or a checkpoint (fine-tuning). The run's config.json is written after training starts
    cleanly (a folder that already holds another run is refused first)."""
    if isinstance(run_plan, PrivacyPlan):  # one DP-SGD stage with this plan (e.g. DP-SAD's teacher)
        run_plan = RunPlan.single(MAIN, run_plan)
    config = named_config(config, dataset)  # arrays given through the Python API: never recorded as data.name's
    if config.performance.threads:
        torch.set_num_threads(config.performance.threads)
    torch.manual_seed(config.training.seed)
    declared = config.privacy.public_dataset_size
    if resume:
        warmup.check_drawn(run_dir, run_plan.stages)  # no earlier release left out of the plan
    if warmup.enabled(config):
        warmed, described = warmup.warm_model(config, with_declared_size(dataset, declared), run_plan.stages,
                                              run_dir, resume=resume, progress=progress, secret_seed=secret_seed)
        start, network, public = warmed, None, None
        begin = Start(kind=described.pop("kind"), path=described.pop("path"), sha256=described.pop("sha256"),
                      steps=described.pop("steps"), note="; ".join(f"{k.removesuffix('_sha256').replace('_', ' ')} "
                                                                   f"sha256 {v}" for k, v in described.items()))
    else:
        start, network, public, begin = start_model(config, run_dir, delta=run_plan.main_plan.delta, resume=resume,
                                                    progress=progress, private=dataset)  # type: ignore[arg-type]
    if begin.private_without_privacy and not allow_non_private:
        raise ConfigError("finetune.init was trained on private data without privacy, so a release from it is not "
                          "differentially private; pass --allow-non-private-start to run it anyway (its report says "
                          "NOT private)")
    apply_freezing(start, config)
    model, loss = build(config, start)
    private = describe_data(config.data, planned_size(dataset), dataset).released(size_declared=declared is not None)
    dataset = with_declared_size(dataset, declared)  # the plan is for N^; Poisson sampling runs over every example
    drawn = getattr(dataset, "canaries_drawn", 0)  # how many canaries were drawn is public; which went in is not
    canaries = {"drawn": drawn, "note": "random binary images added with probability 1/2 each (audit)"} if drawn else None
    provenance = Provenance(private=private, public=public.released(size_declared=False) if public else None,
                            start=released_start(begin.to_dict()),
                            audit_canaries=canaries)
    trainer = Trainer(model, loss, dataset, plan=run_plan.main_plan, run_dir=run_dir, performance=config.performance,
                      training=config.training, secret_seed=secret_seed, progress=progress, config=config.to_dict(),
                      provenance=provenance, network=network, composed=run_plan.composed, stages=run_plan.stages,
                      method={"random initialisation": "DPDM"}.get(begin.kind, "DP warm-up + DPDM" if warmup.enabled(
                          config) else "DP fine-tuning"),
                      not_private=NOT_PRIVATE_START if begin.private_without_privacy else None,
                      size_declared=declared is not None)
    trainer.fit(resume=resume)
    if trainer.world.is_main:
        write_json_atomic(RunFolder(run_dir).config, config.to_dict())
    return trainer


__all__ = ["Start", "build", "describe", "plan", "train"]
