"""DP frequency features: ||φ(x)|| = 1 for any image (hostile ones too), sensitivity 1 on neighbouring datasets,
Gaussian noise of scale σ over the public count, its DP event, and a generator fitted to the release."""

import math

import pytest
import torch
from scipy import stats

from dpdiffusion.data.dataset import ArrayDataset, DeclaredSize
from dpdiffusion.dpsgd.secret_random import SecretStream
from dpdiffusion.warmup.frequency_features import (
    FourierFeatures,
    fit_generator,
    frequency_plan,
    generated_images,
    release_frequency_features,
)

SHAPE = (1, 4, 4)
FEATURES = FourierFeatures(dim=16, features=64, length_scale=4.0, seed=0)
HOSTILE = [torch.full(SHAPE, 1e6), torch.full(SHAPE, float("nan")), torch.full(SHAPE, -float("inf")), torch.ones(SHAPE)]


def release(dataset, sigma, seed=1, size=30):
    plan = frequency_plan(dataset_size=size, batch_size=size, noise_multiplier=sigma, delta=1e-5)
    return release_frequency_features(DeclaredSize(dataset, size), plan, FEATURES, num_classes=3, downsample=1,
                                      sampling=SecretStream.reproducible_from(seed, b"s"),
                                      noise=SecretStream.reproducible_from(seed, b"n"))


def test_every_image_has_features_of_norm_one():
    x = torch.cat([torch.rand(20, 16) * 2 - 1, torch.full((1, 16), 1e6)])
    assert torch.allclose(FEATURES(x).norm(dim=1), torch.ones(21, dtype=torch.float64))


@pytest.mark.parametrize("record", range(len(HOSTILE)))
def test_one_record_moves_the_release_by_at_most_one(record):
    g = torch.Generator().manual_seed(0)
    base = ArrayDataset(torch.rand(30, *SHAPE, generator=g) * 2 - 1, torch.arange(30) % 3)
    neighbour = ArrayDataset(torch.cat([base.x, HOSTILE[record][None]]), torch.cat([base.y, torch.tensor([2])]))
    a, b = release(base, 1.0), release(neighbour, 1.0)  # the same streams: the noise cancels
    assert float(((b - a) * 10).norm()) <= 1 + 1e-9 and torch.isfinite(b).all()


def test_the_noise_is_gaussian_with_std_sigma_over_the_public_count():
    empty = ArrayDataset(torch.zeros(0, *SHAPE), torch.zeros(0, dtype=torch.long))
    z = (release(empty, 2.5, size=300) * 100 / 2.5).flatten().numpy()
    assert stats.kstest(z, "norm").pvalue > 1e-3


def test_its_event_is_one_poisson_sampled_gaussian_of_sensitivity_one():
    plan = frequency_plan(dataset_size=1000, batch_size=1000, noise_multiplier=10.0, delta=1e-5)
    assert plan.sample_rate == 1.0 and plan.steps == 1 and plan.max_grad_norm == 1.0
    assert 0 < plan.planned_epsilon < 1 and math.isfinite(plan.planned_epsilon)


def test_a_generator_fitted_to_the_release_matches_the_class_means():
    torch.manual_seed(0)
    bright, dark = torch.full((40, *SHAPE), 0.8), torch.full((40, *SHAPE), -0.8)
    data = ArrayDataset(torch.cat([bright, dark, dark]), torch.tensor([0] * 40 + [1] * 40 + [2] * 40))
    released = release(data, 1e-9, size=120)
    generator, losses = fit_generator(released, FEATURES, steps=150, per_class=32)
    assert losses[-1] < 0.2 * losses[0]
    images = generated_images(generator, SHAPE, per_class=16)
    assert images.x.shape == (48, *SHAPE) and images.y.tolist() == [0] * 16 + [1] * 16 + [2] * 16
    assert float(images.x[:16].mean()) > 0.3 > -0.3 > float(images.x[16:].mean())


def test_fitting_the_generator_is_seeded_and_leaves_the_callers_random_state_alone():
    features = FourierFeatures(dim=16, features=8, length_scale=2.0, seed=0)
    released = torch.randn(2, 16, dtype=torch.float64)
    torch.manual_seed(123)
    before = torch.rand(3)
    torch.manual_seed(123)
    a, _ = fit_generator(released, features, steps=2, seed=5)
    assert torch.equal(torch.rand(3), before)
    b, _ = fit_generator(released, features, steps=2, seed=5)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))
