"""Batch selection: Poisson sampling with a public sample rate.

Each example enters each step's batch independently with probability ``sample_rate``. The realised batch
size is random (it may be zero); nothing downstream may divide by it.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch


def poisson_sample(num_examples: int, sample_rate: float, *, generator: torch.Generator) -> torch.Tensor:
    """Indices of the examples included in one Poisson-sampled batch (sorted, possibly empty)."""
    if num_examples < 0:
        raise ValueError(f"number of examples must be >= 0, got {num_examples}")
    if not 0 < sample_rate <= 1:
        raise ValueError(f"sample rate must lie in (0, 1], got {sample_rate}")
    included = torch.rand(num_examples, generator=generator, dtype=torch.float64) < sample_rate
    return included.nonzero().flatten()


class PoissonBatchSampler:
    """Yields ``steps`` Poisson-sampled index batches over ``num_examples`` examples.

    The generator is owned by the sampler so that its state can be checkpointed and restored.
    """

    def __init__(self, num_examples: int, sample_rate: float, steps: int, *, generator: torch.Generator):
        self.num_examples = num_examples
        self.sample_rate = sample_rate
        self.steps = steps
        self.generator = generator

    def __len__(self) -> int:
        return self.steps

    def __iter__(self) -> Iterator[torch.Tensor]:
        for _ in range(self.steps):
            yield poisson_sample(self.num_examples, self.sample_rate, generator=self.generator)
