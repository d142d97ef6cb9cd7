"""A diffusers ``UNet2DModel`` (an epsilon-prediction DDPM) as our denoiser D(x, sigma, labels).

The folder is read from disk only (``local_files_only``) and only from safetensors weights, so loading neither
needs a network nor unpickles anything. Both layouts work: a pipeline folder with ``unet/`` (and
``scheduler/``) sub-folders, or the UNet's own folder. The model's discrete schedule (its scheduler's
``alphas_cumprod``; DDPM's linear betas 1e-4..0.02 over 1000 steps when the folder has none) maps a noise
level sigma to the model's (fractional) timestep, so the model sees exactly the inputs it was trained on:
x_t = x_noisy / sqrt(1 + sigma^2) at t with sigma_t = sqrt(1 / alpha_bar_t - 1).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dpdiffusion.diffusion.preconditioning import Coefficients, Precond
from dpdiffusion.nets.unet import UNetConfig, _num_groups

DIFFUSERS_HINT = "install the optional extra: pip install 'dpdiffusion[diffusers]'"


class DiffusersError(ValueError):
    """A diffusers folder is missing, incomplete or of a kind we cannot adapt."""


def is_diffusers_folder(path: str | Path) -> bool:
    path = Path(path)
    return (path / "unet" / "config.json").is_file() or (
        (path / "config.json").is_file() and (path / "diffusion_pytorch_model.safetensors").is_file()
    )


def _unet_class():
    try:
        from diffusers import UNet2DModel
    except ImportError as error:
        raise DiffusersError(f"reading a diffusers model needs the diffusers package; {DIFFUSERS_HINT}") from error
    return UNet2DModel


class DiffusersNet(nn.Module):
    """F(x_in, c_noise, labels) -> predicted noise, from a ``UNet2DModel`` (learned-variance channels dropped)."""

    def __init__(self, unet: Any):  # a diffusers UNet2DModel
        super().__init__()
        self.unet = unet
        self.in_channels: int = unet.config.in_channels
        self.conditional = bool(unet.config.num_class_embeds)

    def forward(self, x: torch.Tensor, c_noise: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        class_labels = labels if self.conditional else None
        if self.conditional and class_labels is None:  # our convention: the last class embedding is "no label"
            class_labels = torch.full((x.shape[0],), self.unet.config.num_class_embeds - 1, device=x.device)
        out = self.unet(x, c_noise, class_labels=class_labels, return_dict=False)[0]
        return out[:, : self.in_channels]


def unet2d_config(model: UNetConfig) -> dict[str, Any]:
    """diffusers' ``UNet2DModel`` arguments for our architecture fields (``model.architecture: unet2d``): one level
    per ``channel_mult`` entry with ``model_channels * mult`` channels and ``num_blocks`` residual blocks (the
    decoder ``num_blocks + 1``), self-attention at ``attn_resolutions`` and in the middle, GroupNorm with the
    groups of the first level at every layer, our sinusoidal noise embedding (cos first, frequencies 1 down to
    1 / max_positions), class embeddings ``num_classes + 1`` (the last is "no label", classifier-free guidance).
    The rest is diffusers' own (DDPM's layout: strided-conv down-sampling, nearest + conv up-sampling)."""
    levels = range(len(model.channel_mult))
    channels = [model.model_channels * mult for mult in model.channel_mult]
    attention = [(model.img_resolution >> level) in model.attn_resolutions for level in levels]
    widths = {channels[level] for level in levels if attention[level]} | {channels[-1]}  # the middle attends too
    head_dims = {width // model.attn_heads for width in widths}
    if len(head_dims) > 1:
        raise ValueError(f"model.architecture unet2d has one attention head size: attention at {sorted(widths)} "
                         f"channels with {model.attn_heads} head(s) gives sizes {sorted(head_dims)}; attend at "
                         "resolutions of one width (model.attn_resolutions)")
    if model.embedding_channels_mult != 4:
        raise ValueError("model.architecture unet2d has an embedding 4 times model_channels wide: set "
                         "model.embedding_channels_mult to 4")
    return {
        "sample_size": model.img_resolution, "in_channels": model.in_channels, "out_channels": model.out_channels,
        "time_embedding_type": "positional", "flip_sin_to_cos": True, "freq_shift": 1,
        "down_block_types": ["AttnDownBlock2D" if a else "DownBlock2D" for a in attention],
        "up_block_types": ["AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attention)],
        "block_out_channels": channels, "layers_per_block": model.num_blocks, "dropout": model.dropout,
        "attention_head_dim": head_dims.pop(), "norm_num_groups": _num_groups(model.model_channels),
        "norm_eps": 1e-6, "num_class_embeds": model.num_classes + 1 if model.num_classes else None,
    }


def build_unet2d(model: UNetConfig) -> DiffusersNet:
    """F_x(x, c_noise, labels) as a freshly initialised diffusers ``UNet2DModel`` (``unet2d_config``)."""
    if model.max_positions != 10000:
        raise ValueError("model.architecture unet2d embeds noise with periods up to 10000: set model.max_positions "
                         "to 10000")
    return DiffusersNet(_unet_class()(**unet2d_config(model)))


class DDPMPrecond(Precond):
    """Epsilon prediction on a discrete DDPM schedule: c_skip = 1, c_out = -sigma, c_in = 1 / sqrt(1 + sigma^2),
    c_noise = the timestep t whose sigma_t = sigma (interpolated linearly in log sigma between integers)."""

    def __init__(self, net: nn.Module, alphas_cumprod: torch.Tensor):
        super().__init__(net, sigma_data=0.5)
        alphas_cumprod = torch.as_tensor(alphas_cumprod, dtype=torch.float64)
        self.log_sigmas: torch.Tensor
        self.register_buffer("log_sigmas", (1 / alphas_cumprod - 1).sqrt().log().float(), persistent=False)
        self.alphas_cumprod = alphas_cumprod

    def timestep(self, sigma: torch.Tensor) -> torch.Tensor:
        log_sigmas = self.log_sigmas.to(sigma.device)
        log_sigma = sigma.float().clamp_min(1e-10).log().clamp(log_sigmas[0], log_sigmas[-1])
        upper = torch.searchsorted(log_sigmas, log_sigma).clamp(1, len(log_sigmas) - 1)
        lo, hi = log_sigmas[upper - 1], log_sigmas[upper]
        frac = ((log_sigma - lo) / (hi - lo)).clamp(0, 1)
        return (upper - 1).to(sigma.dtype) + frac.to(sigma.dtype)

    def coefficients(self, sigma: torch.Tensor) -> Coefficients:
        return torch.ones_like(sigma), -sigma, 1 / (sigma**2 + 1).sqrt(), self.timestep(sigma)

    def loss_weight(self, sigma: torch.Tensor) -> torch.Tensor:
        return 1 / sigma**2


def _unet_folder(path: Path) -> Path:
    return path / "unet" if (path / "unet" / "config.json").is_file() else path


def _alphas_cumprod(path: Path) -> torch.Tensor:
    from diffusers import DDPMScheduler

    for folder in (path / "scheduler", path):
        if (folder / "scheduler_config.json").is_file():
            config = json.loads((folder / "scheduler_config.json").read_text())
            if config.get("prediction_type", "epsilon") != "epsilon":
                raise DiffusersError(f"{folder}: prediction_type {config['prediction_type']!r}; only epsilon-prediction "
                                     "models can be adapted")
            scheduler: Any = DDPMScheduler.from_config(config)
            return scheduler.alphas_cumprod
    default: Any = DDPMScheduler(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02)
    return default.alphas_cumprod


def load_diffusers_denoiser(path: str | Path) -> tuple[DDPMPrecond, dict[str, Any]]:
    """The denoiser from a diffusers folder on disk, and what a release needs to rebuild it without the folder."""
    path = Path(path)
    unet_class = _unet_class()
    folder = _unet_folder(path)
    if not (folder / "diffusion_pytorch_model.safetensors").is_file():
        raise DiffusersError(f"{folder} has no diffusion_pytorch_model.safetensors (only safetensors weights are read)")
    try:
        unet = unet_class.from_pretrained(str(folder), local_files_only=True, use_safetensors=True)
    except (OSError, ValueError, KeyError, RuntimeError) as error:
        raise DiffusersError(f"cannot read the diffusers UNet in {folder}: {str(error).splitlines()[0]}") from error
    alphas = _alphas_cumprod(path)
    spec = {"unet": dict(unet.config), "alphas_cumprod": alphas.tolist()}
    return DDPMPrecond(DiffusersNet(unet), alphas), spec


def build_diffusers_denoiser(spec: dict[str, Any]) -> DDPMPrecond:
    """An untrained denoiser of the architecture in ``spec`` (from ``load_diffusers_denoiser``); weights come next."""
    unet_class = _unet_class()
    config = {k: v for k, v in spec["unet"].items() if not k.startswith("_")}
    return DDPMPrecond(DiffusersNet(unet_class.from_config(config)), torch.tensor(spec["alphas_cumprod"]))
