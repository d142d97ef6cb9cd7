"""One training loop for every stage that trains a network: public pretraining, a teacher trained on the private
data without privacy (when a run is told to), and DP-SGD.

What one step is comes from its ``Updates``: a ``DPMechanism`` (``dpsgd.mechanism``) on private data, or
``PlainUpdates`` (shuffled minibatches, no privacy) on public data. ``TrainingLoop`` runs updates to an end step
and keeps what is common to every stage: the EMA after each update, the finite check, the log, checkpoints
(weights, EMA and the updates' own state) and resume, and a ``finish()`` hook that writes the stage's output.
``training.Trainer`` is the loop of a DP run (its release and privacy report).
"""

from __future__ import annotations

import contextlib
import json
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn
from tqdm import tqdm

from dpdiffusion import distributed
from dpdiffusion.checkpoint import CheckpointError, flatten_state, load_checkpoint, save_checkpoint, unflatten_state
from dpdiffusion.config import Performance
from dpdiffusion.data.dataset import Dataset
from dpdiffusion.diffusion.preconditioning import Precond
from dpdiffusion.dpsgd.per_example import PerExampleLoss
from dpdiffusion.dpsgd.step import StepReport
from dpdiffusion.ema import EMA
from dpdiffusion.monitoring import NO_MONITOR, Monitor


class TrainingDiverged(RuntimeError):
    """The weights stopped being finite after a step (a post-processing check: it reads only the weights, never
    un-noised private values)."""


class Updates(Protocol):
    """What one training step is. ``state_dict`` adds the updates' tensors to ``tensors`` and returns their
    metadata; ``load_state_dict`` restores them (refusing other settings before anything changes)."""

    optimizer: torch.optim.Optimizer
    input_shape: tuple[int, ...] | None  # the data's image shape, known after the first step

    @property
    def steps_taken(self) -> int: ...

    def step(self) -> StepReport: ...

    def state_dict(self, tensors: dict[str, torch.Tensor]) -> dict[str, Any]: ...

    def check_loadable(self, meta: dict[str, Any]) -> None: ...

    def load_state_dict(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None: ...


class PlainUpdates:
    """Plain minibatch training, no privacy: epochs of shuffled batches of ``batch_size`` (a reshuffle when the
    rest of an epoch is shorter than a batch), the mean loss, one optimizer step. For public data, or private data
    a run was told to train without privacy (its report then says NOT private). Its randomness is public (seeded);
    ``settings``: what the updates depend on, checked on resume."""

    def __init__(self, model: nn.Module, loss: PerExampleLoss, dataset: Dataset, *, batch_size: int,
                 optimizer: torch.optim.Optimizer, seed: int, device: torch.device, settings: dict[str, Any]):
        if not 1 <= batch_size <= len(dataset):
            raise ValueError(f"batch size {batch_size} must lie in [1, {len(dataset)}] (the dataset's size)")
        self.model, self.loss, self.dataset, self.batch_size = model, loss, dataset, batch_size
        self.optimizer, self.device, self.settings = optimizer, device, settings
        self.generator = torch.Generator().manual_seed(seed)
        self.order, self.position, self._steps = torch.randperm(len(dataset), generator=self.generator), 0, 0
        self.input_shape: tuple[int, ...] | None = None

    @property
    def steps_taken(self) -> int:
        return self._steps

    def step(self) -> StepReport:
        if self.position + self.batch_size > len(self.order):
            self.order, self.position = torch.randperm(len(self.dataset), generator=self.generator), 0
        indices = self.order[self.position:self.position + self.batch_size]
        self.position += self.batch_size
        batch = {k: v.to(self.device) for k, v in self.dataset.batch(indices).items()}
        self.input_shape = tuple(batch["x"].shape[1:])
        value = self.loss(self.model, batch, self.loss.draw(batch, self.generator)).mean()
        self.optimizer.zero_grad(set_to_none=True)
        value.backward()
        self.optimizer.step()
        self._steps += 1
        b = len(indices)
        return StepReport(step=self._steps, batch_size=b, clipped=0, nonfinite=0, loss_sum=float(value.detach()) * b)

    def state_dict(self, tensors: dict[str, torch.Tensor]) -> dict[str, Any]:
        tensors["plain.order"], tensors["rng.plain"] = self.order, self.generator.get_state()
        return {"plain": {"steps": self._steps, "position": self.position, "settings": self.settings},
                "optimizer": flatten_state("optimizer", self.optimizer.state_dict(), tensors)}

    def check_loadable(self, meta: dict[str, Any]) -> None:
        saved = meta.get("plain", {}).get("settings")
        if saved != json.loads(json.dumps(self.settings)):
            changed = sorted(k for k in set(saved or {}) | set(self.settings)
                             if (saved or {}).get(k) != self.settings.get(k))
            raise CheckpointError(f"it was written with other settings ({', '.join(changed) or 'unknown'})")

    def load_state_dict(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
        self.check_loadable(meta)
        self._steps, self.position = int(meta["plain"]["steps"]), int(meta["plain"]["position"])
        self.order = tensors["plain.order"]
        self.generator.set_state(tensors["rng.plain"])
        self.optimizer.load_state_dict(unflatten_state(meta["optimizer"], tensors))


class TrainingLoop:
    """Runs ``updates`` to ``total_steps``: EMA, the finite check, the log (every ``log_every`` steps) and
    checkpoints (every ``checkpoint_every``) in ``checkpoints``; ``finish()`` once the last step is taken. A
    subclass sets ``self.updates`` after this constructor (the EMA copies the model before an engine hooks it),
    and may set ``self.monitor`` (``monitoring.Monitor``: shown ``monitored`` at each logged step; default none)."""

    updates: Updates
    monitor: Monitor = NO_MONITOR

    def __init__(self, model: nn.Module, loss: PerExampleLoss, *, total_steps: int, ema_decay: float,
                 checkpoints: Path, log: Path, log_every: int, checkpoint_every: int,
                 performance: Performance = Performance(), progress: bool = True,
                 world: distributed.World | None = None, desc: str | None = None):
        self.model, self.loss, self.total_steps = model, loss, total_steps
        self.checkpoints, self.log, self.log_every, self.checkpoint_every = checkpoints, log, log_every, checkpoint_every
        self.performance, self.progress, self.desc = performance, progress, desc
        self.world = world or distributed.current()
        self.device = performance.resolve_device(self.world)
        model.to(self.device)
        self.ema = EMA(model, ema_decay)

    # -- checkpoints -------------------------------------------------------------------------------
    def trained_modules(self) -> dict[str, nn.Module]:
        """Checkpoint prefix -> module trained here (besides the EMA)."""
        return {"model": self.model}

    def checkpoint_path(self, step: int) -> Path:
        return self.checkpoints / f"step-{step:08d}.safetensors"

    def checkpoint_files(self) -> list[Path]:
        """Newest first."""
        return sorted(self.checkpoints.glob("step-*.safetensors"), reverse=True)

    def state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        tensors: dict[str, torch.Tensor] = {}
        for prefix, module in {**self.trained_modules(), "ema": self.ema.model}.items():
            for name, t in module.state_dict().items():
                tensors[f"{prefix}.{name}"] = t.cpu()
        return tensors, self.updates_state(tensors)

    def updates_state(self, tensors: dict[str, torch.Tensor]) -> dict[str, Any]:
        """The updates' state: tensors added to ``tensors``, the metadata returned."""
        return self.updates.state_dict(tensors)

    def load_updates(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
        self.updates.load_state_dict(tensors, meta)

    def save(self) -> Path:
        path = self.checkpoint_path(self.updates.steps_taken)
        save_checkpoint(path, *self.state())
        return path

    def check_loadable(self, meta: dict[str, Any]) -> None:
        """Refuse a checkpoint written with other settings, before anything is changed."""
        self.updates.check_loadable(meta)

    def load(self, path: Path) -> None:
        tensors, meta = load_checkpoint(path)
        self.check_loadable(meta)
        for prefix, module in {**self.trained_modules(), "ema": self.ema.model}.items():
            module.load_state_dict({k[len(prefix) + 1:]: v for k, v in tensors.items() if k.startswith(prefix + ".")})
        self.load_updates(tensors, meta)

    def load_newest(self) -> tuple[Path | None, int]:
        """Load the newest checkpoint that passes its checks, reporting those skipped; (its path, how many
        failed)."""
        skipped = 0
        for path in self.checkpoint_files():
            try:
                self.load(path)
                return path, skipped
            except CheckpointError as error:
                skipped += 1
                if self.world.is_main:
                    print(f"dpdiffusion: skipping checkpoint: {error}", file=sys.stderr, flush=True)
        return None, skipped

    def resume(self) -> Path | None:
        return self.load_newest()[0]

    # -- the loop ----------------------------------------------------------------------------------
    def check_finite(self) -> None:
        """Stop before a non-finite state is checkpointed or released: non-finite weights, or a denoiser whose
        output on a fixed public probe (zeros at noise level 1, the "no label" class) is not finite. Both read
        only the weights, a function of the (noised) updates; the last good checkpoint stays."""
        params = [p for module in self.trained_modules().values() for p in module.parameters()]
        finite = not params or bool(torch.stack([p.detach().isfinite().all() for p in params]).all())
        shape = self.updates.input_shape
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
            kept = self.checkpoint_files()
            last = f"the last good checkpoint is {kept[0].name}" if kept else "no checkpoint was written"
            raise TrainingDiverged(
                f"training diverged at step {self.updates.steps_taken}: the weights or the denoiser's output are no "
                f"longer finite (NaN or inf); {last}; a resume replays the same batches and noise, and the learning "
                "rate cannot change on resume: check the data or lower the learning rate in a new run (the privacy "
                "this one spent stands: a new run on the same data adds to it)")

    def step(self) -> StepReport:
        report = self.updates.step()
        self.ema.update(self.model, self.updates.steps_taken)
        return report

    def postfix(self, report: StepReport) -> dict[str, str]:
        """What the progress bar shows after a logged step."""
        return {"loss": f"{report.loss_sum / max(report.batch_size, 1):.4g}"}

    def monitored(self, report: StepReport) -> dict[str, float]:
        """What the monitor shows after a logged step (owner-side: the loss is an un-noised statistic)."""
        return {"train/loss": report.loss_sum / max(report.batch_size, 1),
                "train/learning_rate": float(self.updates.optimizer.param_groups[0]["lr"])}

    def finish(self) -> None:
        """Write the stage's output (rank 0, once the last step is taken)."""

    def train(self, max_steps: int | None = None) -> None:
        """Train to ``total_steps`` (or ``max_steps`` more), logging and checkpointing along the way. Every rank
        trains; rank 0 alone writes the log, the checkpoints and the output."""
        total, main = self.total_steps, self.world.is_main
        end = total if max_steps is None else min(total, self.updates.steps_taken + max_steps)
        bar = tqdm(total=total, initial=self.updates.steps_taken, disable=not (self.progress and main),
                   unit="step", dynamic_ncols=True, desc=self.desc)
        window_images, window_start = 0, time.perf_counter()
        if main:
            self.log.parent.mkdir(parents=True, exist_ok=True)
        monitor = self.monitor.started(self.updates.steps_taken) if main else NO_MONITOR
        with bar, (self.log.open("a") if main else contextlib.nullcontext()) as log, monitor:
            while self.updates.steps_taken < end:
                report = self.step()
                self.check_finite()
                window_images += report.batch_size
                bar.update(1)
                step = self.updates.steps_taken
                if main and (step % self.log_every == 0 or step == end):
                    elapsed = time.perf_counter() - window_start
                    record = {**asdict(report), "images_per_s": window_images / max(elapsed, 1e-9)}
                    del record["nonfinite"]  # counted in memory only, never logged
                    assert log is not None  # opened on the main rank
                    log.write(json.dumps(record) + "\n")
                    log.flush()
                    if not bar.disable:
                        bar.set_postfix(**self.postfix(report), img_s=f"{record['images_per_s']:.0f}")
                    monitor.scalars(step, self.monitored(report))
                    window_images, window_start = 0, time.perf_counter()
                monitor.stepped(step, self.ema.model)
                if main and (step % self.checkpoint_every == 0 or step == end):
                    self.save()
        if main and self.updates.steps_taken == total:
            self.finish()
        distributed.barrier(self.world)  # no rank leaves before rank 0 has written
