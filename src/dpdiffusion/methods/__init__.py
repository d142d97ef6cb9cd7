"""Training methods: each says how a per-example loss is formed, what is trained, and in which stages.

A ``Method`` is what the command line dispatches to: ``plan`` (the run's stages and composed privacy plan,
from the configuration and the dataset's size), ``describe`` (what ``train --dry-run`` prints) and ``train``.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Method:
    name: str
    module: str  # dpdiffusion.methods.<module>: plan(config, N, allow_non_private), describe(...), train(...)
    audit_canaries: bool  # whether `train --audit-canaries` applies
    non_private_flag: str  # the command-line flag that allows a non-private earlier stage

    def _impl(self) -> Any:
        return importlib.import_module(f"dpdiffusion.methods.{self.module}")

    def plan(self, config, dataset_size: int, *, allow_non_private: bool = False):
        return self._impl().plan(config, dataset_size, allow_non_private=allow_non_private)

    def describe(self, config, dataset, run_plan) -> dict[str, Any]:
        return self._impl().describe(config, dataset, run_plan)

    def train(self, config, dataset, run_plan, run_dir, *, resume: bool = False, allow_non_private: bool = False,
              progress: bool = True):
        return self._impl().train(config, dataset, run_plan, run_dir, resume=resume,
                                  allow_non_private=allow_non_private, progress=progress)


METHODS = {
    "dpdm": Method("dpdm", "dpdm", audit_canaries=True, non_private_flag="--allow-non-private-start"),
    "dpsad": Method("dpsad", "dpsad", audit_canaries=False, non_private_flag="--allow-non-private-teacher"),
}
