"""Run configuration: typed, frozen sections read from YAML (a preset or the user's file) with ``--set``
overrides. Unknown or mistyped keys are errors that name the key."""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

import yaml

from dpdiffusion.config import Performance
from dpdiffusion.io import json_safe
from dpdiffusion.nets.discriminator import DiscriminatorConfig
from dpdiffusion.nets.unet import UNetConfig
from dpdiffusion.privacy.plan import PrivacyPlan, steps_for


class ConfigError(ValueError):
    """A configuration key or value is wrong."""


@dataclass(frozen=True)
class DataConfig:
    # digits, mnist, fmnist, cifar10, celeba32, celeba64, imagenet32, or your own images: imagefolder, csv, npz, hf
    # (data.datasets.DATASETS); "arrays" records data given as arrays through the Python API
    name: str = "digits"
    data_dir: str | None = None  # local copies instead of downloads (else $DPDIFFUSION_DATA_DIR, else the cache)
    resolution: int | None = None  # resize (a fixed, data-independent transform); None keeps the native size
    label_attribute: str = "Male"  # celeba: the attribute that is the label (1 where +1, else 0)
    # your own images: imagefolder -- a folder with one sub-folder of images per class; csv -- a CSV of path,label
    # rows; npz -- a .npz with arrays images and labels; hf -- a folder saved by datasets' save_to_disk, or a hub name
    path: str | None = None
    test_path: str | None = None  # the held-out set, in the same form (same class names); None: no test split
    channels: int = 3  # your own images: 1 (read as grayscale) or 3 (RGB)
    subset: str | None = None  # "start:stop": a fixed range of the training split by position (e.g. "10000:")
    # names of the label indices 0, 1, ... (one per model class); empty: from the data's layout where it has them
    # (sub-folder names, class names in a CSV's or a dataset's label column, a ClassLabel feature). The privacy
    # report records the names and where they came from. They name the indices, never change an image's label.
    class_names: tuple[str, ...] = ()
    image_column: str = "image"  # hf: the column of images (an Image feature)
    label_column: str = "label"  # hf: the column of labels (ClassLabel, class indices, or class names)

    def __post_init__(self) -> None:
        duplicated = sorted({n for n in self.class_names if self.class_names.count(n) > 1})
        if duplicated:
            raise ValueError(f"class_names: {duplicated[0]!r} is declared more than once")


@dataclass(frozen=True)
class DiffusionConfig:
    parameterisation: str = "edm"  # edm, vp, ve or v (v-prediction); each with its training noise levels
    sigma_data: float = 0.5  # edm only
    P_mean: float = -1.2  # edm: ln(sigma) ~ N(P_mean, P_std^2)
    P_std: float = 1.2
    logsnr_min: float = -9.0  # v: sigma = tan(pi t / 2), t uniform where log-SNR in [logsnr_min, logsnr_max]
    logsnr_max: float = 13.0
    label_dropout: float = 0.1  # classifier-free guidance: per-example probability of training without label
    # Biased timestep sampling: integer times of DDPM's linear schedule (T = 1000) drawn from a mixture of
    # uniform bands [time_bands[i], time_bands[i+1]) with probabilities time_weights; empty: the
    # parameterisation's own p(sigma). E.g. bands (0, 200, 800, 1000), weights (0.015, 0.785, 0.2).
    time_bands: tuple[int, ...] = ()
    time_weights: tuple[float, ...] = ()
    # Augmentation multiplicity: each of the K draws of an example denoises its own augmented copy.
    augment_flip: bool = False  # random horizontal flips (natural images; not digits)
    augment_translate: int = 0  # random shifts by up to this many pixels (reflect padding)


@dataclass(frozen=True)
class PrivacyConfig:
    """What changes the guarantee; resolved into a ``PrivacyPlan`` once the dataset size is known."""

    target_epsilon: float | None = 10.0
    noise_multiplier: float | None = None  # give instead of target_epsilon to fix sigma directly
    delta: float | None = None  # None: 1 / (10 N), a common choice well below 1 / N
    batch_size: int = 256  # the public expected batch size B; the sample rate is B / N
    epochs: float | None = None
    steps: int | None = None
    max_grad_norm: float = 1.0
    multiplicity: int = 1
    accountant: Literal["prv", "pld", "rdp"] = "prv"  # privacy.accounting.ACCOUNTANTS
    # A public size N^ declared for the private dataset: the plan is for N^ (q = B / N^, the default delta
    # 1 / (10 N^), epochs in N^ examples), so that no release carries the private size N, which is private
    # under add/remove adjacency. Poisson sampling still runs over every real example at rate q = B / N^.
    # None: the plan uses N, and the release says so.
    public_dataset_size: int | None = None

    def __post_init__(self) -> None:
        if self.public_dataset_size is not None and self.public_dataset_size < 1:
            raise ValueError(f"public_dataset_size must be >= 1, got {self.public_dataset_size}")


@dataclass(frozen=True)
class TrainingConfig:
    lr: float = 3e-4
    ema_decay: float = 0.999
    checkpoint_every: int = 200
    log_every: int = 20
    seed: int = 0
    # owner-side monitoring (dpdiffusion.monitoring; the optional extra dpdiffusion[tensorboard]): every log_every
    # steps the un-noised loss, clipped fraction, learning rate and epsilon spent go to RUN_DIR/owner/tensorboard
    tensorboard: bool = False
    sample_grid_every: int = 0  # with tensorboard: a fixed-seed grid sampled from the EMA every this many steps (0: none)
    sample_grid_images: int = 16
    sample_grid_steps: int = 10  # the run's sampler with this many noise levels (sampling.steps is the release's)

    def __post_init__(self) -> None:
        if not (self.lr >= 0 and math.isfinite(self.lr)):  # 0 keeps the weights (a check of a start)
            raise ValueError(f"lr must be a finite number >= 0, got {self.lr}")
        if not 0 <= self.ema_decay < 1:
            raise ValueError(f"ema_decay must lie in [0, 1), got {self.ema_decay}")
        if self.checkpoint_every < 1 or self.log_every < 1:
            raise ValueError(f"checkpoint_every and log_every must be >= 1, got {self.checkpoint_every} and "
                             f"{self.log_every}")
        if self.sample_grid_every < 0 or (self.sample_grid_every and not self.tensorboard):
            raise ValueError(f"sample_grid_every must be 0 (no grid) or, with tensorboard: true, >= 1; got "
                             f"{self.sample_grid_every} with tensorboard: {str(self.tensorboard).lower()}")
        if not 1 <= self.sample_grid_images <= 100 or self.sample_grid_steps < 1:
            raise ValueError(f"sample_grid_images must lie in [1, 100] and sample_grid_steps be >= 1, got "
                             f"{self.sample_grid_images} and {self.sample_grid_steps}")


SamplerName = Literal["ancestral", "churn", "ddim", "dpmpp2m", "dpmpp3m", "heun"]  # the keys of diffusion.samplers.SAMPLERS


@dataclass(frozen=True)
class SamplingConfig:
    sampler: SamplerName = "heun"
    steps: int = 18  # noise levels of EDM's schedule (Karras et al. 2022, eq. 5), then 0
    sigma_min: float = 0.002
    sigma_max: float = 80.0
    rho: float = 7.0
    guidance: float = 1.0
    S_churn: float = 0.0
    S_min: float = 0.0
    S_max: float = float("inf")
    S_noise: float = 1.0
    eta: float = 0.0


@dataclass(frozen=True)
class PretrainConfig:
    """Stage 1, without privacy: train the network on a public dataset before DP fine-tuning."""

    data: DataConfig | None = None  # the public dataset; None: no pretraining stage
    steps: int = 0
    batch_size: int = 128
    lr: float = 3e-4
    ema_decay: float = 0.999
    labels: bool = True  # train on the public labels (the private data's classes); false: as "no label"


@dataclass(frozen=True)
class FinetuneConfig:
    """Where DP training starts, and which parameters it changes."""

    init: str | None = None  # a finished run folder, a released model.safetensors, or a diffusers UNet2DModel folder
    trainable: tuple[str, ...] = ()  # parameter-name patterns (fnmatch) to fine-tune; empty: all of them
    frozen: tuple[str, ...] = ()  # parameter-name patterns kept fixed (applied after ``trainable``)
    # a start trained on private data: "same" -- on this run's private data (or some of it), so a DP start's
    # spend is composed into this run's plan; "other" -- on data sharing no record with it (its guarantee is its own)
    init_private_data: Literal["same", "other"] = "same"


@dataclass(frozen=True)
class DPSADConfig:
    """DP-SAD (``method: dpsad``): a student distilled from a teacher at one random level r of T per example,
    with a discriminator. Every mechanism that reads private data is DP-SGD; their composition meets
    ``privacy.target_epsilon``, which the ``privacy`` section's batch size, steps and C give to the student."""

    # dp: DP-SGD on the private data here | public: pretrain.data or finetune.init | none
    teacher: Literal["dp", "public", "none"] = "dp"
    timesteps: int = 500  # T: r is one of T levels of the sampling schedule
    adversarial_weight: float = 1.0  # lambda
    distance: Literal["l2", "l1"] = "l2"  # of the student's output to the teacher's and to the clean image: l2 (the paper) or l1
    student_model_channels: int | None = None  # the student is ``model`` with these two changed (None: same)
    student_num_blocks: int | None = None
    discriminator: DiscriminatorConfig = field(default_factory=DiscriminatorConfig)
    discriminator_lr: float = 2e-4
    discriminator_steps: int = 1  # discriminator updates (each its own Poisson batch) per student update
    discriminator_max_grad_norm: float = 1.0
    discriminator_noise_ratio: float = 1.0  # its noise multiplier over the student's
    teacher_batch_size: int = 512  # dp and none teachers: trained first, on the private data
    teacher_steps: int = 0
    teacher_multiplicity: int = 1
    teacher_lr: float = 1e-3
    teacher_ema_decay: float = 0.995
    teacher_noise_ratio: float = 1.0  # dp teacher: its noise multiplier over the student's


@dataclass(frozen=True)
class WarmupConfig:
    """DP warm-up from noisy statistics before DP-SGD (DP-FETA's central images): ``central_rounds`` releases of
    noisy class-wise mean images (``warmup.central_images``), then ``steps`` of plain training on them
    (post-processing of the release), then DP-SGD on the private data. Its noise multiplier is
    ``central_noise_ratio`` times DP-SGD's; both are calibrated so that the composition meets the target."""

    central_rounds: int = 0  # S; 0: no warm-up
    central_batch_size: int = 1000  # B_c: each round's expected sample, q_c = B_c / N
    central_noise_ratio: float = 1.0  # its noise multiplier over DP-SGD's
    downsample: int = 2  # the fixed average-pooling before the sums (sensitivity sqrt(c h w) of the pooled size)
    sharpen: float = 0.0  # unsharp-mask weight of the post-processing
    # FETA-Pro's frequency features (warmup.frequency_features): D random Fourier features of the pooled images,
    # one DP release of each class's mean (q = frequency_batch_size / N; 0: the whole dataset), a generator fitted
    # to it, and ``generated_per_class`` of its images added to the warm-up set; 0 features: off
    frequency_features: int = 0
    frequency_batch_size: int = 0
    frequency_noise_ratio: float = 1.0  # its noise multiplier over DP-SGD's
    frequency_length_scale: float = 0.0  # l of the features' frequencies N(0, 1/l^2); 0: sqrt(pixels) / 2
    generator_steps: int = 500
    generated_per_class: int = 100
    steps: int = 0  # plain warm-up training steps on the released images
    batch_size: int = 64
    lr: float = 1e-3
    ema_decay: float = 0.99
    # fixed data augmentation of the warm-up set (a few central images per class): each warm-up example is a
    # random translation by up to ``augment_translate`` pixels (reflect padding), flipped when ``augment_flip``
    augment_translate: int = 0
    augment_flip: bool = False  # natural images only, not digits or text


@dataclass(frozen=True)
class RunConfig:
    name: str = "custom"
    description: str = ""
    method: Literal["dpdm", "dpsad"] = "dpdm"  # dpdm (from scratch, or fine-tuning with pretrain/finetune) or dpsad
    data: DataConfig = field(default_factory=DataConfig)
    model: UNetConfig = field(default_factory=UNetConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    privacy: PrivacyConfig = field(default_factory=PrivacyConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    performance: Performance = field(default_factory=Performance)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    dpsad: DPSADConfig = field(default_factory=DPSADConfig)
    warmup: WarmupConfig = field(default_factory=WarmupConfig)

    def __post_init__(self) -> None:
        declared, classes = self.data.class_names, self.model.num_classes
        if declared and len(declared) != classes:
            raise ValueError(f"data.class_names: {len(declared)} names declared but model.num_classes is {classes}"
                             f"{' (unconditional)' if not classes else ''}: declare one name per class")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _convert(value: Any, annotation: Any, key: str) -> Any:
    """Check and convert a YAML value to the field's annotated type."""
    origin = typing.get_origin(annotation)
    if origin is typing.Literal:
        choices = typing.get_args(annotation)
        if value not in choices:
            raise ConfigError(f"{key}: expected one of {', '.join(map(str, choices))}, got {value!r}")
        return value
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(annotation)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _convert(value, option, key)
            except ConfigError as error:
                errors.append(str(error))
        raise ConfigError(errors[0] if errors else f"{key}: unexpected value {value!r}")
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        (item, *_rest) = typing.get_args(annotation) or (Any,)
        return tuple(_convert(v, item, key) for v in value)
    if annotation is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {value!r}")
        return value
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected a whole number, got {value!r}")
        return value
    if annotation is float:
        if isinstance(value, str):  # "inf" as our JSON files write it; "1e-6", which YAML 1.1 reads as text
            try:
                number = float(value)
            except ValueError:
                number = math.nan
            if math.isnan(number):
                raise ConfigError(f"{key}: expected a number, got {value!r}")
            return number
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if annotation is str:
        if isinstance(value, dict):  # YAML reads an unquoted "400:" as a mapping
            raise ConfigError(f"{key}: expected text, got {value!r}; quote text that holds ':' (e.g. \"400:\")")
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected text, got {value!r}")
        return value
    if isinstance(annotation, type) and dataclasses.is_dataclass(annotation):
        return _build(annotation, value, key)
    return value


def _build(cls: type, data: Any, prefix: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix or 'configuration'}: expected a mapping of keys, got {data!r}")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in fields(cls)}
    for key in data:
        if key not in known:
            where = f"{prefix}.{key}" if prefix else str(key)
            raise ConfigError(f"unknown configuration key '{where}' (known here: {', '.join(sorted(known))})")
    values = {k: _convert(v, hints[k], f"{prefix}.{k}" if prefix else k) for k, v in data.items()}
    try:
        return cls(**values)
    except (TypeError, ValueError) as error:
        raise ConfigError(f"{prefix or 'configuration'}: {error}") from error


def _merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def parse_override(text: str) -> dict[str, Any]:
    """``a.b.c=value`` (value in YAML syntax) -> {"a": {"b": {"c": value}}}."""
    if "=" not in text:
        raise ConfigError(f"--set expects KEY=VALUE, got {text!r}")
    key, raw = text.split("=", 1)
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"--set has an empty key in {text!r}")
    try:
        value: Any = yaml.safe_load(raw) if raw.strip() else ""
        if ":" in raw and isinstance(value, (int, float)):
            value = raw.strip()  # YAML 1.1 reads 5:2 as the base-60 number 302; a --set value means the text
    except yaml.YAMLError as error:
        raise ConfigError(f"--set {key}: cannot read value {raw!r}") from error
    *parents, last = key.split(".")
    nested: dict[str, Any] = {last: value}
    for part in reversed(parents):
        nested = {part: nested}
    return nested


PRESETS_DIR = Path(__file__).parent / "presets"


def preset_names() -> list[str]:
    return sorted(p.stem for p in PRESETS_DIR.glob("*.yaml"))


def read_yaml(path: Path) -> dict[str, Any]:
    try:
        data: Any = yaml.safe_load(path.read_text())
        data = {} if data is None else data  # an empty file: all defaults
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML ({str(error).splitlines()[0]})") from error
    except OSError as error:
        raise ConfigError(f"cannot read {path}: {error.strerror}") from error
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of configuration keys")
    return data


def config_from_dict(data: dict[str, Any]) -> RunConfig:
    """A ``RunConfig`` from its ``to_dict()`` form (as saved in runs and released models)."""
    return _build(RunConfig, data, "")


def load_config(source: str, overrides: Sequence[str] = ()) -> RunConfig:
    """A preset name or a YAML file, then ``KEY=VALUE`` overrides in order."""
    path = Path(source)
    if path.suffix in (".yaml", ".yml") or path.exists():
        data = read_yaml(path)
        data.setdefault("name", path.stem)
    elif source in preset_names():
        data = read_yaml(PRESETS_DIR / f"{source}.yaml")
        data.setdefault("name", source)
    else:
        raise ConfigError(f"no preset or file named {source!r} (presets: {', '.join(preset_names()) or 'none'})")
    for text in overrides:
        data = _merge(data, parse_override(text))
    return _build(RunConfig, data, "")


# What a resume may change (a key, or a section with all its keys): how fast and where a run trains and how often it
# logs, monitors and checkpoints (a resume is bit-exact whatever they are: ``Performance``), where the data are read
# from (their content is checked by sha256 on resume), and the run's labels. Anything else -- what is trained, how,
# and on what -- would make the release describe settings its weights were never trained with.
RESUMABLE_SETTINGS = ("name", "description", "performance", "training.log_every", "training.checkpoint_every",
                      "training.tensorboard", "training.sample_grid_every", "training.sample_grid_images",
                      "training.sample_grid_steps", "data.data_dir", "data.path", "data.test_path",
                      "pretrain.data.data_dir", "pretrain.data.path", "pretrain.data.test_path")


def _flat(settings: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(settings, dict):
        return {prefix: settings}
    flat: dict[str, Any] = {}
    for key, value in settings.items():
        flat.update(_flat(value, f"{prefix}.{key}" if prefix else str(key)))
    return flat


def changed_settings(was: dict[str, Any], now: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """Dotted key -> (was, now) for every setting that differs between two ``RunConfig.to_dict()`` forms (either
    read back from JSON), apart from ``RESUMABLE_SETTINGS``. A key that ``was`` lacks (written before the setting
    existed) had its default."""
    def flat(settings: dict[str, Any]) -> dict[str, Any]:
        return _flat(json.loads(json.dumps(json_safe(settings))))

    old, new = {**flat(RunConfig().to_dict()), **flat(was)}, flat(now)
    return {key: (old.get(key), new.get(key)) for key in sorted(set(flat(was)) | set(new))
            if old.get(key) != new.get(key)
            and not any(key == free or key.startswith(free + ".") for free in RESUMABLE_SETTINGS)}


def planned_size(privacy: PrivacyConfig, dataset_size: int) -> int:
    """N of the plan: the declared public size N^ (``privacy.public_dataset_size``) if given, else the private
    dataset's size N."""
    return privacy.public_dataset_size if privacy.public_dataset_size is not None else dataset_size


def plan_delta(privacy: PrivacyConfig, dataset_size: int) -> float:
    """delta: ``privacy.delta``, else 1 / (10 N) of the plan's N. With a declared size it must also lie below
    1 / N of the private dataset itself (an owner-side check: the error stays on the owner's terminal)."""
    size = planned_size(privacy, dataset_size)
    delta = privacy.delta if privacy.delta is not None else 1 / (10 * size)
    if privacy.public_dataset_size is not None and not delta < 1 / dataset_size:
        raise ConfigError(f"privacy.public_dataset_size: delta {delta:g} is not below 1/N of the private dataset; "
                          "declare a size nearer the dataset's or set privacy.delta lower")
    return delta


def resolve_plan(privacy: PrivacyConfig, dataset_size: int, *, calibrate: bool = True) -> PrivacyPlan:
    """The ``PrivacyPlan`` for a dataset of ``dataset_size`` examples: sigma calibrated to the target epsilon,
    or the given noise multiplier (checked against the target when both are set). The plan is for the declared
    public size when ``privacy.public_dataset_size`` is set (``planned_size``).

    ``calibrate=False``: a draft for a plan composed with other DP stages, which calibrates all of them together
    -- the given noise multiplier or a relative level of 1, and no target of its own."""
    delta = plan_delta(privacy, dataset_size)
    size = planned_size(privacy, dataset_size)
    steps = steps_for(steps=privacy.steps, epochs=privacy.epochs, dataset_size=size,
                      expected_batch_size=privacy.batch_size)
    if steps < 1:
        raise ConfigError(f"privacy: a run needs at least 1 step, got {steps}")
    common: dict[str, Any] = dict(delta=delta, dataset_size=size, expected_batch_size=privacy.batch_size,
                                  max_grad_norm=privacy.max_grad_norm, multiplicity=privacy.multiplicity,
                                  accountant=privacy.accountant)
    if privacy.noise_multiplier is not None:
        return PrivacyPlan(steps=steps, noise_multiplier=privacy.noise_multiplier,
                           target_epsilon=privacy.target_epsilon, **common)
    if privacy.target_epsilon is None:
        raise ConfigError("privacy: give target_epsilon or noise_multiplier")
    if not calibrate:
        return PrivacyPlan(steps=steps, noise_multiplier=1.0, target_epsilon=None, **common)
    return PrivacyPlan.calibrated(target_epsilon=privacy.target_epsilon, steps=steps, **common)
