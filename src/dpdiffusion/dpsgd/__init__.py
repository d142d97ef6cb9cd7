"""The DP-SGD engine: batch selection, per-example gradients, clipping, noise and the step."""

from dpdiffusion.dpsgd.batch_selection import PoissonBatchSampler, poisson_sample
from dpdiffusion.dpsgd.clipping import clip_and_sum, per_example_norms
from dpdiffusion.dpsgd.noise import add_noise
from dpdiffusion.dpsgd.per_example import ENGINES, PerExampleLoss, make_engine
from dpdiffusion.dpsgd.step import DPSGD, StepReport
from dpdiffusion.dpsgd.validation import NotPerExampleError, check_per_example

__all__ = [
    "DPSGD",
    "ENGINES",
    "NotPerExampleError",
    "PerExampleLoss",
    "PoissonBatchSampler",
    "StepReport",
    "add_noise",
    "check_per_example",
    "clip_and_sum",
    "make_engine",
    "per_example_norms",
    "poisson_sample",
]
