"""Checkpoints without pickles: one safetensors file holding tensors, with JSON metadata in its header.

Loading never executes code. A checksum of the tensor payload, stored in the header, catches a file that
was truncated or corrupted after it was written.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_bytes
from safetensors.torch import save as save_bytes

from dpdiffusion.io import atomic_write, json_safe

_META_KEY = "dpdiffusion"
_CHECKSUM_KEY = "sha256"


class CheckpointError(ValueError):
    """A checkpoint file is missing, truncated, corrupted or not ours."""


def _payload(raw: bytes) -> bytes:
    """The tensor data of a safetensors file: everything after its 8-byte size and JSON header."""
    if len(raw) < 8:
        raise ValueError("file shorter than a safetensors header")
    return raw[8 + int.from_bytes(raw[:8], "little") :]


def save_checkpoint(path: str | os.PathLike, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    """Write ``tensors`` and JSON-able ``meta`` atomically to ``path``."""
    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    digest = hashlib.sha256(_payload(save_bytes(tensors))).hexdigest()  # the data section ignores metadata
    header = {_META_KEY: json.dumps(json_safe(meta), allow_nan=False), _CHECKSUM_KEY: digest}
    data = save_bytes(tensors, metadata=header)
    with atomic_write(path) as f:
        f.write(data)


def load_checkpoint(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read a checkpoint written by ``save_checkpoint``; raise ``CheckpointError`` if it fails its checks."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as error:
        raise CheckpointError(f"cannot read checkpoint {path}: {error.strerror}") from error
    try:
        tensors = load_bytes(raw)
        header = _read_header(raw)
    except (SafetensorError, ValueError, json.JSONDecodeError) as error:
        raise CheckpointError(f"checkpoint {path} is truncated or not a dpdiffusion checkpoint ({error})") from error
    if _META_KEY not in header or _CHECKSUM_KEY not in header:
        raise CheckpointError(f"checkpoint {path} has no dpdiffusion metadata")
    if hashlib.sha256(_payload(raw)).hexdigest() != header[_CHECKSUM_KEY]:
        raise CheckpointError(f"checkpoint {path} fails its checksum: the file was corrupted after writing")
    return tensors, json.loads(header[_META_KEY])


def _read_header(raw: bytes) -> dict[str, str]:
    size = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + size])
    return header.get("__metadata__", {})


def flatten_state(prefix: str, state: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """Split a nested state (optimizer state dict, say) into tensors (stored under dotted names) and a
    JSON-able skeleton that refers to them as ``{"__tensor__": name}``."""
    if isinstance(state, torch.Tensor):
        tensors[prefix] = state
        return {"__tensor__": prefix}
    if isinstance(state, dict):
        return {"__dict__": [[k, flatten_state(f"{prefix}.{k}", v, tensors)] for k, v in state.items()]}
    if isinstance(state, (list, tuple)):
        return [flatten_state(f"{prefix}.{i}", v, tensors) for i, v in enumerate(state)]
    return state


def unflatten_state(skeleton: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(skeleton, dict) and "__tensor__" in skeleton:
        return tensors[skeleton["__tensor__"]]
    if isinstance(skeleton, dict) and "__dict__" in skeleton:
        return {k: unflatten_state(v, tensors) for k, v in skeleton["__dict__"]}
    if isinstance(skeleton, list):
        return [unflatten_state(v, tensors) for v in skeleton]
    return skeleton
