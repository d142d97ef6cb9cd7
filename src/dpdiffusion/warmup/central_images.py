"""DP central images (DP-FETA's spatial warm-up, Li et al., IEEE S&P 2025): noisy class-wise mean images,
released cheaply before DP-SGD and used as a small labelled warm-up set.

The mechanism, per round s = 1..S:
1. a Poisson sample of the private dataset at the public rate q = B / N (every example independently);
2. a fixed, data-independent transform of each selected image (average-pool by ``downsample``, pixels clamped
   to [-1, 1], non-finite pixels set to 0), so that one image's L2 norm is at most Δ = sqrt(c h w) of the
   pooled size (``image_bound``);
3. per class, the sum of the transformed images; all classes' sums together are one vector, to which
   N(0, σ² Δ²) is added in every coordinate (one record is one image in one class: it changes one class's sum by
   at most Δ, so the whole release has L2 sensitivity Δ);
4. each noisy class sum divided by the class's *public* expected count, B / classes (never the realised count,
   which is an un-noised function of the data).

Its DP event is S Poisson-sampled Gaussians at (q, σ): a ``PrivacyPlan`` with ``max_grad_norm = Δ`` and
``steps = S``, composed with the run's other stages by the accountant like any DP-SGD stage. The randomness is the
mechanism's secret streams (``dpsgd.secret_random``). Everything after the release (``warmup_images``) is
post-processing: it reads only the released tensor.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from dpdiffusion.data.dataset import ArrayDataset, Dataset
from dpdiffusion.dpsgd.batch_selection import poisson_sample
from dpdiffusion.dpsgd.secret_random import SecretStream
from dpdiffusion.privacy.plan import PrivacyPlan


@dataclass(frozen=True)
class CentralImages:
    """The released central images: ``images`` [rounds, classes, c, h, w] (pooled size, float64 as the
    mechanism formed them, model range [-1, 1] before clamping), and what produced them (all public)."""

    images: torch.Tensor
    downsample: int
    plan: PrivacyPlan


def pooled(x: torch.Tensor, downsample: int) -> torch.Tensor:
    """The fixed transform: non-finite pixels to 0 (infinities to +-1), pixels clamped to [-1, 1], average-pooled
    by ``downsample`` (an integer >= 1), clamped again (a mean of values in [-1, 1] may round past them)."""
    check_downsample(downsample)
    x = torch.nan_to_num(x.to(torch.float64), nan=0.0, posinf=1.0, neginf=-1.0).clamp(-1.0, 1.0)
    if downsample > 1:
        x = F.avg_pool2d(x, downsample)
    return x.clamp(-1.0, 1.0)


def check_downsample(downsample: int) -> None:
    if isinstance(downsample, bool) or not isinstance(downsample, int) or downsample < 1:
        raise ValueError(f"downsample must be an integer >= 1, got {downsample!r}")


def image_bound(shape: tuple[int, ...]) -> float:
    """Δ: the largest L2 norm of one transformed image of ``shape`` (c, h, w), pixels in [-1, 1]."""
    return math.sqrt(math.prod(shape))


def central_images_plan(*, dataset_size: int, batch_size: int, rounds: int, noise_multiplier: float, delta: float,
                        image_shape: tuple[int, int, int], downsample: int, accountant: str = "prv") -> PrivacyPlan:
    """The DP event of the release as a plan: S Poisson-sampled Gaussians with sensitivity Δ of the pooled size."""
    check_downsample(downsample)
    c, h, w = image_shape
    if h % downsample or w % downsample:
        raise ValueError(f"images of {h}x{w} cannot be average-pooled by {downsample}")
    bound = image_bound((c, h // downsample, w // downsample))
    return PrivacyPlan(dataset_size=dataset_size, expected_batch_size=batch_size, steps=rounds, max_grad_norm=bound,
                       noise_multiplier=noise_multiplier, delta=delta, accountant=accountant)


def release_central_images(dataset: Dataset, plan: PrivacyPlan, *, num_classes: int, downsample: int,
                           sampling: SecretStream, noise: SecretStream) -> CentralImages:
    """Run the mechanism of the module's docstring for ``plan.steps`` rounds. ``num_classes`` 0: one class (an
    unconditional model). A label outside [0, classes) is refused (the loaders check labels before this), and so
    are images whose pooled size would let one image's norm exceed the plan's Δ (images of another size than the
    plan was made for: its noise would be too small)."""
    classes = max(1, num_classes)
    if getattr(dataset, "planned_size", len(dataset)) != plan.dataset_size:
        raise ValueError(f"the plan is for a dataset of {plan.dataset_size} examples, and this one is planned for "
                         "another size (declare the same public size for both)")
    expected_per_class = plan.expected_batch_size / classes  # public
    rounds = []
    for _ in range(plan.steps):
        batch = dataset.batch(poisson_sample(len(dataset), plan.sample_rate, stream=sampling))
        x = pooled(batch["x"], downsample)
        shape = tuple(x.shape[1:])  # the images' size is public (the same for an empty sample)
        if image_bound(shape) > plan.max_grad_norm * (1 + 1e-12):
            raise ValueError(f"the pooled images are {'x'.join(map(str, shape))}, whose norm bound "
                             f"{image_bound(shape):.4g} exceeds the plan's sensitivity {plan.max_grad_norm:.4g}: "
                             "the images are not the size the plan was made for")
        labels = batch["y"].long() if num_classes else torch.zeros(len(x), dtype=torch.long)
        if len(labels) and (int(labels.min()) < 0 or int(labels.max()) >= classes):
            raise ValueError(f"a label lies outside [0, {classes}): the private labels must be checked at load")
        sums = torch.zeros(classes, *x.shape[1:], dtype=torch.float64).index_add_(0, labels, x)
        std = plan.noise_multiplier * plan.max_grad_norm
        noisy = sums + std * noise.normal(sums.numel()).view(sums.shape)
        rounds.append(noisy / expected_per_class)
    return CentralImages(torch.stack(rounds), downsample, plan)


def warmup_images(released: CentralImages, resolution: int, sharpen: float = 0.0) -> ArrayDataset:
    """Post-processing of a release into a labelled warm-up set at the model's ``resolution``: clamp to [-1, 1],
    up-sample (bilinear), optionally sharpen (unsharp mask with weight ``sharpen``), clamp again. One image per
    (round, class), labelled by its class."""
    images = released.images.clamp(-1.0, 1.0).to(torch.float32)
    rounds, classes = images.shape[:2]
    x = images.reshape(rounds * classes, *images.shape[2:])
    x = F.interpolate(x, size=(resolution, resolution), mode="bilinear", align_corners=False)
    if sharpen:
        blurred = F.avg_pool2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
        x = x + sharpen * (x - blurred)
    y = torch.arange(classes).repeat(rounds)
    return ArrayDataset(x.clamp(-1.0, 1.0), y)
