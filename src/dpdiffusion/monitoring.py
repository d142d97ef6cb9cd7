"""Owner-side monitoring of a training run: TensorBoard events under ``RUN_DIR/owner/tensorboard``.

What a monitor shows -- the loss, the fraction of per-example gradients clipped, the realised batch size -- are
un-noised statistics of the private data, like ``owner/log.jsonl``: they stay with the data owner and never go
into ``release/``. The epsilon spent and the learning rate are public; the sample grids come from the EMA weights
(post-processing of the DP updates), from a fixed public seed.

The training loop (``loop.TrainingLoop``) talks to a ``Monitor``: ``scalars`` at each logged step, ``stepped``
after every step (a sample grid every ``training.sample_grid_every`` steps), closed when training stops. The
default ``Monitor`` does nothing; ``for_training`` gives a ``TensorBoard`` one when ``training.tensorboard`` is on.
TensorBoard is an optional extra, imported only when a writer is opened (``require`` checks it before training).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, cast

import numpy as np
import torch
from torch import nn

from dpdiffusion.runconfig import ConfigError, RunConfig, TrainingConfig, config_from_dict

TENSORBOARD_HINT = "pip install 'dpdiffusion[tensorboard]'"
GRID_TAG = "samples/ema"


def summary_writer_class() -> Any:
    """``torch.utils.tensorboard.SummaryWriter``, or a one-line error naming the extra when tensorboard is missing."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as error:
        raise ConfigError(f"training.tensorboard needs the tensorboard package; install the optional extra: "
                          f"{TENSORBOARD_HINT}") from error
    return SummaryWriter


def require(training: TrainingConfig) -> None:
    """Refuse, before any training, settings that need a package this environment lacks."""
    if training.tensorboard:
        summary_writer_class()


class Monitor:
    """What a training loop reports to besides its log: nothing. A context manager: closed when training stops."""

    def started(self, steps_taken: int) -> Monitor:
        """Training (re)starts with ``steps_taken`` steps already taken (0, or a resumed checkpoint's)."""
        return self

    def scalars(self, step: int, values: Mapping[str, float]) -> None:
        """Statistics of a logged step (tag -> value)."""

    def stepped(self, step: int, ema: nn.Module) -> None:
        """After every step, with the EMA model (what the run releases)."""

    def close(self) -> None:
        pass

    def __enter__(self) -> Monitor:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        self.close()


NO_MONITOR = Monitor()


@dataclass(frozen=True)
class SampleGrid:
    """A small grid sampled from a denoiser: ``images`` images from the fixed public ``seed`` (labels drawn
    uniformly from it), the run's sampler with ``steps`` noise levels, on the model's device."""

    config: RunConfig
    images: int = 16
    steps: int = 10
    seed: int = 0

    def sample(self, model: nn.Module) -> np.ndarray:
        """uint8 [H, W, C]. The model is put in eval mode for sampling and back after; the sampler's randomness
        comes from per-image generators (``generate``), so training's random streams are untouched."""
        from dpdiffusion.diffusion.generate import generate, image_grid

        sampling = dataclasses.replace(self.config.sampling, steps=self.steps)
        training = model.training
        model.eval()
        try:
            images, _ = generate(cast(Any, _OnDevice(model)), self.config, num=self.images, sampling=sampling,
                                 seed=self.seed)
        finally:
            model.train(training)
        return image_grid(images, columns=math.ceil(math.sqrt(self.images)))


class _OnDevice(nn.Module):
    """``model(x, sigma, labels)`` on the model's device for a sampler that keeps its state on the CPU."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.device = next(model.parameters()).device

    def forward(self, x: torch.Tensor, sigma: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        on = self.device
        return self.model(x.to(on), sigma.to(on), None if labels is None else labels.to(on)).to(x.device)


class TensorBoard(Monitor):
    """TensorBoard events in ``folder``: the scalars of each logged step and, every ``grid_every`` steps, a
    ``grid`` sampled from the EMA model. The writer is opened at the first event (rank 0 alone writes); each
    (re)start adds an events file to the folder and hides what an interrupted run logged after the step it
    resumes from (``purge_step``), so a resumed run shows as one."""

    def __init__(self, folder: Path, *, grid: SampleGrid | None = None, grid_every: int = 0):
        summary_writer_class()  # refuse now, not at the first event
        self.folder, self.grid, self.grid_every = Path(folder), grid, grid_every
        self.writer: Any = None
        self.purge_step: int | None = None

    def started(self, steps_taken: int) -> Monitor:
        self.purge_step = steps_taken + 1
        return self

    def open(self) -> Any:
        if self.writer is None:
            self.folder.mkdir(parents=True, exist_ok=True)
            self.writer = summary_writer_class()(str(self.folder), purge_step=self.purge_step)
        return self.writer

    def scalars(self, step: int, values: Mapping[str, float]) -> None:
        writer = self.open()
        for tag, value in values.items():
            writer.add_scalar(tag, value, step)
        writer.flush()  # seen by a watching TensorBoard now, not at the writer's next timed flush

    def stepped(self, step: int, ema: nn.Module) -> None:
        if self.grid is not None and self.grid_every and step % self.grid_every == 0:
            writer = self.open()
            writer.add_image(GRID_TAG, self.grid.sample(ema), step, dataformats="HWC")
            writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


def for_training(training: TrainingConfig, folder: Path, config: Mapping[str, Any] | None = None) -> Monitor:
    """The monitor ``training`` asks for, writing to ``folder``; ``config`` (a ``RunConfig.to_dict()``) describes
    the denoiser a sample grid is drawn from."""
    if not training.tensorboard:
        return NO_MONITOR
    grid = None
    if training.sample_grid_every:
        if not config:
            raise ConfigError("training.sample_grid_every needs the run's configuration (the denoiser to sample)")
        grid = SampleGrid(config_from_dict(dict(config)), images=training.sample_grid_images,
                          steps=training.sample_grid_steps)
    return TensorBoard(folder, grid=grid, grid_every=training.sample_grid_every)
