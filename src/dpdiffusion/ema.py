"""Exponential moving average of the weights: what a run releases."""

from __future__ import annotations

import copy

import torch
from torch import nn


class EMA:
    """EMA of the weights with EDM-style warm-up: decay min(d, (1+t)/(10+t)). It averages noised updates only,
    so it is post-processing of the DP mechanism."""

    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        self.model = copy.deepcopy(model).requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        beta = min(self.decay, (1 + step) / (10 + step))
        for ema_p, p in zip(self.model.parameters(), model.parameters(), strict=True):
            ema_p.lerp_(p.detach(), 1 - beta)
