"""What ``evaluate`` checks before it samples or computes a feature: the metrics and classifiers asked for, the
Inception detector, the real data each metric needs, and whether each classifier takes images of this size. A
problem is a one-line ``ConfigError`` (or ``DetectorError``) naming the setting, raised before minutes of sampling
are spent; what is only a caution (FID on few images, a default classifier too large for the images) is a note
for the terminal and the report."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from dpdiffusion.evaluation.classifiers import CLASSIFIERS, default_classifiers, min_resolution
from dpdiffusion.evaluation.fid import reference_subset
from dpdiffusion.evaluation.inception import FEATURES
from dpdiffusion.runconfig import ConfigError, DataConfig

if TYPE_CHECKING:
    from dpdiffusion.evaluation.evaluate import EvaluationSettings

METRICS = ("fid", "kid", "pr", "acc")
FEATURE_METRICS = ("fid", "kid", "pr")  # on Inception features
Split = tuple[np.ndarray, np.ndarray]  # uint8 images [N, H, W, C], int64 labels [N]


@dataclass(frozen=True)
class Prepared:
    """What the checks loaded, for the evaluation to use: the detector, the real splits, the classifiers that
    will be trained, and the notes (cautions) to print and report."""

    detector: Any = None  # the TorchScript Inception detector when a feature metric is asked for
    reference: Split | None = None  # the FID / KID / precision-recall reference split, whole
    test: Split | None = None  # the downstream classifiers' test split
    train: Split | None = None  # the real training split for the ceiling
    classifiers: tuple[str, ...] = ()
    dropped: dict[str, str] = field(default_factory=dict)  # default classifiers left out: why
    fid_caution: str | None = None

    @property
    def notes(self) -> list[str]:
        return ([self.fid_caution] if self.fid_caution else []) + list(self.dropped.values())


def real_images(data: DataConfig, split: str) -> Split:
    """A real split as uint8 images [N, H, W, C] and labels [N]."""
    from dpdiffusion.data.datasets import load_dataset

    dataset = load_dataset(data, split)
    return dataset.x.permute(0, 2, 3, 1).contiguous().numpy(), dataset.y.numpy()


def _setting(data: DataConfig, split: str) -> str:
    if data.name == "imagefolder":
        return "--test-path" if split == "test" else "--data-path"
    return "--dataset and --data-dir (or $DPDIFFUSION_DATA_DIR)"


def load_real(data: DataConfig, split: str, purpose: str) -> Split:
    """``real_images``, with any failure to load as one line that names the flag to fix."""
    try:
        return real_images(data, split)
    except (ConfigError, OSError, ValueError, RuntimeError) as error:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise ConfigError(f"cannot load the real {data.name} {split} split for {purpose}: {reason} "
                          f"(check {_setting(data, split)})") from error


def fid_caution(synthetic: int, reference: int) -> str | None:
    """A one-line caution when FID rests on fewer images than the feature dimension (singular covariances)."""
    if min(synthetic, reference) >= FEATURES:
        return None
    return (f"FID rests on {synthetic} synthetic and {reference} reference images, fewer than {FEATURES} (the "
            "Inception feature dimension): the covariance estimates are singular and FID is biased upwards by an "
            "amount that depends on the counts; compare FIDs only at equal counts (KID is unbiased at any count)")


def choose_classifiers(settings: EvaluationSettings, height: int, channels: int) -> tuple[tuple[str, ...], dict[str, str]]:
    """The classifiers to train, and the default ones left out because the images are smaller than they take;
    one asked for by name that does not fit is an error."""
    chosen, dropped = [], {}
    for name in settings.classifiers or default_classifiers(channels):
        side = min_resolution(name, channels)
        if height >= side:
            chosen.append(name)
        elif settings.classifiers:
            raise ConfigError(f"--classifiers: {name} needs images of at least {side}x{side}, these are "
                              f"{height}x{height} (leave it out)")
        else:
            dropped[name] = (f"downstream classifier {name} left out: it needs images of at least {side}x{side}, "
                             f"these are {height}x{height}")
    return tuple(chosen), dropped


def prepare(data: DataConfig, settings: EvaluationSettings, *, shape: tuple[int, ...], synthetic: int,
            labelled: bool) -> Prepared:
    """Check everything the evaluation of ``synthetic`` images of ``shape`` (H, W, C) needs, cheapest first, and
    load it: ``labelled`` says whether the images have class labels (else no classifier is trained)."""
    unknown = [m for m in settings.metrics if m not in METRICS]
    if unknown:
        raise ConfigError(f"--metrics: unknown {', '.join(unknown)} (choose from {', '.join(METRICS)})")
    unknown = sorted(set(settings.classifiers or ()) - set(CLASSIFIERS))
    if unknown:
        raise ConfigError(f"--classifiers: unknown {', '.join(unknown)} (choose from {', '.join(CLASSIFIERS)})")
    height, channels = int(shape[0]), int(shape[-1])
    downstream = "acc" in settings.metrics and labelled
    classifiers, dropped = choose_classifiers(settings, height, channels) if downstream else ((), {})
    features = bool(set(FEATURE_METRICS) & set(settings.metrics))
    scored = min(synthetic, settings.fid_num or synthetic)
    if features and scored < 2:  # before the detector is looked for: a count is cheaper to check than a file
        raise ConfigError(f"FID, KID and precision/recall need at least 2 images on each side, got {scored} "
                          f"synthetic (--num, --fid-num)")
    detector = None
    if features:
        from dpdiffusion.evaluation.inception import load_detector

        detector = load_detector(settings.inception)  # a one-line DetectorError naming --inception
    reference = test = train = None
    caution = None
    if features:
        reference = load_real(data, settings.ref_split, "FID, KID and precision/recall (--ref-split)")
        references = len(reference_subset(len(reference[0]), settings.ref_num))
        if references < 2:
            raise ConfigError(f"FID, KID and precision/recall need at least 2 images on each side, got {scored} "
                              f"synthetic and {references} reference (--num, --fid-num, --ref-num)")
        if "fid" in settings.metrics:
            caution = fid_caution(scored, references)
    if classifiers:
        test = load_real(data, "test", "the downstream classifiers")
        _check_shape(test[0], shape, data, "test")
        if synthetic < 10:
            raise ConfigError(f"the downstream classifiers need at least 10 synthetic images, got {synthetic} (--num)")
        if settings.ceiling:
            train = load_real(data, "train", "the real-data ceiling (--no-ceiling skips it)")
    return Prepared(detector=detector, reference=reference, test=test, train=train, classifiers=classifiers,
                    dropped=dropped, fid_caution=caution)


def _check_shape(real: np.ndarray, shape: tuple[int, ...], data: DataConfig, split: str) -> None:
    if tuple(real.shape[1:]) != tuple(shape):
        have, want = "x".join(map(str, shape)), "x".join(map(str, real.shape[1:]))
        raise ConfigError(f"synthetic images are {have} (height x width x channels) but {data.name} {split} images "
                          f"are {want}: give the matching dataset and resolution")
