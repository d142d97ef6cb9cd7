import json

from dpdiffusion.cli import main
from tests.tiny import TINY_RUN, write_config

CONTROL = """
data: {name: digits, subset: "0:48"}
model: {img_resolution: 8, model_channels: 16, channel_mult: [1], num_blocks: 1, attn_resolutions: [], num_classes: 10}
privacy: {noise_multiplier: 0, target_epsilon: null, max_grad_norm: inf, delta: 1.0e-3, batch_size: 48, steps: 300}
diffusion: {label_dropout: 0}
training: {lr: 3.0e-3, ema_decay: 0, checkpoint_every: 300, log_every: 100}
sampling: {steps: 4}
"""


def test_train_with_canaries_then_audit(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", write_config(tmp_path, TINY_RUN), "--run-dir", str(run), "--audit-canaries", "16"]) == 0
    assert (run / "owner" / "audit" / "canaries.safetensors").is_file()
    assert not any("canar" in p.name for p in (run / "release").iterdir())  # the draw never enters the release
    privacy = json.loads((run / "release" / "privacy.json").read_text())
    assert privacy["data"]["audit_canaries"]["drawn"] == 16
    assert privacy["plan"]["dataset_size"] == privacy["data"]["private"]["size"]  # q does not depend on the draw
    capsys.readouterr()
    assert main(["audit", str(run), "--members", "40", "--levels", "2", "--noises", "1", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert 0 <= report["membership"]["auc"] <= 1 and report["membership"]["members"] == 40
    assert report["canaries"]["canaries"] == 16
    assert report["canaries"]["epsilon_lower_bound"] <= report["claimed"]["epsilon"]
    for name in ("report.json", "report.md", "report.html", "roc.svg"):
        assert (run / "owner" / "audit" / name).is_file()


def test_resuming_a_canary_run_needs_the_same_canaries(tmp_path, capsys):
    run = tmp_path / "run"
    config = write_config(tmp_path, TINY_RUN)
    assert main(["train", config, "--run-dir", str(run), "--audit-canaries", "8"]) == 0
    capsys.readouterr()
    assert main(["train", config, "--run-dir", str(run), "--resume"]) == 2
    assert "--audit-canaries" in capsys.readouterr().err
    assert main(["train", config, "--run-dir", str(run), "--resume", "--audit-canaries", "9"]) == 2
    assert main(["train", config, "--run-dir", str(run), "--audit-canaries", "8"]) == 2  # not over another run


def test_canaries_are_never_drawn_into_an_occupied_folder_nor_audited_for_a_run_without_them(tmp_path, capsys):
    """A new canary run over a finished run without canaries is refused before any draw (a stray canary file
    would make the audit score canaries the run never trained with); a canary file the report does not count is
    refused by the audit in one line."""
    import shutil

    plain, with_canaries = tmp_path / "plain", tmp_path / "with"
    config = write_config(tmp_path, TINY_RUN)
    assert main(["train", config, "--run-dir", str(plain)]) == 0
    assert main(["train", config, "--run-dir", str(plain), "--audit-canaries", "8"]) == 2
    assert not (plain / "owner" / "audit").exists()
    assert main(["train", config, "--run-dir", str(with_canaries), "--audit-canaries", "8"]) == 0
    (plain / "owner" / "audit").mkdir(parents=True)
    shutil.copy(with_canaries / "owner" / "audit" / "canaries.safetensors", plain / "owner" / "audit")
    capsys.readouterr()
    assert main(["audit", str(plain), "--members", "20", "--levels", "2", "--noises", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "holds 8 canaries but the run's report says none were drawn" in err[0]


def test_audit_of_a_folder_without_a_release_is_one_line(tmp_path, capsys):
    assert main(["audit", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "not found" in err


def test_non_private_control_leaks_clearly(tmp_path, capsys):
    """No clipping, no noise, 48 images and 64 canaries seen 300 times: the attack must see membership."""
    run = tmp_path / "control"
    assert main(["train", write_config(tmp_path, CONTROL), "--run-dir", str(run), "--audit-canaries", "64"]) == 0
    capsys.readouterr()
    assert main(["audit", str(run), "--members", "48", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["claimed"]["private"] is False
    assert report["membership"]["auc"] > 0.7
    assert report["canaries"]["epsilon_lower_bound"] > 0
