"""Refuse layers that mix examples: with them, one example's gradient depends on the others in its batch
and per-example clipping no longer bounds the sensitivity."""

from __future__ import annotations

from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.instancenorm import _InstanceNorm


class NotPerExampleError(ValueError):
    """A module mixes information across the examples of a batch."""


def check_per_example(model: nn.Module) -> None:
    """Raise ``NotPerExampleError`` naming the first layer that mixes examples or keeps running statistics."""
    for name, module in model.named_modules():
        label = name or type(model).__name__
        if isinstance(module, (_BatchNorm, nn.SyncBatchNorm)):
            raise NotPerExampleError(
                f"layer '{label}' ({type(module).__name__}) normalises across the batch, which breaks per-example "
                "clipping; replace it with nn.GroupNorm (e.g. GroupNorm(min(32, channels // 4), channels))"
            )
        if isinstance(module, _InstanceNorm) and module.track_running_stats:
            raise NotPerExampleError(
                f"layer '{label}' ({type(module).__name__}) keeps running statistics of private data; "
                "use track_running_stats=False or nn.GroupNorm"
            )
        running = [b for b, _ in module.named_buffers(recurse=False) if b.startswith("running_")]
        if running:
            raise NotPerExampleError(
                f"layer '{label}' ({type(module).__name__}) keeps running statistics ({', '.join(running)}) that "
                "would leak private data un-noised; use a stateless layer such as nn.GroupNorm"
            )
