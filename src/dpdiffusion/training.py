"""A DP run's training: ``Trainer`` is the loop (``loop.TrainingLoop``) with DP mechanisms as its updates, the
run's release and its privacy report.

Everything between the private data and an update is a ``DPMechanism`` (``dpsgd.mechanism``); the loop keeps
EMA, checkpoints, progress and logs; the run's plan (``privacy.composition.ComposedPlan``) composes every DP
stage's event, and the report (``privacy.report.PrivacyReport``) lists the stages (``stages``). The run folder's
layout is ``run_folder.RunFolder``.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save as save_tensors
from torch import nn

from dpdiffusion import distributed, monitoring
from dpdiffusion.config import Performance
from dpdiffusion.data.dataset import Dataset, fingerprint
from dpdiffusion.dpsgd import secret_random
from dpdiffusion.dpsgd.mechanism import DPMechanism
from dpdiffusion.dpsgd.per_example import PerExampleLoss
from dpdiffusion.dpsgd.step import StepReport
from dpdiffusion.io import atomic_write, json_safe, write_json_atomic
from dpdiffusion.loop import TrainingLoop
from dpdiffusion.model_card import model_card
from dpdiffusion.privacy.composition import ComposedPlan
from dpdiffusion.privacy.ledger import LedgerMismatchError, PrivacyLedger, written_with
from dpdiffusion.privacy.plan import PrivacyPlan
from dpdiffusion.privacy.report import COMPOSED_MECHANISM, DatasetSize, PrivacyReport, Provenance, Spent
from dpdiffusion.release import released_config
from dpdiffusion.run_folder import RunFolder
from dpdiffusion.runconfig import TrainingConfig, changed_settings
from dpdiffusion.stages import Stage, StageRecords

MAIN = "dpsgd"  # the stage name of a run's main DP mechanism (DPDM, fine-tuning)
REPRODUCIBLE = ("NOT differentially private: batch selection and noise were derived from a fixed secret_seed (a "
                "reproducibility test), so anyone who knows the seed can remove the noise")


class ResumeError(LedgerMismatchError):
    """``--resume`` found a run that checkpointed or released, but no checkpoint it can load."""


class ChangedSettingsError(LedgerMismatchError):
    """``--resume`` with settings other than those the run's checkpoint was trained with."""


class Trainer(TrainingLoop):
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
        provenance: Provenance | None = None,
        network: dict[str, Any] | None = None,
        world: distributed.World | None = None,
        composed: ComposedPlan | None = None,
        stages: Sequence[Stage] = (),
        method: str = "DPDM",
        main: str = MAIN,
        not_private: str | None = None,
        size_declared: bool = False,
    ):
        """``plan``: the main mechanism's; ``composed``: the run's plan of every DP stage (default: this
        mechanism alone); ``stages``: the run's stages for the report (default: this one). ``training.seed``
        fixes initialisation and the loss's draws (public randomness); ``secret_seed`` fixes batch sampling
        and the DP noise, which the guarantee needs kept secret: leave it None (fresh OS entropy, stored only in
        the owner's checkpoints) except for reproducibility tests. ``provenance``: which data was private and
        public and where training started; ``network``: what a release needs to rebuild a network that
        ``config`` does not describe; ``world``: this process's rank among the job's; ``size_declared``: the
        plan's N is a public size declared for the private dataset (the report says which N it is)."""
        self.run = RunFolder(run_dir)
        monitoring.require(training)  # a missing optional package is refused before anything is trained
        super().__init__(model, loss, total_steps=plan.steps, ema_decay=training.ema_decay,
                         checkpoints=self.run.checkpoints, log=self.run.log, log_every=training.log_every,
                         checkpoint_every=training.checkpoint_every, performance=performance, progress=progress,
                         world=world)
        self.dataset, self.plan, self.training, self.config = dataset, plan, training, config or {}
        self.secret_seed = secret_seed
        self.provenance, self.network, self.method = provenance, network, method
        self._not_private = not_private
        self.dataset_size = DatasetSize(plan.dataset_size, declared=size_declared)  # the plan's N, and its source
        self.composed = composed or ComposedPlan.single(main, plan)
        self.stages = list(stages) or [Stage(main, "private", plan)]
        self.fingerprint = fingerprint(dataset)
        optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=training.lr)
        self.mechanism = DPMechanism(model, loss, dataset, plan=plan, optimizer=optimizer, draw_seed=training.seed,
                                     secret_seed=secret_seed, performance=performance, world=self.world,
                                     device=self.device)
        self.updates = self.mechanism
        self.mechanisms: dict[str, DPMechanism] = {main: self.mechanism}
        self._epsilon_cache: dict[tuple, float] = {}
        self.monitor = monitoring.for_training(training, self.run.tensorboard, self.config)

    @property
    def ledger(self) -> PrivacyLedger:
        return self.mechanism.ledger

    @property
    def optimizer(self) -> torch.optim.Optimizer:
        return self.mechanism.optimizer

    # -- checkpoints -------------------------------------------------------------------------------
    def updates_state(self, tensors: dict[str, torch.Tensor]) -> dict[str, Any]:
        meta: dict[str, Any] = {"data_sha256": self.fingerprint, "training": asdict(self.training),
                                "performance": asdict(self.performance), "config": self.config,
                                "start_sha256": self.start_sha256}
        for mechanism in self.mechanisms.values():
            meta.update(mechanism.state_dict(tensors))
        return meta

    def load_updates(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
        for mechanism in self.mechanisms.values():
            mechanism.load_state_dict(tensors, meta)

    def save(self) -> Path:
        path = super().save()
        write_json_atomic(self.run.privacy_report, self.privacy_report().to_dict())
        return path

    def check_loadable(self, meta: dict[str, Any]) -> None:
        for mechanism in self.mechanisms.values():  # refuses changed privacy settings before anything else
            mechanism.check_loadable(meta)
        self.check_same_data(meta)
        self.check_same_start(meta)
        self.check_same_settings(meta)

    @property
    def start_sha256(self) -> str | None:
        """sha256 of the weights training started from (None: a random initialisation)."""
        provenance: Any = self.provenance  # a Provenance, or DP-SAD's dict of one
        start = provenance.get("start") if isinstance(provenance, dict) else getattr(provenance, "start", None)
        return (start or {}).get("sha256")

    def check_same_start(self, meta: dict[str, Any]) -> None:
        """Refuse to resume from another start than the run began with: the weights carry the first one's
        training, and the plan composes (or not) the spend of the one named now."""
        saved = meta.get("start_sha256")
        if "start_sha256" in meta and saved != self.start_sha256:
            raise LedgerMismatchError(f"cannot resume from another start than the run began with (sha256 "
                                      f"{str(saved)[:12]}... -> {str(self.start_sha256)[:12]}...): the weights were "
                                      "trained from the first; restore it or start a new run")

    def check_same_settings(self, meta: dict[str, Any]) -> None:
        """Refuse to resume with any setting other than the checkpoint was trained with (learning rate, EMA, model,
        diffusion, sampling, ...), before anything is loaded or written: the release would describe settings its
        weights were never trained with. Performance, logging and checkpoint intervals, the data's locations and
        the run's name may change (``runconfig.RESUMABLE_SETTINGS``); a checkpoint without settings is not checked."""
        saved = meta.get("config")
        if not saved or not self.config:
            return
        changed = changed_settings(saved, self.config)
        if changed:
            shown = ", ".join(f"{key}: {was!r} -> {now!r}" for key, (was, now) in list(changed.items())[:4])
            more = f" and {len(changed) - 4} more" if len(changed) > 4 else ""
            raise ChangedSettingsError(f"cannot resume {self.run.root} with other settings than it was trained with "
                                       f"({shown}{more}); nothing was changed: resume with its settings, or start a "
                                       "new run in another folder")

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
        path, skipped = self.load_newest()
        if path is not None:
            return path
        traces = self.run.traces_of_training()
        if traces:
            shown = ", ".join(traces[:3]) + (f" and {len(traces) - 3} more" if len(traces) > 3 else "")
            raise ResumeError(f"cannot resume {self.run.root}: it holds {shown} but no checkpoint that loads "
                              f"({skipped} failed); nothing was changed: restore owner/checkpoints or start a new run "
                              "in another folder")
        return None

    # -- the loop ----------------------------------------------------------------------------------
    def postfix(self, report: StepReport) -> dict[str, str]:
        return {"eps": f"{self.epsilon_spent():.3g}", **super().postfix(report)}  # the accountant: visible bars only

    def monitored(self, report: StepReport) -> dict[str, float]:
        """The loop's, the fraction of the batch's per-example gradients clipped (un-noised, like the loss), the
        realised batch size and the epsilon spent (the accountant's, cached per step count like the bar's)."""
        return {**super().monitored(report), "train/clipped_fraction": report.clipped / max(report.batch_size, 1),
                "train/batch_size": float(report.batch_size), "privacy/epsilon": self.epsilon_spent()}

    def finish(self) -> None:
        self.release()

    def fit(self, *, resume: bool = False, max_steps: int | None = None) -> PrivacyLedger:
        """Train to the planned steps (or ``max_steps`` more of them), checkpointing along the way; release at
        the end. Every rank trains; rank 0 alone writes the log, the checkpoints and the release."""
        if resume:
            self.resume()
        elif self.run.traces_of_training():
            raise FileExistsError(f"{self.run.root} already holds a run; resume it with --resume or pick another folder")
        self.train(max_steps)
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
        if any(m.reproducible for m in self.mechanisms.values()):
            return REPRODUCIBLE
        return self._not_private

    def privacy_report(self) -> PrivacyReport:
        """The plan, each stage with its share, the total spent, and where the data came from."""
        if len(self.composed.parts) == 1:
            report = self.ledger.report()
        else:
            planned = {name: plan.steps for name, plan in self.composed.parts}
            report = PrivacyReport(private=True, plan=json_safe(self.composed.to_dict()),
                                   planned_epsilon=self.composed_epsilon(planned),
                                   spent=Spent(epsilon=self.epsilon_spent(), delta=self.composed.delta,
                                               steps=self.steps_taken()),
                                   mechanism=COMPOSED_MECHANISM, accountant=self.composed.accountant, **written_with())
        reproducible = any(m.reproducible for m in self.mechanisms.values())
        report = dataclasses.replace(report, method=self.method, stages=tuple(self.described_stages),
                                     data=self.provenance, randomness=secret_random.describe(reproducible),
                                     dataset_size=self.dataset_size)
        reason = self.not_private()
        return report.not_private(reason) if reason else report

    def release(self) -> None:
        """Write what may leave the data owner: the EMA weights and the privacy report, with the configuration in the
        weights' header less the private data's locations (``release.released_config``; listed as ``withheld``)."""
        privacy = self.privacy_report().to_dict()
        config, withheld = released_config(self.config)  # the private data's locations stay with the owner
        header = {"config": config, "privacy": privacy, "withheld": withheld}
        if self.network:
            header["network"] = self.network
        metadata = {"dpdiffusion": json.dumps(json_safe(header))}
        with atomic_write(self.run.model_weights) as f:
            f.write(save_tensors({k: v.contiguous().cpu() for k, v in self.ema.model.state_dict().items()}, metadata))
        write_json_atomic(self.run.privacy_report, privacy)
        with atomic_write(self.run.model_card) as f:
            f.write(model_card(json_safe(privacy), json_safe(config)).encode())

