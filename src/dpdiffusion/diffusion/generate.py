"""Synthetic images from a released model: labels drawn uniformly (never from private label counts), one
random stream per image, so an image depends only on (seed, index) and not on the batch size."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file
from tqdm import tqdm

from dpdiffusion.diffusion.denoiser import build_denoiser
from dpdiffusion.diffusion.preconditioning import Precond
from dpdiffusion.diffusion.samplers import SAMPLERS, guided
from dpdiffusion.diffusion.schedules import ImageNoise, karras_sigmas
from dpdiffusion.privacy.report import PrivacyReport
from dpdiffusion.run_folder import RunFolder
from dpdiffusion.runconfig import ConfigError, RunConfig, SamplingConfig, config_from_dict


def load_model_file(path: str | Path) -> tuple[Precond, RunConfig, dict]:
    """A model file of ours (a release, or a run's public stage-1 model): the denoiser, its configuration and
    its safetensors header (which says what it was trained on)."""
    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = json.loads((f.metadata() or {}).get("dpdiffusion", "{}"))
    except (OSError, ValueError, SafetensorError) as error:
        raise ConfigError(f"{path} is not a readable safetensors model ({error})") from error
    if "config" not in meta:
        raise ConfigError(f"{path} has no dpdiffusion configuration in its header")
    config = config_from_dict(meta["config"])
    model = build_denoiser(config.model, config.diffusion, meta.get("network"))
    model.load_state_dict(load_file(str(path)))
    return model.eval().requires_grad_(False), config, meta


def load_release(run_dir: str | Path) -> tuple[Precond, RunConfig, PrivacyReport | None]:
    """The released denoiser, its configuration and its privacy report (None: a model without one), from
    ``RUN_DIR/release``."""
    path = RunFolder(run_dir).model_weights
    if not path.is_file():
        raise ConfigError(f"{path} not found: is {run_dir} a finished run folder?")
    model, config, meta = load_model_file(path)
    privacy = meta.get("privacy")
    return model, config, PrivacyReport.from_dict(privacy) if privacy else None


def image_seeds(seed: int, num: int) -> list[int]:
    """A well-mixed 32-bit seed per (seed, image index): torch's CPU generator keeps only 32 bits of a seed."""
    return [int(np.random.SeedSequence([seed, i]).generate_state(1)[0]) for i in range(num)]


def uniform_labels(num: int, num_classes: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, num_classes, (num,), generator=generator)


@torch.no_grad()
def generate(
    model: Precond,
    config: RunConfig,
    *,
    num: int,
    sampling: SamplingConfig | None = None,
    labels: torch.Tensor | None = None,
    seed: int = 0,
    batch_size: int = 256,
    progress: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """``num`` images as uint8 [N, H, W, C] and their labels int64 [N] (-1 for an unconditional model)."""
    sampling = sampling or config.sampling
    if sampling.sampler not in SAMPLERS:
        raise ConfigError(f"unknown sampler {sampling.sampler!r}; choose one of {', '.join(SAMPLERS)}")
    num_classes = config.model.num_classes
    if labels is None:
        labels = uniform_labels(num, num_classes, seed) if num_classes else torch.full((num,), -1)
    elif not num_classes:
        raise ConfigError("labels were given, but the model is unconditional (model.num_classes 0)")
    elif len(labels) != num or not ((labels >= 0) & (labels < num_classes)).all():
        raise ConfigError(f"need {num} labels in [0, {num_classes})")
    if batch_size < 1:
        raise ConfigError(f"the sampling batch size must be >= 1, got {batch_size}")
    sigmas = karras_sigmas(sampling.steps, sigma_min=sampling.sigma_min, sigma_max=sampling.sigma_max, rho=sampling.rho)
    seeds = image_seeds(seed, num)
    shape = (config.model.in_channels, config.model.img_resolution, config.model.img_resolution)
    chunks = []
    for start in tqdm(range(0, num, batch_size), desc="sampling", unit="batch", disable=not progress, leave=False):
        stop = min(start + batch_size, num)
        noise = ImageNoise(seeds[start:stop])
        x = noise.randn(shape) * sigmas[0]
        part_labels = labels[start:stop] if num_classes else None
        denoiser = guided(model, part_labels, guidance=sampling.guidance, null_label=num_classes)
        kwargs: dict[str, Any] = {"noise": noise}
        if sampling.sampler in ("heun", "churn"):
            kwargs.update(S_churn=sampling.S_churn, S_min=sampling.S_min, S_max=sampling.S_max, S_noise=sampling.S_noise)
        elif sampling.sampler == "ddim":
            kwargs.update(eta=sampling.eta)
        chunks.append(SAMPLERS[sampling.sampler](denoiser, x, sigmas, **kwargs))
    images = torch.cat(chunks) if chunks else torch.zeros((0, *shape))
    pixels = ((images + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1)
    return pixels.numpy(), labels.to(torch.int64).numpy()


def image_grid(images: np.ndarray, *, columns: int = 10, max_images: int = 100) -> np.ndarray:
    """The first ``max_images`` images [N, H, W, C] as one uint8 grid [rows, columns, C] with a 1-pixel black
    border around each, nearest-neighbour upscaled to at least 32 pixels per image."""
    images = images[:max_images]
    n, h, w, c = images.shape if len(images) else (0, 8, 8, 1)
    rows = max(1, -(-n // columns))
    grid = np.zeros((rows * (h + 2), columns * (w + 2), c), dtype=np.uint8)
    for i, image in enumerate(images):
        r, col = divmod(i, columns)
        grid[r * (h + 2) + 1 : r * (h + 2) + 1 + h, col * (w + 2) + 1 : col * (w + 2) + 1 + w] = image
    scale = max(1, 32 // h)
    return grid.repeat(scale, axis=0).repeat(scale, axis=1)


def save_grid(images: np.ndarray, path: str | Path, *, columns: int = 10, max_images: int = 100) -> None:
    """A PNG of ``image_grid``."""
    from PIL import Image

    grid = image_grid(images, columns=columns, max_images=max_images)
    picture = Image.fromarray(grid[..., 0] if grid.shape[-1] == 1 else grid)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    picture.save(path)
