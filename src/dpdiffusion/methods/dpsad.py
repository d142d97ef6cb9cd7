"""DP-SAD (Liu, Wang, Ge 2024): a student denoiser distilled from a teacher at one random noise level per
example, with a discriminator -- with a guarantee that holds end to end.

The paper trains the teacher on the private data without privacy and noises only the gradient with respect to
the student's *output*; one record then changes the teacher (so every example's target), and the Jacobian of
the output is evaluated at noised private images, so neither step is post-processing. Here every update that
reads private data is DP-SGD on the whole per-example loss:

- teacher ``dp``: trained first with DP-SGD on the private data (``RUN_DIR/teacher/``, a run of its own);
  ``public``: the start model of ``methods.finetune`` (public pretraining or a given checkpoint);
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
from dpdiffusion.diffusion.denoiser import build_denoiser
from dpdiffusion.diffusion.noise_levels import KarrasLevels
from dpdiffusion.diffusion.preconditioning import Precond
from dpdiffusion.dpsgd.batch_selection import poisson_sample
from dpdiffusion.dpsgd.step import DPSGD, StepReport
from dpdiffusion.io import json_safe, write_json_atomic
from dpdiffusion.nets.discriminator import PairDiscriminator
from dpdiffusion.nets.unet import UNetConfig
from dpdiffusion.privacy.composition import ComposedPlan
from dpdiffusion.privacy.ledger import PrivacyLedger, written_with
from dpdiffusion.privacy.plan import PrivacyPlan, PrivacyPlanError, steps_for
from dpdiffusion.runconfig import ConfigError, PretrainConfig, RunConfig
from dpdiffusion.training import Dataset, Trainer, TrainSettings, secret_seeds

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
    """One level r, one noise and one label-dropout draw per example: the draws stay in the example's row."""
    x = batch["x"]
    b = x.shape[0]
    draws = {"sigma": levels.sample((b,), generator), "noise": torch.randn(x.shape, generator=generator)}
    if num_classes:
        draws["keep_label"] = torch.rand(b, generator=generator) >= label_dropout
    return {name: t.to(x.device) for name, t in draws.items()}


def noised(batch, draws, num_classes: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    x = batch["x"]
    sigma = draws["sigma"].to(x.dtype)
    labels = None
    if num_classes:
        labels = torch.where(draws["keep_label"], batch["y"], torch.full_like(batch["y"], num_classes))
    return x + sigma.view(-1, 1, 1, 1) * draws["noise"].to(x.dtype), sigma, labels


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
    if d.teacher not in TEACHERS:
        raise ConfigError(f"dpsad.teacher: unknown {d.teacher!r} (choose one of {', '.join(TEACHERS)})")
    if p.multiplicity != 1:
        raise ConfigError("privacy.multiplicity: DP-SAD draws one level per example; set it to 1")
    if d.distance not in DISTANCES:
        raise ConfigError(f"dpsad.distance: unknown {d.distance!r} (choose one of {', '.join(DISTANCES)})")
    if d.discriminator_steps < 1:
        raise ConfigError("dpsad.discriminator_steps must be >= 1")
    delta = p.delta if p.delta is not None else 1 / (10 * dataset_size)
    steps = steps_for(steps=p.steps, epochs=p.epochs, dataset_size=dataset_size, expected_batch_size=p.batch_size)

    def part(batch: int, steps: int, clip: float, multiplicity: int, ratio: float) -> PrivacyPlan:
        return PrivacyPlan(dataset_size=dataset_size, expected_batch_size=batch, steps=steps, max_grad_norm=clip,
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


# -- the models ----------------------------------------------------------------------------------------------------
def student_model(config: RunConfig) -> UNetConfig:
    d = config.dpsad
    changes: dict[str, Any] = {k: v for k, v in (("model_channels", d.student_model_channels),
                                                 ("num_blocks", d.student_num_blocks)) if v is not None}
    return dataclasses.replace(config.model, **changes)


def build_teacher(config: RunConfig, dataset: Dataset, plan: ComposedPlan, run_dir: Path, *, resume: bool,
                  allow_non_private_teacher: bool, progress: bool) -> tuple[Precond, dict[str, Any]]:
    """The frozen teacher for the configured mode, and its description for the privacy report."""
    from dpdiffusion.diffusion.generate import load_model_file
    from dpdiffusion.methods import dpdm, finetune

    mode, d = config.dpsad.teacher, config.dpsad
    folder = run_dir / "teacher"
    if mode == "public":
        if config.pretrain.data is None and not config.finetune.init:
            raise ConfigError("dpsad.teacher: public needs pretrain.data (public data) or finetune.init (a checkpoint)")
        teacher, _, provenance = finetune.start_model(config, run_dir, resume=resume, progress=progress)
        described = {"mode": "public", **provenance}
    elif mode == "dp":
        teacher_plan = plan.plan("teacher")
        teacher_config = dataclasses.replace(
            config, method="dpdm", privacy=dataclasses.replace(
                config.privacy, batch_size=d.teacher_batch_size, steps=d.teacher_steps, epochs=None,
                multiplicity=d.teacher_multiplicity, noise_multiplier=teacher_plan.noise_multiplier, target_epsilon=None),
            training=dataclasses.replace(config.training, lr=d.teacher_lr, ema_decay=d.teacher_ema_decay))
        weights = folder / "release" / "model.safetensors"
        if not weights.is_file():
            dpdm.train(teacher_config, dataset, teacher_plan, folder, resume=resume and folder.exists(),
                       progress=progress)
        teacher = load_model_file(weights)[0]
        described = {"mode": "dp", "run": str(folder), "steps": teacher_plan.steps}
    else:
        if not allow_non_private_teacher:
            raise ConfigError("dpsad.teacher: none trains the teacher on the private data without privacy, so the "
                              "release is not differentially private; pass --allow-non-private-teacher to run it anyway")
        weights = folder / "model.safetensors"
        plain = dataclasses.replace(config, pretrain=PretrainConfig(
            data=config.data, steps=d.teacher_steps, batch_size=d.teacher_batch_size, lr=d.teacher_lr,
            ema_decay=d.teacher_ema_decay))
        distributed.made_once(weights, lambda: finetune.pretrain(
            build_denoiser(config.model, config.diffusion), plain, dataset, weights,
            trained_on={"private_without_privacy": finetune.describe_data(config.data, len(dataset))},
            progress=progress, desc="teacher (no privacy)"), distributed.current())
        teacher = load_model_file(weights)[0]
        described = {"mode": "none", "path": str(weights), "warning": NOT_END_TO_END}
    return teacher.eval().requires_grad_(False), described


# -- training ------------------------------------------------------------------------------------------------------
class DPSADTrainer(Trainer):
    """The student's DP-SGD (the base trainer) plus the discriminator's, each with its own Poisson batches,
    noise, optimizer and ledger; checkpoints hold both; the report composes every mechanism."""

    def __init__(self, student: Precond, teacher: Precond, config: RunConfig, dataset: Dataset, plan: ComposedPlan, *,
                 run_dir: Path, teacher_info: dict[str, Any], settings: TrainSettings, provenance: dict[str, Any]):
        d = config.dpsad
        levels = KarrasLevels(d.timesteps)
        classes, dropout = config.model.num_classes, config.diffusion.label_dropout
        self.discriminator = PairDiscriminator(d.discriminator, in_channels=config.model.in_channels, num_classes=classes)
        self.composed, self.teacher_info = plan, teacher_info
        self._epsilon_cache: dict[tuple, float] = {}
        loss = StudentLoss(student, teacher, self.discriminator, levels, d.adversarial_weight, classes, dropout,
                           d.distance)
        release_config = dataclasses.replace(config, model=student_model(config))
        super().__init__(student, loss, dataset, plan=plan.plan("student"), run_dir=run_dir,
                         performance=config.performance, settings=settings, config=release_config.to_dict(),
                         provenance=provenance)
        teacher.to(self.device)
        self.discriminator.to(self.device)
        seed = None if settings.secret_seed is None else settings.secret_seed + 1
        disc_sampling, disc_noise = distributed.broadcast_ints(list(secret_seeds(seed)), self.world)
        self.disc_sampling_generator = torch.Generator().manual_seed(disc_sampling)
        self.disc_noise_generator = torch.Generator().manual_seed(disc_noise + self.world.rank)
        self.disc_optimizer = torch.optim.Adam(self.discriminator.parameters(), lr=d.discriminator_lr, betas=(0.5, 0.999))
        self.disc_ledger = PrivacyLedger(plan.plan("discriminator"))
        disc_loss = DiscriminatorLoss(student, teacher, levels, classes, dropout)
        self.disc_dp = DPSGD(self.discriminator, disc_loss, self.disc_optimizer, ledger=self.disc_ledger,
                             performance=config.performance, draw_seed=settings.seed + 1,
                             noise_generator=self.disc_noise_generator, world=self.world)
        self.discriminator_steps = d.discriminator_steps

    def step(self) -> StepReport:
        for _ in range(self.discriminator_steps):
            indices = poisson_sample(len(self.dataset), self.disc_ledger.plan.sample_rate,
                                     generator=self.disc_sampling_generator)
            batch, first = self.share(indices)
            self.disc_dp.step(batch, first_block=first)
        return super().step()

    def trained_modules(self) -> list[torch.nn.Module]:
        return [self.model, self.discriminator]

    def generators(self) -> dict[str, torch.Generator]:
        return {**super().generators(), "disc_sampling": self.disc_sampling_generator,
                "disc_noise": self.disc_noise_generator}

    def extra_state(self, tensors: dict[str, torch.Tensor]) -> dict[str, Any]:
        from dpdiffusion.checkpoint import flatten_state

        for name, t in self.discriminator.state_dict().items():
            tensors[f"disc.{name}"] = t
        return {"disc_ledger": self.disc_ledger.state_dict(),
                "disc_optimizer": flatten_state("disc_optimizer", self.disc_optimizer.state_dict(), tensors)}

    def load_extra(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
        from dpdiffusion.checkpoint import unflatten_state

        self.disc_ledger.load_state_dict(meta["disc_ledger"])
        self.discriminator.load_state_dict({k[5:]: v for k, v in tensors.items() if k.startswith("disc.")})
        self.disc_optimizer.load_state_dict(unflatten_state(meta["disc_optimizer"], tensors))

    def steps_taken(self) -> dict[str, int]:
        steps = {"student": self.ledger.steps_taken, "discriminator": self.disc_ledger.steps_taken}
        if "teacher" in dict(self.composed.parts):
            steps["teacher"] = self.composed.plan("teacher").steps  # trained to the end before the student
        return steps

    def epsilon(self, steps: dict[str, int]) -> float:
        key = tuple(sorted(steps.items()))
        if key not in self._epsilon_cache:
            self._epsilon_cache[key] = self.composed.epsilon(steps)
        return self._epsilon_cache[key]

    def epsilon_spent(self) -> float:
        return self.epsilon(self.steps_taken())

    def privacy_report(self) -> dict[str, Any]:
        end_to_end = self.teacher_info["mode"] != "none"
        planned = {name: plan.steps for name, plan in self.composed.parts}
        report = {
            "private": end_to_end,
            "method": "DP-SAD",
            "teacher": self.teacher_info,
            "plan": self.composed.to_dict(),
            "planned_epsilon": self.epsilon(planned),
            "spent": {"epsilon": self.epsilon_spent(), "delta": self.composed.delta, "steps": self.steps_taken()},
            "mechanism": "Poisson-subsampled Gaussian (DP-SGD) per part -- " + ", ".join(planned) +
                         " -- composed by the accountant; add/remove-one adjacency",
            "accountant": self.composed.accountant,
            **written_with(),
        }
        if not end_to_end:
            report["warning"] = NOT_END_TO_END
        return json_safe({**report, **({"data": self.provenance} if self.provenance else {})})


def train(config: RunConfig, dataset: Dataset, plan: ComposedPlan, run_dir: str | Path, *, resume: bool = False,
          allow_non_private_teacher: bool = False, progress: bool = True) -> DPSADTrainer:
    """Teacher (per its mode), then the student and the discriminator to the planned steps; the release is the
    student's EMA weights with the composed privacy report."""
    from dpdiffusion.methods.finetune import describe_data

    run_dir = Path(run_dir)
    if config.performance.threads:
        torch.set_num_threads(config.performance.threads)
    if not resume and ((run_dir / "owner").exists() or (run_dir / "release").exists() or (run_dir / "teacher").exists()):
        raise FileExistsError(f"{run_dir} already holds a run; resume it with --resume or pick another folder")
    torch.manual_seed(config.training.seed)
    teacher, teacher_info = build_teacher(config, dataset, plan, run_dir, resume=resume,
                                          allow_non_private_teacher=allow_non_private_teacher, progress=progress)
    student = build_denoiser(student_model(config), config.diffusion)
    settings = TrainSettings(**dataclasses.asdict(config.training), progress=progress)
    provenance = {"private": describe_data(config.data, len(dataset)),
                  "public": teacher_info.get("public"), "start": {"kind": "random initialisation"}}
    trainer = DPSADTrainer(student, teacher, config, dataset, plan, run_dir=run_dir, teacher_info=teacher_info,
                           settings=settings, provenance=provenance)
    trainer.fit(resume=resume)
    if trainer.world.is_main:
        write_json_atomic(run_dir / "config.json", config.to_dict())
    return trainer
