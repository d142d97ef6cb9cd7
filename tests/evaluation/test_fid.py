import dataclasses
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import linalg

from dpdiffusion.evaluation.fid import Statistics, frechet_distance, reference_subset


def reference_fid(a: np.ndarray, b: np.ndarray) -> float:
    """The textbook formula with scipy's matrix square root."""
    mu_a, mu_b = a.mean(0), b.mean(0)
    s_a, s_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = linalg.sqrtm(s_a @ s_b).real
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(s_a + s_b - 2 * covmean))


def test_frechet_distance_matches_the_textbook_formula():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(400, 8)) @ rng.normal(size=(8, 8))
    b = rng.normal(size=(300, 8)) @ rng.normal(size=(8, 8)) + 0.5
    assert frechet_distance(Statistics.of(a), Statistics.of(b)) == pytest.approx(reference_fid(a, b), rel=1e-6)


def test_frechet_distance_of_diagonal_gaussians_has_its_closed_form():
    mu_a, mu_b = np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, 0.0])
    var_a, var_b = np.array([1.0, 4.0, 9.0]), np.array([4.0, 1.0, 1.0])
    a, b = Statistics(mu_a, np.diag(var_a), 10), Statistics(mu_b, np.diag(var_b), 10)
    expected = ((mu_a - mu_b) ** 2).sum() + ((np.sqrt(var_a) - np.sqrt(var_b)) ** 2).sum()
    assert frechet_distance(a, b) == pytest.approx(expected)
    assert frechet_distance(a, a) == pytest.approx(0, abs=1e-9)


def test_singular_covariances_stay_finite_and_non_negative():
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(5, 50)), rng.normal(size=(5, 50))  # fewer samples than dimensions
    value = frechet_distance(Statistics.of(a), Statistics.of(b))
    assert np.isfinite(value) and value >= 0


def test_fixed_reference_subset_and_cache_names():
    from dpdiffusion.evaluation.fid import reference_path

    np.testing.assert_array_equal(reference_subset(100, 10), reference_subset(100, 10))
    assert len(set(reference_subset(100, 10))) == 10
    np.testing.assert_array_equal(reference_subset(100, None), np.arange(100))
    # two image folders (or detectors) of the same size never share cached features
    assert reference_path("imagefolder", "train", 32, 50, "a") != reference_path("imagefolder", "train", 32, 50, "b")


INCEPTION = os.environ.get("DPDIFFUSION_INCEPTION")
DATA = os.environ.get("DPDIFFUSION_DATA_DIR")


@pytest.mark.slow  # 80 s on 2 cores; the evaluate tests run the same detector on every default run
@pytest.mark.skipif(not (INCEPTION and Path(INCEPTION).is_file() and DATA and (Path(DATA) / "mnist").is_dir()),
                    reason="needs the Inception detector and MNIST (DPDIFFUSION_INCEPTION, DPDIFFUSION_DATA_DIR)")
def test_fid_on_mnist_is_small_between_halves_and_large_against_noise_and_blur():
    from dpdiffusion.data.mnist import load_mnist
    from dpdiffusion.evaluation.inception import inception_features, load_detector

    images, _ = load_mnist("test", DATA)
    images = images.permute(0, 2, 3, 1).numpy()
    n = 100
    half_a, half_b = images[:n], images[5000 : 5000 + n]  # disjoint
    noise = np.random.default_rng(0).integers(0, 256, size=half_b.shape, dtype=np.uint8)
    kernel = torch.ones(1, 1, 5, 5) / 25
    blurred = torch.nn.functional.conv2d(torch.from_numpy(half_b).permute(0, 3, 1, 2).float(), kernel, padding=2)
    blurred = blurred.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
    detector = load_detector(INCEPTION)
    features = {name: inception_features(x, detector)
                for name, x in {"a": half_a, "b": half_b, "noise": noise, "blur": blurred}.items()}
    stats = {name: Statistics.of(f) for name, f in features.items()}
    halves = frechet_distance(stats["a"], stats["b"])
    against_noise = frechet_distance(stats["a"], stats["noise"])
    against_blur = frechet_distance(stats["a"], stats["blur"])
    # with 100 images per side FID is inflated (singular covariances), but the order is unambiguous
    assert halves < 80  # 58 here with 100 images per side (the inflation of small samples)
    assert against_noise > 5 * halves and against_blur > 2 * halves
    # precision/recall on the same features: real vs real covers each other, noise covers nothing real
    from dpdiffusion.evaluation.precision_recall import precision_recall

    real = precision_recall(features["a"], features["b"], k=3)
    fake = precision_recall(features["a"], features["noise"], k=3)
    assert real["precision"] > 0.5 and real["recall"] > 0.3  # 100 images per side: k-NN balls are coarse
    assert fake["precision"] < 0.1


class CountingDetector(torch.nn.Module):
    """Stand-in detector: features are a fixed function of each image; counts the images it saw; can fail."""

    def __init__(self, fail_after: int | None = None):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.ones(()))
        self.seen, self.fail_after = 0, fail_after

    def forward(self, x: torch.Tensor, return_features: bool = True) -> torch.Tensor:
        if self.fail_after is not None and self.seen + len(x) > self.fail_after:
            raise KeyboardInterrupt  # a stopped session
        self.seen += len(x)
        return (x.mean(dim=(1, 2, 3), keepdim=False)[:, None] * torch.arange(2048.0)).detach() * self.scale.detach()


def test_reference_features_resume_from_their_last_whole_chunk(tmp_path):
    from dpdiffusion.evaluation.evaluate import _chunked_features

    images = np.random.default_rng(0).integers(0, 255, (8, 4, 4, 1), dtype=np.uint8)
    path = tmp_path / "ref.features.npy"
    with pytest.raises(KeyboardInterrupt):
        _chunked_features(images, CountingDetector(fail_after=7), path, False, "ref", chunk=3)
    assert not path.exists() and len(list(tmp_path.glob(".ref.features.*.npy"))) == 2  # 0-3 and 3-6 kept
    resumed = CountingDetector()
    features = _chunked_features(images, resumed, path, False, "ref", chunk=3)
    assert resumed.seen == 2  # only the last chunk (6-8) was computed again
    np.testing.assert_array_equal(features, _chunked_features(images, CountingDetector(), tmp_path / "all.npy", False,
                                                              "all", chunk=100))
    np.testing.assert_array_equal(np.load(path), features)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["all.npy", "ref.features.npy"]  # chunks removed


def test_reference_features_are_cached_by_their_images_not_by_settings_that_leave_the_images_alone(tmp_path):
    from dpdiffusion.evaluation.evaluate import EvaluationSettings, reference_features
    from dpdiffusion.runconfig import DataConfig

    detector_file = tmp_path / "detector.pt"
    detector_file.write_bytes(b"stand-in")
    settings = EvaluationSettings(inception=str(detector_file), cache=tmp_path / "cache", progress=False)
    images = np.random.default_rng(0).integers(0, 255, (6, 4, 4, 1), dtype=np.uint8)
    first = CountingDetector()
    features, info = reference_features(DataConfig(name="npz", path="a.npz"), settings, first, images=images)
    assert first.seen == 6 and info["cache"] == str(tmp_path / "cache")
    # the same images read through other settings (another folder, class names, a label column): the cached entry
    again = CountingDetector()
    other_settings = DataConfig(name="npz", path="b.npz", data_dir="elsewhere", class_names=tuple("abcdef"))
    np.testing.assert_array_equal(reference_features(other_settings, settings, again, images=images)[0], features)
    assert again.seen == 0
    # one pixel changed, or another detector file: never the cached entry
    changed = images.copy()
    changed[3, 2, 1, 0] ^= 1
    for variant, variant_settings in [(changed, settings),
                                      (images, dataclasses.replace(settings, inception=str(tmp_path / "other.pt")))]:
        Path(variant_settings.inception).write_bytes(b"stand-in")
        detector = CountingDetector()
        reference_features(DataConfig(name="npz", path="a.npz"), variant_settings, detector, images=variant)
        assert detector.seen == len(variant)
    assert len(list((tmp_path / "cache").glob("*.features.npy"))) == 3
