"""``dpdiffusion evaluate``: the metrics of a synthetic set (from a run's released model, or a samples file)
against a real dataset, written as metrics.json and a report. What they need is checked and loaded first
(``checks.prepare``), so that a missing detector or dataset fails before any sampling.

Everything here runs on the data owner's side: FID against the training split and the ceiling classifier are
computed from private data without noise, and the report says so."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from dpdiffusion.evaluation.checks import METRICS, Prepared, prepare, real_images
from dpdiffusion.evaluation.classifiers import ClassifierSettings, train_and_test
from dpdiffusion.evaluation.fid import Statistics, frechet_distance, reference_path, reference_subset
from dpdiffusion.evaluation.kid import SUBSET_SIZE, SUBSETS, kernel_inception_distance
from dpdiffusion.evaluation.precision_recall import precision_recall
from dpdiffusion.run_folder import RunFolder
from dpdiffusion.runconfig import ConfigError, DataConfig

__all__ = ["METRICS", "EvaluationSettings", "cached_features", "evaluate", "images_source", "load_samples", "read_log",
           "real_images", "reference_features"]


@dataclass(frozen=True)
class EvaluationSettings:
    metrics: tuple[str, ...] = METRICS
    num: int = 60000  # synthetic images to generate from a run folder (DPDM: 60k; a samples file is used whole)
    seed: int = 0
    ref_split: str = "train"  # FID / precision-recall reference split
    ref_num: int | None = None  # reference images: None = the whole split
    fid_num: int | None = None  # synthetic images for FID, KID and precision/recall: None = all
    pr_k: int = 3
    pr_num: int = 10000  # at most this many images on each side for precision/recall (k-NN is quadratic)
    kid_subsets: int = SUBSETS  # KID: the mean and std of the unbiased MMD^2 over this many pairs of subsets
    kid_subset_size: int = SUBSET_SIZE  # of min(this, synthetic, reference) images each
    classifiers: tuple[str, ...] | None = None  # None: default_classifiers(channels)
    classifier: ClassifierSettings = field(default_factory=ClassifierSettings)
    ceiling: bool = True  # also train each classifier on the real training split
    inception: str | None = None
    progress: bool = True
    cache: Path | None = None  # reference features' cache: None = the shared one; a run's: RUN_DIR/owner/cache


def load_samples(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """``images`` uint8 [N, H, W, C] and ``labels`` int64 [N] from a samples file (no pickles)."""
    try:
        with np.load(path, allow_pickle=False) as data:
            images, labels = data["images"], data["labels"]
    except KeyError as error:
        raise ConfigError(f"{path}: a samples file needs arrays 'images' and 'labels'") from error
    except (OSError, ValueError) as error:
        raise ConfigError(f"{path}: not a readable .npz samples file ({error})") from error
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] not in (1, 3):
        raise ConfigError(f"{path}: 'images' must be uint8 [N, H, W, 1 or 3], got {images.dtype} {images.shape}")
    if labels.ndim != 1 or len(labels) != len(images):
        raise ConfigError(f"{path}: 'labels' must have one entry per image, got {labels.shape} for {len(images)}")
    if len(images) == 0:
        raise ConfigError(f"{path}: holds no images")
    return images, labels.astype(np.int64)


def reference_features(data: DataConfig, settings: EvaluationSettings, detector,
                       images: np.ndarray | None = None) -> tuple[np.ndarray, dict]:
    """Inception features of the reference images (``images``: the split, already loaded), cached in
    ``settings.cache`` per (the reference images' bytes, split, resolution, count, detector file): a data setting
    that does not change the images keeps the entry, one that does cannot reuse it; the info names the cache."""
    if images is None:
        images, _ = real_images(data, settings.ref_split)
    subset = reference_subset(len(images), settings.ref_num)
    path = reference_cache_path(data, settings, images[subset])
    features = cached_features(images[subset], detector, path, progress=settings.progress,
                               desc=f"reference {data.name} {settings.ref_split}")
    features = features.astype(np.float64)  # cached or not: the same float32-rounded features
    info = {"dataset": data.name, "split": settings.ref_split, "images": len(subset), "of": len(images),
            "resolution": int(images.shape[1]), "cache": str(path.parent)}  # `dpdiffusion clear-cache` removes them
    return features, info


def reference_cache_path(data: DataConfig, settings: EvaluationSettings, chosen: np.ndarray) -> Path:
    """Where ``reference_features`` caches the features of the reference images ``chosen`` (uint8 [N, H, W, C]):
    the name hashes their bytes and shape with the detector file's path and size."""
    source = images_source(chosen, settings.inception)
    return reference_path(data.name, settings.ref_split, chosen.shape[1], len(chosen), source, settings.cache)


def images_source(images: np.ndarray, inception: str | None = None) -> str:
    """What identifies the features of ``images``: a hash of their bytes and shape, and the detector file's path
    and size (a cache entry's name hashes it)."""
    from dpdiffusion.evaluation.inception import detector_path

    detector_file = detector_path(inception)
    images = np.ascontiguousarray(images)
    digest = hashlib.sha256(repr((images.dtype.str, images.shape)).encode())
    digest.update(images.data)  # C-contiguous: hashed in place
    return json.dumps([digest.hexdigest(), str(detector_file.resolve()), detector_file.stat().st_size])


def cached_features(images: np.ndarray, detector, path: Path, *, progress: bool = False,
                    desc: str = "Inception features") -> np.ndarray:
    """The Inception features of ``images`` from ``path``, else computed into it chunk by chunk (a stopped
    computation resumes from its last whole chunk); float32-rounded either way."""
    if path.exists():
        return np.load(path, allow_pickle=False)
    return _chunked_features(images, detector, path, progress, desc)


def _chunked_features(images: np.ndarray, detector, path: Path, progress: bool, desc: str,
                      chunk: int = 5000) -> np.ndarray:
    """Features of ``images`` saved ``chunk`` images at a time beside ``path`` (a stopped computation of a large
    reference resumes from its last whole chunk), then joined into ``path`` and the chunks removed."""
    from dpdiffusion.evaluation.inception import inception_features

    path.parent.mkdir(parents=True, exist_ok=True)
    parts = []
    for start in range(0, len(images), chunk):
        part = path.with_name(f".{path.stem}.{start}-{min(start + chunk, len(images))}.npy")
        if not part.exists():
            features = inception_features(images[start : start + chunk], detector, progress=progress,
                                          desc=f"{desc} {start:,}+").astype(np.float32)
            tmp = part.with_name(f"{part.stem}.tmp.npy")
            np.save(tmp, features)
            tmp.replace(part)
        parts.append(part)
    features = np.concatenate([np.load(p, allow_pickle=False) for p in parts]) if parts else np.zeros((0, 2048), np.float32)
    tmp = path.with_name(f".{path.name}.tmp.npy")
    np.save(tmp, features)
    tmp.replace(path)
    for part in parts:
        part.unlink()
    return features


def evaluate(images: np.ndarray, labels: np.ndarray, data: DataConfig, settings: EvaluationSettings,
             num_classes: int, prepared: Prepared | None = None) -> dict:
    """The chosen metrics of ``images`` against ``data``, from what ``checks.prepare`` checked and loaded (done
    here when not given); unknown metrics are a ConfigError."""
    if prepared is None:
        prepared = prepare(data, settings, shape=images.shape[1:], synthetic=len(images), labelled=bool((labels >= 0).all()))
    results: dict = {"synthetic": {"images": len(images), "shape": list(images.shape[1:])}}
    if prepared.detector is not None:
        from dpdiffusion.evaluation.inception import inception_features

        reference_images = prepared.reference[0] if prepared.reference is not None else None
        real, reference = reference_features(data, settings, prepared.detector, reference_images)
        scored = images[: settings.fid_num] if settings.fid_num else images
        fake = inception_features(scored, prepared.detector, progress=settings.progress, desc="synthetic")
        fake = fake.astype(np.float32).astype(np.float64)  # rounded like the cached reference features
        if "fid" in settings.metrics:
            results["fid"] = {"value": frechet_distance(Statistics.of(fake), Statistics.of(real)),
                              "reference": reference, "synthetic_images": len(scored)}
            if prepared.fid_caution:
                results["fid"]["caution"] = prepared.fid_caution
        if "kid" in settings.metrics:  # the same features: no second pass of the detector
            results["kid"] = {**kernel_inception_distance(fake, real, subsets=settings.kid_subsets,
                                                          subset_size=settings.kid_subset_size, seed=settings.seed),
                              "reference": reference, "synthetic_images": len(scored)}
        if "pr" in settings.metrics:
            rng = np.random.default_rng(settings.seed)
            pick = lambda f: f[np.sort(rng.permutation(len(f))[: settings.pr_num])]  # noqa: E731
            results["precision_recall"] = {**precision_recall(pick(real), pick(fake), k=settings.pr_k),
                                           "real_images": min(len(real), settings.pr_num),
                                           "synthetic_images": min(len(fake), settings.pr_num)}
    if "acc" in settings.metrics:
        results["downstream"] = downstream(images, labels, data, settings, num_classes, prepared)
    return results


def downstream(images: np.ndarray, labels: np.ndarray, data: DataConfig, settings: EvaluationSettings,
               num_classes: int, prepared: Prepared) -> dict:
    if (labels < 0).any():
        return {"skipped": "the synthetic images have no class labels (an unconditional model)"}
    if prepared.test is None:
        return {"skipped": "no downstream classifier takes images of this size", "left_out": dict(prepared.dropped)}
    test_images, test_labels = prepared.test
    num_classes = max(num_classes, int(test_labels.max()) + 1)
    if (labels >= num_classes).any():
        raise ConfigError(f"synthetic labels must lie in [0, {num_classes}) for {data.name}")
    out: dict = {"test_split": f"{data.name} test", "test_images": len(test_images), "classifiers": {}}
    if prepared.dropped:
        out["left_out"] = dict(prepared.dropped)
    train = prepared.train
    for name in prepared.classifiers:
        entry = {"synthetic": train_and_test(name, images, labels, test_images, test_labels, num_classes=num_classes,
                                             settings=settings.classifier, progress=settings.progress)}
        if train is not None:
            entry["real_ceiling"] = train_and_test(name, *train, test_images, test_labels, num_classes=num_classes,
                                                   settings=settings.classifier, progress=settings.progress)
        out["classifiers"][name] = entry
    return out


def read_log(run_dir: Path) -> list[dict]:
    """The owner's training log (one JSON object per logged step); empty if there is none."""
    path = RunFolder(run_dir).log
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a line cut short by a crash
    return rows
