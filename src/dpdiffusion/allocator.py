"""Keep freed CPU memory in the process for reuse (glibc ``mallopt``), a performance setting only.

A DP step allocates and frees the same large buffers every micro-batch (per-example gradients: examples x
parameters floats; activations). With glibc's defaults, blocks above a dynamic threshold are returned to the
operating system when freed and page-faulted back (and zeroed) on the next allocation, which costs a large
share of a CPU step (measured in ``benchmarks/dpsgd_step.py``, which applies this to every mode alike).
Raising the mmap and trim thresholds keeps those blocks in the heap: the process keeps its peak resident
memory instead of returning it between steps. No effect on results; no effect where glibc is absent.
"""

from __future__ import annotations

import ctypes
import ctypes.util

# glibc's mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD = -1
_M_TOP_PAD = -2
_M_MMAP_THRESHOLD = -3
_MMAP_THRESHOLD = 32 * 2**20  # glibc's largest allowed value on 64-bit systems
_TRIM_THRESHOLD = 2**30
_TOP_PAD = 64 * 2**20

_applied = False


def keep_freed_memory() -> bool:
    """Tune glibc's allocator once per process; True if it was (or had been) applied."""
    global _applied
    if _applied:
        return True
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
        mallopt = libc.mallopt if libc is not None else None
    except (OSError, AttributeError):
        return False
    if mallopt is None:
        return False
    _applied = all(
        mallopt(param, value) == 1
        for param, value in ((_M_MMAP_THRESHOLD, _MMAP_THRESHOLD), (_M_TRIM_THRESHOLD, _TRIM_THRESHOLD),
                             (_M_TOP_PAD, _TOP_PAD))
    )
    return _applied
