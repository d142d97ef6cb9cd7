"""The one training loop: plain updates (public pretraining, a teacher trained without privacy) run in the same
loop as DP-SGD, checkpoint and resume bit-exactly, refuse other settings, and finished stages are reused only as
configured."""

import json

import pytest
import torch
from safetensors.torch import load_file

from dpdiffusion.cli import main
from dpdiffusion.data.dataset import ArrayDataset
from dpdiffusion.diffusion.denoiser import build_denoiser
from dpdiffusion.loop import PlainUpdates
from dpdiffusion.methods.pretrain import PlainTraining, pretrain
from dpdiffusion.methods.start import describe_data
from dpdiffusion.runconfig import load_config
from tests.dpsgd.toys import NoisyRegressionLoss, TinyDenoiser
from tests.methods.test_dpsad import TINY as DPSAD_TINY
from tests.methods.test_finetune import TINY as FINETUNE_TINY
from tests.tiny import write_config


class Recording(ArrayDataset):
    def __init__(self, n: int):
        super().__init__(torch.randn(n, 1, 4, 4), torch.zeros(n, dtype=torch.long))
        self.seen: list[list[int]] = []

    def batch(self, indices):
        self.seen.append(indices.tolist())
        return super().batch(indices)


def test_plain_updates_see_each_example_once_per_epoch():
    data = Recording(10)
    model = TinyDenoiser()
    updates = PlainUpdates(model, NoisyRegressionLoss(), data, batch_size=3,
                           optimizer=torch.optim.SGD(model.parameters(), lr=0.0), seed=0, device=torch.device("cpu"),
                           settings={})
    for _ in range(9):
        report = updates.step()
        assert report.batch_size == 3 and report.clipped == 0
    assert updates.steps_taken == 9
    for epoch in range(3):  # 3 full batches per epoch of 10; the tenth example waits for a later epoch
        seen = sum(data.seen[3 * epoch:3 * epoch + 3], [])
        assert len(set(seen)) == 9
    assert set(sum(data.seen, [])) == set(range(10))
    with pytest.raises(ValueError, match="batch size 11"):
        PlainUpdates(model, NoisyRegressionLoss(), data, batch_size=11, optimizer=updates.optimizer, seed=0,
                     device=torch.device("cpu"), settings={})


def public_pretraining(tmp_path, name, sets=()):
    cfg = load_config(write_config(tmp_path, FINETUNE_TINY), ["pretrain.steps=4", *sets])
    data = ArrayDataset(torch.rand(40, 1, 8, 8, generator=torch.Generator().manual_seed(1)) * 2 - 1, torch.arange(40) % 10)
    out = tmp_path / name / "model.safetensors"
    torch.manual_seed(0)
    return pretrain(build_denoiser(cfg.model, cfg.diffusion), cfg, data, out,
                    trained_on={"public": describe_data(cfg.pretrain.data, 40).to_dict()}, progress=False)


def interrupt_after(monkeypatch, steps):
    original = PlainTraining.train
    monkeypatch.setattr(PlainTraining, "train", lambda self, max_steps=None: original(self, steps))


def test_an_interrupted_plain_stage_resumes_to_the_same_weights(tmp_path, monkeypatch):
    whole = load_file(public_pretraining(tmp_path, "whole"))
    with monkeypatch.context() as m:
        interrupt_after(m, 2)
        out = public_pretraining(tmp_path, "parts")
    assert not out.exists() and len(list((out.parent / "checkpoints").iterdir())) == 2
    public_pretraining(tmp_path, "parts")
    parts = load_file(out)
    assert parts.keys() == whole.keys() and all(torch.equal(parts[k], whole[k]) for k in whole)
    assert not list((out.parent / "checkpoints").iterdir())  # the finished output replaces them
    log = [json.loads(line) for line in (out.parent / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2, 3, 4]


def test_a_plain_checkpoint_of_other_settings_is_not_loaded(tmp_path, monkeypatch, capsys):
    with monkeypatch.context() as m:
        interrupt_after(m, 2)
        public_pretraining(tmp_path, "run")
    capsys.readouterr()
    out = public_pretraining(tmp_path, "run", ["pretrain.lr=0.01"])
    assert "skipping checkpoint" in capsys.readouterr().err
    fresh = load_file(public_pretraining(tmp_path, "fresh", ["pretrain.lr=0.01"]))
    assert all(torch.equal(load_file(out)[k], fresh[k]) for k in fresh)  # started over, not from the other lr
    log = [json.loads(line) for line in (out.parent / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2, 3, 4]


def test_a_finished_public_stage_is_reused_only_as_configured(tmp_path, capsys):
    config, run = write_config(tmp_path, FINETUNE_TINY), tmp_path / "run"
    assert main(["train", config, "--run-dir", str(run)]) == 0
    stages = json.loads((run / "owner" / "stages.json").read_text())
    assert stages["public pretraining"]["reads"] == "public"
    assert main(["train", config, "--run-dir", str(run), "--resume"]) == 0
    release = (run / "release" / "model.safetensors").read_bytes()
    capsys.readouterr()
    assert main(["train", config, "--run-dir", str(run), "--resume", "--set", "pretrain.steps=4"]) != 0
    err = capsys.readouterr().err
    assert "stage public pretraining" in err and "pretrain.steps: 3 -> 4" in err
    assert (run / "release" / "model.safetensors").read_bytes() == release


def test_a_teacher_trained_without_privacy_is_recorded_and_reused_only_as_configured(tmp_path, capsys):
    config, run = write_config(tmp_path, DPSAD_TINY), tmp_path / "run"
    flags = ["--run-dir", str(run), "--set", "dpsad.teacher=none", "--allow-non-private-teacher"]
    assert main(["train", config, *flags]) == 0
    stages = json.loads((run / "owner" / "stages.json").read_text())
    assert stages["teacher"]["reads"] == "private-without-privacy"
    assert main(["train", config, *flags, "--resume"]) == 0
    capsys.readouterr()
    assert main(["train", config, *flags, "--resume", "--set", "dpsad.teacher_lr=0.5"]) != 0
    assert "stage teacher" in capsys.readouterr().err


def test_dp_training_and_plain_training_share_the_loop():
    from dpdiffusion.loop import TrainingLoop
    from dpdiffusion.methods.dpsad import DPSADTrainer
    from dpdiffusion.training import Trainer

    for loop in (Trainer, DPSADTrainer, PlainTraining):
        assert issubclass(loop, TrainingLoop) and loop.train is TrainingLoop.train
