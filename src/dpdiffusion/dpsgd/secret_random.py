"""Secret randomness of the DP mechanism (batch selection and noise) from a cryptographically secure stream.

A ``SecretStream`` is SHAKE-128 (FIPS 202, the standard library's ``hashlib``; 128-bit security) used as a keyed
extendable-output function: draw ``i`` of a stream is SHAKE-128(domain ‖ key ‖ purpose ‖ i ‖ chunk) for chunks of
``CHUNK_BYTES``. The key is 256 bits from the operating system's CSPRNG (``secrets.token_bytes``); what a run
releases is then no function of a small seed (torch's Mersenne Twister, keyed with 32 bits and predictable from its
output, is not used for anything secret). The stream's state is (key, draws taken): the owner's checkpoints keep it, so a resume
continues the same stream bit for bit.

Gaussians: 53-bit uniforms -> Box-Muller in float64; against floating-point attacks on the noise (Mironov 2012)
each coordinate is the sum of two independent such Gaussians divided by sqrt(2), the construction of Holohan &
Braghin, "Secure Random Sampling in Differential Privacy" (ESORICS 2021), which Opacus' ``secure_mode`` uses; the
noise is added to the clipped sum in float64 before the result is rounded to the gradient's dtype.

Streams are generated on the CPU (hashing has no GPU kernel here) and moved to the training device: a DPDM step
draws a few MB per step, a small transfer next to the step itself (``benchmarks/dpsgd_step.py`` measures it).

``SecretStream.reproducible(seed)`` derives the key from a fixed seed: for tests only; a run with it is NOT
private and its report says so.
"""

from __future__ import annotations

import hashlib
import math
import secrets
from typing import Any

import numpy as np
import torch

KEY_BYTES = 32
CHUNK_BYTES = 1 << 22  # a draw is hashed in chunks of this size (fixed: part of the stream's definition)
_DOMAIN = b"dpdiffusion secret stream v1"


class SecretStream:
    """A keyed stream of secret random draws for one ``purpose`` (e.g. b"sampling", b"noise")."""

    def __init__(self, key: bytes, purpose: bytes, *, draws: int = 0, reproducible: bool = False):
        if len(key) != KEY_BYTES:
            raise ValueError(f"a secret stream needs a {KEY_BYTES}-byte key, got {len(key)} bytes")
        self.key, self.purpose, self.draws, self.reproducible = key, purpose, draws, reproducible

    @classmethod
    def fresh(cls, purpose: bytes) -> SecretStream:
        """A new stream keyed with 256 bits from the operating system's CSPRNG."""
        return cls(secrets.token_bytes(KEY_BYTES), purpose)

    @classmethod
    def reproducible_from(cls, seed: int, purpose: bytes) -> SecretStream:
        """A stream keyed by a fixed ``seed``: reproducible, hence NOT secret (tests only)."""
        key = hashlib.sha256(_DOMAIN + b" test seed " + str(int(seed)).encode()).digest()
        return cls(key, purpose, reproducible=True)

    # -- bits ----------------------------------------------------------------------------------------
    def _chunk(self, draw: int, index: int, size: int) -> bytes:
        prefix = _DOMAIN + self.key + len(self.purpose).to_bytes(2, "little") + self.purpose
        return hashlib.shake_128(prefix + draw.to_bytes(8, "little") + index.to_bytes(8, "little")).digest(size)

    def random_bytes(self, size: int) -> bytes:
        """``size`` fresh secret bytes (one draw of the stream)."""
        draw, self.draws = self.draws, self.draws + 1
        return b"".join(self._chunk(draw, index, min(CHUNK_BYTES, size - start))
                        for index, start in enumerate(range(0, size, CHUNK_BYTES)))

    def uniform(self, n: int) -> torch.Tensor:
        """``n`` independent uniforms on [0, 1) with 53 random bits each, float64."""
        words = np.frombuffer(self.random_bytes(8 * n), dtype="<u8")
        return torch.from_numpy((words >> np.uint64(11)).astype(np.float64)) * 2.0**-53

    def normal(self, n: int) -> torch.Tensor:
        """``n`` independent N(0, 1) draws, float64: each the sum of two Box-Muller Gaussians over sqrt(2)."""
        pairs_needed = (n + 1) // 2
        u = self.uniform(4 * pairs_needed).view(2, 2, pairs_needed)  # [sum term, (radius, angle), pairs]
        radius = torch.sqrt(-2.0 * torch.log1p(-u[:, 0]))  # 1 - u lies in (0, 1]: log is finite
        angle = (2.0 * math.pi) * u[:, 1]
        pairs = torch.cat([radius * torch.cos(angle), radius * torch.sin(angle)], dim=1)  # [2, 2 * pairs]
        return (pairs[0, :n] + pairs[1, :n]) / math.sqrt(2.0)

    def bernoulli(self, n: int, p: float) -> torch.Tensor:
        """``n`` independent draws of "included with probability ``p``" (bool)."""
        return self.uniform(n) < p

    # -- state ---------------------------------------------------------------------------------------
    def state_dict(self, tensors: dict[str, torch.Tensor], name: str) -> dict[str, Any]:
        """Put the key (secret: owner-side checkpoints only) into ``tensors``; return the rest."""
        tensors[f"secret.{name}"] = torch.frombuffer(bytearray(self.key), dtype=torch.uint8).clone()
        return {"draws": self.draws, "reproducible": self.reproducible}

    def load_state_dict(self, tensors: dict[str, torch.Tensor], name: str, state: dict[str, Any]) -> None:
        self.key = bytes(tensors[f"secret.{name}"].numpy().tobytes())
        self.draws, self.reproducible = int(state["draws"]), bool(state["reproducible"])


def describe(reproducible: bool) -> dict[str, Any]:
    """For the privacy report: where the secret randomness came from."""
    if reproducible:
        return {"source": "derived from a fixed secret_seed (tests only)", "reproducible": True,
                "warning": "randomness reproducible from a fixed seed: NOT private"}
    return {"source": "SHAKE-128 keystream keyed with 256 bits from the OS CSPRNG", "reproducible": False,
            "gaussian": "float64 Box-Muller, sum of two Gaussians over sqrt(2) (Holohan & Braghin 2021), added in "
                        "float64"}
