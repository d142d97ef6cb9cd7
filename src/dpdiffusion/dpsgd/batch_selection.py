"""Batch selection: Poisson sampling with a public sample rate.

Each example enters each step's batch independently with probability ``sample_rate``. The realised batch
size is random (it may be zero); nothing downstream may divide by it. The draws come from a secret stream
(``dpsgd.secret_random``): which examples were selected is part of the mechanism's secret randomness.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from dpdiffusion.dpsgd.secret_random import SecretStream


def poisson_sample(num_examples: int, sample_rate: float, *, stream: SecretStream) -> torch.Tensor:
    """Indices of the examples included in one Poisson-sampled batch (sorted, possibly empty)."""
    if num_examples < 0:
        raise ValueError(f"number of examples must be >= 0, got {num_examples}")
    if not 0 < sample_rate <= 1:
        raise ValueError(f"sample rate must lie in (0, 1], got {sample_rate}")
    included = stream.bernoulli(num_examples, sample_rate)
    return included.nonzero().flatten()


class PoissonBatchSampler:
    """Yields ``steps`` Poisson-sampled index batches over ``num_examples`` examples.

    The stream is owned by the sampler so that its state can be checkpointed and restored.
    """

    def __init__(self, num_examples: int, sample_rate: float, steps: int, *, stream: SecretStream):
        self.num_examples = num_examples
        self.sample_rate = sample_rate
        self.steps = steps
        self.stream = stream

    def __len__(self) -> int:
        return self.steps

    def __iter__(self) -> Iterator[torch.Tensor]:
        for _ in range(self.steps):
            yield poisson_sample(self.num_examples, self.sample_rate, stream=self.stream)
