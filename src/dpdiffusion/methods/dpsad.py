"""DP-SAD (Liu, Wang, Ge 2024): a student denoiser distilled from a teacher at one random noise level per
example, with a discriminator -- with a guarantee that holds end to end.

The paper trains the teacher on the private data without privacy and noises only the gradient with respect to
the student's *output*; one record then changes the teacher (so every example's target), and the Jacobian of
the output is evaluated at noised private images, so neither step is post-processing. Here every update that
reads private data is DP-SGD on the whole per-example loss:

- teacher ``dp``: trained first with DP-SGD on the private data (``RUN_DIR/teacher/``, a run of its own);
  ``public``: the start model of ``methods.start`` (public pretraining or a given checkpoint);
  ``none``: plain training on the private data -- the paper's setting, allowed only when asked for, and its
  report says in plain words that the release is not differentially private end to end;
- student: per-example loss w ||S(x_r) - T(x_r)||^2 + w ||S(x_r) - x||^2 + lambda * adversarial, clipped to C;
- discriminator: per-example loss of telling (teacher, student) from (student, teacher), clipped, noised.

Student and discriminator draw their own Poisson batches, so the three mechanisms are independent and their
composition (``privacy.composition``) is the accountant's; one noise scale is calibrated for the total target.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.func import functional_call

from dpdiffusion import distributed
from dpdiffusion.data.dataset import Dataset, with_declared_size
from dpdiffusion.data.dataset import planned_size as planned_size_of  # runconfig.planned_size: of a plan
from dpdiffusion.data.datasets import named_config
from dpdiffusion.diffusion.denoiser import build_denoiser
from dpdiffusion.diffusion.noise_levels import KarrasLevels
from dpdiffusion.diffusion.preconditioning import Precond
from dpdiffusion.dpsgd.mechanism import DPMechanism
from dpdiffusion.dpsgd.step import StepReport
from dpdiffusion.io import write_json_atomic
from dpdiffusion.nets.discriminator import PairDiscriminator
from dpdiffusion.nets.unet import UNetConfig
from dpdiffusion.privacy.composition import ComposedPlan
from dpdiffusion.privacy.plan import PrivacyPlan, PrivacyPlanError, steps_for
from dpdiffusion.privacy.report import DataDescription, PrivacyReport, Provenance
from dpdiffusion.release import released_start
from dpdiffusion.run_folder import RunFolder
from dpdiffusion.runconfig import ConfigError, PretrainConfig, RunConfig, plan_delta, planned_size
from dpdiffusion.stages import RunPlan, Stage, StageRecords
from dpdiffusion.training import Trainer
from dpdiffusion.warmup import stages as warmup

TEACHERS = ("dp", "public", "none")
DISTANCES = {"l2": lambda a, b: (a - b).pow(2).flatten(1).mean(1), "l1": lambda a, b: (a - b).abs().flatten(1).mean(1)}
NOT_END_TO_END = (
    "NOT differentially private end to end: the teacher was trained on the private data without privacy, so "
    "one record changes the teacher and with it every example's distillation target; the epsilon reported covers "
    "only the student and discriminator updates, as if the teacher were public (the paper's setting)"
)


# -- per-example losses --------------------------------------------------------------------------------------------
def draw_levels(batch: dict[str, torch.Tensor], generator: torch.Generator, levels: KarrasLevels, num_classes: int,
                label_dropout: float) -> dict[str, torch.Tensor]:
    """One level r, one noise and one label-dropout draw per example, with the draws' K axis of size 1
    (``[b, 1, ...]``, the per-example loss contract): the draws stay in the example's row."""
    x = batch["x"]
    b = x.shape[0]
    draws = {"sigma": levels.sample((b, 1), generator), "noise": torch.randn((b, 1, *x.shape[1:]), generator=generator)}
    if num_classes:
        draws["keep_label"] = torch.rand((b, 1), generator=generator) >= label_dropout
    return {name: t.to(x.device) for name, t in draws.items()}


def noised(batch, draws, num_classes: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """x_r = x + r * noise for the example's one draw (K = 1), its level r and its label (or "no label")."""
    multiplicity = {v.shape[1] for v in draws.values()}
    if multiplicity != {1}:
        raise ValueError(f"DP-SAD takes one draw per example (K = 1), got K = {sorted(multiplicity)}")
    x = batch["x"]
    sigma = draws["sigma"][:, 0].to(x.dtype)
    labels = None
    if num_classes:
        labels = torch.where(draws["keep_label"][:, 0], batch["y"], torch.full_like(batch["y"], num_classes))
    return x + sigma.view(-1, 1, 1, 1) * draws["noise"][:, 0].to(x.dtype), sigma, labels


@dataclasses.dataclass(frozen=True)
class StudentLoss:
    """w(r) ||S(x_r) - T(x_r)||^2 + w(r) ||S(x_r) - x||^2 + lambda * (non-saturating) adversarial loss."""

    student: Precond  # for the loss weight and c_noise only (no parameters are read through it)
    teacher: Precond
    discriminator: PairDiscriminator
    levels: KarrasLevels
    adversarial_weight: float = 1.0
    num_classes: int = 0
    label_dropout: float = 0.1
    distance: str = "l2"

    def draw(self, batch, generator):
        return draw_levels(batch, generator, self.levels, self.num_classes, self.label_dropout)

    def __call__(self, model, batch, draws) -> torch.Tensor:
        x = batch["x"]
        x_r, sigma, labels = noised(batch, draws, self.num_classes)
        with torch.no_grad():
            target = self.teacher(x_r, sigma, labels)
        out = model(x_r, sigma, labels)
        weight = self.student.loss_weight(sigma)
        if self.distance == "l1":  # the weight that makes an L2 error unit-scale, square-rooted for L1
            weight = weight.sqrt()
        distance = DISTANCES[self.distance]
        distill = weight * distance(out, target)
        recon = weight * distance(out, x)
        # the discriminator's weights are constants here: only the student learns from this term
        frozen = {n: p.detach() for n, p in self.discriminator.named_parameters()}
        c_noise = self.student.coefficients(sigma)[3]
        first = functional_call(self.discriminator, frozen, (target, out, c_noise, labels))
        second = functional_call(self.discriminator, frozen, (out, target, c_noise, labels))
        adversarial = F.softplus(first) + F.softplus(-second)  # fool it: make it place the teacher wrongly
        return distill + recon + self.adversarial_weight * adversarial


@dataclasses.dataclass(frozen=True)
class DiscriminatorLoss:
    """Per-example logistic loss of telling (teacher, student) from (student, teacher) at the example's x_r."""

    student: Precond
    teacher: Precond
    levels: KarrasLevels
    num_classes: int = 0
    label_dropout: float = 0.1

    def draw(self, batch, generator):
        return draw_levels(batch, generator, self.levels, self.num_classes, self.label_dropout)

    def __call__(self, model, batch, draws) -> torch.Tensor:
        x_r, sigma, labels = noised(batch, draws, self.num_classes)
        with torch.no_grad():
            target = self.teacher(x_r, sigma, labels)
            out = self.student(x_r, sigma, labels)
            c_noise = self.student.coefficients(sigma)[3]
        return F.softplus(-model(target, out, c_noise, labels)) + F.softplus(model(out, target, c_noise, labels))


# -- the privacy plan ----------------------------------------------------------------------------------------------
def resolve_dpsad_plan(config: RunConfig, dataset_size: int) -> ComposedPlan:
    """Teacher (dp mode), student and discriminator as one composed plan meeting ``privacy.target_epsilon``."""
    p, d = config.privacy, config.dpsad
    warmup.check(config)  # the DP warm-up is a start of method dpdm: refused here
    if d.teacher not in TEACHERS:
        raise ConfigError(f"dpsad.teacher: unknown {d.teacher!r} (choose one of {', '.join(TEACHERS)})")
    if config.finetune.init and d.teacher != "public":  # the plan composes no start's spend
        raise ConfigError(f"finetune.init with method dpsad is the start of a public teacher (dpsad.teacher: public); "
                          f"a {d.teacher} teacher starts from a random initialisation: unset finetune.init")
    if p.multiplicity != 1:
        raise ConfigError("privacy.multiplicity: DP-SAD draws one level per example; set it to 1")
    if d.distance not in DISTANCES:
        raise ConfigError(f"dpsad.distance: unknown {d.distance!r} (choose one of {', '.join(DISTANCES)})")
    if d.discriminator_steps < 1:
        raise ConfigError("dpsad.discriminator_steps must be >= 1")
    delta = plan_delta(p, dataset_size)
    size = planned_size(p, dataset_size)  # a declared public size, else the dataset's
    steps = steps_for(steps=p.steps, epochs=p.epochs, dataset_size=size, expected_batch_size=p.batch_size)

    def part(batch: int, steps: int, clip: float, multiplicity: int, ratio: float) -> PrivacyPlan:
        return PrivacyPlan(dataset_size=size, expected_batch_size=batch, steps=steps, max_grad_norm=clip,
                           noise_multiplier=ratio, delta=delta, multiplicity=multiplicity, accountant=p.accountant)

    parts = []
    if d.teacher == "dp":
        if d.teacher_steps < 1:
            raise ConfigError("dpsad.teacher_steps must be >= 1 for a dp teacher")
        parts.append(("teacher", part(d.teacher_batch_size, d.teacher_steps, p.max_grad_norm, d.teacher_multiplicity,
                                      d.teacher_noise_ratio)))
    parts.append(("student", part(p.batch_size, steps, p.max_grad_norm, 1, 1.0)))
    parts.append(("discriminator", part(p.batch_size, steps * d.discriminator_steps, d.discriminator_max_grad_norm, 1,
                                        d.discriminator_noise_ratio)))
    if p.noise_multiplier is not None:  # sigma given: the student's; the others keep their ratios
        plan = ComposedPlan(tuple((n, dataclasses.replace(q, noise_multiplier=q.noise_multiplier * p.noise_multiplier))
                                  for n, q in parts), target_epsilon=p.target_epsilon)
        if p.target_epsilon is not None and plan.planned_epsilon > p.target_epsilon:
            raise PrivacyPlanError(f"the composed plan spends epsilon {plan.planned_epsilon:.4g}, more than its target "
                                   f"{p.target_epsilon:g}")
        return plan
    if p.target_epsilon is None:
        raise ConfigError("privacy: give target_epsilon or noise_multiplier")
    return ComposedPlan.calibrated(target_epsilon=p.target_epsilon, parts=parts)


def plan(config: RunConfig, dataset_size: int, *, allow_non_private: bool = False) -> RunPlan:
    """Teacher, student and discriminator as the run's stages, their events composed in one plan."""
    composed = resolve_dpsad_plan(config, dataset_size)  # a non-private teacher is refused at training, not here
    stages = (teacher_stage(config, composed), Stage("student", "private", composed.plan("student")),
              Stage("discriminator", "private", composed.plan("discriminator")))
    return RunPlan(stages, composed, "student", composed.plan("student"))


def describe(config: RunConfig, dataset: Dataset, run_plan: RunPlan) -> dict[str, Any]:
    """What ``train --dry-run`` shows for DP-SAD."""
    from dpdiffusion.nets.unet import count_parameters

    summary: dict[str, Any] = {
        "config": config.to_dict(),
        "method": "dpsad",
        "teacher": {"mode": config.dpsad.teacher, "end_to_end_private": config.dpsad.teacher != "none"},
        "student": {"parameters": count_parameters(build_denoiser(student_model(config), config.diffusion))},
        "dataset": {"name": config.data.name, "split": "train", "size": len(dataset)},
        "privacy": {**run_plan.to_dict(), "total_epsilon": run_plan.composed.planned_epsilon},
    }
    if config.dpsad.teacher == "none":
        summary["teacher"]["warning"] = NOT_END_TO_END
    return summary


# -- the models ----------------------------------------------------------------------------------------------------
def student_model(config: RunConfig) -> UNetConfig:
    d = config.dpsad
    changes: dict[str, Any] = {k: v for k, v in (("model_channels", d.student_model_channels),
                                                 ("num_blocks", d.student_num_blocks)) if v is not None}
    return dataclasses.replace(config.model, **changes)


def teacher_stage(config: RunConfig, plan: ComposedPlan) -> Stage:
    """The teacher as a stage of the run: what it reads, its DP plan (dp mode) and the settings it depends on."""
    d = config.dpsad
    settings = {**flat_settings("model", config.model), **flat_settings("diffusion", config.diffusion),
                "training.seed": config.training.seed, "dpsad.teacher": d.teacher}
    if d.teacher == "public":
        return Stage("teacher", "public" if config.pretrain.data is not None else "nothing", settings=settings)
    settings.update({f"dpsad.{k}": getattr(d, k) for k in ("teacher_lr", "teacher_ema_decay", "teacher_batch_size",
                                                          "teacher_steps", "teacher_multiplicity")})
    if d.teacher == "dp":
        return Stage("teacher", "private", plan.plan("teacher"), settings=settings)
    return Stage("teacher", "private-without-privacy", settings=settings)


def build_teacher(config: RunConfig, dataset: Dataset, plan: ComposedPlan, run_dir: Path, *, resume: bool,
                  allow_non_private_teacher: bool, progress: bool) -> tuple[Precond, dict[str, Any]]:
    """The frozen teacher for the configured mode, and its description for the privacy report. A finished
    teacher is reused on resume only if its recorded plan, settings and weights match (``stages``)."""
    from dpdiffusion.diffusion.generate import load_model_file
    from dpdiffusion.methods import dpdm
    from dpdiffusion.methods.pretrain import pretrain
    from dpdiffusion.methods.start import describe_data, start_model

    mode, d = config.dpsad.teacher, config.dpsad
    run, records, stage = RunFolder(run_dir), StageRecords(RunFolder(run_dir)), teacher_stage(config, plan)
    if mode == "public":
        if config.pretrain.data is None and not config.finetune.init:
            raise ConfigError("dpsad.teacher: public needs pretrain.data (public data) or finetune.init (a checkpoint)")
        teacher, _, public, begin = start_model(config, run_dir, delta=plan.delta, resume=resume, progress=progress,
                                                private=dataset)  # type: ignore[arg-type]
        if begin.dp_parts or begin.private_without_privacy:
            raise ConfigError("dpsad.teacher: public needs a public start; finetune.init was trained on private data")
        described: dict[str, Any] = {"mode": "public", "public": public.to_dict() if public else None,
                                     "start": released_start(begin.to_dict())}
    elif mode == "dp":
        teacher_plan = plan.plan("teacher")
        teacher_config = dataclasses.replace(
            config, method="dpdm", privacy=dataclasses.replace(
                config.privacy, batch_size=d.teacher_batch_size, steps=d.teacher_steps, epochs=None,
                multiplicity=d.teacher_multiplicity, noise_multiplier=teacher_plan.noise_multiplier, target_epsilon=None),
            training=dataclasses.replace(config.training, lr=d.teacher_lr, ema_decay=d.teacher_ema_decay))
        weights = RunFolder(run.teacher).model_weights
        if weights.is_file():
            records.check_reusable(stage, weights)
        else:
            dpdm.train(teacher_config, dataset, teacher_plan, run.teacher, resume=resume and run.teacher.exists(),
                       progress=progress)
            if distributed.current().is_main:
                records.finished(stage, weights)
        teacher = load_model_file(weights)[0]
        described = {"mode": "dp", "run": run.teacher.name, "steps": teacher_plan.steps}  # RUN_DIR/teacher
    else:
        if not allow_non_private_teacher:
            raise ConfigError("dpsad.teacher: none trains the teacher on the private data without privacy, so the "
                              "release is not differentially private; pass --allow-non-private-teacher to run it anyway")
        weights = run.teacher / "model.safetensors"
        if weights.is_file():
            records.check_reusable(stage, weights)
        plain = dataclasses.replace(config, pretrain=PretrainConfig(
            data=config.data, steps=d.teacher_steps, batch_size=d.teacher_batch_size, lr=d.teacher_lr,
            ema_decay=d.teacher_ema_decay))
        made = distributed.made_once(weights, lambda: pretrain(
            build_denoiser(config.model, config.diffusion), plain, dataset, weights,
            trained_on={"private_without_privacy": describe_data(config.data, len(dataset), dataset).to_dict()},
            progress=progress, desc="teacher (no privacy)", stage=stage), distributed.current())
        if not made and distributed.current().is_main:
            records.finished(stage, weights)
        teacher = load_model_file(weights)[0]
        described = {"mode": "none", "path": f"{run.teacher.name}/{weights.name}", "warning": NOT_END_TO_END}
    return teacher.eval().requires_grad_(False), described


def flat_settings(section: str, settings: Any) -> dict[str, Any]:
    return {f"{section}.{k}": v for k, v in dataclasses.asdict(settings).items()}


# -- training ------------------------------------------------------------------------------------------------------
class DPSADTrainer(Trainer):
    """Two DP mechanisms on the private data -- the student's (the base trainer's) and the discriminator's, each
    with its own Poisson batches, noise, optimizer and ledger; checkpoints hold both; the report composes every
    DP stage (a DP teacher included)."""

    def __init__(self, student: Precond, teacher: Precond, config: RunConfig, dataset: Dataset, plan: ComposedPlan, *,
                 run_dir: Path, teacher_info: dict[str, Any], stages: list[Stage], provenance: Provenance,
                 secret_seed: int | None = None, progress: bool = True):
        d = config.dpsad
        levels = KarrasLevels(d.timesteps)
        classes, dropout = config.model.num_classes, config.diffusion.label_dropout
        self.discriminator = PairDiscriminator(d.discriminator, in_channels=config.model.in_channels, num_classes=classes)
        self.teacher_info = teacher_info
        loss = StudentLoss(student, teacher, self.discriminator, levels, d.adversarial_weight, classes, dropout,
                           d.distance)
        release_config = dataclasses.replace(config, model=student_model(config))
        super().__init__(student, loss, dataset, plan=plan.plan("student"), run_dir=run_dir,
                         performance=config.performance, training=config.training, secret_seed=secret_seed,
                         progress=progress, config=release_config.to_dict(), provenance=provenance, composed=plan,
                         stages=stages, method="DP-SAD", main="student",
                         size_declared=config.privacy.public_dataset_size is not None)
        teacher.to(self.device)
        self.discriminator.to(self.device)
        disc_optimizer = torch.optim.Adam(self.discriminator.parameters(), lr=d.discriminator_lr, betas=(0.5, 0.999))
        disc_loss = DiscriminatorLoss(student, teacher, levels, classes, dropout)
        self.mechanisms["discriminator"] = DPMechanism(
            self.discriminator, disc_loss, dataset, plan=plan.plan("discriminator"), optimizer=disc_optimizer,
            draw_seed=config.training.seed + 1, secret_seed=None if secret_seed is None else secret_seed + 1,
            performance=config.performance, world=self.world, device=self.device, key="disc_")
        self.discriminator_steps = d.discriminator_steps

    def step(self) -> StepReport:
        for _ in range(self.discriminator_steps):
            self.mechanisms["discriminator"].step()
        return super().step()

    def trained_modules(self) -> dict[str, torch.nn.Module]:
        return {"model": self.model, "disc": self.discriminator}

    def not_private(self) -> str | None:
        return NOT_END_TO_END if self.teacher_info["mode"] == "none" else super().not_private()

    def privacy_report(self) -> PrivacyReport:
        return dataclasses.replace(super().privacy_report(), teacher=self.teacher_info)


def train(config: RunConfig, dataset: Dataset, plan: ComposedPlan | RunPlan, run_dir: str | Path, *,
          resume: bool = False, allow_non_private: bool = False, progress: bool = True,
          secret_seed: int | None = None) -> DPSADTrainer:
    """Teacher (per its mode), then the student and the discriminator to the planned steps; the release is the
    student's EMA weights with the composed privacy report."""
    from dpdiffusion.methods.start import describe_data

    run_dir = Path(run_dir)
    if config.performance.threads:
        torch.set_num_threads(config.performance.threads)
    run = RunFolder(run_dir)
    if not resume and (run.owner.exists() or run.release.exists() or run.teacher.exists()):
        raise FileExistsError(f"{run_dir} already holds a run; resume it with --resume or pick another folder")
    if isinstance(plan, RunPlan):
        plan = plan.composed
    torch.manual_seed(config.training.seed)
    config = named_config(config, dataset)  # arrays given through the Python API: never recorded as data.name's
    dataset = with_declared_size(dataset, config.privacy.public_dataset_size)  # Poisson sampling over every example
    teacher, teacher_info = build_teacher(config, dataset, plan, run_dir, resume=resume,
                                          allow_non_private_teacher=allow_non_private, progress=progress)
    student = build_denoiser(student_model(config), config.diffusion)
    public = teacher_info.get("public")
    declared = config.privacy.public_dataset_size is not None
    provenance = Provenance(private=describe_data(config.data, planned_size_of(dataset), dataset).released(
                                size_declared=declared),
                            public=DataDescription.from_dict(public) if public else None,
                            start={"kind": "random initialisation"})
    stages = [teacher_stage(config, plan), Stage("student", "private", plan.plan("student")),
              Stage("discriminator", "private", plan.plan("discriminator"))]
    trainer = DPSADTrainer(student, teacher, config, dataset, plan, run_dir=run_dir, teacher_info=teacher_info,
                           stages=stages, provenance=provenance, secret_seed=secret_seed, progress=progress)
    trainer.fit(resume=resume)
    if trainer.world.is_main:
        write_json_atomic(run.config, config.to_dict())
    return trainer
