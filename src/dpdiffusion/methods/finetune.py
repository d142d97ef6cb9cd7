"""Public pretraining + private fine-tuning (Ghalebikesabi et al. 2023).

Stage 1 (no privacy, public data only): train the denoiser on a public dataset with plain minibatch steps, or
start from a checkpoint (a finished run of ours, its released ``model.safetensors``, or a diffusers
``UNet2DModel`` folder). Stage 2: DP-SGD on the private dataset from there -- the same engine as DPDM, with
augmentation multiplicity and biased timestep sampling from the configuration, optionally on a subset of the
parameters (the rest frozen, outside the per-example gradients).

The run folder gains ``public/``: the stage-1 model and its loss log. Both come from public data only, so
neither needs a privacy guarantee; the privacy report names the public and the private data and the start.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import hashlib
import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from safetensors.torch import save as save_tensors
from tqdm import tqdm

from dpdiffusion import distributed
from dpdiffusion.data.datasets import check_fits_model, load_dataset, load_images, subset_range
from dpdiffusion.diffusion.denoiser import build_denoiser, default_levels
from dpdiffusion.diffusion.generate import load_model_file
from dpdiffusion.diffusion.loss import DenoisingLoss
from dpdiffusion.diffusion.preconditioning import Precond
from dpdiffusion.io import atomic_write, json_safe
from dpdiffusion.nets.diffusers_unet import is_diffusers_folder, load_diffusers_denoiser
from dpdiffusion.runconfig import ConfigError, DataConfig, RunConfig
from dpdiffusion.training import EMA, Dataset, RunFolder


def public_model_path(run_dir: str | Path) -> Path:
    return Path(run_dir) / "public" / "model.safetensors"


def describe_data(data: DataConfig, size: int) -> dict[str, Any]:
    described = {"dataset": data.name, "split": "train", "size": size}
    if data.subset is not None:
        described["subset"] = data.subset
    if data.name == "imagefolder":
        described["path"] = data.path
    if data.resolution is not None:
        described["resolution"] = data.resolution
    return described


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# -- where training starts ---------------------------------------------------------------------------------------
def load_init(config: RunConfig) -> tuple[Precond, dict[str, Any] | None, dict[str, Any]]:
    """The model at ``finetune.init``, the network description a release of a diffusers model needs, and the
    start's description for the privacy report."""
    if config.finetune.init is None:
        raise ConfigError("finetune.init is not set")
    path = Path(config.finetune.init)
    if not path.exists():
        raise ConfigError(f"finetune.init: {path} does not exist")
    model: Precond
    if path.is_dir() and is_diffusers_folder(path):
        model, spec = load_diffusers_denoiser(path)
        check_diffusers_matches(config, spec["unet"])
        weights = next(p for p in (path / "unet" / "diffusion_pytorch_model.safetensors",
                                   path / "diffusion_pytorch_model.safetensors") if p.is_file())
        return model, {"diffusers": spec}, {"kind": "diffusers UNet2DModel", "path": str(path),
                                            "sha256": file_sha256(weights)}
    weights = path if path.is_file() else path / "release" / "model.safetensors"
    if not weights.is_file():
        raise ConfigError(f"finetune.init: {path} is neither a model file, a finished run folder nor a diffusers folder")
    model, init_config, meta = load_model_file(weights)
    for section in ("model", "diffusion"):
        ours, theirs = getattr(config, section), getattr(init_config, section)
        keys = ("parameterisation", "sigma_data") if section == "diffusion" else [f.name for f in dataclasses.fields(ours)]
        differing = [k for k in keys if getattr(ours, k) != getattr(theirs, k)]
        if differing:
            k = differing[0]
            raise ConfigError(f"finetune.init was trained with {section}.{k}={getattr(theirs, k)!r} but this run has "
                              f"{getattr(ours, k)!r}; use the same {section} settings")
    start: dict[str, Any] = {"kind": "dpdiffusion model", "path": str(weights), "sha256": file_sha256(weights)}
    if "trained_on" in meta:  # a model trained by plain steps: on public data, or a non-private teacher
        start["trained_on"] = {**meta["trained_on"], "steps": meta.get("steps")}
    elif "privacy" in meta:  # a DP release: its privacy spend is its own; name it, so the two can be composed
        spent = meta["privacy"].get("spent", {})
        start["trained_on"] = {"private": meta["privacy"].get("data", {}).get("private"),
                               "epsilon": spent.get("epsilon"), "delta": spent.get("delta")}
        start["note"] = ("the start was itself trained with DP; if it saw the same private data, the total "
                         "guarantee is the composition of both runs")
    return model.requires_grad_(True).train(), meta.get("network"), start


def check_diffusers_matches(config: RunConfig, unet: dict[str, Any]) -> None:
    """The run's image shape and labels must be the diffusers model's."""
    size = unet.get("sample_size")
    size = size[0] if isinstance(size, (list, tuple)) else size
    if (config.model.img_resolution, config.model.in_channels) != (size, unet.get("in_channels")):
        raise ConfigError(f"finetune.init is a {unet.get('in_channels')}-channel {size}x{size} model but the run has "
                          f"model.img_resolution={config.model.img_resolution}, model.in_channels="
                          f"{config.model.in_channels}")
    embeds = unet.get("num_class_embeds") or 0
    if config.model.num_classes and embeds < config.model.num_classes + 1:
        raise ConfigError(f"finetune.init has {embeds} class embeddings; a class-conditional run with "
                          f"{config.model.num_classes} classes needs {config.model.num_classes + 1} (one for 'no label')")
    if not config.model.num_classes and embeds:
        raise ConfigError("finetune.init is class-conditional; set model.num_classes")


def apply_freezing(model: Precond, config: RunConfig) -> int:
    """Freeze the parameters the configuration leaves out; return how many scalars stay trainable."""
    names = [n for n, _ in model.named_parameters()]
    for key in ("trainable", "frozen"):
        for pattern in getattr(config.finetune, key):
            if not fnmatch.filter(names, pattern):
                raise ConfigError(f"finetune.{key}: pattern {pattern!r} matches no parameter (e.g. {names[0]!r})")
    trainable = 0
    for name, p in model.named_parameters():
        train = not config.finetune.trainable or any(fnmatch.fnmatch(name, pat) for pat in config.finetune.trainable)
        train = train and not any(fnmatch.fnmatch(name, pat) for pat in config.finetune.frozen)
        p.requires_grad_(train)
        trainable += p.numel() if train else 0
    if not trainable:
        raise ConfigError("finetune.trainable/frozen leave no parameter to train")
    return trainable


# -- stage 1: public pretraining -----------------------------------------------------------------------------------
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


def check_public_is_not_private(config: RunConfig) -> None:
    """Stage 1 trains without privacy, so its data must not include private images: the same dataset is
    allowed only as disjoint ``subset`` ranges of it."""
    public, private = config.pretrain.data, config.data
    if public is None or public.name != private.name or (public.name == "imagefolder" and public.path != private.path):
        return
    size = len(load_images(dataclasses.replace(private, subset=None), "train")[1])
    overlap = set(subset_range(public.subset or ":", size)) & set(subset_range(private.subset or ":", size))
    if overlap:
        raise ConfigError(f"pretrain.data and data are both {private.name} and share {len(overlap)} training images "
                          f"(subsets {public.subset!r} and {private.subset!r}): public pretraining would see private "
                          "data without privacy; choose disjoint data.subset ranges")


def check_public_labels(config: RunConfig, labels: torch.Tensor) -> None:
    if config.model.num_classes and config.pretrain.labels and len(labels) and int(labels.max()) >= config.model.num_classes:
        raise ConfigError(f"the public labels go up to {int(labels.max())} but model.num_classes is "
                          f"{config.model.num_classes}; set pretrain.labels: false to pretrain without them")


def check_one_start(config: RunConfig) -> None:
    if config.pretrain.data is not None and config.finetune.init:
        raise ConfigError("set pretrain.data (pretrain here) or finetune.init (start from a checkpoint), not both")


def load_public(config: RunConfig) -> Dataset:
    """The public dataset of stage 1, after the checks that keep it public and usable."""
    check_public_is_not_private(config)
    if config.pretrain.data is None:
        raise ConfigError("pretrain.data is not set")
    public = load_dataset(config.pretrain.data, "train")
    check_fits_model(public, config.model, "pretrain.data")
    check_public_labels(config, public.y)
    if not 1 <= config.pretrain.batch_size <= len(public):
        raise ConfigError(f"pretrain.batch_size {config.pretrain.batch_size} must lie in [1, {len(public)}] (public images)")
    return public


def start_model(config: RunConfig, run_dir: str | Path, *, resume: bool = False, progress: bool = True
                ) -> tuple[Precond, dict[str, Any] | None, dict[str, Any]]:
    """The model DP training starts from (stage 1 run or reused here), the network description for its release,
    and the provenance of public data and start for the privacy report."""
    check_one_start(config)
    if config.finetune.init:
        model, network, start = load_init(config)
        return model, network, {"public": None, "start": start}
    folder = RunFolder(run_dir)
    if not resume and (folder.checkpoint_files() or folder.privacy_report.exists()):
        raise FileExistsError(f"{folder.root} already holds a run; resume it with --resume or pick another folder")
    model = build_denoiser(config.model, config.diffusion)
    if config.pretrain.data is None:
        return model, None, {"public": None, "start": {"kind": "random initialisation", "seed": config.training.seed}}
    path = public_model_path(run_dir)
    public = load_public(config)
    described = describe_data(config.pretrain.data, len(public))
    if path.is_file() and not resume:
        raise FileExistsError(f"{Path(run_dir)} already holds a run; resume it with --resume or pick another folder")
    # with several processes, rank 0 pretrains (public data, no privacy) while the others wait
    distributed.made_once(path, lambda: pretrain(model, config, public, path, trained_on={"public": described},
                                                 progress=progress), distributed.current())
    model.load_state_dict(load_file(str(path)))
    start = {"kind": "pretrained on the public data in this run", "path": str(path), "steps": config.pretrain.steps,
             "sha256": file_sha256(path)}
    return model, None, {"public": described, "start": start}


def describe_stages(config: RunConfig, private_size: int) -> dict[str, Any]:
    """What ``train --dry-run`` shows: the public and the private data, the start, the trainable parameters.
    Checks the settings it can without training (the start checkpoint is read, the public data loaded)."""
    check_one_start(config)
    if config.finetune.init:
        model, _, start = load_init(config)
        public = None
    elif config.pretrain.data is not None:
        model = build_denoiser(config.model, config.diffusion)
        public = {**describe_data(config.pretrain.data, len(load_public(config))), "steps": config.pretrain.steps,
                  "batch_size": config.pretrain.batch_size}
        start = {"kind": "pretrained on the public data in this run"}
    else:
        model, public, start = build_denoiser(config.model, config.diffusion), None, {"kind": "random initialisation"}
    trainable = apply_freezing(model, config)
    return {"public": public, "private": describe_data(config.data, private_size), "start": start,
            "trainable_parameters": trainable}
