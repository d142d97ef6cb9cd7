"""Several processes (gloo, CPU): the same model and ledger as one process, noise added once in total, resume
with another number of processes, and the command under torchrun."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from safetensors.torch import load_file, save_file

from dpdiffusion import distributed
from dpdiffusion.config import Performance
from dpdiffusion.data.dataset import ArrayDataset
from dpdiffusion.dpsgd.step import DPSGD
from dpdiffusion.privacy.ledger import PrivacyLedger
from dpdiffusion.privacy.plan import PrivacyPlan
from dpdiffusion.runconfig import TrainingConfig
from dpdiffusion.training import Trainer
from dpdiffusion.dpsgd.secret_random import SecretStream
from tests.dpsgd.toys import NoisyRegressionLoss, TinyDenoiser, make_batch
from tests.tiny import TINY_RUN, write_config

# expected batch 96 of 160: about three blocks of 32, so two ranks both get work (and sometimes none)
PLAN = dict(dataset_size=160, expected_batch_size=96, steps=6, max_grad_norm=1.0, noise_multiplier=1.0, delta=1e-3)


def make_trainer(run_dir, world=None):
    torch.manual_seed(0)
    data = make_batch(160, torch.Generator().manual_seed(9))
    training = TrainingConfig(checkpoint_every=2, log_every=1, seed=3)
    return Trainer(TinyDenoiser(), NoisyRegressionLoss(2), ArrayDataset(data["x"], data["y"]),
                   plan=PrivacyPlan(**PLAN), run_dir=run_dir, training=training, secret_seed=42, progress=False,
                   performance=Performance(micro_batch_size=16), world=world)


def _join(rank, size, rendezvous):
    dist.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=rank, world_size=size)
    return distributed.current()


def _train(rank, size, rendezvous, run_dir, resume, max_steps):
    world = _join(rank, size, rendezvous)
    try:
        make_trainer(run_dir, world).fit(resume=resume, max_steps=max_steps)
        dist.barrier()  # leave together, as `dpdiffusion train` does (gloo can abort a rank torn down mid-exchange)
    finally:
        dist.destroy_process_group()


def train_on(processes, tmp_path, run_dir, *, resume=False, max_steps=None):
    rendezvous = tmp_path / f"rendezvous-{len(list(tmp_path.glob('rendezvous-*')))}"
    if processes == 1:
        make_trainer(run_dir).fit(resume=resume, max_steps=max_steps)
    else:
        mp.spawn(_train, args=(processes, str(rendezvous), str(run_dir), resume, max_steps), nprocs=processes)


def release_of(run_dir):
    return (load_file(run_dir / "release" / "model.safetensors"),
            json.loads((run_dir / "release" / "privacy.json").read_text()))


def assert_same_release(a, b):
    (weights_a, privacy_a), (weights_b, privacy_b) = release_of(a), release_of(b)
    assert weights_a.keys() == weights_b.keys()
    for name in weights_a:
        torch.testing.assert_close(weights_b[name], weights_a[name], atol=1e-6, rtol=1e-5, msg=name)
    assert privacy_a["plan"] == privacy_b["plan"] and privacy_a["spent"] == privacy_b["spent"]


def test_blocks_are_shared_out_once_and_in_order():
    for examples in (0, 1, 31, 32, 33, 200):
        for size in (1, 2, 3, 5):
            ranges = [distributed.block_range(examples, distributed.World(rank, size)) for rank in range(size)]
            assert ranges[0][0] == 0 and ranges[-1][1] == -(-examples // distributed.DRAW_BLOCK)
            assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))  # contiguous, no gap, no overlap
            assert max(b - a for a, b in ranges) - min(b - a for a, b in ranges) <= 1  # balanced


def test_block_generators_differ_by_step_and_block_and_repeat_by_key():
    draws = {key: torch.randn(4, generator=distributed.block_generator(7, *key)) for key in [(0, 0), (0, 1), (1, 0)]}
    assert not torch.equal(draws[(0, 0)], draws[(0, 1)]) and not torch.equal(draws[(0, 0)], draws[(1, 0)])
    assert torch.equal(draws[(0, 1)], torch.randn(4, generator=distributed.block_generator(7, 0, 1)))


def test_two_processes_train_the_same_model_and_ledger_as_one(tmp_path):
    train_on(1, tmp_path, tmp_path / "one")
    train_on(2, tmp_path, tmp_path / "two")
    assert_same_release(tmp_path / "one", tmp_path / "two")
    assert sorted(p.name for p in (tmp_path / "two" / "owner" / "checkpoints").iterdir()) == [
        f"step-{s:08d}.safetensors" for s in (2, 4, 6)]  # written once, by rank 0
    logged = [json.loads(line) for line in (tmp_path / "two" / "owner" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logged] == list(range(1, 7))  # one log, every step once


def test_resume_with_another_number_of_processes(tmp_path):
    train_on(1, tmp_path, tmp_path / "straight")
    train_on(2, tmp_path, tmp_path / "two-then-one", max_steps=3)
    train_on(1, tmp_path, tmp_path / "two-then-one", resume=True)
    assert_same_release(tmp_path / "straight", tmp_path / "two-then-one")
    train_on(1, tmp_path, tmp_path / "one-then-three", max_steps=2)
    train_on(3, tmp_path, tmp_path / "one-then-three", resume=True)
    assert_same_release(tmp_path / "straight", tmp_path / "one-then-three")


SIGMA, CLIP, B, DRAWS = 1.5, 2.0, 4, 40


def _noise_only(rank, size, rendezvous, out):
    world = _join(rank, size, rendezvous)
    try:
        torch.manual_seed(0)
        model = TinyDenoiser()
        plan = PrivacyPlan(dataset_size=100, expected_batch_size=B, steps=DRAWS, max_grad_norm=CLIP,
                           noise_multiplier=SIGMA, delta=1e-3)
        dp = DPSGD(model, NoisyRegressionLoss(1), torch.optim.SGD(model.parameters(), lr=1.0),
                   ledger=PrivacyLedger(plan), draw_seed=0, world=world,
                   noise=SecretStream.fresh(b"noise"))  # each rank its own stream
        zeros = {n: torch.zeros_like(p) for n, p in model.named_parameters()}
        samples = torch.cat([torch.cat([g.flatten() for g in dp.noisy_mean(zeros).values()]) for _ in range(DRAWS)])
        save_file({"noise": samples}, f"{out}-{rank}.safetensors")
        dist.barrier()  # no rank tears gloo down while a peer is still finishing its last all-reduce (SIGABRT)
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("processes", [2, 3])
def test_the_noise_has_variance_sigma2_c2_in_total_not_per_rank(tmp_path, processes):
    out = tmp_path / "noise"
    try:
        mp.spawn(_noise_only, args=(processes, str(tmp_path / "rendezvous"), str(out)), nprocs=processes)
    except mp.ProcessExitedException as e:
        # gloo's teardown can abort a process on an overloaded machine after every rank has written its draws and
        # passed the final barrier; the property under test is the draws, so only an abort before them fails
        written = all(Path(f"{out}-{rank}.safetensors").is_file() for rank in range(processes))
        if e.signal_name != "SIGABRT" or not written:
            raise
    noise = [load_file(f"{out}-{rank}.safetensors")["noise"].double() for rank in range(processes)]
    for other in noise[1:]:
        assert torch.equal(other, noise[0])  # every rank holds the same noisy update
    n, expected = noise[0].numel(), (SIGMA * CLIP / B) ** 2
    ratio = float(noise[0].var()) / expected
    assert abs(ratio - 1) < 6 * math.sqrt(2 / n), (ratio, n)  # sigma^2 C^2 in total (not `processes` times it)
    assert abs(float(noise[0].mean())) < 6 * math.sqrt(expected / n)


def test_torchrun_two_processes_match_one(tmp_path):
    """The command itself under torchrun (gloo chosen on a machine without CUDA), with audit canaries."""
    config = write_config(tmp_path, TINY_RUN.replace("steps: 2", "steps: 3"))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "OMP_NUM_THREADS": "1"}
    common = ["-m", "dpdiffusion", "train", config, "--set", "training.seed=5"]
    subprocess.run([sys.executable, *common, "--run-dir", str(tmp_path / "one")], check=True, env=env,
                   capture_output=True)
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           *common, "--run-dir", str(tmp_path / "two"), "--audit-canaries", "4"],
                          env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.count("dpsgd 3/3 steps") == 1  # rank 0 speaks for the job
    weights_one, privacy_one = release_of(tmp_path / "one")
    weights_two, privacy_two = release_of(tmp_path / "two")
    assert privacy_one["plan"] == privacy_two["plan"] and privacy_one["spent"] == privacy_two["spent"]
    assert privacy_two["data"]["audit_canaries"]["drawn"] == 4  # drawn once, by rank 0, read by rank 1
    assert (tmp_path / "two" / "owner" / "audit" / "canaries.safetensors").is_file()
    # the secret seeds are fresh entropy in each run: the two runs differ, but both are complete releases
    assert weights_one.keys() == weights_two.keys()


def test_a_world_size_without_a_rank_is_a_one_line_error(monkeypatch):
    from dpdiffusion import distributed

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.delenv("RANK", raising=False)
    with pytest.raises(RuntimeError, match="RANK is not set: start several processes with torchrun"):
        distributed.init_from_env()
