"""Where DP training starts, and what that start carries into the run's guarantee.

A start is a random initialisation, the public pretraining stage of this run (``methods.pretrain``), or a given
checkpoint (``finetune.init``: a finished run of ours, its released ``model.safetensors``, or a diffusers
``UNet2DModel`` folder). A checkpoint of ours carries its provenance in its header, read into ``Start``:

- trained by plain steps on public data: public, no privacy event;
- a DP release: its DP events (its privacy report's plan). When it was trained on this run's private data
  (``finetune.init_private_data: same``, the default), they are composed into this run's plan as stages spent
  before it, and the noise of this run is calibrated so that the total meets the target;
- trained on private data without privacy (a non-private DP-SAD teacher): refused, unless the run is told to
  go on, and then its report says it is NOT private.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from safetensors.torch import load_file

from dpdiffusion import distributed
from dpdiffusion.data.dataset import ArrayDataset
from dpdiffusion.data.datasets import LOCATED, load_images, recorded_class_names, recorded_name, subset_range
from dpdiffusion.diffusion.denoiser import build_denoiser
from dpdiffusion.diffusion.generate import load_model_file
from dpdiffusion.diffusion.preconditioning import Precond
from dpdiffusion.methods.pretrain import load_public, pretrain, public_stage
from dpdiffusion.nets.diffusers_unet import is_diffusers_folder, load_diffusers_denoiser
from dpdiffusion.privacy.plan import PrivacyPlan, PrivacyPlanError
from dpdiffusion.privacy.report import DataDescription, PrivacyReport
from dpdiffusion.release import owner_data
from dpdiffusion.run_folder import RunFolder
from dpdiffusion.runconfig import ConfigError, DataConfig, RunConfig
from dpdiffusion.stages import StageRecords, file_sha256

NOT_PRIVATE_START = ("NOT differentially private: training started from a model trained on the private data without "
                     "privacy (finetune.init); the epsilon reported covers only this run's DP-SGD")


@dataclass(frozen=True)
class Start:
    """Where training starts, for the privacy report, and the privacy it already spent on the private data."""

    kind: str
    path: str | None = None
    sha256: str | None = None
    steps: int | None = None
    seed: int | None = None
    trained_on: dict[str, Any] | None = None
    dp_parts: tuple[tuple[str, PrivacyPlan], ...] = ()  # a DP start on this run's private data: its events
    private_without_privacy: bool = False  # trained on this run's private data without privacy
    note: str | None = None

    def to_dict(self) -> dict[str, Any]:
        described = {k: v for k, v in dataclasses.asdict(self).items()
                     if v not in (None, (), False) and k != "dp_parts"}
        if self.dp_parts:
            described["composed_into_this_run"] = [name for name, _ in self.dp_parts]
        return described


def describe_data(data: DataConfig, size: int, dataset: Any = None) -> DataDescription:
    """The training split of ``data`` as the data owner names it (the user's own images by their path); a release
    names it by ``DataDescription.released``. ``dataset``: the loaded data, which say what loaded them (arrays given
    through the Python API are not recorded as ``data.name``'s dataset) and their layout's class names."""
    names = recorded_class_names(data, dataset)
    return DataDescription(dataset=recorded_name(data, dataset), size=size, subset=data.subset,
                           path=data.path if data.name in LOCATED else None, resolution=data.resolution,
                           class_names=names.names if names else None, class_names_source=names.source if names else None)


def owner_located(weights: Path) -> dict[str, Any]:
    """Where the private data of a release of ours lies (its image folder, its range of a canonical dataset), from
    its run's owner-side ``config.json`` when the release lies in its run folder (``RUN_DIR/release/``): the
    release itself may withhold both."""
    if weights.parent.name != "release":
        return {}
    data = owner_data(weights.parent.parent, DataConfig())
    return {k: v for k, v in (("path", data.path), ("subset", data.subset)) if v is not None}


def release_parts(privacy: PrivacyReport, *, delta: float, accountant: str) -> tuple[tuple[str, PrivacyPlan], ...]:
    """The DP events of a release, from its privacy report's plan (one DP-SGD plan, or a composed plan's parts),
    at this run's delta and accountant (an event is q, sigma and steps; composition happens at one delta)."""
    parts = privacy.parts
    if not parts:
        raise ConfigError("finetune.init is a DP release without a privacy plan in its header; it cannot be composed")
    converted = []
    for name, part in parts.items():
        try:
            p = PrivacyPlan.from_dict(dict(part))
            converted.append((f"start.{name}", dataclasses.replace(p, delta=delta, accountant=accountant,
                                                                   target_epsilon=None)))
        except PrivacyPlanError as error:
            raise ConfigError(f"finetune.init: its DP plan {name} cannot be composed here ({error})") from error
    return tuple(converted)


def evidently_same_data(trained_on: dict[str, Any] | None, data: DataConfig) -> bool:
    """Whether a start's private data, as its report describes it, is (some of) this run's: the same canonical
    dataset with overlapping ranges, or the same files of the user's own images."""
    if not trained_on or trained_on.get("dataset") != data.name:
        return False
    if data.name in LOCATED:  # a release alone does not say which files (withheld): the owner's config does
        theirs = trained_on.get("path")
        return theirs is not None and Path(str(theirs)).expanduser().resolve() == Path(str(data.path)).expanduser().resolve()
    theirs, ours = trained_on.get("subset"), data.subset
    if theirs is None or ours is None:
        return True
    size = len(load_images(dataclasses.replace(data, subset=None), "train")[1])
    return bool(set(subset_range(theirs, size)) & set(subset_range(ours, size)))


def read_start(config: RunConfig, meta: dict[str, Any], weights: Path, delta: float) -> Start:
    """The ``Start`` of a model file of ours from its header (see the module's docstring)."""
    common: dict[str, Any] = {"kind": "dpdiffusion model", "path": str(weights), "sha256": file_sha256(weights)}
    same = config.finetune.init_private_data == "same"
    if "trained_on" in meta:  # trained by plain steps: on public data, or on private data without privacy
        other = sorted(set(meta["trained_on"]) - {"public", "private_without_privacy"})
        if other:  # e.g. a warm-up model, trained on DP releases whose plans its header does not carry
            raise ConfigError(f"finetune.init: {weights.name} was trained on {', '.join(other)} (a DP warm-up's "
                              "model: its releases' spend is not in its file); start from its run's finished "
                              "release instead (finetune.init=RUN_DIR), whose report composes them")
        trained_on = {**meta["trained_on"], "steps": meta.get("steps")}
        plain = meta["trained_on"].get("private_without_privacy")
        if plain is not None and not same and evidently_same_data(plain, config.data):
            raise ConfigError("finetune.init was trained without privacy on this run's private data ("
                              f"{plain.get('dataset')}); finetune.init_private_data: other does not hold")
        if plain is not None:  # goes into this run's release: as a release names private data
            declared = config.privacy.public_dataset_size is not None
            trained_on["private_without_privacy"] = DataDescription.from_dict(plain).released(
                size_declared=declared).to_dict()
        return Start(**common, trained_on=trained_on, private_without_privacy=plain is not None)
    if "privacy" not in meta:
        return Start(**common, note="a model file without provenance: taken as public")
    privacy = PrivacyReport.from_dict(meta["privacy"])
    private = privacy.data.private.to_dict() if privacy.data else {}
    trained_on = {"private": private, "epsilon": privacy.spent.epsilon, "delta": privacy.spent.delta}
    if not privacy.private:  # a release that says it is not private (e.g. a non-private teacher)
        return Start(**common, trained_on=trained_on, private_without_privacy=True)
    if not same:
        if evidently_same_data({**owner_located(weights), **private}, config.data):
            raise ConfigError(f"finetune.init is a DP release of this run's private data ({private.get('dataset')}, "
                              f"subset {private.get('subset')!r}); its spend must be composed: remove "
                              "finetune.init_private_data: other")
        return Start(**common, trained_on=trained_on,
                     note="a DP release of other private data (finetune.init_private_data: other): its guarantee "
                          "is its own and covers that data; this run's covers this run's data")
    return Start(**common, trained_on=trained_on, dp_parts=release_parts(privacy, delta=delta,
                                                                         accountant=config.privacy.accountant),
                 note="a DP release of this run's private data: its DP events are composed into this run's plan")


def load_init(config: RunConfig, delta: float) -> tuple[Precond, dict[str, Any] | None, Start]:
    """The model at ``finetune.init``, the network description a release of a diffusers model needs, and the
    ``Start`` (``delta``: this run's, at which a DP start's events are composed)."""
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
        report = path / "privacy.json"
        if report.is_file():  # an export of a release of ours: its spend is composed, or refused, as the release's
            try:
                privacy = json.loads(report.read_text())
            except (OSError, ValueError) as error:
                raise ConfigError(f"finetune.init: {report} is not a readable privacy report ({error})") from error
            start = read_start(config, {"privacy": privacy}, weights, delta)
            return model, {"diffusers": spec}, dataclasses.replace(start, kind="diffusers UNet2DModel",
                                                                   path=str(path))
        return model, {"diffusers": spec}, Start(kind="diffusers UNet2DModel", path=str(path),
                                                 sha256=file_sha256(weights), note="taken as public")
    weights = path if path.is_file() else RunFolder(path).model_weights
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
    return model.requires_grad_(True).train(), meta.get("network"), read_start(config, meta, weights, delta)


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


def check_one_start(config: RunConfig) -> None:
    if config.pretrain.data is not None and config.finetune.init:
        raise ConfigError("set pretrain.data (pretrain here) or finetune.init (start from a checkpoint), not both")


def start_model(config: RunConfig, run_dir: str | Path, *, delta: float, resume: bool = False, progress: bool = True,
                private: ArrayDataset | None = None) -> tuple[Precond, dict[str, Any] | None, DataDescription | None, Start]:
    """The model DP training starts from (the public stage run, or reused, here), the network description for
    its release, the public data's description and the ``Start``. ``private``: the run's private dataset, to
    compare the public data with (loaded when not given)."""
    check_one_start(config)
    if config.finetune.init:
        model, network, start = load_init(config, delta)
        return model, network, None, start
    run = RunFolder(run_dir)
    if not resume and run.traces_of_training():
        raise FileExistsError(f"{run.root} already holds a run; resume it with --resume or pick another folder")
    model = build_denoiser(config.model, config.diffusion)
    if config.pretrain.data is None:
        return model, None, None, Start(kind="random initialisation", seed=config.training.seed)
    public = load_public(config, private)
    described = describe_data(config.pretrain.data, len(public), public)
    if run.public_model.is_file() and not resume:
        raise FileExistsError(f"{run.root} already holds a run; resume it with --resume or pick another folder")
    stage, records, world = public_stage(config), StageRecords(run), distributed.current()
    if run.public_model.is_file():  # finished before: reused only as configured
        records.check_reusable(stage, run.public_model)
    # with several processes, rank 0 pretrains (public data, no privacy) while the others wait
    made = distributed.made_once(run.public_model, lambda: pretrain(
        model, config, public, run.public_model, trained_on={"public": described.to_dict()}, progress=progress,
        stage=stage),
        world)
    if not made and world.is_main:
        records.finished(stage, run.public_model)
    model.load_state_dict(load_file(str(run.public_model)))
    start = Start(kind="pretrained on the public data in this run", path=str(run.public_model),
                  steps=config.pretrain.steps, sha256=file_sha256(run.public_model))
    return model, None, described, start
