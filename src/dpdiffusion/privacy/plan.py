"""The privacy plan: every setting that changes the guarantee, fixed before training starts."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

from dpdiffusion.privacy.accounting import ACCOUNTANTS, epsilon, noise_multiplier


class PrivacyPlanError(ValueError):
    """The requested privacy settings are invalid or cannot be met."""


def noise_swamps_signal(noise_multiplier: float, expected_batch_size: float) -> str | None:
    """Why the noise swamps the signal, if it does: sigma / B >= 1. The noisy mean adds N(0, (sigma C / B)^2) to
    each coordinate, while the mean of B clipped contributions has norm at most C in all its coordinates
    together; at sigma / B >= 1 the noise of a single coordinate is as large as the whole signal can be, so
    training learns little whatever the step count. (DP-SGD runs that train well have sigma / B near 1e-3, e.g.
    sigma 3 at B 4096.)"""
    ratio = noise_multiplier / expected_batch_size
    if not ratio >= 1:
        return None
    return (f"the noise swamps the signal: sigma / B = {noise_multiplier:.4g} / {expected_batch_size:g} = {ratio:.3g} "
            f">= 1, so each coordinate of the noisy mean gets noise of standard deviation {ratio:.3g} C, while the "
            "mean of the clipped contributions has norm at most C; raise the batch size or epsilon, or take fewer steps")


@dataclass(frozen=True)
class PrivacyPlan:
    """What one DP-SGD run spends, and how.

    The dataset size N enters only through the sample rate q = B / N, fixed here before training, as is
    standard for DP-SGD; the divisor of the noisy sum is the public expected batch size B. ``dataset_size`` is
    the private dataset's size, or a public size N^ declared for it (``privacy.public_dataset_size``): under
    add/remove adjacency N itself is private, and Poisson sampling of every real example with the public
    probability q = B / N^ is the mechanism accounted here whatever N is (the report says which size it is).
    ``noise_multiplier = 0`` with ``max_grad_norm = inf`` describes a non-private control run (epsilon is
    infinite and every report says so).
    """

    dataset_size: int
    expected_batch_size: int
    steps: int
    max_grad_norm: float
    noise_multiplier: float
    delta: float
    multiplicity: int = 1
    accountant: str = "prv"
    target_epsilon: float | None = None

    def __post_init__(self) -> None:
        if self.dataset_size < 1:
            raise PrivacyPlanError(f"the dataset is empty (dataset size {self.dataset_size})")
        if self.expected_batch_size > self.dataset_size:
            raise PrivacyPlanError(
                f"the dataset ({self.dataset_size} examples) is smaller than the expected batch size "
                f"{self.expected_batch_size}: lower privacy.batch_size")
        if self.expected_batch_size < 1:
            raise PrivacyPlanError(f"expected batch size must be >= 1, got {self.expected_batch_size}")
        if self.steps < 0:
            raise PrivacyPlanError(f"steps must be >= 0, got {self.steps}")
        if not self.max_grad_norm > 0:
            raise PrivacyPlanError(f"clip norm C must be > 0, got {self.max_grad_norm}")
        if not (self.noise_multiplier >= 0 and math.isfinite(self.noise_multiplier)):
            raise PrivacyPlanError(f"noise multiplier must be a finite number >= 0, got {self.noise_multiplier}")
        if self.multiplicity < 1:
            raise PrivacyPlanError(f"multiplicity K must be >= 1, got {self.multiplicity}")
        if self.accountant not in ACCOUNTANTS:
            raise PrivacyPlanError(f"unknown accountant {self.accountant!r}; choose one of {', '.join(ACCOUNTANTS)}")
        if not 0 < self.delta < 1 / self.dataset_size:
            raise PrivacyPlanError(
                f"delta {self.delta:g} must lie in (0, 1/N) = (0, {1 / self.dataset_size:.3g}) for N = "
                f"{self.dataset_size}: a larger delta allows releasing a whole record"
            )
        if self.target_epsilon is not None and not (self.target_epsilon > 0 and math.isfinite(self.target_epsilon)):
            raise PrivacyPlanError(f"target epsilon must be a finite number > 0, got {self.target_epsilon}")
        if self.is_private != math.isfinite(self.max_grad_norm):
            raise PrivacyPlanError("a private run needs a finite clip norm C and a noise multiplier > 0")

    @property
    def sample_rate(self) -> float:
        return self.expected_batch_size / self.dataset_size

    @property
    def is_private(self) -> bool:
        return self.noise_multiplier > 0

    def epsilon_after(self, steps: int) -> float:
        if not self.is_private:
            return math.inf if steps > 0 else 0.0
        return epsilon(
            noise_multiplier=self.noise_multiplier,
            sample_rate=self.sample_rate,
            steps=steps,
            delta=self.delta,
            accountant=self.accountant,
        )

    @property
    def planned_epsilon(self) -> float:
        return self.epsilon_after(self.steps)

    def noise_warning(self) -> str | None:
        """Why this plan's noise swamps its signal, if it does (``noise_swamps_signal``)."""
        return noise_swamps_signal(self.noise_multiplier, self.expected_batch_size) if self.is_private else None

    @classmethod
    def calibrated(
        cls,
        *,
        target_epsilon: float,
        delta: float,
        dataset_size: int,
        expected_batch_size: int,
        max_grad_norm: float,
        steps: int | None = None,
        epochs: float | None = None,
        multiplicity: int = 1,
        accountant: str = "prv",
    ) -> PrivacyPlan:
        """The plan whose noise multiplier makes ``steps`` (or ``epochs``) spend at most ``target_epsilon``."""
        steps = steps_for(steps=steps, epochs=epochs, dataset_size=dataset_size, expected_batch_size=expected_batch_size)
        if not (target_epsilon > 0 and math.isfinite(target_epsilon)):
            raise PrivacyPlanError(f"target epsilon must be a finite number > 0, got {target_epsilon}")
        draft = cls(
            dataset_size=dataset_size,
            expected_batch_size=expected_batch_size,
            steps=steps,
            max_grad_norm=max_grad_norm,
            noise_multiplier=1.0,
            delta=delta,
            multiplicity=multiplicity,
            accountant=accountant,
            target_epsilon=target_epsilon,
        )
        sigma = noise_multiplier(
            target_epsilon=target_epsilon,
            sample_rate=draft.sample_rate,
            steps=steps,
            delta=delta,
            accountant=accountant,
        )
        return cls(**{**asdict(draft), "noise_multiplier": sigma})

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "sample_rate": self.sample_rate}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PrivacyPlan:
        names = {f.name for f in fields(cls)}
        values: dict[str, Any] = {k: (math.inf if v == "inf" else v) for k, v in data.items() if k in names}
        return cls(**values)


def steps_for(*, steps: int | None, epochs: float | None, dataset_size: int, expected_batch_size: int) -> int:
    """Steps given directly, or the steps that visit each example ``epochs`` times in expectation."""
    if (steps is None) == (epochs is None):
        raise PrivacyPlanError("give exactly one of steps or epochs")
    if steps is not None:
        return int(steps)
    assert epochs is not None
    if not epochs > 0:
        raise PrivacyPlanError(f"epochs must be > 0, got {epochs}")
    return math.ceil(epochs * dataset_size / expected_batch_size)
