"""The DP-SGD step as named stages:
per-example gradients -> clip -> sum -> add noise (once) -> scale by 1/B -> optimizer step -> ledger.

Batch selection happens before (``batch_selection``); everything here sees one Poisson batch, which may be
empty. An empty batch still takes a full step: the noise is added and the ledger advances. With several
processes (``dpdiffusion.distributed``) each rank sees its share of the global batch; the partial clipped sums
are all-reduced and the noise is added on rank 0 only, so it enters once.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.profiler import record_function

from dpdiffusion import distributed
from dpdiffusion.allocator import keep_freed_memory
from dpdiffusion.config import Performance
from dpdiffusion.dpsgd.clipping import ClipStats, clip_and_sum
from dpdiffusion.dpsgd.noise import add_noise
from dpdiffusion.dpsgd.per_example import (
    Batch,
    Grads,
    PerExampleLoss,
    batch_size_of,
    make_engine,
    slice_batch,
    trainable_parameters,
)
from dpdiffusion.dpsgd.secret_random import SecretStream
from dpdiffusion.dpsgd.validation import check_per_example
from dpdiffusion.privacy.ledger import PrivacyLedger


@dataclass(frozen=True)
class StepReport:
    """What one step did. Every field but ``step`` is an un-noised statistic of private data: it may go to
    the data owner's logs, never into a release."""

    step: int
    batch_size: int
    clipped: int
    nonfinite: int
    loss_sum: float


class DPSGD:
    """Differentially private updates of ``model`` under ``ledger.plan``."""

    def __init__(
        self,
        model: nn.Module,
        loss: PerExampleLoss,
        optimizer: torch.optim.Optimizer,
        *,
        ledger: PrivacyLedger,
        performance: Performance = Performance(),
        draw_seed: int,
        noise: SecretStream,
        world: distributed.World | None = None,
    ):
        """``draw_seed``: public seed of the loss's draws, keyed by (step, block of the batch) so that they do
        not depend on the number of processes; ``noise``: the secret stream of the DP noise, used on rank 0 only."""
        check_per_example(model)
        if performance.cpu_allocator == "keep":
            keep_freed_memory()  # per-example buffers are reallocated every micro-batch: keep them mapped
        self.model = model
        self.loss = loss
        self.optimizer = optimizer
        self.ledger = ledger
        self.performance = performance
        self.engine = make_engine(performance.engine, model, loss)
        self.draw_seed = draw_seed
        self.noise = noise
        self.world = world or distributed.current()

    @property
    def plan(self):
        return self.ledger.plan

    def clipped_sum(self, batch: Batch, draws: Batch) -> tuple[Grads, ClipStats, float]:
        """Sum of clipped per-example gradients, accumulated over micro-batches."""
        b = batch_size_of(batch)
        chunk = self.performance.micro_batch_size
        params = trainable_parameters(self.model)
        total = {n: torch.zeros_like(p) for n, p in params.items()}
        stats = ClipStats()
        loss_sum = 0.0
        for start in range(0, b, chunk):
            part, part_draws = slice_batch(batch, start, start + chunk), slice_batch(draws, start, start + chunk)
            if hasattr(self.engine, "clipped_sum"):  # forms the clipped sum without per-example gradients
                summed, part_stats, losses = self.engine.clipped_sum(
                    part, part_draws, max_grad_norm=self.plan.max_grad_norm)
            else:
                with record_function("dp:per_example_grads"):
                    grads, losses = self.engine.per_example_grads(part, part_draws)
                with record_function("dp:clip_and_sum"):
                    summed, part_stats = clip_and_sum(grads, max_grad_norm=self.plan.max_grad_norm)
            for n in total:
                total[n] += summed[n]
            stats.add(part_stats)
            loss_sum += float(losses.detach().sum())
        return total, stats, loss_sum

    def draw(self, batch: Batch, first_block: int) -> Batch:
        """The loss's draws for this rank's share of the batch, which starts at block ``first_block`` of the
        global batch: block by block, each from its own (draw seed, step, block) generator."""
        b, step = batch_size_of(batch), self.ledger.steps_taken
        if b == 0:
            return self.loss.draw(batch, torch.Generator())  # empty draws of the right shapes
        size = distributed.DRAW_BLOCK
        parts = [self.loss.draw(slice_batch(batch, start, start + size),
                                distributed.block_generator(self.draw_seed, step, first_block + start // size))
                 for start in range(0, b, size)]
        return {name: torch.cat([part[name] for part in parts]) for name in parts[0]}

    def noisy_mean(self, summed: Grads) -> Grads:
        """Add N(0, sigma^2 C^2) once (on rank 0, before the ranks' partial sums are added up), then divide by
        the public expected batch size B."""
        if self.world.is_main:
            summed = add_noise(
                summed,
                noise_multiplier=self.plan.noise_multiplier,
                max_grad_norm=self.plan.max_grad_norm,
                stream=self.noise,
            )
        total = distributed.all_reduce_sum(list(summed.values()), self.world)
        return {n: g / self.plan.expected_batch_size for n, g in zip(summed, total, strict=True)}

    def apply(self, update: Grads) -> None:
        for name, p in trainable_parameters(self.model).items():
            p.grad = update[name].to(p.dtype)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def step(self, batch: Batch, first_block: int = 0) -> StepReport:
        """One step on ``batch`` (this rank's share of the global batch, from block ``first_block`` on)."""
        self.ledger.check_can_step()
        with record_function("dp:draw"):
            draws = self.draw(batch, first_block)
        summed, stats, loss_sum = self.clipped_sum(batch, draws)
        with record_function("dp:noise"):
            update = self.noisy_mean(summed)
        with record_function("dp:optimizer"):
            self.apply(update)
        self.ledger.record_step()
        counts = torch.tensor([stats.examples, stats.clipped, stats.nonfinite, loss_sum], dtype=torch.float64)
        (counts,) = distributed.all_reduce_sum([counts], self.world)  # for the owner's log on rank 0
        examples, clipped, nonfinite, loss_sum = counts.tolist()
        return StepReport(
            step=self.ledger.steps_taken,
            batch_size=int(examples),
            clipped=int(clipped),
            nonfinite=int(nonfinite),
            loss_sum=loss_sum,
        )
