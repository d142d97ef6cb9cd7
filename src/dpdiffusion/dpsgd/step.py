"""The DP-SGD step as named stages:
per-example gradients -> clip -> sum -> add noise (once) -> scale by 1/B -> optimizer step -> ledger.

Batch selection happens before (``batch_selection``); everything here sees one Poisson batch, which may be
empty. An empty batch still takes a full step: the noise is added and the ledger advances.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

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
        draw_generator: torch.Generator,
        noise_generator: torch.Generator,
    ):
        check_per_example(model)
        self.model = model
        self.loss = loss
        self.optimizer = optimizer
        self.ledger = ledger
        self.performance = performance
        self.engine = make_engine(performance.engine, model, loss)
        self.draw_generator = draw_generator
        self.noise_generator = noise_generator

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
            grads, losses = self.engine.per_example_grads(part, part_draws)
            summed, part_stats = clip_and_sum(grads, max_grad_norm=self.plan.max_grad_norm)
            for n in total:
                total[n] += summed[n]
            stats.add(part_stats)
            loss_sum += float(losses.detach().sum())
        return total, stats, loss_sum

    def noisy_mean(self, summed: Grads) -> Grads:
        """Add N(0, sigma^2 C^2) once, then divide by the public expected batch size B."""
        noisy = add_noise(
            summed,
            noise_multiplier=self.plan.noise_multiplier,
            max_grad_norm=self.plan.max_grad_norm,
            generator=self.noise_generator,
        )
        return {n: g / self.plan.expected_batch_size for n, g in noisy.items()}

    def apply(self, update: Grads) -> None:
        for name, p in trainable_parameters(self.model).items():
            p.grad = update[name].to(p.dtype)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def step(self, batch: Batch) -> StepReport:
        self.ledger.check_can_step()
        draws = self.loss.draw(batch, self.draw_generator)
        summed, stats, loss_sum = self.clipped_sum(batch, draws)
        self.apply(self.noisy_mean(summed))
        self.ledger.record_step()
        return StepReport(
            step=self.ledger.steps_taken,
            batch_size=stats.examples,
            clipped=stats.clipped,
            nonfinite=stats.nonfinite,
            loss_sum=loss_sum,
        )
