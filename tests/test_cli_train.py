import json

import pytest
import torch
from safetensors.torch import load_file

from dpdiffusion.cli import main
from tests.tiny import write_config

TINY = """
data: {name: digits}
model: {img_resolution: 8, model_channels: 8, channel_mult: [1], num_blocks: 1, attn_resolutions: [], num_classes: 10}
privacy: {target_epsilon: 5, delta: 1.0e-4, batch_size: 64, steps: 3, multiplicity: 2}
training: {checkpoint_every: 2, log_every: 1}
"""


@pytest.fixture
def config(tmp_path):
    return write_config(tmp_path, TINY)


def test_dry_run_shows_the_calibrated_plan(config, capsys):
    assert main(["train", config, "--dry-run", "--set", "privacy.target_epsilon=2"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["dataset"] == {"name": "digits", "split": "train", "size": 1437}
    assert out["privacy"]["target_epsilon"] == 2 and out["privacy"]["planned_epsilon"] <= 2
    assert out["privacy"]["sample_rate"] == pytest.approx(64 / 1437)
    assert out["privacy"]["noise_multiplier"] > 0 and out["privacy"]["steps"] == 3


def test_train_writes_release_and_owner_and_refuses_to_overwrite(config, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", config, "--run-dir", str(run)]) == 0
    report = json.loads((run / "release/privacy.json").read_text())
    assert report["spent"]["steps"] == 3 and 0 < report["spent"]["epsilon"] <= 5
    assert load_file(run / "release/model.safetensors")
    assert sorted(p.name for p in (run / "owner/checkpoints").iterdir()) == [
        "step-00000002.safetensors", "step-00000003.safetensors"]
    before = (run / "release/privacy.json").read_bytes()
    assert main(["train", config, "--run-dir", str(run)]) == 2
    assert "already holds a run" in capsys.readouterr().err
    assert (run / "release/privacy.json").read_bytes() == before


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--set", "privacy.batch_sise=3"], "unknown configuration key 'privacy.batch_sise'"),
        (["--set", "privacy.delta=0.5"], "delta"),
        (["--set", "privacy.target_epsilon=-1"], "target epsilon"),
        (["--set", "data.name=nowhere"], "unknown dataset"),
        (["--set", "diffusion.parameterisation=ddpm"], "diffusion.parameterisation: unknown 'ddpm'"),
        (["--set", "diffusion.parameterisation=v", "--set", "diffusion.logsnr_min=20"], "logsnr_min < logsnr_max"),
    ],
)
def test_bad_settings_give_one_line_and_exit_2(config, extra, message, capsys):
    assert main(["train", config, "--dry-run", *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err


def test_presets_listed(capsys):
    assert main(["presets"]) == 0
    assert "digits-eps10-cpu" in capsys.readouterr().out


def test_interrupted_cli_run_resumes_to_the_uninterrupted_result(config, tmp_path, monkeypatch, capsys):
    """Ctrl-C after the step-2 checkpoint, then `train --resume`: same weights and ledger as a straight run."""
    import dpdiffusion.dpsgd.secret_random as secret_random
    import dpdiffusion.training as training

    monkeypatch.setattr(secret_random.secrets, "token_bytes", bytes)  # the same secret keys for both runs
    cfg = ["train", config, "--set", "privacy.steps=5"]
    assert main([*cfg, "--run-dir", str(tmp_path / "straight")]) == 0

    real_step, calls = training.Trainer.step, []

    def interrupted_step(self):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real_step(self)

    monkeypatch.setattr(training.Trainer, "step", interrupted_step)
    assert main([*cfg, "--run-dir", str(tmp_path / "cut")]) == 130
    assert "interrupted" in capsys.readouterr().err
    monkeypatch.setattr(training.Trainer, "step", real_step)
    assert main([*cfg, "--run-dir", str(tmp_path / "cut"), "--resume"]) == 0
    straight = load_file(str(tmp_path / "straight/release/model.safetensors"))
    resumed = load_file(str(tmp_path / "cut/release/model.safetensors"))
    assert straight.keys() == resumed.keys()
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)
    spent = [json.loads((tmp_path / run / "release/privacy.json").read_text())["spent"] for run in ("straight", "cut")]
    assert spent[0] == spent[1] and spent[0]["steps"] == 5


def test_data_dir_flag_points_at_local_copies(config, tmp_path, capsys):
    mnist = ["--set", "data.name=mnist", "--set", "model.img_resolution=28", "--set", "privacy.steps=2"]
    assert main(["train", config, "--run-dir", str(tmp_path / "run"), *mnist, "--data-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert str(tmp_path / "mnist") in err and "not found" in err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("preset, size", [("fmnist-eps10", 60000), ("cifar10-eps10", 50000), ("celeba32-eps10", 162770),
                                          ("mnist-eps10", 60000)])
def test_a_canonical_preset_plans_offline_from_its_published_size(tmp_path, monkeypatch, capsys, preset, size):
    monkeypatch.setenv("DPDIFFUSION_DATA_DIR", str(tmp_path))  # empty: no file of any dataset
    fast = ["--set", "privacy.epochs=null", "--set", "privacy.steps=10"]  # calibrating 300 epochs takes minutes
    assert main(["train", preset, "--dry-run", *fast]) == 0
    captured = capsys.readouterr()
    described = json.loads(captured.out)
    assert described["dataset"]["size"] == size and described["privacy"]["sample_rate"] == pytest.approx(
        described["config"]["privacy"]["batch_size"] / size)
    notes = [line for line in captured.err.splitlines() if "published training-split size" in line]
    assert len(notes) == 1 and notes[0].startswith("dpdiffusion train: note: ") and str(tmp_path) in notes[0]


def _error_lines(capsys) -> list[str]:
    """stderr's lines apart from the progress bar's."""
    return [line for line in capsys.readouterr().err.splitlines() if line.startswith("dpdiffusion")]


def test_weights_that_stop_being_finite_stop_the_run_in_one_line(config, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", config, "--run-dir", str(run), "--set", "training.lr=1e30"]) == 2
    err = _error_lines(capsys)
    assert len(err) == 1 and "training diverged at step 1" in err[0] and "no checkpoint" in err[0]
    assert "in a new run" in err[0] and "spent stands" in err[0]  # a resume cannot lower the learning rate
    assert not (run / "release" / "model.safetensors").exists()


@pytest.mark.parametrize("poison", [float("nan"), 3e38])  # 3e38: finite weights, an output that overflows
def test_divergence_keeps_the_last_good_checkpoint_and_resume_goes_on(config, tmp_path, monkeypatch, capsys, poison):
    from dpdiffusion.training import Trainer

    run, step = tmp_path / "run", Trainer.step

    def poisoned(self):
        report = step(self)
        if self.ledger.steps_taken == 3:
            with torch.no_grad():
                next(self.model.parameters()).fill_(poison)
        return report

    monkeypatch.setattr(Trainer, "step", poisoned)
    assert main(["train", config, "--run-dir", str(run)]) == 2
    err = _error_lines(capsys)
    assert len(err) == 1 and "at step 3" in err[0] and "step-00000002" in err[0]
    checkpoint = (run / "owner/checkpoints/step-00000002.safetensors").read_bytes()
    assert json.loads((run / "release/privacy.json").read_text())["spent"]["steps"] == 2
    assert not (run / "release/model.safetensors").exists()
    monkeypatch.setattr(Trainer, "step", step)
    assert main(["train", config, "--run-dir", str(run), "--resume"]) == 0
    assert (run / "owner/checkpoints/step-00000002.safetensors").read_bytes() == checkpoint
    assert json.loads((run / "release/privacy.json").read_text())["spent"]["steps"] == 3


def test_resume_on_other_data_of_the_same_size_is_refused(tmp_path, capsys):
    run, config = tmp_path / "run", write_config(tmp_path, TINY)
    first = ["train", config, "--run-dir", str(run), "--set", "data.subset=0:1000", "--set", "training.checkpoint_every=1"]
    assert main(first + ["--set", "privacy.steps=3"]) == 0
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    capsys.readouterr()
    shifted = ["train", config, "--run-dir", str(run), "--resume", "--set", "data.subset=1:1001",
               "--set", "training.checkpoint_every=1", "--set", "privacy.steps=3"]
    assert main(shifted) == 2  # same N, so the same plan: only the data tell the runs apart
    err = _error_lines(capsys)
    assert len(err) == 1 and "other training data" in err[0] and "data.subset: '0:1000' -> '1:1001'" in err[0]
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before


def test_more_class_folders_than_the_model_takes_fail_the_dry_run_in_one_line(tmp_path, capsys):
    from tests.data.fakes import write_png

    for label in range(3):
        write_png(tmp_path / "images" / f"class{label}" / "x.png", (8, 8), 100 * label, mode="L")
    config = write_config(tmp_path, TINY.replace("data: {name: digits}", "data: {name: imagefolder, path: "
                                                 f"'{tmp_path / 'images'}', resolution: 8, channels: 1}}"))
    assert main(["train", config, "--dry-run", "--set", "model.num_classes=2", "--set", "privacy.batch_size=2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "labels go up to 2 (3 classes" in err[0] and "set model.num_classes to 3" in err[0]


def test_a_tiny_target_epsilon_plans_in_bounded_memory_and_warns(config, capsys):
    assert main(["train", config, "--dry-run", "--set", "privacy.target_epsilon=1e-4"]) == 0
    captured = capsys.readouterr()
    plan = json.loads(captured.out)["privacy"]
    assert 0 < plan["planned_epsilon"] <= 1e-4 and plan["noise_multiplier"] / 64 >= 1
    err = captured.err.strip().splitlines()
    assert len(err) == 2 and err[0].startswith("dpdiffusion train: warning: dpsgd: the noise swamps the signal")
    assert err[1].startswith("dpdiffusion train: note:") and "PLD bound" in err[1]


def test_resume_of_a_folder_that_does_not_exist_is_refused(config, tmp_path, capsys):
    run = tmp_path / "typo"
    assert main(["train", config, "--run-dir", str(run), "--resume"]) == 2
    err = _error_lines(capsys)
    assert len(err) == 1 and "does not exist" in err[0] and not run.exists()


def test_resume_with_changed_settings_is_refused_and_performance_may_change(config, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", config, "--run-dir", str(run)]) == 0
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    capsys.readouterr()
    for change, named in ((["training.lr=0.01"], ["training.lr: 0.0003 -> 0.01"]),
                          (["training.ema_decay=0.9", "model.dropout=0.1"],
                           ["training.ema_decay: 0.999 -> 0.9", "model.dropout: 0.0 -> 0.1"])):
        assert main(["train", config, "--run-dir", str(run), "--resume", *(f"--set={c}" for c in change)]) == 2
        err = _error_lines(capsys)
        assert len(err) == 1 and "other settings than it was trained with" in err[0]
        assert all(n in err[0] for n in named)
        assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before  # nothing rewritten
    allowed = ["--set", "performance.micro_batch_size=7", "--set", "training.log_every=5", "--set", "name=renamed"]
    assert main(["train", config, "--run-dir", str(run), "--resume", *allowed]) == 0
    assert json.loads((run / "config.json").read_text())["performance"]["micro_batch_size"] == 7
