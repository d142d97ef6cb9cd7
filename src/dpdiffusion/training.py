"""The training loop: Poisson batches -> DP step -> EMA -> logs, checkpoints and the privacy report.

A run folder keeps what may be released apart from what stays with the data owner:

    RUN_DIR/release/   model.safetensors (EMA weights), privacy.json (plan and spend)
    RUN_DIR/owner/     checkpoints/ (weights, EMA, optimizer, RNG states, ledger), log.jsonl (un-noised stats)
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import secrets
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from safetensors.torch import save as save_tensors
from torch import nn
from tqdm import tqdm

from dpdiffusion import distributed
from dpdiffusion.checkpoint import CheckpointError, flatten_state, load_checkpoint, save_checkpoint, unflatten_state
from dpdiffusion.config import Performance
from dpdiffusion.diffusion.preconditioning import Precond
from dpdiffusion.dpsgd.batch_selection import poisson_sample
from dpdiffusion.dpsgd.per_example import Batch, PerExampleLoss
from dpdiffusion.dpsgd.step import DPSGD, StepReport
from dpdiffusion.io import atomic_write, json_safe, write_json_atomic
from dpdiffusion.privacy.ledger import LedgerMismatchError, PrivacyLedger
from dpdiffusion.privacy.plan import PrivacyPlan


def data_fingerprint(dataset: Dataset) -> str | None:
    """sha256 of an in-memory dataset's images and labels (None for other datasets). It is kept in the owner's
    checkpoints only, so that a resume on other data is refused: the spend is per dataset."""
    x, y = getattr(dataset, "x", None), getattr(dataset, "y", None)
    if not (isinstance(x, torch.Tensor) and isinstance(y, torch.Tensor)):
        return None
    digest = hashlib.sha256()
    for t in (x, y):
        digest.update(str((tuple(t.shape), str(t.dtype))).encode())
        digest.update(t.contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


class TrainingDiverged(RuntimeError):
    """The weights stopped being finite after a DP step (a post-processing check: it reads only released-style
    state, never un-noised private values)."""


class Dataset(Protocol):
    def __len__(self) -> int: ...

    def batch(self, indices: torch.Tensor) -> Batch: ...


class ArrayDataset:
    """In-memory examples: ``x`` images (any dtype; ``transform`` maps them to the model's input) and ``y``."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, transform=None):
        if len(x) != len(y):
            raise ValueError(f"{len(x)} images but {len(y)} labels")
        self.x, self.y, self.transform = x, y, transform

    def __len__(self) -> int:
        return len(self.x)

    def batch(self, indices: torch.Tensor) -> Batch:
        x = self.x[indices]
        return {"x": self.transform(x) if self.transform else x, "y": self.y[indices]}


@dataclass(frozen=True)
class TrainSettings:
    """Optimisation and bookkeeping. ``seed`` fixes initialisation and the loss's draws (public randomness);
    ``secret_seed`` fixes batch sampling and the DP noise, which the guarantee needs kept secret: leave it
    None (fresh OS entropy, stored only in the owner's checkpoints) except for reproducibility tests."""

    lr: float = 3e-4
    ema_decay: float = 0.999
    checkpoint_every: int = 200
    log_every: int = 20
    seed: int = 0
    secret_seed: int | None = None
    progress: bool = True


class RunFolder:
    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.release = self.root / "release"
        self.owner = self.root / "owner"
        self.checkpoints = self.owner / "checkpoints"
        self.privacy_report = self.release / "privacy.json"
        self.model_weights = self.release / "model.safetensors"
        self.log = self.owner / "log.jsonl"

    def checkpoint_path(self, step: int) -> Path:
        return self.checkpoints / f"step-{step:08d}.safetensors"

    def checkpoint_files(self) -> list[Path]:
        return sorted(self.checkpoints.glob("step-*.safetensors"), reverse=True)


class EMA:
    """Exponential moving average of the weights with EDM-style warm-up: decay min(d, (1+t)/(10+t))."""

    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        self.model = copy.deepcopy(model).requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        beta = min(self.decay, (1 + step) / (10 + step))
        for ema_p, p in zip(self.model.parameters(), model.parameters(), strict=True):
            ema_p.lerp_(p.detach(), 1 - beta)


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
        settings: TrainSettings = TrainSettings(),
        config: dict[str, Any] | None = None,
        provenance: dict[str, Any] | None = None,
        network: dict[str, Any] | None = None,
        world: distributed.World | None = None,
    ):
        """``provenance``: which data was private and public and where training started, for the privacy
        report; ``network``: what a release needs to rebuild a network that ``config`` does not describe;
        ``world``: this process's rank among the job's (``dpdiffusion.distributed``; default: as initialised)."""
        planned = getattr(dataset, "planned_size", len(dataset))  # audit canaries come on top of the plan's N
        if planned != plan.dataset_size:
            raise ValueError(f"the plan is for {plan.dataset_size} examples but the dataset has {planned}")
        self.model, self.loss, self.dataset, self.plan = model, loss, dataset, plan
        self.performance, self.settings, self.config = performance, settings, config or {}
        self.provenance, self.network = provenance or {}, network
        self._input_shape: tuple[int, ...] | None = None  # set by the first step, for the finiteness probe
        self.run = RunFolder(run_dir)
        self.world = world or distributed.current()
        self.device = performance.resolve_device(self.world)
        model.to(self.device)
        # every rank draws the same global Poisson batches (rank 0's secret seed); only rank 0 adds DP noise
        sampling_seed, noise_seed = distributed.broadcast_ints(list(secret_seeds(settings.secret_seed)), self.world)
        self.sampling_generator = torch.Generator().manual_seed(sampling_seed)
        self.noise_generator = torch.Generator().manual_seed(noise_seed + self.world.rank)
        self.optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=settings.lr)
        self.ledger = PrivacyLedger(plan)
        self.fingerprint = data_fingerprint(dataset)
        self.ema = EMA(model, settings.ema_decay)  # before the engine hooks the model, so the copy stays plain
        self.dp = DPSGD(
            model, loss, self.optimizer, ledger=self.ledger, performance=performance,
            draw_seed=settings.seed, noise_generator=self.noise_generator, world=self.world,
        )

    # -- checkpoints -------------------------------------------------------------------------------
    def state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        tensors: dict[str, torch.Tensor] = {}
        for name, t in self.model.state_dict().items():
            tensors[f"model.{name}"] = t.cpu()
        for name, t in self.ema.model.state_dict().items():
            tensors[f"ema.{name}"] = t.cpu()
        for name, g in self.generators().items():
            tensors[f"rng.{name}"] = g.get_state()
        meta = {
            "ledger": self.ledger.state_dict(),
            "data_sha256": self.fingerprint,
            "optimizer": flatten_state("optimizer", self.optimizer.state_dict(), tensors),
            "settings": asdict(self.settings),
            "performance": asdict(self.performance),
            "config": self.config,
        }
        meta.update(self.extra_state(tensors))
        return tensors, meta

    def extra_state(self, tensors: dict[str, torch.Tensor]) -> dict[str, Any]:
        """Subclasses with more to save (e.g. a second DP mechanism) add tensors here and return metadata."""
        return {}

    def load_extra(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
        """Subclasses restore what ``extra_state`` saved."""

    def trained_modules(self) -> list[nn.Module]:
        return [self.model]

    def check_finite(self) -> None:
        """Stop before a non-finite state is checkpointed or released: non-finite weights, or a denoiser whose
        output on a fixed public probe (zeros at noise level 1, the "no label" class) is not finite. Both read
        only the weights, a function of noised updates, so the check spends no privacy; the last good checkpoint
        stays."""
        params = [p for module in self.trained_modules() for p in module.parameters()]
        finite = not params or bool(torch.stack([p.detach().isfinite().all() for p in params]).all())
        if finite and isinstance(self.model, Precond) and self._input_shape is not None:
            training = self.model.training
            self.model.eval()
            with torch.no_grad():
                probe = torch.zeros(1, *self._input_shape, device=params[0].device)
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

    def generators(self) -> dict[str, torch.Generator]:
        return {"sampling": self.sampling_generator, "noise": self.noise_generator}

    def save(self) -> Path:
        path = self.run.checkpoint_path(self.ledger.steps_taken)
        save_checkpoint(path, *self.state())
        write_json_atomic(self.run.privacy_report, self.privacy_report())
        return path

    def epsilon_spent(self) -> float:
        return self.ledger.epsilon_spent()

    def privacy_report(self) -> dict[str, Any]:
        """The ledger's report with where the data came from (private, public) and where training started."""
        return json_safe({**self.ledger.report(), **({"data": self.provenance} if self.provenance else {})})

    def load(self, path: Path) -> None:
        tensors, meta = load_checkpoint(path)
        self.ledger.load_state_dict(meta["ledger"])  # refuses changed privacy settings before anything else
        self.check_same_data(meta)
        self.model.load_state_dict(_prefixed(tensors, "model."))
        self.ema.model.load_state_dict(_prefixed(tensors, "ema."))
        self.optimizer.load_state_dict(unflatten_state(meta["optimizer"], tensors))
        for name, g in self.generators().items():
            g.set_state(tensors[f"rng.{name}"])
        self.load_extra(tensors, meta)

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
        """Load the newest checkpoint that passes its checks; report and skip any that does not."""
        for path in self.run.checkpoint_files():
            try:
                self.load(path)
                return path
            except CheckpointError as error:
                if self.world.is_main:
                    print(f"dpdiffusion: skipping checkpoint: {error}", flush=True)
        return None

    # -- the loop ----------------------------------------------------------------------------------
    def share(self, indices: torch.Tensor) -> tuple[Batch, int]:
        """This rank's share of a global Poisson batch (a contiguous run of its blocks), on the training
        device, and the index of its first block."""
        first, last = distributed.block_range(len(indices), self.world)
        mine = indices[first * distributed.DRAW_BLOCK:last * distributed.DRAW_BLOCK]
        return {k: v.to(self.device) for k, v in self.dataset.batch(mine).items()}, first

    def step(self) -> StepReport:
        indices = poisson_sample(len(self.dataset), self.plan.sample_rate, generator=self.sampling_generator)
        batch, first = self.share(indices)
        self._input_shape = tuple(batch["x"].shape[1:])  # public: the data's image shape
        report = self.dp.step(batch, first_block=first)
        self.ema.update(self.model, self.ledger.steps_taken)
        return report

    def fit(self, *, resume: bool = False, max_steps: int | None = None) -> PrivacyLedger:
        """Train to the planned steps (or ``max_steps`` more of them), checkpointing along the way. Every rank
        trains; rank 0 alone writes the log, the checkpoints and the release."""
        if resume:
            self.resume()
        elif self.run.checkpoint_files() or self.run.privacy_report.exists():
            raise FileExistsError(f"{self.run.root} already holds a run; resume it with --resume or pick another folder")
        end = self.plan.steps if max_steps is None else min(self.plan.steps, self.ledger.steps_taken + max_steps)
        main = self.world.is_main
        bar = tqdm(total=self.plan.steps, initial=self.ledger.steps_taken, disable=not (self.settings.progress and main),
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
                if main and (step % self.settings.log_every == 0 or step == end):
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
                if main and (step % self.settings.checkpoint_every == 0 or step == end):
                    self.save()
        if main and self.ledger.steps_taken == self.plan.steps:
            self.release()
        distributed.barrier(self.world)  # no rank leaves before rank 0 has written
        return self.ledger

    def release(self) -> None:
        """Write what may leave the data owner: the EMA weights and the privacy report."""
        header = {"config": self.config, "privacy": self.privacy_report()}
        if self.network:
            header["network"] = self.network
        metadata = {"dpdiffusion": json.dumps(json_safe(header))}
        with atomic_write(self.run.model_weights) as f:
            f.write(save_tensors({k: v.contiguous().cpu() for k, v in self.ema.model.state_dict().items()}, metadata))
        write_json_atomic(self.run.privacy_report, self.privacy_report())


def secret_seeds(secret_seed: int | None) -> tuple[int, int]:
    """Independent seeds for Poisson sampling and for the DP noise: fresh OS entropy, or derived from a
    fixed ``secret_seed`` (reproducibility tests). torch's CPU generator keeps 32 bits of a seed."""
    if secret_seed is None:
        return secrets.randbits(32), secrets.randbits(32)
    sampling, noise = np.random.SeedSequence(secret_seed).generate_state(2)
    return int(sampling), int(noise)


def _prefixed(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
