"""The privacy ledger: what a run has spent, advanced exactly once per DP step, saved in every checkpoint."""

from __future__ import annotations

import datetime
import os
from importlib import metadata
from pathlib import Path
from typing import Any

from dpdiffusion.io import json_safe, write_json_atomic
from dpdiffusion.privacy.plan import PrivacyPlan
from dpdiffusion.privacy.report import PrivacyReport, Spent


class PrivacyBudgetError(RuntimeError):
    """A step would go past the planned steps or the target epsilon."""


class LedgerMismatchError(ValueError):
    """A saved ledger belongs to a run with other privacy settings."""


def _library_versions() -> dict[str, str]:
    versions = {}
    for name in ("dpdiffusion", "opacus", "dp-accounting", "torch"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "unknown"
    return versions


def written_with() -> dict[str, Any]:
    """What every privacy report records about how it was made: library versions and the time."""
    return {"libraries": _library_versions(),
            "written": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}


class PrivacyLedger:
    """Counts DP steps against a ``PrivacyPlan`` and reports the epsilon spent."""

    def __init__(self, plan: PrivacyPlan):
        self.plan = plan
        self.steps_taken = 0
        self._epsilon_cache: dict[int, float] = {}
        if plan.target_epsilon is not None and self.planned_epsilon() > plan.target_epsilon:
            raise PrivacyBudgetError(
                f"the plan spends epsilon {self.planned_epsilon():.4g} over {plan.steps} steps, more than its "
                f"target {plan.target_epsilon:g}; raise the noise multiplier or take fewer steps"
            )

    def planned_epsilon(self) -> float:
        if self.plan.steps not in self._epsilon_cache:
            self._epsilon_cache[self.plan.steps] = self.plan.planned_epsilon
        return self._epsilon_cache[self.plan.steps]

    def check_can_step(self) -> None:
        if self.steps_taken >= self.plan.steps:
            raise PrivacyBudgetError(
                f"the run has taken all {self.plan.steps} planned steps; another step would exceed the budget"
            )

    def record_step(self) -> None:
        """Count one DP step (call once per noisy update, after it is applied)."""
        self.check_can_step()
        self.steps_taken += 1

    def epsilon_spent(self) -> float:
        steps = self.steps_taken
        if steps not in self._epsilon_cache:
            self._epsilon_cache[steps] = self.plan.epsilon_after(steps)
        return self._epsilon_cache[steps]

    def report(self) -> PrivacyReport:
        """The plan and the spend: what may be released next to the model."""
        report = PrivacyReport(private=self.plan.is_private, plan=json_safe(self.plan.to_dict()),
                               planned_epsilon=self.planned_epsilon(),
                               spent=Spent(epsilon=self.epsilon_spent(), delta=self.plan.delta, steps=self.steps_taken),
                               accountant=self.plan.accountant, **written_with())
        if not self.plan.is_private:
            return report.not_private("NOT differentially private: no clipping and no noise (a non-private control run)")
        return report

    def write(self, path: str | os.PathLike) -> None:
        """Write the report as JSON, atomically."""
        write_json_atomic(Path(path), self.report().to_dict())

    def state_dict(self) -> dict[str, Any]:
        return json_safe({"plan": self.plan.to_dict(), "steps_taken": self.steps_taken})

    def load_state_dict(self, state: dict[str, Any]) -> None:
        saved, current = PrivacyPlan.from_dict(state["plan"]).to_dict(), self.plan.to_dict()
        differing = [name for name in saved if saved[name] != current[name]]
        if differing:
            changes = ", ".join(f"{n}: {saved[n]!r} -> {current[n]!r}" for n in differing)
            raise LedgerMismatchError(f"cannot resume with changed privacy settings ({changes})")
        steps = int(state["steps_taken"])
        if not 0 <= steps <= self.plan.steps:
            raise LedgerMismatchError(f"saved ledger has {steps} steps, outside [0, {self.plan.steps}]")
        self.steps_taken = steps
