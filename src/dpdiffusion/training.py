"""The training loop: DP mechanisms step -> EMA -> logs, checkpoints, the release and its privacy report.

``Trainer`` keeps what is not the mechanism: EMA, checkpoints, progress, logs and the release. Everything
between the private data and an update is a ``DPMechanism`` (``dpsgd.mechanism``); the run's plan
(``privacy.composition.ComposedPlan``) composes every DP stage's event, and the report lists the stages
(``stages``). The run folder's layout is ``run_folder.RunFolder``.
"""

from __future__ import annotations

import contextlib
import functools
import json
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save as save_tensors
from torch import nn
from tqdm import tqdm

from dpdiffusion import distributed
from dpdiffusion.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from dpdiffusion.config import Performance
from dpdiffusion.data.dataset import Dataset, fingerprint
from dpdiffusion.diffusion.preconditioning import Precond
from dpdiffusion.dpsgd.mechanism import DPMechanism
from dpdiffusion.dpsgd.per_example import PerExampleLoss
from dpdiffusion.dpsgd.step import StepReport
from dpdiffusion.ema import EMA
from dpdiffusion.io import atomic_write, json_safe, write_json_atomic
from dpdiffusion.privacy.composition import ComposedPlan
from dpdiffusion.privacy.ledger import LedgerMismatchError, PrivacyLedger, written_with
from dpdiffusion.privacy.plan import PrivacyPlan
from dpdiffusion.run_folder import RunFolder
from dpdiffusion.runconfig import TrainingConfig
from dpdiffusion.stages import Stage, StageRecords

MAIN = "dpsgd"  # the stage name of a run's main DP mechanism (DPDM, fine-tuning)


class TrainingDiverged(RuntimeError):
    """The weights stopped being finite after a DP step (a post-processing check: it reads only released-style
    state, never un-noised private values)."""


class ResumeError(LedgerMismatchError):
    """``--resume`` found a run that checkpointed or released, but no checkpoint it can load."""


class Trainer:
    def __init__(
        self,
        model: nn.Module,
        loss: PerExampleLoss,
        dataset: Dataset,
        *,
        plan: PrivacyPlan,
        run_dir: str | Path,
        performance: Performance = Performance(),
        training: TrainingConfig = TrainingConfig(),
        secret_seed: int | None = None,
        progress: bool = True,
        config: dict[str, Any] | None = None,
        provenance: dict[str, Any] | None = None,
        network: dict[str, Any] | None = None,
        world: distributed.World | None = None,
        composed: ComposedPlan | None = None,
        stages: Sequence[Stage] = (),
        method: str = "DPDM",
        main: str = MAIN,
        not_private: str | None = None,
    ):
        """``plan``: the main mechanism's; ``composed``: the run's plan of every DP stage (default: this
        mechanism alone); ``stages``: the run's stages for the report (default: this one). ``training.seed``
        fixes initialisation and the loss's draws (public randomness); ``secret_seed`` fixes batch sampling
        and the DP noise, which the guarantee needs kept secret: leave it None (fresh OS entropy, stored only in
        the owner's checkpoints) except for reproducibility tests. ``provenance``: which data was private and
        public and where training started; ``network``: what a release needs to rebuild a network that
        ``config`` does not describe; ``world``: this process's rank among the job's."""
        self.model, self.loss, self.dataset, self.plan = model, loss, dataset, plan
        self.performance, self.training, self.progress, self.config = performance, training, progress, config or {}
        self.secret_seed = secret_seed
        self.provenance, self.network, self.method = provenance or {}, network, method
        self._not_private = not_private
        self.run = RunFolder(run_dir)
        self.world = world or distributed.current()
        self.device = performance.resolve_device(self.world)
        model.to(self.device)
        self.composed = composed or ComposedPlan.single(main, plan)
        self.stages = list(stages) or [Stage(main, "private", plan)]
        self.fingerprint = fingerprint(dataset)
        self.ema = EMA(model, training.ema_decay)  # before the engine hooks the model, so the copy stays plain
        optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=training.lr)
        self.mechanism = DPMechanism(model, loss, dataset, plan=plan, optimizer=optimizer, draw_seed=training.seed,
                                     secret_seed=secret_seed, performance=performance, world=self.world,
                                     device=self.device)
        self.mechanisms: dict[str, DPMechanism] = {main: self.mechanism}
        self._epsilon_cache: dict[tuple, float] = {}

    @property
    def ledger(self) -> PrivacyLedger:
        return self.mechanism.ledger

    @property
    def optimizer(self) -> torch.optim.Optimizer:
        return self.mechanism.optimizer

    # -- checkpoints -------------------------------------------------------------------------------
    def trained_modules(self) -> dict[str, nn.Module]:
        """Checkpoint prefix -> module trained here (besides the EMA)."""
        return {"model": self.model}

    def state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        tensors: dict[str, torch.Tensor] = {}
        for prefix, module in {**self.trained_modules(), "ema": self.ema.model}.items():
            for name, t in module.state_dict().items():
                tensors[f"{prefix}.{name}"] = t.cpu()
        meta: dict[str, Any] = {"data_sha256": self.fingerprint, "training": asdict(self.training),
                                "performance": asdict(self.performance), "config": self.config}
        for mechanism in self.mechanisms.values():
            meta.update(mechanism.state_dict(tensors))
        return tensors, meta

    def check_finite(self) -> None:
        """Stop before a non-finite state is checkpointed or released: non-finite weights, or a denoiser whose
        output on a fixed public probe (zeros at noise level 1, the "no label" class) is not finite. Both read
        only the weights, a function of noised updates, so the check spends no privacy; the last good checkpoint
        stays."""
        params = [p for module in self.trained_modules().values() for p in module.parameters()]
        finite = not params or bool(torch.stack([p.detach().isfinite().all() for p in params]).all())
        shape = self.mechanism.input_shape
        if finite and isinstance(self.model, Precond) and shape is not None:
            training = self.model.training
            self.model.eval()
            with torch.no_grad():
                probe = torch.zeros(1, *shape, device=params[0].device)
                classes = getattr(self.loss, "num_classes", 0)  # conditional: the "no label" class of dropout
                labels = torch.full((1,), classes, dtype=torch.long, device=probe.device) if classes else None
                finite = bool(self.model(probe, torch.ones(1, device=probe.device), labels).isfinite().all())
            self.model.train(training)
        if not finite:
            kept = self.run.checkpoint_files()
            last = f"the last good checkpoint is {kept[0].name}" if kept else "no checkpoint was written"
            raise TrainingDiverged(
                f"training diverged at step {self.ledger.steps_taken}: the weights or the denoiser's output are no "
                f"longer finite (NaN or inf); {last}; lower training.lr (or check the data) and resume")

    def save(self) -> Path:
        path = self.run.checkpoint_path(self.ledger.steps_taken)
        save_checkpoint(path, *self.state())
        write_json_atomic(self.run.privacy_report, self.privacy_report())
        return path

    def load(self, path: Path) -> None:
        tensors, meta = load_checkpoint(path)
        for mechanism in self.mechanisms.values():  # refuses changed privacy settings before anything else
            mechanism.load_ledger(meta)
        self.check_same_data(meta)
        for prefix, module in {**self.trained_modules(), "ema": self.ema.model}.items():
            module.load_state_dict({k[len(prefix) + 1:]: v for k, v in tensors.items() if k.startswith(prefix + ".")})
        for mechanism in self.mechanisms.values():
            mechanism.load_state_dict(tensors, meta)

    def check_same_data(self, meta: dict[str, Any]) -> None:
        """Refuse to resume on other training data than the run started on (same size or not)."""
        saved = meta.get("data_sha256")
        if saved and self.fingerprint and saved != self.fingerprint:
            was, now = (meta.get("config") or {}).get("data", {}), self.config.get("data", {})
            keys = sorted(k for k in set(was) | set(now) if k != "data_dir" and was.get(k) != now.get(k))
            changed = ", ".join(f"data.{k}: {was.get(k)!r} -> {now.get(k)!r}" for k in keys) or "same settings"
            raise LedgerMismatchError(f"cannot resume on other training data than the run started on ({changed}); "
                                      "the privacy spend is per dataset: start a new run")

    def resume(self) -> Path | None:
        """Load the newest checkpoint that passes its checks, reporting any skipped. A run that checkpointed or
        released but has no checkpoint that loads is refused: starting over would make a second release on the
        same data whose spend no report counts, and overwrite the first."""
        skipped = 0
        for path in self.run.checkpoint_files():
            try:
                self.load(path)
                return path
            except CheckpointError as error:
                skipped += 1
                if self.world.is_main:
                    print(f"dpdiffusion: skipping checkpoint: {error}", flush=True)
        traces = self.run.traces_of_training()
        if traces:
            shown = ", ".join(traces[:3]) + (f" and {len(traces) - 3} more" if len(traces) > 3 else "")
            raise ResumeError(f"cannot resume {self.run.root}: it holds {shown} but no checkpoint that loads "
                              f"({skipped} failed); nothing was changed: restore owner/checkpoints or start a new run "
                              "in another folder")
        return None

    # -- the loop ----------------------------------------------------------------------------------
    def step(self) -> StepReport:
        report = self.mechanism.step()
        self.ema.update(self.model, self.ledger.steps_taken)
        return report

    def fit(self, *, resume: bool = False, max_steps: int | None = None) -> PrivacyLedger:
        """Train to the planned steps (or ``max_steps`` more of them), checkpointing along the way. Every rank
        trains; rank 0 alone writes the log, the checkpoints and the release."""
        if resume:
            self.resume()
        elif self.run.traces_of_training():
            raise FileExistsError(f"{self.run.root} already holds a run; resume it with --resume or pick another folder")
        end = self.plan.steps if max_steps is None else min(self.plan.steps, self.ledger.steps_taken + max_steps)
        main = self.world.is_main
        bar = tqdm(total=self.plan.steps, initial=self.ledger.steps_taken, disable=not (self.progress and main),
                   unit="step", dynamic_ncols=True)
        window_images, window_start = 0, time.perf_counter()
        if main:
            self.run.owner.mkdir(parents=True, exist_ok=True)
        with bar, (self.run.log.open("a") if main else contextlib.nullcontext()) as log:
            while self.ledger.steps_taken < end:
                report = self.step()
                self.check_finite()
                window_images += report.batch_size
                bar.update(1)
                step = self.ledger.steps_taken
                if main and (step % self.training.log_every == 0 or step == end):
                    elapsed = time.perf_counter() - window_start
                    record = {**asdict(report), "images_per_s": window_images / max(elapsed, 1e-9)}
                    del record["nonfinite"]  # counted in memory only, never logged
                    assert log is not None  # opened on the main rank
                    log.write(json.dumps(record) + "\n")
                    log.flush()
                    if not bar.disable:  # the accountant is called only for a visible bar
                        bar.set_postfix(eps=f"{self.epsilon_spent():.3g}",
                                        loss=f"{report.loss_sum / max(report.batch_size, 1):.4g}",
                                        img_s=f"{record['images_per_s']:.0f}")
                    window_images, window_start = 0, time.perf_counter()
                if main and (step % self.training.checkpoint_every == 0 or step == end):
                    self.save()
        if main and self.ledger.steps_taken == self.plan.steps:
            self.release()
        distributed.barrier(self.world)  # no rank leaves before rank 0 has written
        return self.ledger

    # -- privacy ------------------------------------------------------------------------------------
    def steps_taken(self) -> dict[str, int]:
        """Steps of every DP stage of the plan: this run's mechanisms as far as they went, earlier stages in full."""
        return {name: (self.mechanisms[name].steps_taken if name in self.mechanisms else plan.steps)
                for name, plan in self.composed.parts}

    def composed_epsilon(self, steps: dict[str, int]) -> float:
        """The plan's total epsilon after ``steps`` of each stage (one accountant call per distinct ``steps``)."""
        key = tuple(sorted(steps.items()))
        if key not in self._epsilon_cache:
            self._epsilon_cache[key] = self.composed.epsilon(steps)
        return self._epsilon_cache[key]

    def epsilon_spent(self) -> float:
        if len(self.composed.parts) == 1:
            return self.ledger.epsilon_spent()
        return self.composed_epsilon(self.steps_taken())

    @functools.cached_property
    def described_stages(self) -> list[dict[str, Any]]:
        """Every stage with its share and output hash: fixed for the run (earlier stages finished before it),
        so the accountant is asked once, not at every checkpoint."""
        records = StageRecords(self.run).load()
        return [stage.describe(self.composed if stage.plan else None, records.get(stage.name, {}).get("sha256"))
                for stage in self.stages]

    def not_private(self) -> str | None:
        """Why the release is NOT differentially private end to end, if it is not (said in its report)."""
        return self._not_private

    def privacy_report(self) -> dict[str, Any]:
        """The plan, each stage with its share, the total spent, and where the data came from."""
        if len(self.composed.parts) == 1:
            report = self.ledger.report()
        else:
            planned = {name: plan.steps for name, plan in self.composed.parts}
            report = {"private": True, "plan": self.composed.to_dict(), "planned_epsilon": self.composed_epsilon(planned),
                      "spent": {"epsilon": self.epsilon_spent(), "delta": self.composed.delta,
                                "steps": self.steps_taken()},
                      "mechanism": "Poisson-subsampled Gaussian (DP-SGD) per DP stage, composed by the accountant; "
                                   "add/remove-one adjacency",
                      "accountant": self.composed.accountant, **written_with()}
        report["method"] = self.method
        report["stages"] = self.described_stages
        reason = self.not_private()
        if reason:
            report["private"], report["warning"] = False, reason
        return json_safe({**report, **({"data": self.provenance} if self.provenance else {})})

    def release(self) -> None:
        """Write what may leave the data owner: the EMA weights and the privacy report."""
        privacy = self.privacy_report()
        header = {"config": self.config, "privacy": privacy}
        if self.network:
            header["network"] = self.network
        metadata = {"dpdiffusion": json.dumps(json_safe(header))}
        with atomic_write(self.run.model_weights) as f:
            f.write(save_tensors({k: v.contiguous().cpu() for k, v in self.ema.model.state_dict().items()}, metadata))
        write_json_atomic(self.run.privacy_report, privacy)

