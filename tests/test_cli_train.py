import json

import pytest
from safetensors.torch import load_file

from dpdiffusion.cli import main

TINY = """
data: {name: digits}
model: {img_resolution: 8, model_channels: 8, channel_mult: [1], num_blocks: 1, attn_resolutions: [], num_classes: 10}
privacy: {target_epsilon: 5, delta: 1.0e-4, batch_size: 64, steps: 3, multiplicity: 2}
training: {checkpoint_every: 2, log_every: 1}
"""


@pytest.fixture
def config(tmp_path):
    path = tmp_path / "tiny.yaml"
    path.write_text(TINY)
    return str(path)


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
    ],
)
def test_bad_settings_give_one_line_and_exit_2(config, extra, message, capsys):
    assert main(["train", config, "--dry-run", *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err


def test_presets_listed(capsys):
    assert main(["presets"]) == 0
    assert "digits-eps10-cpu" in capsys.readouterr().out
