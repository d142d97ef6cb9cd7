"""Public pretraining (Ghalebikesabi et al. 2023, stage 1): plain minibatch training on a public dataset, no
privacy, before DP fine-tuning, in the one training loop (``loop``: ``PlainUpdates`` instead of a DP
mechanism). Its stage reads only the public dataset; its output is ``RUN_DIR/public/``.

The public data must not hold private images: the two are compared by content (``data.dataset.shared_images``:
exact image hashes and resampling-tolerant signatures at the model's size), never by dataset names or paths.
One fixed dataset split by position into public and private ranges is allowed; images the two ranges share by
content are then duplicates inside that dataset.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save as save_tensors

from dpdiffusion import distributed
from dpdiffusion.config import Performance
from dpdiffusion.data.dataset import ArrayDataset, Batch, Dataset, shared_images
from dpdiffusion.data.datasets import LOCATED, check_fits_model, load_dataset, load_images, subset_range
from dpdiffusion.diffusion.augment import Augment
from dpdiffusion.diffusion.denoiser import default_levels
from dpdiffusion.diffusion.loss import DenoisingLoss
from dpdiffusion.diffusion.preconditioning import Precond
from dpdiffusion.io import atomic_write, json_safe
from dpdiffusion.loop import PlainUpdates, TrainingLoop
from dpdiffusion.release import released_config
from dpdiffusion.runconfig import ConfigError, DataConfig, RunConfig
from dpdiffusion.stages import Reads, Stage

# Share of the public images with a resampling-tolerant match in the private data above which the two are
# called one dataset at two sizes (different photographs never match; similar handwritten digits sometimes do:
# 1.7% of MNIST's second half matches an image of its first half).
NEAR_COPY_SHARE = 0.1


class Unlabelled:
    """``data`` with every label replaced by ``label`` (the "no label" class of a conditional model)."""

    def __init__(self, data: Dataset, label: int):
        self.data, self.label = data, label

    def __len__(self) -> int:
        return len(self.data)

    def batch(self, indices: torch.Tensor) -> Batch:
        batch = self.data.batch(indices)
        return {**batch, "y": torch.full_like(batch["y"], self.label)}


class PlainTraining(TrainingLoop):
    """Plain (non-private) training to ``steps`` in the one training loop; its checkpoints sit beside its output
    (``out``'s folder), so an interrupted stage resumes; the output is the EMA weights with a header."""

    def __init__(self, model: Precond, loss: DenoisingLoss, data: Dataset, out: Path, *, steps: int, batch_size: int,
                 lr: float, ema_decay: float, seed: int, settings: dict[str, Any], header: dict[str, Any],
                 log_every: int, performance: Performance, progress: bool, desc: str):
        folder = out.parent
        super().__init__(model, loss, total_steps=steps, ema_decay=ema_decay, checkpoints=folder / "checkpoints",
                         log=folder / "log.jsonl", log_every=log_every, checkpoint_every=max(1, steps // 4),
                         performance=performance, progress=progress, world=distributed.World(), desc=desc)
        optimizer = torch.optim.Adam(model.parameters(), lr=lr)
        self.updates = PlainUpdates(model, loss, data, batch_size=batch_size, optimizer=optimizer, seed=seed,
                                    device=self.device, settings=settings)
        self.out, self.header = out, header

    def finish(self) -> None:
        with atomic_write(self.out) as f:
            f.write(save_tensors({k: v.contiguous().cpu() for k, v in self.ema.model.state_dict().items()},
                                 {"dpdiffusion": json.dumps(json_safe(self.header))}))
        for path in self.checkpoint_files():  # the stage is finished: its output replaces them
            path.unlink()


def public_stage(config: RunConfig, name: str = "public pretraining", reads: Reads = "public") -> Stage:
    """The stage that pretrains with the ``pretrain`` settings (``reads``: what its data is), and every setting
    its output depends on."""
    settings = {**{f"pretrain.{k}": v for k, v in dataclasses.asdict(config.pretrain).items()},
                **{f"model.{k}": v for k, v in dataclasses.asdict(config.model).items()},
                **{f"diffusion.{k}": v for k, v in dataclasses.asdict(config.diffusion).items()},
                "training.seed": config.training.seed, "training.log_every": config.training.log_every}
    return Stage(name, reads, settings=json_safe(settings))


def pretrain(model: Precond, config: RunConfig, public: Dataset, out: Path, *, trained_on: dict[str, Any],
             progress: bool = True, desc: str = "public pretraining", stage: Stage | None = None,
             augment: Augment | None = None) -> Path:
    """Plain (non-private) training of ``model`` with the ``pretrain`` settings on ``public`` in the training
    loop, each example seen through ``augment`` when given; write the EMA weights to ``out`` (its header says
    what it was ``trained_on``) and the loss log beside it. A stopped stage resumes from its checkpoints when its
    settings (``stage``) are unchanged."""
    settings = config.pretrain
    if settings.steps < 1:
        raise ConfigError("pretrain.steps must be >= 1 when pretrain.data is set")
    if not 1 <= settings.batch_size <= len(public):
        raise ConfigError(f"pretrain.batch_size {settings.batch_size} must lie in [1, {len(public)}] (public images)")
    if config.model.num_classes and not settings.labels:  # public classes unlike the private ones
        public = Unlabelled(public, config.model.num_classes)
    loss = DenoisingLoss(model, multiplicity=1, levels=default_levels(config.diffusion),
                         num_classes=config.model.num_classes, label_dropout=config.diffusion.label_dropout,
                         augment=augment or Augment())
    stage = stage or public_stage(config)
    header = {"config": released_config(config.to_dict())[0], "trained_on": trained_on, "steps": settings.steps}
    loop = PlainTraining(model, loss, public, out, steps=settings.steps, batch_size=settings.batch_size,
                         lr=settings.lr, ema_decay=settings.ema_decay, seed=config.training.seed,
                         settings=dict(stage.settings), header=header, log_every=config.training.log_every,
                         performance=config.performance, progress=progress, desc=desc)
    if loop.resume() is None and loop.log.is_file():
        loop.log.unlink()  # a fresh start: the log of an earlier attempt would interleave
    loop.train()
    model.to("cpu")
    return out


def split_by_position(public: DataConfig, private: DataConfig) -> bool:
    """One canonical dataset cut into disjoint ranges of its training split (``subset``), by position. Raises
    when the ranges overlap."""
    if public.name != private.name or public.name in LOCATED or public.resolution != private.resolution:
        return False
    size = len(load_images(dataclasses.replace(private, subset=None), "train")[1])
    overlap = set(subset_range(public.subset or ":", size)) & set(subset_range(private.subset or ":", size))
    if overlap:
        raise ConfigError(f"pretrain.data and data are both {private.name} and share {len(overlap)} training images "
                          f"(subsets {public.subset!r} and {private.subset!r}): public pretraining would see private "
                          "data without privacy; choose disjoint data.subset ranges")
    return True


def check_public_is_not_private(config: RunConfig, public: ArrayDataset, private: ArrayDataset) -> None:
    """Stage 1 trains without privacy, so its data must not include private images, compared by content: any
    image equal to a private one, or a public set that is largely (``NEAR_COPY_SHARE``) the private one at
    another size, is refused. The counts stay in the error (owner-side), never in a release."""
    assert config.pretrain.data is not None
    if split_by_position(config.pretrain.data, config.data):
        return
    exact, near = shared_images(public.x, private.x)
    if exact or near >= NEAR_COPY_SHARE * len(public):
        raise ConfigError(f"pretrain.data holds {exact + near} of its {len(public)} images also in the private data "
                          f"({exact} equal, {near} equal up to resampling), whatever the names or paths: public "
                          "pretraining would see private data without privacy; use public data disjoint from it")


def check_public_labels(config: RunConfig, labels: torch.Tensor) -> None:
    if config.model.num_classes and config.pretrain.labels and len(labels) and int(labels.max()) >= config.model.num_classes:
        raise ConfigError(f"the public labels go up to {int(labels.max())} but model.num_classes is "
                          f"{config.model.num_classes}; set pretrain.labels: false to pretrain without them")


def load_public(config: RunConfig, private: ArrayDataset | None = None) -> ArrayDataset:
    """The public dataset of stage 1, after the checks that keep it public and usable (``private``: the run's
    private dataset to compare with; loaded here when not given)."""
    if config.pretrain.data is None:
        raise ConfigError("pretrain.data is not set")
    public = load_dataset(config.pretrain.data, "train")
    check_fits_model(public, config.model, "pretrain.data", labels=False)  # check_public_labels: they may go unused
    check_public_is_not_private(config, public, private if private is not None else load_dataset(config.data, "train"))
    check_public_labels(config, public.y)
    if not 1 <= config.pretrain.batch_size <= len(public):
        raise ConfigError(f"pretrain.batch_size {config.pretrain.batch_size} must lie in [1, {len(public)}] (public images)")
    return public
