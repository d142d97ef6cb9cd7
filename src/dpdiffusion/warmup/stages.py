"""The DP warm-up as stages of a run: ``central images`` and, when configured, ``frequency features`` (DP releases
of the private data, composed into the run's plan), and ``warm-up training`` (plain training that reads only
those releases), before DP-SGD.

The warm-up stage's interface is the released file: ``warm_up`` takes its path, never the private dataset, so
nothing but the noisy release can reach the warm model. The release is written to ``release/central_images.
safetensors`` (it is DP: it may leave the owner), recorded in ``owner/stages.json`` with its plan and sha256, and
reused on resume only as configured -- it is never drawn twice, which would spend twice.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from dpdiffusion import distributed
from dpdiffusion.data.dataset import ArrayDataset, Dataset
from dpdiffusion.diffusion.augment import Augment
from dpdiffusion.diffusion.denoiser import build_denoiser
from dpdiffusion.diffusion.preconditioning import Precond
from dpdiffusion.dpsgd.mechanism import secret_streams
from dpdiffusion.dpsgd.secret_random import SecretStream
from dpdiffusion.privacy.plan import PrivacyPlan
from dpdiffusion.run_folder import RunFolder
from dpdiffusion.runconfig import ConfigError, PretrainConfig, RunConfig, plan_delta, planned_size
from dpdiffusion.stages import Stage, StageMismatchError, StageRecords, file_sha256
from dpdiffusion.warmup.central_images import (
    CentralImages,
    central_images_plan,
    check_downsample,
    release_central_images,
    warmup_images,
)
from dpdiffusion.warmup.frequency_features import (
    FourierFeatures,
    fit_generator,
    frequency_plan,
    generated_images,
    release_frequency_features,
)

CENTRAL = "central images"
FREQUENCY = "frequency features"
WARMUP = "warm-up training"
RELEASES = {CENTRAL: "central_images.safetensors", FREQUENCY: "frequency_features.safetensors"}  # under release/


def enabled(config: RunConfig) -> bool:
    return config.warmup.central_rounds > 0


def check(config: RunConfig) -> None:
    w = config.warmup
    if w.central_rounds < 0 or w.steps < 0 or w.augment_translate < 0:
        raise ConfigError("warmup.central_rounds, warmup.steps and warmup.augment_translate must be >= 0")
    try:
        check_downsample(w.downsample)
    except ValueError as error:
        raise ConfigError(f"warmup.{error}") from None
    if enabled(config) and config.method != "dpdm":
        raise ConfigError(f"warmup (DP central images) is a start for method dpdm, not {config.method}: set "
                          "warmup.central_rounds: 0")
    if enabled(config) and (config.pretrain.data is not None or config.finetune.init):
        raise ConfigError("warmup (DP central images) starts from a random initialisation: unset pretrain.data and "
                          "finetune.init, or set warmup.central_rounds: 0")
    if enabled(config) and not w.central_noise_ratio > 0:
        raise ConfigError("warmup.central_noise_ratio must be > 0")
    if enabled(config) and w.steps < 1:
        raise ConfigError("warmup.steps must be >= 1 when warmup.central_rounds is set")
    if w.frequency_features and not enabled(config):
        raise ConfigError("warmup.frequency_features needs the central images (warmup.central_rounds >= 1)")
    if w.frequency_features < 0 or (w.frequency_features and not w.frequency_noise_ratio > 0):
        raise ConfigError("warmup.frequency_features must be >= 0 and warmup.frequency_noise_ratio > 0")


def central_draft(config: RunConfig, dataset_size: int) -> PrivacyPlan:
    """The central images' plan with its noise multiplier set to ``central_noise_ratio`` (relative: the run's
    calibration scales it with DP-SGD's)."""
    m = config.model
    return central_images_plan(
        dataset_size=planned_size(config.privacy, dataset_size), batch_size=config.warmup.central_batch_size,
        rounds=config.warmup.central_rounds, noise_multiplier=config.warmup.central_noise_ratio,
        delta=plan_delta(config.privacy, dataset_size), accountant=config.privacy.accountant,
        image_shape=(m.in_channels, m.img_resolution, m.img_resolution), downsample=config.warmup.downsample)


def pooled_shape(config: RunConfig) -> tuple[int, int, int]:
    m, f = config.model, config.warmup.downsample
    return m.in_channels, m.img_resolution // f, m.img_resolution // f


def feature_map(config: RunConfig) -> FourierFeatures:
    """The public random-Fourier feature map of the frequency features (its seed: the run's public seed)."""
    w, dim = config.warmup, math.prod(pooled_shape(config))
    scale = w.frequency_length_scale or math.sqrt(dim) / 2
    return FourierFeatures(dim=dim, features=w.frequency_features, length_scale=scale, seed=config.training.seed)


def frequency_draft(config: RunConfig, dataset_size: int) -> PrivacyPlan | None:
    """The frequency features' plan, noise multiplier relative (None: not configured)."""
    w = config.warmup
    if not w.frequency_features:
        return None
    size = planned_size(config.privacy, dataset_size)
    return frequency_plan(dataset_size=size, batch_size=w.frequency_batch_size or size,
                          noise_multiplier=w.frequency_noise_ratio, delta=plan_delta(config.privacy, dataset_size),
                          accountant=config.privacy.accountant)


def _settings(config: RunConfig, keys: tuple[str, ...]) -> dict[str, Any]:
    settings: dict[str, Any] = {f"warmup.{k}": getattr(config.warmup, k) for k in keys}
    settings.update({f"model.{k}": v for k, v in dataclasses.asdict(config.model).items()})
    return settings


FREQUENCY_KEYS = ("frequency_features", "frequency_batch_size", "frequency_noise_ratio", "frequency_length_scale",
                  "downsample")


def stages(config: RunConfig, central: PrivacyPlan, frequency: PrivacyPlan | None = None) -> list[Stage]:
    """The warm-up stages, with the settings each output depends on."""
    release_keys = ("central_rounds", "central_batch_size", "central_noise_ratio", "downsample")
    train_keys = (*release_keys, *FREQUENCY_KEYS, "generator_steps", "generated_per_class", "sharpen", "steps",
                  "batch_size", "lr", "ema_decay", "augment_translate", "augment_flip")
    training = {**_settings(config, train_keys), "training.seed": config.training.seed,
                **{f"diffusion.{k}": v for k, v in dataclasses.asdict(config.diffusion).items()}}
    releases = [Stage(CENTRAL, "private", central, settings=_settings(config, release_keys))]
    if frequency is not None:
        releases.append(Stage(FREQUENCY, "private", frequency,
                              settings={**_settings(config, FREQUENCY_KEYS), "training.seed": config.training.seed}))
    return [*releases, Stage(WARMUP, "release", settings=training)]


def _release_once(stage: Stage, run: RunFolder, file: str,
                  make: Callable[[SecretStream, SecretStream], tuple[str, torch.Tensor, dict[str, Any]]], *,
                  secret_seed: int | None) -> Path:
    """``release/<file>``: made once by ``make(sampling, noise)`` -> (tensor name, tensor, header) from the stage's
    own secret streams, recorded; reused later only if finished as configured (a release is never drawn twice)."""
    path, records = run.release / file, StageRecords(run)
    if path.is_file():
        records.check_reusable(stage, path)
        return path
    assert stage.plan is not None
    started = time.perf_counter()
    sampling, noise = secret_streams(secret_seed, f"{file.split('_')[0]}_", distributed.World())
    name, tensor, header = make(sampling, noise)
    header = {"stage": stage.name, **header, "plan": stage.plan.to_dict(), "reproducible": sampling.reproducible}
    run.release.mkdir(parents=True, exist_ok=True)
    save_file({name: tensor.contiguous()}, str(path), metadata={"dpdiffusion": json.dumps(header)})
    records.finished(stage, path, seconds=time.perf_counter() - started)
    return path


def release_central(config: RunConfig, dataset: Dataset, stage: Stage, run: RunFolder, *,
                    secret_seed: int | None) -> Path:
    """The DP release of the central images (rank 0; reused if finished as configured)."""
    def make(sampling: SecretStream, noise: SecretStream) -> tuple[str, torch.Tensor, dict[str, Any]]:
        assert stage.plan is not None
        released = release_central_images(dataset, stage.plan, num_classes=config.model.num_classes,
                                          downsample=config.warmup.downsample, sampling=sampling, noise=noise)
        return "images", released.images, {"downsample": released.downsample}

    return _release_once(stage, run, RELEASES[CENTRAL], make, secret_seed=secret_seed)


def release_frequency(config: RunConfig, dataset: Dataset, stage: Stage, run: RunFolder, *,
                      secret_seed: int | None) -> Path:
    """The DP release of the frequency features (rank 0; reused if finished as configured)."""
    features = feature_map(config)

    def make(sampling: SecretStream, noise: SecretStream) -> tuple[str, torch.Tensor, dict[str, Any]]:
        assert stage.plan is not None
        means = release_frequency_features(dataset, stage.plan, features, num_classes=config.model.num_classes,
                                           downsample=config.warmup.downsample, sampling=sampling, noise=noise)
        return "means", means, {"features": dataclasses.asdict(features)}

    return _release_once(stage, run, RELEASES[FREQUENCY], make, secret_seed=secret_seed)


def _header(path: Path) -> dict[str, Any]:
    with safe_open(str(path), "pt") as f:
        return json.loads((f.metadata() or {})["dpdiffusion"])


def generated_set(config: RunConfig, released: Path) -> ArrayDataset:
    """Images of a generator fitted to the released frequency features (post-processing), at the model's size."""
    features = FourierFeatures(**_header(released)["features"])
    w = config.warmup
    generator, _ = fit_generator(load_file(str(released))["means"], features, steps=w.generator_steps,
                                 seed=config.training.seed)
    images = generated_images(generator, pooled_shape(config), w.generated_per_class, seed=config.training.seed)
    x = F.interpolate(images.x, size=(config.model.img_resolution,) * 2, mode="bilinear", align_corners=False)
    return ArrayDataset(x.clamp(-1.0, 1.0), images.y)


def read_central(path: Path) -> CentralImages:
    header = _header(path)
    return CentralImages(load_file(str(path))["images"], int(header["downsample"]),
                         PrivacyPlan.from_dict(header["plan"]))


def warm_up(config: RunConfig, released: Path, stage: Stage, run: RunFolder, *, progress: bool,
            frequency: Path | None = None) -> Path:
    """Plain training of a new model on the released central images (and the images of a generator fitted to the
    released frequency features) only -- post-processing, no privacy cost -- in the one training loop; its EMA
    weights go to ``RUN_DIR/warmup/model.safetensors``."""
    from dpdiffusion.methods.pretrain import pretrain

    out = run.root / "warmup" / "model.safetensors"
    records = StageRecords(run)
    if out.is_file():
        records.check_reusable(stage, out)
        return out
    started, w = time.perf_counter(), config.warmup
    warm = warmup_images(read_central(released), config.model.img_resolution, w.sharpen)
    if frequency is not None:
        generated = generated_set(config, frequency)
        warm = ArrayDataset(torch.cat([warm.x, generated.x]), torch.cat([warm.y, generated.y]))
    plain = dataclasses.replace(config, pretrain=PretrainConfig(steps=w.steps, batch_size=min(w.batch_size, len(warm)),
                                                                lr=w.lr, ema_decay=w.ema_decay, labels=True))
    model = build_denoiser(config.model, config.diffusion)
    sources = {"central_images_sha256": file_sha256(released),
               **({"frequency_features_sha256": file_sha256(frequency)} if frequency is not None else {})}
    pretrain(model, plain, warm, out, trained_on={"release": sources}, progress=progress, desc="warm-up",
             stage=stage, augment=Augment(flip=w.augment_flip, crop_padding=w.augment_translate))
    records.finished(stage, out, seconds=time.perf_counter() - started)
    return out


def check_drawn(run_dir: str | Path, run_stages: tuple[Stage, ...]) -> None:
    """Before a resumed run draws or trains anything: every DP release the folder already holds must be a stage of
    the run's plan, made as configured, and so must a finished warm-up model. A release drawn by an earlier attempt
    and left out of the plan now would be spent and unreported; a changed stage is refused before another is
    drawn."""
    run = RunFolder(run_dir)
    by_name, records = {stage.name: stage for stage in run_stages}, StageRecords(run)
    recorded = records.load()
    for name, file in RELEASES.items():
        path = run.release / file
        if name not in by_name and (path.exists() or name in recorded):
            raise StageMismatchError(f"stage {name}: this run already drew {file}, and its settings now leave the "
                                     "stage out, so its spend would go unreported; restore the settings it was "
                                     "drawn with or start a new run")
        if name in by_name and path.is_file():
            records.check_reusable(by_name[name], path)
    warm = run.root / "warmup" / "model.safetensors"
    if WARMUP in by_name and warm.is_file():
        records.check_reusable(by_name[WARMUP], warm)


def warm_model(config: RunConfig, dataset: Dataset, run_stages: tuple[Stage, ...], run_dir: str | Path, *,
               resume: bool, progress: bool, secret_seed: int | None) -> tuple[Precond, dict[str, Any]]:
    """The model DP-SGD starts from after the two warm-up stages, and the start's description."""
    run = RunFolder(run_dir)
    central_file = run.release / RELEASES[CENTRAL]
    if not resume and (central_file.exists() or run.traces_of_training()):
        raise FileExistsError(f"{run.root} already holds a run; resume it with --resume or pick another folder")
    by_name = {stage.name: stage for stage in run_stages}
    world = distributed.current()
    out = run.root / "warmup" / "model.safetensors"

    def make() -> None:
        released = release_central(config, dataset, by_name[CENTRAL], run, secret_seed=secret_seed)
        frequency = (release_frequency(config, dataset, by_name[FREQUENCY], run, secret_seed=secret_seed)
                     if FREQUENCY in by_name else None)
        warm_up(config, released, by_name[WARMUP], run, progress=progress, frequency=frequency)

    if world.is_main:
        make()
    distributed.barrier(world)
    model = build_denoiser(config.model, config.diffusion)
    model.load_state_dict(load_file(str(out)))
    frequency_file = run.release / RELEASES[FREQUENCY]
    start = {"kind": "warm-up on this run's DP central images", "path": "warmup/model.safetensors",
             "sha256": file_sha256(out), "steps": config.warmup.steps,
             "central_images_sha256": file_sha256(central_file),
             **({"frequency_features_sha256": file_sha256(frequency_file)} if FREQUENCY in by_name else {})}
    return model.train(), start
