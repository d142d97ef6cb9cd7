"""Training on several processes with torch.distributed (launched by ``torchrun``; gloo on CPU, NCCL on GPU).

How the ranks share one DP-SGD step, so that the mechanism is exactly the one accounted for:

1. Every rank holds the same sampling generator (its secret seed is drawn on rank 0 and broadcast), so every
   rank draws the same *global* Poisson batch: each example is included independently with probability q,
   once, across the whole job.
2. The batch's positions are cut into blocks of ``DRAW_BLOCK`` examples; rank r takes a contiguous run of
   blocks (``block_range``). The loss's random draws (noise levels, noises, augmentations) of block j at
   step t come from a generator keyed by (draw seed, t, j), so they do not depend on which rank -- or how many
   ranks -- process the block: 1 process and N processes compute the same per-example losses.
3. Each rank clips its examples' gradients where they are and sums them; rank 0 alone adds the Gaussian noise
   N(0, sigma^2 C^2) to its partial sum; one all-reduce (sum) then gives every rank the same noisy sum, which
   is divided by the public expected batch size. The noise enters exactly once in total.
4. Rank 0 alone writes logs, checkpoints and the release; every rank can resume from them, with any number
   of processes (nothing in a checkpoint depends on the number of ranks).
"""

from __future__ import annotations

import contextlib
import datetime
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

DRAW_BLOCK = 32  # examples per block of loss draws (a public constant: changing it changes the draws)


@dataclass(frozen=True)
class World:
    """This process's place in the job."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def device(self) -> torch.device:
        """cuda:<local rank> when CUDA is available (NCCL's device), else the CPU."""
        if torch.cuda.is_available():
            return torch.device("cuda", self.local_rank % torch.cuda.device_count())
        return torch.device("cpu")


def current() -> World:
    """The running job's world (a single process when torch.distributed is not initialised)."""
    if not (dist.is_available() and dist.is_initialized()):
        return World()
    return World(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))


def init_from_env(timeout_hours: float = 12.0) -> World:
    """Join the job ``torchrun`` (or SLURM via torchrun) describes in WORLD_SIZE / RANK / MASTER_ADDR; a plain
    ``python -m dpdiffusion`` is a world of one. NCCL when CUDA is available, else gloo. The long timeout
    covers work one rank does while the others wait (loading or downloading data, public pretraining)."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or (dist.is_available() and dist.is_initialized()):
        return current()
    if not dist.is_available():
        raise RuntimeError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if "RANK" not in os.environ:
        raise RuntimeError("WORLD_SIZE > 1 but RANK is not set: start several processes with torchrun")
    world = World(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_RANK", 0)))
    if backend == "nccl":
        torch.cuda.set_device(world.device)
    dist.init_process_group(backend, timeout=datetime.timedelta(hours=timeout_hours))
    return world


def close() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier(world: World) -> None:
    if world.size > 1:
        dist.barrier()


@contextlib.contextmanager
def main_first(world: World) -> Iterator[None]:
    """Rank 0 runs the block first (a download, a file it writes), then the others, which then find its work."""
    if not world.is_main:
        barrier(world)
    yield
    if world.is_main:
        barrier(world)


def made_once(path, make: Callable[[], object], world: World) -> bool:
    """Whether ``path`` already existed (as rank 0 sees it); if not, rank 0 runs ``make`` (which writes it)
    while the other ranks wait, so that every rank can then read it."""
    existed = bool(broadcast_ints([int(Path(path).is_file())], world)[0])
    if not existed:
        with main_first(world):
            if world.is_main:
                make()
    return existed


def broadcast_ints(values: list[int], world: World) -> list[int]:
    """Rank 0's ``values`` on every rank (e.g. secret seeds, drawn once)."""
    if world.size == 1:
        return list(values)
    box = [list(values)]
    dist.broadcast_object_list(box, src=0)
    return [int(v) for v in box[0]]


def all_reduce_sum(tensors: list[torch.Tensor], world: World) -> list[torch.Tensor]:
    """The sums of ``tensors`` over the ranks, in one collective (packed into one buffer); the inputs are left
    as they were."""
    if world.size == 1 or not tensors:
        return list(tensors)
    where = world.device if dist.get_backend() == "nccl" else torch.device("cpu")  # NCCL reduces CUDA tensors
    flat = torch.cat([t.reshape(-1).to(where) for t in tensors])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    sums, offset = [], 0
    for t in tensors:
        sums.append(flat[offset:offset + t.numel()].view_as(t).to(t.device))
        offset += t.numel()
    return sums


def block_range(num_examples: int, world: World, block: int = DRAW_BLOCK) -> tuple[int, int]:
    """The blocks [first, last) of a batch of ``num_examples`` that this rank processes: contiguous, balanced
    to within one block. Blocks are ``block`` positions of the batch, the last one possibly shorter."""
    blocks = -(-num_examples // block)
    return blocks * world.rank // world.size, blocks * (world.rank + 1) // world.size


def block_generator(draw_seed: int, step: int, block: int) -> torch.Generator:
    """The generator of the loss draws for one block of one step: the same on whichever rank processes it."""
    (state,) = np.random.SeedSequence([draw_seed, step, block]).generate_state(1, dtype=np.uint64)
    return torch.Generator().manual_seed(int(state) & ((1 << 63) - 1))
