import os

import pytest
import torch

# Two cores here: keep each test process to its share and results reproducible.
torch.set_num_threads(int(os.environ.get("DPDIFFUSION_TEST_THREADS", "1")))


@pytest.fixture
def generator():
    return torch.Generator().manual_seed(1234)
