"""What a run says about its privacy: ``PrivacyReport`` (``release/privacy.json`` and the model header's
"privacy") and ``Provenance`` (which data was private, which public, where training started).

Writers build the dataclasses; readers (a start's header, evaluation, the audit) parse them back with
``from_dict``, which also reads reports written before a field existed. The JSON layout is the release's public
contract: ``to_dict`` keeps it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from dpdiffusion.io import json_safe

DP_SGD_MECHANISM = "Poisson-subsampled Gaussian (DP-SGD), add/remove-one adjacency"
COMPOSED_MECHANISM = ("Poisson-subsampled Gaussian (DP-SGD) per DP stage, composed by the accountant; add/remove-one "
                      "adjacency")


def _number(value: Any) -> float:
    return float(value) if value not in (None, "inf") else float("inf")


@dataclass(frozen=True)
class DataDescription:
    """One dataset as a report names it: a canonical dataset (and its range) or the user's own images. ``size`` is
    None where it is withheld (a declared public size stands for it); ``path`` only in the owner's files.
    ``class_names``: the names of label indices 0, 1, ..., with ``class_names_source`` saying where they came from
    (declared by the data owner, or taken from the data's layout -- never from its content)."""

    dataset: str
    size: int | None = None
    split: str = "train"
    subset: str | None = None
    path: str | None = None
    resolution: int | None = None
    class_names: tuple[str, ...] | None = None
    class_names_source: str | None = None

    def to_dict(self) -> dict[str, Any]:
        described = {k: v for k, v in dataclasses.asdict(self).items() if v is not None}
        if self.class_names is not None:
            described["class_names"] = list(self.class_names)
        return described

    def released(self, *, size_declared: bool) -> DataDescription:
        """The private data as a release may name it: never the path of its files; with a declared public size,
        neither its size nor its range of a canonical dataset (either gives N)."""
        if size_declared:
            return dataclasses.replace(self, path=None, size=None, subset=None)
        return dataclasses.replace(self, path=None)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> DataDescription:
        known = {f.name for f in dataclasses.fields(cls)}
        described = {k: v for k, v in d.items() if k in known}
        if described.get("class_names") is not None:
            described["class_names"] = tuple(described["class_names"])
        return cls(**described)


@dataclass(frozen=True)
class Provenance:
    """Where a release's training data and its start came from. ``start``: the start's description
    (``methods.start.Start.to_dict``); ``audit_canaries``: how many canaries were drawn (public), when any."""

    private: DataDescription
    start: Mapping[str, Any]
    public: DataDescription | None = None
    audit_canaries: Mapping[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        described: dict[str, Any] = {"private": self.private.to_dict(),
                                     "public": self.public.to_dict() if self.public else None,
                                     "start": dict(self.start)}
        if self.audit_canaries:
            described["audit_canaries"] = dict(self.audit_canaries)
        return described

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Provenance | None:
        private = d.get("private")
        if not private:
            return None
        public = d.get("public")
        return cls(private=DataDescription.from_dict(private), start=d.get("start") or {},
                   public=DataDescription.from_dict(public) if public else None, audit_canaries=d.get("audit_canaries"))


DECLARED_SIZE = "declared public size"
PRIVATE_SIZE = ("the private dataset's size (N is then released: under add/remove adjacency N itself is private; "
                "privacy.public_dataset_size declares a public size instead)")


@dataclass(frozen=True)
class DatasetSize:
    """The N of the plan (q = B / N, the default delta 1 / (10 N)) and where it came from: a public size declared
    for the private dataset (``privacy.public_dataset_size``), or the private dataset's own size."""

    value: int
    declared: bool

    def to_dict(self) -> dict[str, Any]:
        return {"value": self.value, "source": DECLARED_SIZE if self.declared else PRIVATE_SIZE}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> DatasetSize:
        return cls(value=int(d["value"]), declared=d.get("source") == DECLARED_SIZE)


@dataclass(frozen=True)
class Spent:
    epsilon: float
    delta: float
    steps: int | Mapping[str, int]  # one DP-SGD stage's steps, or each DP stage's


@dataclass(frozen=True)
class PrivacyReport:
    """The plan (one DP-SGD plan, or the composed plan's parts), what was spent, each stage with its share, how
    it was accounted, and -- when the release is not differentially private end to end -- why not."""

    private: bool
    plan: Mapping[str, Any]
    planned_epsilon: float
    spent: Spent
    accountant: str
    mechanism: str = DP_SGD_MECHANISM
    method: str | None = None
    stages: tuple[Mapping[str, Any], ...] = ()
    data: Provenance | None = None
    warning: str | None = None
    teacher: Mapping[str, Any] | None = None  # DP-SAD: how its teacher was made
    randomness: Mapping[str, Any] | None = None  # where the secret randomness came from (dpsgd.secret_random)
    libraries: Mapping[str, str] = field(default_factory=dict)
    written: str | None = None
    dataset_size: DatasetSize | None = None  # the plan's N and its source; None in reports written before it

    @property
    def epsilon(self) -> float:
        return self.spent.epsilon

    @property
    def parts(self) -> dict[str, Mapping[str, Any]]:
        """The plan of each DP stage by name (a one-stage plan as "dpsgd")."""
        return dict(self.plan.get("parts") or ({"dpsgd": self.plan} if self.plan else {}))

    def not_private(self, reason: str) -> PrivacyReport:
        return dataclasses.replace(self, private=False, warning=reason)

    def to_dict(self) -> dict[str, Any]:
        report: dict[str, Any] = {
            "private": self.private, "plan": dict(self.plan), "planned_epsilon": self.planned_epsilon,
            "spent": {"epsilon": self.spent.epsilon, "delta": self.spent.delta,
                      "steps": dict(self.spent.steps) if isinstance(self.spent.steps, Mapping) else self.spent.steps},
            "mechanism": self.mechanism, "accountant": self.accountant, "libraries": dict(self.libraries),
        }
        optional = {"written": self.written, "method": self.method, "warning": self.warning,
                    "teacher": dict(self.teacher) if self.teacher is not None else None,
                    "randomness": dict(self.randomness) if self.randomness is not None else None,
                    "data": self.data.to_dict() if self.data else None,
                    "dataset_size": self.dataset_size.to_dict() if self.dataset_size else None}
        report.update({k: v for k, v in optional.items() if v is not None})
        if self.stages:
            report["stages"] = [dict(s) for s in self.stages]
        return json_safe(report)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> PrivacyReport:
        spent = d.get("spent") or {}
        steps = spent.get("steps", 0)
        return cls(
            private=bool(d.get("private", True)), plan=d.get("plan") or {},
            planned_epsilon=_number(d.get("planned_epsilon")),
            spent=Spent(epsilon=_number(spent.get("epsilon")), delta=float(spent.get("delta", 0.0)),
                        steps=dict(steps) if isinstance(steps, Mapping) else int(steps or 0)),
            accountant=str(d.get("accountant", "unknown")), mechanism=str(d.get("mechanism", DP_SGD_MECHANISM)),
            method=d.get("method"), stages=tuple(d.get("stages") or ()),
            data=Provenance.from_dict(d["data"]) if d.get("data") else None, warning=d.get("warning"),
            teacher=d.get("teacher"), randomness=d.get("randomness"), libraries=d.get("libraries") or {},
            written=d.get("written"),
            dataset_size=DatasetSize.from_dict(d["dataset_size"]) if d.get("dataset_size") else None)
