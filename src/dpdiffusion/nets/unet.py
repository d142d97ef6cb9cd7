"""A DDPM++-style UNet: the raw network F_x inside EDM preconditioning (``diffusion.preconditioning``).

The layout follows EDM's ``SongUNet`` (Karras et al. 2022) and the NCSN++/DDPM++ model that DPDM
(Dockhorn et al. 2022) trains on MNIST: a positional embedding of the noise label through a two-layer
MLP, an optional class embedding added to it, residual blocks with GroupNorm and SiLU, self-attention at
chosen resolutions, and an encoder/decoder joined by concatenated skip connections.

Every layer treats the examples of a batch independently, as DP-SGD's per-example clipping requires:
GroupNorm only (no running statistics), attention within one image, no in-place ops on tensors that
need grad, no ``.item()`` and no Python branching on data. The network therefore runs under
``torch.func.vmap(grad(...))`` as well as under Opacus hooks (every parameter sits in an ``nn.Conv2d``,
``nn.Linear``, ``nn.GroupNorm`` or ``nn.Embedding``), and accepts an empty batch.

Choices, all as in EDM's DDPM++ (``SongUNet``) and DPDM's NCSN++ with BigGAN-style resampling:

- resampling happens inside residual blocks between levels: a down block applies 2x2 average pooling
  (to its main path after the first GroupNorm-SiLU, and to its skip), an up block nearest-neighbour x2
  followed by its 3x3 conv; with them the default config has 1,739,457 parameters (DPDM: 1.75M), while a
  single strided conv / nearest + conv between levels would give 1.62M;
- the decoder has ``num_blocks + 1`` blocks per level, so it uses each encoder skip exactly once;
  attention follows every encoder block at an attention resolution, the first middle block, and the last
  decoder block of a level at an attention resolution; one head by default;
- weights are Xavier-uniform with zero biases; the last conv of every residual branch (residual blocks,
  attention projection) and the output conv are scaled by 1e-5 (EDM's ``init_zero``) and the qkv conv by
  sqrt(0.2), so each block starts close to the identity and the network's output close to zero.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, TypeVar

import torch
from torch import Tensor, nn
from torch.nn import functional as F

_ZERO_INIT_SCALE = 1e-5  # EDM's init_zero: near zero, not exactly zero
_ATTN_INIT_SCALE = math.sqrt(0.2)  # EDM's init_attn for the qkv projection
_Layer = TypeVar("_Layer", nn.Conv2d, nn.Linear)
Resample = Literal["none", "down", "up"]


@dataclass(frozen=True)
class UNetConfig:
    """Architecture of :class:`UNet`. The defaults give DPDM's MNIST model (about 1.75M parameters)."""

    img_resolution: int = 28
    in_channels: int = 1
    out_channels: int = 1
    model_channels: int = 32  # channels at the first level; level i has model_channels * channel_mult[i]
    channel_mult: tuple[int, ...] = (1, 2, 2)
    num_blocks: int = 2  # residual blocks per level in the encoder; the decoder has num_blocks + 1
    attn_resolutions: tuple[int, ...] = (7,)  # resolutions (image height) with self-attention
    num_classes: int = 0  # 0: unconditional; else labels in [0, num_classes], num_classes meaning "no label"
    dropout: float = 0.0  # inside residual blocks; > 0 needs vmap(..., randomness="different")
    embedding_channels_mult: int = 4  # embedding width = model_channels * embedding_channels_mult
    attn_heads: int = 1
    max_positions: int = 10000  # longest period of the sinusoidal noise embedding
    # ddpmpp: this module's UNet (EDM's DDPM++); unet2d: diffusers' UNet2DModel built from the same fields
    # (nets.diffusers_unet.unet2d_config), which `dpdiffusion export --format diffusers` can hand to diffusers
    architecture: Literal["ddpmpp", "unet2d"] = "ddpmpp"

    def __post_init__(self) -> None:
        # lists (e.g. from YAML) are accepted and stored as tuples, keeping the config hashable
        for name in ("channel_mult", "attn_resolutions"):
            if isinstance(getattr(self, name), list):
                object.__setattr__(self, name, tuple(getattr(self, name)))

        def positive(name: str, value: int) -> None:
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")

        for name in ("img_resolution", "in_channels", "out_channels", "model_channels", "num_blocks",
                     "embedding_channels_mult", "attn_heads", "max_positions"):
            positive(name, getattr(self, name))
        if not isinstance(self.channel_mult, tuple) or not self.channel_mult:
            raise ValueError(f"channel_mult must be a non-empty tuple of positive integers, got {self.channel_mult!r}")
        for mult in self.channel_mult:
            positive("every channel_mult entry", mult)
        if not isinstance(self.attn_resolutions, tuple):
            raise ValueError(f"attn_resolutions must be a tuple of integers, got {self.attn_resolutions!r}")
        factor = 2 ** (len(self.channel_mult) - 1)
        if self.img_resolution % factor:
            raise ValueError(
                f"img_resolution ({self.img_resolution}) must be divisible by 2**(len(channel_mult)-1) = {factor}, "
                f"since each of the {len(self.channel_mult) - 1} downsamplings halves it"
            )
        resolutions = {self.img_resolution // 2**i for i in range(len(self.channel_mult))}
        unknown = sorted(set(self.attn_resolutions) - resolutions)
        if unknown:
            raise ValueError(f"attn_resolutions {unknown} are not among the model's resolutions {sorted(resolutions)}")
        if isinstance(self.num_classes, bool) or not isinstance(self.num_classes, int) or self.num_classes < 0:
            raise ValueError(f"num_classes must be an integer >= 0 (0: unconditional), got {self.num_classes!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        for level in range(len(self.channel_mult)):
            channels = self.model_channels * self.channel_mult[level]
            if self.img_resolution >> level in self.attn_resolutions and channels % self.attn_heads:
                raise ValueError(f"attn_heads ({self.attn_heads}) must divide the channels ({channels}) at attention "
                                 f"resolution {self.img_resolution >> level}")
        if self.model_channels % 2:
            raise ValueError(f"model_channels must be even (sin/cos pairs), got {self.model_channels}")
        if self.architecture not in ("ddpmpp", "unet2d"):
            raise ValueError(f"architecture must be ddpmpp or unet2d, got {self.architecture!r}")

    @property
    def embedding_channels(self) -> int:
        return self.model_channels * self.embedding_channels_mult


def count_parameters(module: nn.Module) -> int:
    """Number of scalar parameters of ``module`` (trainable or not, each shared tensor counted once)."""
    return sum(p.numel() for p in module.parameters())


def _num_groups(channels: int) -> int:
    """min(32, channels // 4) groups, lowered to the nearest divisor of ``channels`` if it is not one."""
    groups = max(1, min(32, channels // 4))
    while channels % groups:
        groups -= 1
    return groups


def _group_norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(_num_groups(channels), channels, eps=1e-6)


def _init(layer: _Layer, scale: float = 1.0) -> _Layer:
    """Xavier-uniform weight times ``scale``, zero bias (EDM's initialisation)."""
    nn.init.xavier_uniform_(layer.weight, gain=scale)
    if layer.bias is not None:
        nn.init.zeros_(layer.bias)
    return layer


def _conv(cin: int, cout: int, kernel: int, scale: float = 1.0) -> nn.Conv2d:
    return _init(nn.Conv2d(cin, cout, kernel, padding=kernel // 2), scale)


class PositionalEmbedding(nn.Module):
    """Sinusoidal embedding [cos(x f_j), sin(x f_j)] with f_j from 1 down to 1/max_positions (EDM)."""

    def __init__(self, channels: int, max_positions: int = 10000):
        super().__init__()
        self.channels = channels
        self.max_positions = max_positions

    def forward(self, x: Tensor) -> Tensor:
        half = self.channels // 2
        freqs = torch.arange(half, dtype=x.dtype, device=x.device) / max(half - 1, 1)
        freqs = (1.0 / self.max_positions) ** freqs
        angles = x[:, None] * freqs[None, :]
        return torch.cat([angles.cos(), angles.sin()], dim=1)


class AttentionBlock(nn.Module):
    """Multi-head self-attention over the pixels of each image, from 1x1 convs; (x + attn) / sqrt(2)."""

    def __init__(self, channels: int, heads: int):
        super().__init__()
        self.heads = heads
        self.norm = _group_norm(channels)
        self.qkv = _conv(channels, 3 * channels, 1, scale=_ATTN_INIT_SCALE)
        self.proj = _conv(channels, channels, 1, scale=_ZERO_INIT_SCALE)

    def forward(self, x: Tensor) -> Tensor:
        b, c, height, width = x.shape
        d = c // self.heads
        qkv = self.qkv(self.norm(x)).reshape(b, 3, self.heads, d, height * width)
        q, k, v = qkv.unbind(dim=1)  # each [b, heads, d, pixels]
        weights = torch.einsum("bhdq,bhdk->bhqk", q, k / math.sqrt(d)).softmax(dim=-1)
        out = torch.einsum("bhqk,bhdk->bhdq", weights, v).reshape(b, c, height, width)
        return (x + self.proj(out)) / math.sqrt(2)


class ResBlock(nn.Module):
    """EDM's ``UNetBlock``: GroupNorm-SiLU-[resample]-conv, + projected embedding, GroupNorm-SiLU-dropout-conv;
    (skip + h) / sqrt(2), the skip resampled alike and 1x1-convolved when channels change; then, optionally,
    self-attention.

    ``resample`` is "none", "down" (2x2 average pooling) or "up" (nearest-neighbour x2, so that with the 3x3
    conv after it the block upsamples by nearest + conv).
    """

    def __init__(self, cin: int, cout: int, emb_channels: int, *, dropout: float = 0.0, resample: Resample = "none",
                 attention: bool = False, heads: int = 1):
        super().__init__()
        self.resample: nn.Module = {
            "none": nn.Identity(), "down": nn.AvgPool2d(2), "up": nn.Upsample(scale_factor=2.0, mode="nearest"),
        }[resample]
        self.norm0 = _group_norm(cin)
        self.conv0 = _conv(cin, cout, 3)
        self.affine = _init(nn.Linear(emb_channels, cout))
        self.norm1 = _group_norm(cout)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.conv1 = _conv(cout, cout, 3, scale=_ZERO_INIT_SCALE)
        self.skip = _conv(cin, cout, 1) if cin != cout else nn.Identity()
        self.attn = AttentionBlock(cout, heads) if attention else nn.Identity()

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.conv0(self.resample(F.silu(self.norm0(x))))
        h = h + self.affine(emb)[:, :, None, None]
        h = self.conv1(self.dropout(F.silu(self.norm1(h))))
        return self.attn((self.skip(self.resample(x)) + h) / math.sqrt(2))


class UNet(nn.Module):
    """F_x(x, c_noise, labels): x [B, in_channels, H, W] -> [B, out_channels, H, W].

    ``noise_labels`` is [B] (EDM's c_noise). ``class_labels`` is [B] int64 in [0, num_classes], where
    ``num_classes`` means "no label" (classifier-free guidance); None means "no label" for all examples.
    An unconditional model (num_classes = 0) takes no labels.
    """

    def __init__(self, config: UNetConfig):
        super().__init__()
        self.config = cfg = config
        emb = cfg.embedding_channels
        self.noise_embedding = PositionalEmbedding(cfg.model_channels, cfg.max_positions)
        self.map0 = _init(nn.Linear(cfg.model_channels, emb))
        self.map1 = _init(nn.Linear(emb, emb))
        self.label_embedding = nn.Embedding(cfg.num_classes + 1, emb) if cfg.num_classes else None

        def block(cin: int, cout: int, resample: Resample = "none", attention: bool = False) -> ResBlock:
            return ResBlock(cin, cout, emb, dropout=cfg.dropout, resample=resample, attention=attention,
                            heads=cfg.attn_heads)

        # Encoder: conv in, then per level a down block (but at the first) and num_blocks blocks, attention
        # after each at attention resolutions. Every output is kept as a skip for the decoder.
        self.conv_in = _conv(cfg.in_channels, cfg.model_channels, 3)
        self.encoder = nn.ModuleList()
        skips = [cfg.model_channels]
        channels = cfg.model_channels
        for level, mult in enumerate(cfg.channel_mult):
            attention = (cfg.img_resolution >> level) in cfg.attn_resolutions
            if level > 0:
                self.encoder.append(block(channels, channels, resample="down"))
                skips.append(channels)
            for _ in range(cfg.num_blocks):
                self.encoder.append(block(channels, cfg.model_channels * mult, attention=attention))
                channels = cfg.model_channels * mult
                skips.append(channels)

        self.middle = nn.ModuleList([block(channels, channels, attention=True), block(channels, channels)])

        # Decoder: per level num_blocks + 1 blocks, each on [h, skip] (so every skip is used once), attention
        # after the last of them at attention resolutions (as EDM's SongUNet), then an up block (but at the last).
        self.decoder = nn.ModuleList()
        takes_skip: list[bool] = []
        for level, mult in reversed(list(enumerate(cfg.channel_mult))):
            attention = (cfg.img_resolution >> level) in cfg.attn_resolutions
            for index in range(cfg.num_blocks + 1):
                cin, channels = channels + skips.pop(), cfg.model_channels * mult
                self.decoder.append(block(cin, channels, attention=attention and index == cfg.num_blocks))
                takes_skip.append(True)
            if level > 0:
                self.decoder.append(block(channels, channels, resample="up"))
                takes_skip.append(False)
        assert not skips, "the decoder must use every encoder skip"
        self.takes_skip = tuple(takes_skip)  # static: which decoder blocks concatenate a skip

        self.norm_out = _group_norm(channels)
        self.conv_out = _conv(channels, cfg.out_channels, 3, scale=_ZERO_INIT_SCALE)

    def embed(self, noise_labels: Tensor, class_labels: Tensor | None, batch: int, dtype: torch.dtype) -> Tensor:
        """The per-example conditioning vector [B, embedding_channels], after its final SiLU."""
        emb = self.noise_embedding(noise_labels.to(dtype).reshape(batch))
        emb = self.map1(F.silu(self.map0(emb)))
        if self.label_embedding is not None:
            if class_labels is None:
                class_labels = torch.full((batch,), self.config.num_classes, dtype=torch.long, device=emb.device)
            emb = emb + self.label_embedding(class_labels.reshape(batch).long())
        elif class_labels is not None:
            raise ValueError("this UNet is unconditional (num_classes = 0) but class_labels were given")
        return F.silu(emb)

    def forward(self, x: Tensor, noise_labels: Tensor, class_labels: Tensor | None = None) -> Tensor:
        if x.dim() != 4 or x.shape[1] != self.config.in_channels:
            raise ValueError(f"x must be [B, {self.config.in_channels}, H, W], got {list(x.shape)}")
        emb = self.embed(noise_labels, class_labels, x.shape[0], x.dtype)

        h = self.conv_in(x)
        skips = [h]
        for block in self.encoder:
            h = block(h, emb)
            skips.append(h)
        for block in self.middle:
            h = block(h, emb)
        for block, takes_skip in zip(self.decoder, self.takes_skip, strict=True):
            if takes_skip:
                h = torch.cat([h, skips.pop()], dim=1)
            h = block(h, emb)
        return self.conv_out(F.silu(self.norm_out(h)))
