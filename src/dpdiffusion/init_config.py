"""``dpdiffusion init DATA``: a starting run configuration for the user's own images, from their layout alone
(``data.layout``), sized for this machine: on a CPU a small UNet and few steps, as the CPU presets
(``mnist-eps10-cpu``); with a GPU DPDM's sizes (``fmnist-eps10``, ``cifar10-eps10``). Epsilon 10, and delta the
largest power of ten below 1 / N, as the presets choose it. The file is written once: an existing one is never
overwritten."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from dpdiffusion.data.layout import Layout, inspect_layout
from dpdiffusion.runconfig import config_from_dict

CHANNEL_MULT = (1, 2, 2)  # the UNet halves the resolution len(CHANNEL_MULT) - 1 times


@dataclass(frozen=True)
class Sizing:
    """What a machine can train: the network, batch and length of training (``privacy.steps`` or ``epochs``)."""

    machine: str
    max_resolution: int
    model_channels: int
    num_blocks: int
    batch_size: int
    length: dict[str, int]  # {"steps": n} or {"epochs": n}
    lr: float
    ema_decay: float
    checkpoint_every: int
    micro_batch_size: int
    sampler: str
    like: str  # the presets it follows, in words


CPU = Sizing("CPU", 32, 16, 1, 512, {"steps": 900}, 1e-3, 0.995, 100, 128, "dpmpp2m", "the mnist-eps10-cpu preset")
GPU = Sizing("GPU", 64, 32, 2, 2048, {"epochs": 300}, 3e-4, 0.999, 200, 32, "heun",
             "DPDM's: the fmnist-eps10 and cifar10-eps10 presets")


def supported_resolution(side: int, cap: int, levels: int = len(CHANNEL_MULT)) -> int:
    """The size nearest ``min(side, cap)`` that the UNet takes: a multiple of 2 ** (levels - 1) (ties go up)."""
    step = 2 ** (levels - 1)
    return max(step, step * int((min(side, cap) + step / 2) // step))


def multiplicity(channels: int, gpu: bool) -> int:
    """K: DPDM's 32 for grayscale and 8 for RGB on a GPU; 1 on a CPU (as the CPU presets)."""
    return (32 if channels == 1 else 8) if gpu else 1


def _v(value: Any) -> str:
    """A value in YAML (JSON's scalars and lists are YAML too)."""
    return json.dumps(value)


def _plural(count: int, word: str) -> str:
    return f"{count} {word}{'' if count == 1 else 'es' if word.endswith('s') else 's'}"


def config_text(layout: Layout, gpu: bool) -> str:
    """The starting configuration as commented YAML."""
    sizing = GPU if gpu else CPU
    resolution = supported_resolution(layout.side, sizing.max_resolution)
    step = 2 ** (len(CHANNEL_MULT) - 1)
    classes = layout.num_classes if layout.num_classes > 1 else 0  # one class: an unconditional model
    full = sizing.batch_size * (2 if gpu and layout.channels == 1 else 1)
    # a machine's batch, a constant; only for data under 10 batches one from N (a power of two: N's magnitude), and
    # the comment says so, since the released configuration carries B
    batch = full if layout.size >= 10 * full else 2 ** int(math.log2(max(1, layout.size // 10)))
    batch_note = ("B, the expected batch; q = B / N" if batch == full else "B: chosen from your data's size, which "
                  "it therefore tells roughly (a release carries B); declare public_dataset_size and choose B from it")
    length_key, length = next(iter(sizing.length.items()))
    found = (f"{_plural(layout.num_classes, 'class')}, {_plural(layout.channels, 'channel')}, first image "
             f"{layout.side} px on its shorter side")
    columns = (f"\n  image_column: {_v(layout.image_column)}\n  label_column: {_v(layout.label_column)}"
               if layout.source == "hf" else "")
    if layout.class_names:
        names = (f"  # class_names: {_v(list(layout.class_names))}  # found in the data's layout: training takes "
                 "them from there, and the privacy report says so.\n  # Declare your own (one per class, for labels "
                 "0, 1, ...) to name the classes otherwise.\n")
    else:
        names = "  # class_names: []  # declare one name per class (labels 0, 1, ...) for the privacy report\n"
    unconditional = " (one class found)" if layout.num_classes == 1 else ""
    diffusion = ("{parameterisation: edm, sigma_data: 0.5773502691896258, P_mean: -1.2, P_std: 1.2, label_dropout: "
                 f"{0.1 if classes else 0.0}}}")
    return f"""\
# Starting configuration written by `dpdiffusion init` for {layout.source} data, sized for a {sizing.machine}
# (as {sizing.like}). Check it with `dpdiffusion train THIS_FILE --dry-run`.
# Found: {found}.
description: "your own {layout.source} data at epsilon 10, sized for a {sizing.machine}"
data:
  name: {layout.source}
  path: {_v(layout.path)}  # kept with you: a release never carries the data's path
  # test_path: ...  # a held-out set in the same form, for `evaluate` and `audit`
  resolution: {resolution}  # each image's centred square, resized (a fixed transform); a multiple of {step}
  channels: {layout.channels}{columns}
{names}model:
  img_resolution: {resolution}
  in_channels: {layout.channels}
  out_channels: {layout.channels}
  model_channels: {sizing.model_channels}
  channel_mult: {_v(list(CHANNEL_MULT))}
  num_blocks: {sizing.num_blocks}
  attn_resolutions: [{max(1, resolution // step)}]
  num_classes: {classes}  # 0: unconditional{unconditional}
diffusion: {diffusion}
privacy:
  target_epsilon: 10
  # delta: 1.0e-5  # default 1 / (10 N): N the declared public size, else your data's own (the report says which)
  # public_dataset_size: ...  # declare a public size N^ so that no release carries N (see README)
  batch_size: {batch}  # {batch_note}
  {length_key}: {length}
  max_grad_norm: 1.0
  multiplicity: {multiplicity(layout.channels, gpu)}  # K noise draws per example
training: {{lr: {sizing.lr}, ema_decay: {sizing.ema_decay}, checkpoint_every: {sizing.checkpoint_every}, log_every: 20}}
performance: {{micro_batch_size: {sizing.micro_batch_size}}}  # memory and speed only, never the result
sampling: {{sampler: {sizing.sampler}, steps: 18}}
"""


def has_gpu() -> bool:
    import torch

    return torch.cuda.is_available()


def write_config(out: Path, text: str) -> None:
    """``text`` to ``out``, created exclusively: an existing file is never overwritten."""
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        with out.open("x") as f:
            f.write(text)
    except FileExistsError:
        raise FileExistsError(f"{out} already exists: dpdiffusion init never overwrites a file (choose another "
                              "--out)") from None


def init(data: str, out: str | Path, gpu: bool | None = None) -> tuple[Path, Layout, bool]:
    """Inspect ``data``, write its starting configuration to ``out`` (``gpu``: None detects one); the path, the
    layout found and whether the GPU sizes were chosen."""
    out = Path(out)
    if out.exists():  # said before any data are read
        write_config(out, "")
    layout = inspect_layout(data)
    gpu = has_gpu() if gpu is None else gpu
    text = config_text(layout, gpu)
    config_from_dict(yaml.safe_load(text))  # parses as a run configuration, whatever the names and paths hold
    write_config(out, text)
    return out, layout, gpu
