"""DP frequency features (FETA-Pro's second warm-up set, in the style of DP-MERF, Harder et al. 2021): one DP
release of each class's mean random Fourier features, and a small generator fitted to them (post-processing).

Features: the image after the central images' fixed transform (``central_images.pooled``), flattened to x in
[-1, 1]^d, maps to φ(x) = [cos(W x), sin(W x)] / sqrt(D) with W (D x d, entries N(0, 1 / ℓ²)) drawn from a
*public* seed: cos² + sin² = 1 per frequency, so ||φ(x)||₂ = 1 for every image whatever its pixels. The release
is every class's sum of φ over one Poisson sample at the public rate q (q = 1: the whole dataset), all classes
together plus N(0, σ²) in every coordinate (one record, one class: L2 sensitivity 1), divided by the class's
public expected count B / classes. Its DP event is one Poisson-sampled Gaussian (a ``PrivacyPlan`` with
``max_grad_norm = 1``, ``steps = 1``), composed with the run's other stages by the accountant.

``fit_generator`` then trains a small generator G(z, class) so that the mean features of its images match the
released ones (the squared distance of the means: an MMD with the random-feature kernel); it reads only the
release and W, so its images are post-processing of the DP release.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from dpdiffusion.data.dataset import ArrayDataset, Dataset
from dpdiffusion.dpsgd.batch_selection import poisson_sample
from dpdiffusion.dpsgd.secret_random import SecretStream
from dpdiffusion.privacy.plan import PrivacyPlan
from dpdiffusion.warmup.central_images import pooled


@dataclass(frozen=True)
class FourierFeatures:
    """The public feature map φ: ``frequencies`` W (D x d) from ``seed`` with length scale ℓ."""

    dim: int  # d, pixels of the pooled image
    features: int  # D
    length_scale: float
    seed: int

    @property
    def frequencies(self) -> torch.Tensor:
        g = torch.Generator().manual_seed(self.seed)  # public: W is part of the released statistic's definition
        return torch.randn(self.features, self.dim, generator=g, dtype=torch.float64) / self.length_scale

    def __call__(self, x: torch.Tensor, frequencies: torch.Tensor | None = None) -> torch.Tensor:
        """φ of flattened images ``x`` [n, d] (any float dtype; float64 out), each of norm 1."""
        w = self.frequencies if frequencies is None else frequencies
        projected = x.to(w.dtype) @ w.T
        return torch.cat([projected.cos(), projected.sin()], dim=1) / self.features**0.5


def frequency_plan(*, dataset_size: int, batch_size: int, noise_multiplier: float, delta: float,
                   accountant: str = "prv") -> PrivacyPlan:
    """The release's DP event: one Poisson-sampled Gaussian of sensitivity 1 (||φ|| = 1)."""
    return PrivacyPlan(dataset_size=dataset_size, expected_batch_size=batch_size, steps=1, max_grad_norm=1.0,
                       noise_multiplier=noise_multiplier, delta=delta, accountant=accountant)


def release_frequency_features(dataset: Dataset, plan: PrivacyPlan, features: FourierFeatures, *, num_classes: int,
                               downsample: int, sampling: SecretStream, noise: SecretStream) -> torch.Tensor:
    """The noisy mean features of each class, [classes, 2 D] (float64): the mechanism of the module's docstring."""
    classes = max(1, num_classes)
    size = getattr(dataset, "planned_size", len(dataset))
    if size != plan.dataset_size or plan.steps != 1 or plan.max_grad_norm != 1.0:
        raise ValueError("the plan must be frequency_plan's for this dataset (one step, sensitivity 1)")
    batch = dataset.batch(poisson_sample(len(dataset), plan.sample_rate, stream=sampling))
    x = pooled(batch["x"], downsample).flatten(1)
    if x.shape[1] != features.dim:
        raise ValueError(f"the feature map takes {features.dim} pixels but the pooled images have {x.shape[1]}")
    labels = batch["y"].long() if num_classes else torch.zeros(len(x), dtype=torch.long)
    if len(labels) and (int(labels.min()) < 0 or int(labels.max()) >= classes):
        raise ValueError(f"a label lies outside [0, {classes}): the private labels must be checked at load")
    sums = torch.zeros(classes, 2 * features.features, dtype=torch.float64).index_add_(0, labels, features(x))
    noisy = sums + plan.noise_multiplier * noise.normal(sums.numel()).view(sums.shape)
    return noisy / (plan.expected_batch_size / classes)


class Generator(nn.Module):
    """A small conditional generator: (z, class) -> a pooled image in [-1, 1], flattened."""

    def __init__(self, dim: int, classes: int, latent: int = 32, hidden: int = 256):
        super().__init__()
        self.latent, self.classes = latent, classes
        self.net = nn.Sequential(nn.Linear(latent + classes, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(),
                                 nn.Linear(hidden, dim), nn.Tanh())

    def forward(self, z: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([z, nn.functional.one_hot(labels, self.classes).to(z.dtype)], dim=1))


def fit_generator(released: torch.Tensor, features: FourierFeatures, *, steps: int, per_class: int = 64,
                  lr: float = 1e-3, seed: int = 0) -> tuple[Generator, list[float]]:
    """Fit a generator to the released mean features (post-processing: reads only ``released`` and the public
    feature map); returns it and its loss per step."""
    g = torch.Generator().manual_seed(seed)
    classes = released.shape[0]
    with torch.random.fork_rng(devices=[]):  # a seeded initialisation that leaves the caller's random state alone
        torch.manual_seed(seed)
        generator = Generator(features.dim, classes)
    optimizer = torch.optim.Adam(generator.parameters(), lr=lr)
    w, target = features.frequencies.float(), released.float()
    labels = torch.arange(classes).repeat_interleave(per_class)
    losses = []
    for _ in range(steps):
        images = generator(torch.randn(len(labels), generator.latent, generator=g), labels)
        means = features(images, w).float().view(classes, per_class, -1).mean(dim=1)
        loss = (means - target).pow(2).sum()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    return generator, losses


@torch.no_grad()
def generated_images(generator: Generator, shape: tuple[int, int, int], per_class: int, seed: int = 0) -> ArrayDataset:
    """``per_class`` images of every class from the fitted generator, [n, c, h, w] at the pooled ``shape``."""
    labels = torch.arange(generator.classes).repeat_interleave(per_class)
    z = torch.randn(len(labels), generator.latent, generator=torch.Generator().manual_seed(seed))
    return ArrayDataset(generator(z, labels).view(len(labels), *shape), labels)
