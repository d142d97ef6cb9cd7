"""Several DP-SGD mechanisms on the same private dataset -- DP-SAD's teacher, student and discriminator --
composed by the accountant as one sequence of events (never by adding epsilons), with one noise scale
calibrated so that the composition meets a total target.

Each part is an ordinary ``PrivacyPlan`` (its own q, C, K, steps and sigma) with no target of its own; each
part draws its own Poisson batches, so the parts are independent mechanisms and their composition is exact.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from dpdiffusion.privacy.accounting import SampledGaussian, calibrate, composed_epsilon
from dpdiffusion.privacy.plan import PrivacyPlan, PrivacyPlanError


@dataclass(frozen=True)
class ComposedPlan:
    parts: tuple[tuple[str, PrivacyPlan], ...]
    target_epsilon: float | None = None

    def __post_init__(self) -> None:
        names = [name for name, _ in self.parts]
        if not names or len(set(names)) != len(names):
            raise PrivacyPlanError(f"a composed plan needs parts with distinct names, got {names}")
        plans = [plan for _, plan in self.parts]
        for key in ("delta", "dataset_size", "accountant"):
            values = {getattr(p, key) for p in plans}
            if len(values) > 1:
                raise PrivacyPlanError(f"the composed parts disagree on {key}: {sorted(values)}")
        if any(p.target_epsilon is not None for p in plans):
            raise PrivacyPlanError("the parts of a composed plan have no targets of their own: the total has one")

    @property
    def delta(self) -> float:
        return self.parts[0][1].delta

    @property
    def accountant(self) -> str:
        return self.parts[0][1].accountant

    def plan(self, name: str) -> PrivacyPlan:
        return dict(self.parts)[name]

    def events(self, steps: Mapping[str, int] | None = None) -> list[SampledGaussian]:
        """One event per part, after ``steps[name]`` steps of it (default: all its planned steps)."""
        return [SampledGaussian(plan.noise_multiplier, plan.sample_rate, plan.steps if steps is None else steps[name])
                for name, plan in self.parts]

    def epsilon(self, steps: Mapping[str, int] | None = None) -> float:
        """The total epsilon at delta of all parts composed (infinite if a non-private part took a step)."""
        return composed_epsilon(self.events(steps), delta=self.delta, accountant=self.accountant)

    @property
    def planned_epsilon(self) -> float:
        return self.epsilon()

    def to_dict(self) -> dict[str, Any]:
        return {"target_epsilon": self.target_epsilon, "delta": self.delta, "accountant": self.accountant,
                "parts": {name: plan.to_dict() for name, plan in self.parts}}

    @classmethod
    def calibrated(cls, *, target_epsilon: float, parts: Sequence[tuple[str, PrivacyPlan]]) -> ComposedPlan:
        """Scale every part's noise multiplier by one factor s -- each part's ``noise_multiplier`` is read as its
        relative noise level -- to the smallest s whose composition spends at most ``target_epsilon``."""
        if not (target_epsilon > 0 and math.isfinite(target_epsilon)):
            raise PrivacyPlanError(f"target epsilon must be a finite number > 0, got {target_epsilon}")
        drafts = cls(tuple(parts))
        if any(not plan.is_private for _, plan in parts):
            raise PrivacyPlanError("every part of a calibrated plan needs a relative noise level > 0")

        def scaled(s: float) -> ComposedPlan:
            return cls(tuple((name, dataclasses.replace(plan, noise_multiplier=plan.noise_multiplier * s))
                             for name, plan in drafts.parts))

        def epsilon_at(accountant: str):
            return lambda s: composed_epsilon(scaled(s).events(), delta=drafts.delta, accountant=accountant)

        # RDP bounds the tight accountants from above: its scale is feasible, a tight start for the search
        s = calibrate(epsilon_at("rdp"), target_epsilon=target_epsilon)
        if drafts.accountant != "rdp":
            s = calibrate(epsilon_at(drafts.accountant), target_epsilon=target_epsilon, initial_guess=s)
        return dataclasses.replace(scaled(s), target_epsilon=target_epsilon)
