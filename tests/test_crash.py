"""Crash safety: training killed with SIGKILL at random points, resumed each time, ends exactly where an
uninterrupted run ends -- the same weights and the same ledger, no step lost or counted twice."""

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

from dpdiffusion.checkpoint import load_checkpoint

ROOT = Path(__file__).resolve().parents[1]
CHILD = """
import sys, time
import torch
torch.set_num_threads(1)
from dpdiffusion.privacy.plan import PrivacyPlan
from tests.test_training import PLAN, make_trainer
trainer = make_trainer(sys.argv[1], plan=PrivacyPlan(**{**PLAN, "steps": 40}), checkpoint_every=int(sys.argv[2]))
step = trainer.step
def slow_step():
    time.sleep(0.02)  # room for a kill to land anywhere: inside a step, a checkpoint write, a report write
    return step()
trainer.step = slow_step
print("ready", flush=True)
trainer.fit(resume=True)
"""


def run_child(run_dir: Path, checkpoint_every: int, kill_after: float | None) -> int:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)]), "OMP_NUM_THREADS": "1"}
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(run_dir), str(checkpoint_every)], stdout=subprocess.PIPE,
                             env=env, cwd=ROOT, text=True)
    assert child.stdout.readline().strip() == "ready"
    if kill_after is not None:
        time.sleep(kill_after)
        child.send_signal(signal.SIGKILL)
    return child.wait(timeout=120)


def final_state(run_dir: Path):
    newest = sorted((run_dir / "owner" / "checkpoints").glob("step-*.safetensors"))[-1]
    tensors, meta = load_checkpoint(newest)
    return tensors, meta["ledger"], json.loads((run_dir / "release" / "privacy.json").read_text())


def test_sigkill_at_random_points_then_resume_equals_an_uninterrupted_run(tmp_path):
    assert run_child(tmp_path / "straight", 1, None) == 0
    rng = random.Random(0)
    kills = 0
    for _ in range(8):
        rc = run_child(tmp_path / "killed", 1, rng.uniform(0.05, 0.35))
        kills += rc == -signal.SIGKILL
        if rc == 0:
            break
    assert kills >= 3  # several kills landed before the run could finish
    while run_child(tmp_path / "killed", 1, None) != 0:
        pass
    straight, killed = final_state(tmp_path / "straight"), final_state(tmp_path / "killed")
    assert killed[1] == straight[1] and killed[1]["steps_taken"] == 40  # the ledger: no step lost or doubled
    assert killed[2]["spent"] == straight[2]["spent"]
    for name, value in straight[0].items():
        assert torch.equal(killed[0][name], value), name
