"""Configuration that only changes speed, never the guarantee (the guarantee lives in ``PrivacyPlan``)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

ENGINES = ("auto", "layerwise", "ghost", "vmap", "opacus")  # per-example gradient engines (dpsgd.per_example)
DEVICES = ("auto", "cpu", "cuda")


@dataclass(frozen=True)
class Performance:
    """How the per-example work is executed. Changing any field leaves the result unchanged
    (up to float rounding) and the privacy spend identical."""

    engine: str = "auto"  # layerwise when every trainable layer has a rule, else vmap
    micro_batch_size: int = 64  # examples per per-example-gradient chunk; memory ~ micro_batch * K activations
    threads: int = 0  # torch intra-op threads; 0 keeps torch's default
    device: str = "auto"  # auto: this rank's GPU when CUDA is available, else the CPU
    cpu_allocator: str = "keep"  # keep: freed CPU memory stays in the process for reuse (dpdiffusion.allocator)

    def __post_init__(self) -> None:
        if self.engine not in ENGINES:
            raise ValueError(f"unknown engine {self.engine!r}; choose one of {', '.join(ENGINES)}")
        if self.micro_batch_size < 1:
            raise ValueError(f"micro_batch_size must be >= 1, got {self.micro_batch_size}")
        if self.threads < 0:
            raise ValueError(f"threads must be >= 0, got {self.threads}")
        if self.cpu_allocator not in ("keep", "default"):
            raise ValueError(f"unknown cpu_allocator {self.cpu_allocator!r}; choose keep or default")
        if self.device not in DEVICES:
            raise ValueError(f"unknown device {self.device!r}; choose one of {', '.join(DEVICES)}")

    def resolve_device(self, world) -> torch.device:
        """Where training runs: the rank's own GPU (``world.device``) unless ``device`` says the CPU."""
        if self.device == "cpu":
            return torch.device("cpu")
        if self.device == "cuda" and not torch.cuda.is_available():
            raise ValueError("performance.device is cuda but no CUDA device is available")
        return world.device
