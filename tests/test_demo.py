import json

from dpdiffusion.cli import main


def test_demo_runs_every_stage_end_to_end_and_keeps_the_diagnostic_with_the_owner(tmp_path, capsys):
    """The demo's preset has the DP warm-up: all its stages run, the printed epsilon is the whole run's (it once
    printed DP-SGD's alone), and the held-out diagnostic stays with the owner."""
    run = tmp_path / "demo"
    args = ["demo", "--run-dir", str(run), "--num-samples", "40", "--set", "privacy.steps=2",
            "--set", "model.model_channels=8", "--set", "model.attn_resolutions=[]", "--set", "sampling.steps=3",
            "--set", "warmup.central_rounds=2", "--set", "warmup.steps=2"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "downstream accuracy on the real held-out digits" in out
    report = json.loads((run / "release/privacy.json").read_text())
    assert [s["name"] for s in report["stages"]] == ["central images", "warm-up training", "dpsgd"]
    assert f"epsilon {report['spent']['epsilon']:.3g}" in out
    released = sorted(p.name for p in (run / "release").iterdir())
    assert released == ["README.md", "central_images.safetensors", "model.safetensors", "privacy.json", "samples.npz",
                        "samples.png"]  # README.md: the model card
    evaluation = json.loads((run / "owner/evaluation.json").read_text())
    assert 0.0 <= evaluation["accuracy"] <= 1.0 and evaluation["real_test_images"] == 360
    assert "accuracy" not in (run / "release/privacy.json").read_text()
    assert "beside real held-out digits" in out and (run / "owner/comparison.png").is_file()


def test_too_few_samples_for_the_downstream_check_are_refused_before_training(tmp_path, capsys):
    assert main(["demo", "--run-dir", str(tmp_path / "demo"), "--num-samples", "5"]) == 2
    assert "--num-samples must be at least 20" in capsys.readouterr().err and not (tmp_path / "demo").exists()
