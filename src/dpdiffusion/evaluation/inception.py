"""NVIDIA's inception-2015-12-05 FID detector (TorchScript): the published file for users, or a local copy
given by a flag or ``$DPDIFFUSION_INCEPTION``. Called as ``detector(images, return_features=True)`` on float
images [N, 3, H, W] in 0..255; returns pool3 features [N, 2048]."""

from __future__ import annotations

import os
import shutil
import tempfile
import urllib.request
from pathlib import Path

import numpy as np
import torch

from dpdiffusion.data.download import cache_dir

URL = "https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/metrics/inception-2015-12-05.pt"
FEATURES = 2048


class DetectorError(ValueError):
    """The Inception detector is missing or cannot be loaded."""


def detector_path(path: str | None = None) -> Path:
    """The flag, else ``$DPDIFFUSION_INCEPTION``, else the published file downloaded once into the cache."""
    given = path or os.environ.get("DPDIFFUSION_INCEPTION")
    if given:
        if not Path(given).is_file():
            raise DetectorError(f"Inception detector {given} not found (set by --inception or DPDIFFUSION_INCEPTION)")
        return Path(given)
    cached = cache_dir() / "inception-2015-12-05.pt"
    if not cached.exists():
        cached.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=cached.parent, suffix=".pt")
        try:
            with urllib.request.urlopen(URL, timeout=120) as response, os.fdopen(fd, "wb") as out:
                shutil.copyfileobj(response, out)
            os.replace(tmp, cached)
        except OSError as error:
            Path(tmp).unlink(missing_ok=True)
            raise DetectorError(f"could not download the Inception detector from {URL}: {error} "
                                "(give a local copy with --inception or DPDIFFUSION_INCEPTION)") from error
    return cached


def load_detector(path: str | None = None) -> torch.jit.ScriptModule:
    """The detector, on the GPU when there is one."""
    where = detector_path(path)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        return torch.jit.load(str(where), map_location=device).eval()
    except (RuntimeError, ValueError) as error:
        raise DetectorError(f"{where} is not a TorchScript Inception detector ({str(error).splitlines()[0]})") from error


@torch.no_grad()
def inception_features(images: np.ndarray, detector: torch.jit.ScriptModule, *, batch_size: int = 50,
                       progress: bool = False, desc: str = "Inception features") -> np.ndarray:
    """Features float64 [N, 2048] of uint8 images [N, H, W, C] (grayscale repeated to 3 channels)."""
    from tqdm import tqdm

    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] not in (1, 3):
        raise ValueError(f"expected uint8 images [N, H, W, 1 or 3], got {images.dtype} {images.shape}")
    out = np.zeros((len(images), FEATURES), dtype=np.float64)
    device = next(iter(detector.parameters()), torch.zeros(())).device
    for start in tqdm(range(0, len(images), batch_size), desc=desc, unit="batch", disable=not progress, leave=False):
        x = torch.from_numpy(images[start : start + batch_size]).to(device).permute(0, 3, 1, 2).float()
        if x.shape[1] == 1:
            x = x.repeat(1, 3, 1, 1)
        out[start : start + len(x)] = detector(x, return_features=True).double().cpu().numpy()
    return out
