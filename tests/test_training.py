import json

import pytest
import torch
from safetensors.torch import load_file

from dpdiffusion.checkpoint import CheckpointError, load_checkpoint
from dpdiffusion.data.dataset import ArrayDataset
from dpdiffusion.privacy.ledger import LedgerMismatchError
from dpdiffusion.privacy.plan import PrivacyPlan
from dpdiffusion.runconfig import TrainingConfig
from dpdiffusion.training import Trainer
from tests.dpsgd.toys import NoisyRegressionLoss, TinyDenoiser, make_batch

PLAN = dict(dataset_size=40, expected_batch_size=8, steps=12, max_grad_norm=1.0, noise_multiplier=1.0, delta=1e-3)


def make_trainer(run_dir, plan=None, seed=0, checkpoint_every=4):
    torch.manual_seed(0)
    data = make_batch(40, torch.Generator().manual_seed(9))
    training = TrainingConfig(checkpoint_every=checkpoint_every, log_every=2, seed=seed)
    return Trainer(
        TinyDenoiser(), NoisyRegressionLoss(2), ArrayDataset(data["x"], data["y"]),
        plan=plan or PrivacyPlan(**PLAN), run_dir=run_dir, training=training, secret_seed=42, progress=False,
    )


def weights(trainer):
    return {k: v.clone() for k, v in trainer.model.state_dict().items()}


def test_interrupted_and_resumed_run_equals_an_uninterrupted_one(tmp_path):
    straight = make_trainer(tmp_path / "a")
    straight.fit()
    interrupted = make_trainer(tmp_path / "b")
    interrupted.fit(max_steps=5)
    assert interrupted.ledger.steps_taken == 5
    resumed = make_trainer(tmp_path / "b")  # a fresh process would build it like this
    resumed.fit(resume=True)
    assert resumed.ledger.steps_taken == straight.ledger.steps_taken == 12
    for name, value in weights(straight).items():
        torch.testing.assert_close(weights(resumed)[name], value, atol=0, rtol=0)
    report_a = json.loads((tmp_path / "a/release/privacy.json").read_text())
    report_b = json.loads((tmp_path / "b/release/privacy.json").read_text())
    assert report_a["spent"] == report_b["spent"] and report_a["plan"] == report_b["plan"]


def test_run_folder_separates_release_from_owner(tmp_path):
    trainer = make_trainer(tmp_path)
    trainer.fit()
    released = sorted(p.name for p in (tmp_path / "release").iterdir())
    assert released == ["README.md", "model.safetensors", "privacy.json"]  # README.md: the model card
    report = json.loads((tmp_path / "release/privacy.json").read_text())
    for key in ("sample_rate", "noise_multiplier", "max_grad_norm", "steps", "delta", "accountant", "multiplicity"):
        assert key in report["plan"]
    assert report["spent"]["steps"] == 12 and 0 < report["spent"]["epsilon"] <= report["planned_epsilon"]
    # the released weights are the EMA, loadable without code
    ema = load_file(tmp_path / "release/model.safetensors")
    assert set(ema) == set(trainer.ema.model.state_dict())
    # un-noised per-step statistics stay with the owner
    assert (tmp_path / "owner/log.jsonl").exists() and "batch_size" in (tmp_path / "owner/log.jsonl").read_text()
    released_text = (tmp_path / "release/privacy.json").read_text()
    assert '"batch_size"' not in released_text and "loss" not in released_text


def test_every_checkpoint_carries_the_ledger(tmp_path):
    trainer = make_trainer(tmp_path)
    trainer.fit()
    files = trainer.run.checkpoint_files()
    assert [int(p.stem.split("-")[1]) for p in files] == [12, 8, 4]
    for path in files:
        _, meta = load_checkpoint(path)
        assert meta["ledger"]["steps_taken"] == int(path.stem.split("-")[1])


def test_a_finished_run_takes_no_more_steps(tmp_path):
    trainer = make_trainer(tmp_path)
    trainer.fit()
    again = make_trainer(tmp_path)
    again.fit(resume=True)
    assert again.ledger.steps_taken == 12  # the plan's steps, not one more


def test_resume_with_other_privacy_settings_is_refused(tmp_path):
    make_trainer(tmp_path).fit(max_steps=4)
    changed = PrivacyPlan(**{**PLAN, "noise_multiplier": 0.8})
    with pytest.raises(LedgerMismatchError, match="noise_multiplier"):
        make_trainer(tmp_path, plan=changed).fit(resume=True)


def test_a_folder_holding_a_run_is_not_overwritten(tmp_path):
    make_trainer(tmp_path).fit(max_steps=4)
    before = (tmp_path / "release/privacy.json").read_bytes()
    with pytest.raises(FileExistsError, match="already holds a run"):
        make_trainer(tmp_path).fit()
    assert (tmp_path / "release/privacy.json").read_bytes() == before


def test_corrupted_newest_checkpoint_falls_back_to_the_previous(tmp_path, capsys):
    make_trainer(tmp_path).fit(max_steps=8)
    newest = tmp_path / "owner/checkpoints/step-00000008.safetensors"
    raw = bytearray(newest.read_bytes())
    raw[-10] ^= 0xFF
    newest.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match="checksum"):
        load_checkpoint(newest)
    trainer = make_trainer(tmp_path)
    assert trainer.resume().name == "step-00000004.safetensors"
    assert trainer.ledger.steps_taken == 4
    assert "skipping checkpoint" in capsys.readouterr().err
