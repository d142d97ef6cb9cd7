"""A run is an ordered list of stages; the DP stages' events compose in one plan.

Each ``Stage`` has a name, the data it reads (public data, the private data, or nothing: a given start), its DP
event (its ``PrivacyPlan``: a Poisson-sampled Gaussian over its steps; none for a stage that reads no private
data) and its output. The run's ``ComposedPlan`` (``privacy.composition``) holds every DP stage's plan: one
accountant call composes them, one noise scale is calibrated for the total, and the privacy report lists
each stage with its share and the total.

Finished stages are recorded in the owner's ``stages.json`` with their plan, the settings their output depends on,
and the output's sha256. A resume reuses a finished stage only if all three still match; otherwise one error
names the stage and the setting that differs -- a release never composes settings other than those it was
trained with.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from dpdiffusion.io import json_safe, write_json_atomic
from dpdiffusion.privacy.composition import ComposedPlan
from dpdiffusion.privacy.ledger import LedgerMismatchError
from dpdiffusion.privacy.plan import PrivacyPlan
from dpdiffusion.run_folder import RunFolder

Reads = Literal["public", "private", "private-without-privacy", "release", "nothing"]  # release: an earlier DP release


class StageMismatchError(LedgerMismatchError):
    """A finished stage was made with other settings (or its output changed) than the configuration says."""


@dataclass(frozen=True)
class Stage:
    name: str
    reads: Reads
    plan: PrivacyPlan | None = None  # its DP event; None: it reads no private data (or is reported NOT private)
    settings: Mapping[str, Any] = field(default_factory=dict)  # what else its output depends on (config keys)
    spent_before: bool = False  # a DP start trained before this run on the same private data

    def __post_init__(self) -> None:
        if self.reads == "private" and self.plan is None:
            raise ValueError(f"stage {self.name} reads the private data and needs a DP plan")

    def describe(self, composed: ComposedPlan | None, sha256: str | None = None) -> dict[str, Any]:
        described: dict[str, Any] = {"name": self.name, "reads": self.reads}
        if self.plan is not None and composed is not None:
            plan = composed.plan(self.name)
            described["dp"] = {"noise_multiplier": plan.noise_multiplier, "sample_rate": plan.sample_rate,
                               "steps": plan.steps, "max_grad_norm": plan.max_grad_norm,
                               "epsilon_alone": composed.part_epsilon(self.name)}
            if self.spent_before:
                described["dp"]["spent_before_this_run"] = True
        if sha256:
            described["output_sha256"] = sha256
        return described


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class StageRecords:
    """The owner's record of finished stages (``owner/stages.json``)."""

    def __init__(self, run: RunFolder):
        self.run = run

    def load(self) -> dict[str, dict[str, Any]]:
        if not self.run.stages.is_file():
            return {}
        return json.loads(self.run.stages.read_text())

    def sha256(self, name: str) -> str | None:
        return self.load().get(name, {}).get("sha256")

    def finished(self, stage: Stage, output: Path, seconds: float | None = None) -> None:
        """Record a finished stage; ``seconds``: the wall time of the attempt that finished it (owner-side)."""
        records = self.load()
        records[stage.name] = json_safe({"reads": stage.reads, "plan": stage.plan.to_dict() if stage.plan else None,
                                         "settings": dict(stage.settings), "output": str(output),
                                         "sha256": file_sha256(output),
                                         **({"seconds": seconds} if seconds is not None else {})})
        self.run.owner.mkdir(parents=True, exist_ok=True)
        write_json_atomic(self.run.stages, records)

    def check_reusable(self, stage: Stage, output: Path) -> None:
        """Refuse, naming the stage and the setting, to reuse a finished stage made otherwise than configured."""
        record = self.load().get(stage.name)
        if record is None:
            raise StageMismatchError(f"stage {stage.name}: {output} exists but this run has no record of how it was "
                                     "made, so its privacy spend cannot be checked; start a new run")
        now = json_safe({"plan": stage.plan.to_dict() if stage.plan else None, "settings": dict(stage.settings)})
        for section in ("plan", "settings"):
            was, new = record.get(section) or {}, now[section] or {}
            differing = sorted(k for k in set(was) | set(new) if was.get(k) != new.get(k))
            if differing:
                changes = ", ".join(f"{k}: {was.get(k)!r} -> {new.get(k)!r}" for k in differing)
                raise StageMismatchError(f"stage {stage.name} was made with other settings ({section}: {changes}); "
                                         "its release and spend are those it was made with: restore the settings "
                                         "or start a new run")
        if not output.is_file() or file_sha256(output) != record["sha256"]:
            raise StageMismatchError(f"stage {stage.name}: {output} is missing or changed since the stage finished "
                                     f"(sha256 {record['sha256'][:12]}...); start a new run")


@dataclass(frozen=True)
class RunPlan:
    """A run's stages and the plan that composes their DP events; ``main_plan`` is the plan of the stage this
    run's main mechanism trains (``main``), with the run's target when it is the only DP stage."""

    stages: tuple[Stage, ...]
    composed: ComposedPlan
    main: str
    main_plan: PrivacyPlan

    @classmethod
    def single(cls, name: str, plan: PrivacyPlan, before: tuple[Stage, ...] = ()) -> RunPlan:
        """``before`` (stages without a DP event), then one DP stage ``name`` with ``plan``."""
        return cls((*before, Stage(name, "private", plan)), ComposedPlan.single(name, plan), name, plan)

    @property
    def planned_epsilon(self) -> float:
        return self.main_plan.planned_epsilon if len(self.composed.parts) == 1 else self.composed.planned_epsilon

    def to_dict(self) -> dict[str, Any]:
        """For ``--dry-run``: the composed plan, each stage with its share, and the total."""
        plan = self.main_plan.to_dict() if len(self.composed.parts) == 1 else self.composed.to_dict()
        return {**plan, "planned_epsilon": self.planned_epsilon,
                "stages": [stage.describe(self.composed if stage.plan else None) for stage in self.stages]}
