import subprocess
import sys

import pytest

from dpdiffusion.config import Performance

CHILD = """
import torch
from dpdiffusion.allocator import keep_freed_memory
assert keep_freed_memory() and keep_freed_memory()  # applied once, then reported as applied
x = torch.ones(50_000_000)
del x
y = torch.randn(1000)
print(float(y.sum()) == float(y.sum()))
"""


def test_keep_freed_memory_applies_on_glibc_and_leaves_results_alone():
    if not sys.platform.startswith("linux"):
        pytest.skip("glibc's mallopt is a Linux setting")
    out = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "True"


def test_unknown_allocator_setting_refused():
    with pytest.raises(ValueError, match="cpu_allocator"):
        Performance(cpu_allocator="fast")
