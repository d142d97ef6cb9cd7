import json

from dpdiffusion.cli import main


def test_demo_runs_end_to_end_and_keeps_the_diagnostic_with_the_owner(tmp_path, capsys):
    run = tmp_path / "demo"
    args = ["demo", "--run-dir", str(run), "--num-samples", "40", "--set", "privacy.steps=2",
            "--set", "model.model_channels=8", "--set", "model.attn_resolutions=[]", "--set", "sampling.steps=3"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "downstream accuracy on the real held-out digits" in out and "epsilon" in out
    released = sorted(p.name for p in (run / "release").iterdir())
    assert released == ["model.safetensors", "privacy.json", "samples.npz", "samples.png"]
    evaluation = json.loads((run / "owner/evaluation.json").read_text())
    assert 0.0 <= evaluation["accuracy"] <= 1.0 and evaluation["real_test_images"] == 360
    assert "accuracy" not in (run / "release/privacy.json").read_text()
    assert "beside real held-out digits" in out and (run / "owner/comparison.png").is_file()
