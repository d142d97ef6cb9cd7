"""One DP-SGD mechanism: everything between the private dataset and a released update.

``DPMechanism`` owns Poisson batch selection at its public rate q, its secret streams (sampling and noise),
the per-example engine, clipping, the noise (added once), the division by the public expected batch size B, the
optimizer step and its ledger. Each ``step()`` is one Poisson-subsampled Gaussian mechanism on the dataset;
``dp_event()`` is its dp_accounting event over its steps, which a run's plan composes with its other stages'.
A method with two models trained on private data (DP-SAD's student and discriminator) has two mechanisms.
"""

from __future__ import annotations

from typing import Any

import dp_accounting
import torch
from torch import nn

from dpdiffusion import distributed
from dpdiffusion.checkpoint import flatten_state, unflatten_state
from dpdiffusion.config import Performance
from dpdiffusion.data.dataset import Batch, Dataset
from dpdiffusion.dpsgd.batch_selection import poisson_sample
from dpdiffusion.dpsgd.per_example import PerExampleLoss
from dpdiffusion.dpsgd.secret_random import KEY_BYTES, SecretStream
from dpdiffusion.dpsgd.step import DPSGD, StepReport
from dpdiffusion.privacy.accounting import SampledGaussian
from dpdiffusion.privacy.ledger import PrivacyLedger
from dpdiffusion.privacy.plan import PrivacyPlan


def secret_streams(secret_seed: int | None, key: str, world: distributed.World) -> tuple[SecretStream, SecretStream]:
    """The mechanism's secret streams for Poisson sampling and for the DP noise: keyed from the OS CSPRNG (the
    sampling key drawn on rank 0 and shared, so every rank selects the same global batch), or derived from a
    fixed ``secret_seed`` (reproducibility tests; NOT private)."""
    sampling_purpose, noise_purpose = f"{key}sampling".encode(), f"{key}noise".encode()
    if secret_seed is not None:
        return (SecretStream.reproducible_from(secret_seed, sampling_purpose),
                SecretStream.reproducible_from(secret_seed, noise_purpose))
    sampling = SecretStream.fresh(sampling_purpose)
    (shared,) = distributed.broadcast_ints([int.from_bytes(sampling.key, "little")], world)
    sampling.key = shared.to_bytes(KEY_BYTES, "little")
    return sampling, SecretStream.fresh(noise_purpose)  # only rank 0's noise stream is used


class DPMechanism:
    """DP-SGD updates of ``model`` on ``dataset`` under ``plan``.

    ``draw_seed``: public seed of the loss's draws; ``secret_seed``: None (secret streams keyed from the OS
    CSPRNG, kept only in the owner's checkpoints) except in reproducibility tests (NOT private); ``key``: the
    prefix of this mechanism's entries in a checkpoint ("" for a run's main mechanism). Every rank draws the
    same global Poisson batches (rank 0's sampling key, broadcast); only rank 0 adds noise."""

    def __init__(self, model: nn.Module, loss: PerExampleLoss, dataset: Dataset, *, plan: PrivacyPlan,
                 optimizer: torch.optim.Optimizer, draw_seed: int, secret_seed: int | None = None,
                 performance: Performance = Performance(), world: distributed.World | None = None,
                 device: torch.device | None = None, key: str = ""):
        planned = getattr(dataset, "planned_size", len(dataset))  # audit canaries come on top of the plan's N
        if planned != plan.dataset_size:
            raise ValueError(f"the plan is for {plan.dataset_size} examples but the dataset has {planned}")
        self.model, self.dataset, self.plan, self.key = model, dataset, plan, key
        self.world = world or distributed.current()
        self.device = device or torch.device("cpu")
        self.sampling, self.noise = secret_streams(secret_seed, key, self.world)
        self.optimizer = optimizer
        self.ledger = PrivacyLedger(plan)
        self.dp = DPSGD(model, loss, optimizer, ledger=self.ledger, performance=performance, draw_seed=draw_seed,
                        noise=self.noise, world=self.world)
        self.input_shape: tuple[int, ...] | None = None  # public: the data's image shape, set by the first step

    @property
    def steps_taken(self) -> int:
        return self.ledger.steps_taken

    def share(self, indices: torch.Tensor) -> tuple[Batch, int]:
        """This rank's share of a global Poisson batch (a contiguous run of its blocks), on the training
        device, and the index of its first block."""
        first, last = distributed.block_range(len(indices), self.world)
        mine = indices[first * distributed.DRAW_BLOCK:last * distributed.DRAW_BLOCK]
        return {k: v.to(self.device) for k, v in self.dataset.batch(mine).items()}, first

    def step(self) -> StepReport:
        """Select a Poisson batch at rate q, then one DP-SGD update on it (clip, noise once, / B, optimizer)."""
        indices = poisson_sample(len(self.dataset), self.plan.sample_rate, stream=self.sampling)
        batch, first = self.share(indices)
        self.input_shape = tuple(batch["x"].shape[1:])
        return self.dp.step(batch, first_block=first)

    def event(self, steps: int | None = None) -> SampledGaussian:
        """Its Poisson-sampled Gaussian over ``steps`` steps (default: all planned)."""
        return SampledGaussian(self.plan.noise_multiplier, self.plan.sample_rate,
                               self.plan.steps if steps is None else steps)

    def dp_event(self, steps: int | None = None) -> dp_accounting.DpEvent:
        return self.event(steps).dp_event()

    @property
    def reproducible(self) -> bool:
        """Whether its secret randomness came from a fixed seed (tests only: NOT private)."""
        return self.sampling.reproducible or self.noise.reproducible

    def streams(self) -> dict[str, SecretStream]:
        return {f"{self.key}sampling": self.sampling, f"{self.key}noise": self.noise}

    def state_dict(self, tensors: dict[str, torch.Tensor]) -> dict[str, Any]:
        """Add the secret streams' keys and the optimizer's tensors to ``tensors``; return the metadata (ledger,
        streams' positions, optimizer layout). Owner-side only: the keys are secret."""
        streams = {name: stream.state_dict(tensors, name) for name, stream in self.streams().items()}
        return {f"{self.key}ledger": self.ledger.state_dict(), f"{self.key}secret_streams": streams,
                f"{self.key}optimizer": flatten_state(f"{self.key}optimizer", self.optimizer.state_dict(), tensors)}

    def check_loadable(self, meta: dict[str, Any]) -> None:
        """First of a load: refuses a checkpoint with other privacy settings before anything changes."""
        self.ledger.load_state_dict(meta[f"{self.key}ledger"])

    def load_state_dict(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
        self.check_loadable(meta)
        self.optimizer.load_state_dict(unflatten_state(meta[f"{self.key}optimizer"], tensors))
        saved = meta.get(f"{self.key}secret_streams")
        if saved is None:  # written before secret streams: continue with fresh keys (as secret as the old ones)
            return
        for name, stream in self.streams().items():
            stream.load_state_dict(tensors, name, saved[name])
