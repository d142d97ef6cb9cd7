"""DP central images: sensitivity Δ on neighbouring datasets (hostile records included), Gaussian noise of
scale σΔ, division by the public expected count, its DP event, and post-processing into a warm-up set."""

import math

import pytest
import torch
from scipy import stats

from dpdiffusion.data.dataset import ArrayDataset, DeclaredSize
from dpdiffusion.dpsgd.secret_random import SecretStream
from dpdiffusion.privacy.composition import ComposedPlan
from dpdiffusion.privacy.plan import PrivacyPlan
from dpdiffusion.warmup.central_images import (
    central_images_plan,
    image_bound,
    pooled,
    release_central_images,
    warmup_images,
)

SHAPE = (1, 8, 8)
CLASSES = 3


def data(n: int, seed: int = 0) -> ArrayDataset:
    g = torch.Generator().manual_seed(seed)
    return ArrayDataset(torch.rand(n, *SHAPE, generator=g) * 2 - 1, torch.arange(n) % CLASSES)


def plan(size: int, batch: int, sigma: float, rounds: int = 1) -> PrivacyPlan:
    return central_images_plan(dataset_size=size, batch_size=batch, rounds=rounds, noise_multiplier=sigma, delta=1e-5,
                               image_shape=SHAPE, downsample=2)


def release(dataset, p, seed=1):
    return release_central_images(dataset, p, num_classes=CLASSES, downsample=2,
                                  sampling=SecretStream.reproducible_from(seed, b"sampling"),
                                  noise=SecretStream.reproducible_from(seed, b"noise")).images.double()


HOSTILE = [torch.full(SHAPE, 1e6), torch.full(SHAPE, -1e6), torch.full(SHAPE, float("nan")),
           torch.full(SHAPE, float("inf")), torch.ones(SHAPE), torch.where(torch.arange(64).view(SHAPE) % 2 == 0, 5.0, -5.0)]


@pytest.mark.parametrize("record", range(len(HOSTILE)))
@pytest.mark.parametrize("sigma", [1e-12, 2.0])  # a plan needs sigma > 0
def test_one_record_moves_the_whole_release_by_at_most_delta(record, sigma):
    """Neighbouring datasets (one hostile record added), one public plan (q = 1 on N^ = 30, the same streams):
    the released class sums differ by at most Δ in L2 over all classes -- the noise cancels, whatever σ."""
    base = data(30)
    neighbour = ArrayDataset(torch.cat([base.x, HOSTILE[record][None]]), torch.cat([base.y, torch.tensor([1])]))
    p = plan(30, 30, sigma)
    a = release(DeclaredSize(base, 30), p)
    b = release(DeclaredSize(neighbour, 30), p)
    expected_per_class = 30 / CLASSES
    moved = float(((b - a) * expected_per_class).norm())
    delta = image_bound((1, 4, 4))
    assert delta == p.max_grad_norm == 4.0
    assert moved <= delta * (1 + 1e-9) and torch.isfinite(b).all()
    if record in (0, 4):  # an all-high image reaches the bound
        assert moved == pytest.approx(delta)


def test_the_divisor_is_the_public_expected_count_not_the_realised_one():
    one = ArrayDataset(torch.ones(1, *SHAPE), torch.tensor([0]))
    images = release(DeclaredSize(one, 30), plan(30, 30, 1e-12))
    # class 0 holds one image of ones: its mean would be 1, but the release divides by B / classes = 10
    assert torch.allclose(images[0, 0], torch.full((1, 4, 4), 0.1, dtype=torch.float64))
    assert torch.allclose(images[0, 1], torch.zeros(1, 4, 4, dtype=torch.float64))


def test_the_noise_is_gaussian_with_std_sigma_delta_over_the_expected_count():
    empty = ArrayDataset(torch.zeros(0, *SHAPE), torch.zeros(0, dtype=torch.long))
    p = plan(300, 30, 1.5, rounds=200)
    images = release(DeclaredSize(empty, 300), p)
    z = (images * (30 / CLASSES) / (1.5 * p.max_grad_norm)).flatten().numpy()
    assert z.size == 200 * CLASSES * 16 and stats.kstest(z, "norm").pvalue > 1e-3


def test_its_event_is_s_poisson_sampled_gaussians_composed_with_dp_sgd():
    p = plan(1000, 100, 5.0, rounds=20)
    assert p.sample_rate == 0.1 and p.steps == 20 and p.max_grad_norm == 4.0
    dpsgd = PrivacyPlan(dataset_size=1000, expected_batch_size=100, steps=50, max_grad_norm=1.0, noise_multiplier=1.0,
                        delta=1e-5)
    composed = ComposedPlan((("central images", p), ("dpsgd", dpsgd)))
    alone = composed.part_epsilon("central images")
    assert 0 < alone < composed.planned_epsilon and composed.part_epsilon("dpsgd") < composed.planned_epsilon
    assert math.isfinite(composed.planned_epsilon)


def test_bad_labels_and_shapes_are_refused():
    bad = ArrayDataset(torch.zeros(2, *SHAPE), torch.tensor([0, CLASSES]))
    with pytest.raises(ValueError, match="outside"):
        release(DeclaredSize(bad, 30), plan(30, 30, 1.0))
    with pytest.raises(ValueError, match="cannot be average-pooled"):
        central_images_plan(dataset_size=10, batch_size=5, rounds=1, noise_multiplier=1.0, delta=1e-5,
                            image_shape=(1, 7, 7), downsample=2)


def test_post_processing_makes_a_labelled_warm_up_set_at_the_model_size():
    images = release(DeclaredSize(data(90), 90), plan(90, 90, 0.5, rounds=4))
    assert images.shape == (4, CLASSES, 1, 4, 4)
    from dpdiffusion.warmup.central_images import CentralImages

    warm = warmup_images(CentralImages(images.float(), 2, plan(90, 90, 0.5, rounds=4)), resolution=8, sharpen=0.5)
    assert warm.x.shape == (4 * CLASSES, 1, 8, 8) and warm.y.tolist() == [0, 1, 2] * 4
    assert warm.x.min() >= -1 and warm.x.max() <= 1
    assert torch.equal(pooled(torch.full((1, 1, 2, 2), float("nan")), 2), torch.zeros(1, 1, 1, 1, dtype=torch.float64))


def test_the_transform_clamps_before_it_pools_so_no_pixel_can_overflow_the_bound():
    """Pixels are clamped, then averaged: a window of two huge positive and two huge negative float64 pixels is 0
    (summed first, it would overflow to inf or, in some orders, inf - inf = NaN)."""
    big = torch.finfo(torch.float64).max
    window = torch.tensor([[big, big], [-big, -big]], dtype=torch.float64)
    x = window.repeat(4, 4)[None, None]  # one 8x8 image of such windows
    out = pooled(x, 2)
    assert torch.equal(out, torch.zeros(1, 1, 4, 4, dtype=torch.float64))
    hostile = torch.stack([window.repeat(4, 4), -window.repeat(4, 4).T, torch.full((8, 8), big, dtype=torch.float64),
                           torch.full((8, 8), float("nan"), dtype=torch.float64)])[:, None]
    out = pooled(hostile, 2)
    assert torch.isfinite(out).all() and float(out.abs().max()) <= 1.0
    assert float(out.flatten(1).norm(dim=1).max()) <= image_bound((1, 4, 4))


@pytest.mark.parametrize("downsample", [0, -2, 2.0, True])
def test_a_downsample_that_is_not_a_whole_number_of_at_least_one_is_refused(downsample):
    """A negative factor once passed the divisibility check and gave the bound of a pooled size while the images
    were not pooled (half the noise)."""
    with pytest.raises(ValueError, match="downsample must be an integer >= 1"):
        central_images_plan(dataset_size=10, batch_size=5, rounds=1, noise_multiplier=1.0, delta=1e-5,
                            image_shape=(1, 28, 28), downsample=downsample)
    with pytest.raises(ValueError, match="downsample must be an integer >= 1"):
        pooled(torch.zeros(1, 1, 28, 28), downsample)


@pytest.mark.parametrize("shape", [(1, 16, 16), (3, 8, 8), (1, 10, 10)])
def test_images_larger_than_the_plan_was_made_for_are_refused_before_any_release(shape):
    """Δ is the plan's (from the model's size); images whose pooled norm can exceed it would get too little noise."""
    larger = ArrayDataset(torch.ones(30, *shape), torch.arange(30) % CLASSES)
    with pytest.raises(ValueError, match="not the size the plan was made for"):
        release(DeclaredSize(larger, 30), plan(30, 30, 1.0))
    empty = ArrayDataset(torch.zeros(0, *shape), torch.zeros(0, dtype=torch.long))  # refused from its shape alone
    with pytest.raises(ValueError, match="not the size the plan was made for"):
        release(DeclaredSize(empty, 30), plan(30, 30, 1.0))
    smaller = ArrayDataset(torch.ones(30, 1, 4, 4), torch.arange(30) % CLASSES)  # a smaller bound: more noise than needed
    assert release(DeclaredSize(smaller, 30), plan(30, 30, 1.0)).shape == (1, CLASSES, 1, 2, 2)
