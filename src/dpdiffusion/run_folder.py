"""The run folder's layout, in one place: what may be released apart from what stays with the data owner.

    RUN_DIR/config.json           the run's configuration (written once training starts cleanly), with the private
                                  data's paths: the owner's, like everything outside release/ (a release carries
                                  the configuration with those withheld: ``dpdiffusion.release``)
    RUN_DIR/release/              model.safetensors (EMA weights), privacy.json (plan, stages and spend),
                                  README.md (the model card: the guarantee in words, ``model_card``),
                                  synthetic/ (samples drawn from the release)
    RUN_DIR/public/               the public pretraining stage: its model and loss log (public data only)
    RUN_DIR/teacher/              DP-SAD's DP teacher: a run folder of its own
    RUN_DIR/owner/                checkpoints/ (weights, EMA, optimizer, secret generator states, ledgers),
                                  stages.json (finished stages: plan, settings, output sha256), log.jsonl
                                  (un-noised statistics), tensorboard/ (the same, and EMA sample grids, when
                                  training.tensorboard is on), audit/, evaluation/, utility/, cache/ (reference
                                  features of the real data for FID) -- never released
"""

from __future__ import annotations

from pathlib import Path


class RunFolder:
    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.config = self.root / "config.json"
        self.release = self.root / "release"
        self.privacy_report = self.release / "privacy.json"
        self.model_weights = self.release / "model.safetensors"
        self.model_card = self.release / "README.md"
        self.synthetic = self.release / "synthetic"
        self.public = self.root / "public"
        self.public_model = self.public / "model.safetensors"
        self.teacher = self.root / "teacher"
        self.owner = self.root / "owner"
        self.checkpoints = self.owner / "checkpoints"
        self.stages = self.owner / "stages.json"
        self.log = self.owner / "log.jsonl"
        self.tensorboard = self.owner / "tensorboard"  # owner-side monitoring (un-noised statistics): never released
        self.audit = self.owner / "audit"
        self.evaluation = self.owner / "evaluation"
        self.cache = self.owner / "cache"  # evaluation's reference features (of private data: un-noised)

    def checkpoint_path(self, step: int) -> Path:
        return self.checkpoints / f"step-{step:08d}.safetensors"

    def checkpoint_files(self) -> list[Path]:
        return sorted(self.checkpoints.glob("step-*.safetensors"), reverse=True)

    def traces_of_training(self) -> list[str]:
        """What shows that DP training here checkpointed or released (relative paths): a resume must then find a
        checkpoint it can load, and a new run must not start over it. An owner's log alone does not count:
        nothing of a run that never checkpointed has left the owner."""
        found = [*self.checkpoints.glob("*.safetensors"), self.privacy_report, self.model_weights]
        return [str(p.relative_to(self.root)) for p in found if p.exists()]
