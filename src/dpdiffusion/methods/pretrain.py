"""Public pretraining (Ghalebikesabi et al. 2023, stage 1): plain minibatch training on a public dataset, no
privacy, before DP fine-tuning. Its stage reads only the public dataset; its output is ``RUN_DIR/public/``.

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
from tqdm import tqdm

from dpdiffusion.data.dataset import ArrayDataset, Dataset, shared_images
from dpdiffusion.data.datasets import check_fits_model, load_dataset, load_images, subset_range
from dpdiffusion.diffusion.denoiser import default_levels
from dpdiffusion.diffusion.loss import DenoisingLoss
from dpdiffusion.diffusion.preconditioning import Precond
from dpdiffusion.ema import EMA
from dpdiffusion.io import atomic_write, json_safe
from dpdiffusion.runconfig import ConfigError, DataConfig, RunConfig

# Share of the public images with a resampling-tolerant match in the private data above which the two are
# called one dataset at two sizes (different photographs never match; similar handwritten digits sometimes do:
# 1.7% of MNIST's second half matches an image of its first half).
NEAR_COPY_SHARE = 0.1


def pretrain(model: Precond, config: RunConfig, public: Dataset, out: Path, *, trained_on: dict[str, Any],
             progress: bool = True, desc: str = "public pretraining") -> Path:
    """Plain (non-private) training of ``model`` with the ``pretrain`` settings on ``public``; write the EMA
    weights to ``out`` (its header says what it was ``trained_on``) and the loss log beside it."""
    stage = config.pretrain
    if stage.steps < 1:
        raise ConfigError("pretrain.steps must be >= 1 when pretrain.data is set")
    if not 1 <= stage.batch_size <= len(public):
        raise ConfigError(f"pretrain.batch_size {stage.batch_size} must lie in [1, {len(public)}] (public images)")
    loss = DenoisingLoss(model, multiplicity=1, levels=default_levels(config.diffusion),
                         num_classes=config.model.num_classes, label_dropout=config.diffusion.label_dropout)
    ema = EMA(model, stage.ema_decay)
    optimizer = torch.optim.Adam(model.parameters(), lr=stage.lr)
    generator = torch.Generator().manual_seed(config.training.seed)  # public data: public randomness suffices
    out.parent.mkdir(parents=True, exist_ok=True)
    order, position = torch.randperm(len(public), generator=generator), 0
    with tqdm(total=stage.steps, disable=not progress, unit="step", desc=desc) as bar, \
            (out.parent / "log.jsonl").open("w") as log:
        for step in range(1, stage.steps + 1):
            if position + stage.batch_size > len(order):
                order, position = torch.randperm(len(public), generator=generator), 0
            batch = public.batch(order[position:position + stage.batch_size])
            position += stage.batch_size
            if config.model.num_classes and not stage.labels:  # public classes unlike the private ones
                batch = {**batch, "y": torch.full_like(batch["y"], config.model.num_classes)}
            value = loss(model, batch, loss.draw(batch, generator)).mean()
            optimizer.zero_grad(set_to_none=True)
            value.backward()
            optimizer.step()
            ema.update(model, step)
            value = value.detach()
            bar.update(1)
            if step % config.training.log_every == 0 or step == stage.steps:
                log.write(json.dumps({"step": step, "loss": float(value)}) + "\n")
                log.flush()
                bar.set_postfix(loss=f"{float(value):.4g}")
    header = {"config": config.to_dict(), "trained_on": trained_on, "steps": stage.steps}
    with atomic_write(out) as f:
        f.write(save_tensors({k: v.contiguous() for k, v in ema.model.state_dict().items()},
                             {"dpdiffusion": json.dumps(json_safe(header))}))
    return out


def split_by_position(public: DataConfig, private: DataConfig) -> bool:
    """One canonical dataset cut into disjoint ranges of its training split (``subset``), by position. Raises
    when the ranges overlap."""
    if public.name != private.name or public.name == "imagefolder" or public.resolution != private.resolution:
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
    check_fits_model(public, config.model, "pretrain.data")
    check_public_is_not_private(config, public, private if private is not None else load_dataset(config.data, "train"))
    check_public_labels(config, public.y)
    if not 1 <= config.pretrain.batch_size <= len(public):
        raise ConfigError(f"pretrain.batch_size {config.pretrain.batch_size} must lie in [1, {len(public)}] (public images)")
    return public
