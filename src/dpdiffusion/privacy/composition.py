"""A run's plan: every DP stage on the same private dataset -- DPDM's DP-SGD, DP-SAD's teacher, student and
discriminator, a DP start trained earlier on the same data -- composed by the accountant as one sequence of
events (never by adding epsilons), with one noise scale calibrated so that the composition meets a total target.

Each part is an ordinary ``PrivacyPlan`` (its own q, C, K, steps and sigma) with no target of its own; each
part draws its own Poisson batches, so the parts are independent mechanisms and their composition is exact.
``fixed`` parts were spent before this run (a DP start): they count in full and keep their sigma.
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
    fixed: tuple[str, ...] = ()  # parts spent before this run: counted in full, never rescaled

    def __post_init__(self) -> None:
        names = [name for name, _ in self.parts]
        if not names or len(set(names)) != len(names):
            raise PrivacyPlanError(f"a composed plan needs parts with distinct names, got {names}")
        plans = [plan for _, plan in self.parts]
        for key in ("delta", "dataset_size", "accountant"):
            values = {getattr(p, key) for p in plans}
            if len(values) > 1:
                raise PrivacyPlanError(f"the composed parts disagree on {key}: {sorted(values)}")
        if set(self.fixed) - set(names):
            raise PrivacyPlanError(f"fixed parts {sorted(set(self.fixed) - set(names))} are not parts of the plan")
        if any(p.target_epsilon is not None for p in plans):
            raise PrivacyPlanError("the parts of a composed plan have no targets of their own: the total has one")

    @classmethod
    def single(cls, name: str, plan: PrivacyPlan) -> ComposedPlan:
        """One DP stage: ``plan`` as the only part, its target the total's."""
        return cls(((name, dataclasses.replace(plan, target_epsilon=None)),), target_epsilon=plan.target_epsilon)

    @property
    def delta(self) -> float:
        return self.parts[0][1].delta

    @property
    def accountant(self) -> str:
        return self.parts[0][1].accountant

    def plan(self, name: str) -> PrivacyPlan:
        return dict(self.parts)[name]

    def events(self, steps: Mapping[str, int] | None = None) -> list[SampledGaussian]:
        """One event per part, after ``steps[name]`` steps of it (default, and always for a fixed part: all
        its planned steps)."""
        return [SampledGaussian(plan.noise_multiplier, plan.sample_rate,
                                plan.steps if steps is None or name in self.fixed else steps[name])
                for name, plan in self.parts]

    def part_epsilon(self, name: str) -> float:
        """The epsilon of one part alone over its planned steps (its share; shares do not add up to the total,
        which the accountant composes tighter)."""
        plan = self.plan(name)
        return composed_epsilon([SampledGaussian(plan.noise_multiplier, plan.sample_rate, plan.steps)],
                                delta=self.delta, accountant=self.accountant)

    def epsilon(self, steps: Mapping[str, int] | None = None) -> float:
        """The total epsilon at delta of all parts composed (infinite if a non-private part took a step)."""
        return composed_epsilon(self.events(steps), delta=self.delta, accountant=self.accountant)

    @property
    def planned_epsilon(self) -> float:
        return self.epsilon()

    def to_dict(self) -> dict[str, Any]:
        described: dict[str, Any] = {"target_epsilon": self.target_epsilon, "delta": self.delta, "accountant": self.accountant,
                     "parts": {name: plan.to_dict() for name, plan in self.parts}}
        if self.fixed:
            described["fixed"] = list(self.fixed)
        return described

    @classmethod
    def calibrated(cls, *, target_epsilon: float, parts: Sequence[tuple[str, PrivacyPlan]],
                   fixed: Sequence[str] = ()) -> ComposedPlan:
        """Scale every part's noise multiplier by one factor s -- each part's ``noise_multiplier`` is read as its
        relative noise level; ``fixed`` parts keep theirs -- to the smallest s whose composition spends at most
        ``target_epsilon``."""
        if not (target_epsilon > 0 and math.isfinite(target_epsilon)):
            raise PrivacyPlanError(f"target epsilon must be a finite number > 0, got {target_epsilon}")
        drafts = cls(tuple(parts), fixed=tuple(fixed))
        if any(not plan.is_private for _, plan in parts):
            raise PrivacyPlanError("every part of a calibrated plan needs a relative noise level > 0")
        if fixed:
            already = cls(tuple((n, p) for n, p in drafts.parts if n in fixed)).planned_epsilon
            if already >= target_epsilon:
                raise PrivacyPlanError(f"{', '.join(fixed)} already spent epsilon {already:.4g} on this data, at or "
                                       f"above the target {target_epsilon:g}: nothing is left for this run")

        def scaled(s: float) -> ComposedPlan:
            return cls(tuple((name, plan if name in drafts.fixed else
                              dataclasses.replace(plan, noise_multiplier=plan.noise_multiplier * s))
                             for name, plan in drafts.parts), fixed=drafts.fixed)

        def epsilon_at(accountant: str):
            return lambda s: composed_epsilon(scaled(s).events(), delta=drafts.delta, accountant=accountant)

        try:  # RDP bounds the tight accountants from above: its scale is feasible, a tight start for the search
            s = calibrate(epsilon_at("rdp"), target_epsilon=target_epsilon)
        except ValueError as error:
            if not fixed:
                raise
            raise PrivacyPlanError(f"{', '.join(fixed)} already spent epsilon {already:.4g} on this data, too close to "
                                   f"the target {target_epsilon:g} to leave room for this run") from error
        if drafts.accountant != "rdp":
            s = calibrate(epsilon_at(drafts.accountant), target_epsilon=target_epsilon, initial_guess=s)
        return dataclasses.replace(scaled(s), target_epsilon=target_epsilon)
