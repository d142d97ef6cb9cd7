"""Small networks covering every layer type our networks use, and a per-example loss with K draws."""

from __future__ import annotations

import math

import torch
from torch import nn


class TinyAttention(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.norm = nn.GroupNorm(2, channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = nn.Conv2d(channels, channels, 1)

    def forward(self, x):
        b, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(b, 3, c, h * w).unbind(1)
        weights = torch.softmax(torch.einsum("bci,bcj->bij", q, k) / math.sqrt(c), dim=-1)
        return x + self.proj(torch.einsum("bij,bcj->bci", weights, v).reshape(b, c, h, w))


class TinyDenoiser(nn.Module):
    """x, sigma, labels -> denoised: Conv2d, GroupNorm, attention, Linear and Embedding in one net."""

    def __init__(self, channels: int = 1, width: int = 4, num_classes: int = 3, layers: str = "all"):
        super().__init__()
        self.layers = layers
        self.conv_in = nn.Conv2d(channels, width, 3, padding=1)
        self.norm = nn.GroupNorm(2, width)
        self.attn = TinyAttention(width)
        self.sigma_map = nn.Linear(1, width)
        self.label_emb = nn.Embedding(num_classes + 1, width)
        self.conv_out = nn.Conv2d(width, channels, 3, padding=1)

    def forward(self, x, sigma, labels):
        h = self.conv_in(x)
        if self.layers in ("all", "groupnorm"):
            h = torch.nn.functional.silu(self.norm(h))
        if self.layers in ("all", "linear", "embedding"):
            h = h + self.sigma_map(sigma.log().unsqueeze(-1))[:, :, None, None]
        if self.layers in ("all", "embedding"):
            h = h + self.label_emb(labels)[:, :, None, None]
        if self.layers in ("all", "attention"):
            h = self.attn(h)
        return self.conv_out(h)


class NoisyRegressionLoss:
    """Per-example denoising loss averaged over K draws of (sigma, noise)."""

    def __init__(self, multiplicity: int = 1):
        self.multiplicity = multiplicity

    def draw(self, batch, generator):
        x = batch["x"]
        b, k = x.shape[0], self.multiplicity
        return {
            "sigma": torch.exp(torch.randn(b, k, generator=generator) * 0.5),
            "noise": torch.randn(b, k, *x.shape[1:], generator=generator),
        }

    def __call__(self, model, batch, draws):
        x, labels = batch["x"], batch["y"]
        b, k = draws["sigma"].shape
        xs = x.unsqueeze(1).expand(b, k, *x.shape[1:]).reshape(b * k, *x.shape[1:])
        sigma = draws["sigma"].reshape(b * k)
        noisy = xs + sigma.view(-1, 1, 1, 1) * draws["noise"].reshape(b * k, *x.shape[1:])
        out = model(noisy, sigma, labels.repeat_interleave(k))
        per_draw = (out - xs).pow(2).reshape(b, k, -1).mean(dim=2)
        return per_draw.mean(dim=1)


def make_batch(b: int, generator: torch.Generator, channels: int = 1, size: int = 6, num_classes: int = 3):
    return {
        "x": torch.randn(b, channels, size, size, generator=generator),
        "y": torch.randint(0, num_classes + 1, (b,), generator=generator),
    }


def reference_per_example_grads(model, loss, batch, draws):
    """The obviously-correct slow way: ordinary autograd on one example at a time."""
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    b = batch["x"].shape[0]
    rows = []
    for i in range(b):
        one = {k: v[i : i + 1] for k, v in batch.items()}
        one_draws = {k: v[i : i + 1] for k, v in draws.items()}
        value = loss(model, one, one_draws)[0]
        grads = torch.autograd.grad(value, list(params.values()), allow_unused=True)
        rows.append({n: torch.zeros_like(p) if g is None else g for (n, p), g in zip(params.items(), grads)})
    return {n: torch.stack([r[n] for r in rows]) if rows else p.new_zeros((0, *p.shape)) for n, p in params.items()}
