import json
import os
from pathlib import Path

import numpy as np
import pytest

from dpdiffusion.cli import main
from tests.tiny import TINY_RUN, write_config


def digits_samples(path: Path, n: int = 1437) -> Path:
    from dpdiffusion.data.digits import load_digits

    images, labels = load_digits("train")
    np.savez(path, images=images[:n].permute(0, 2, 3, 1).numpy(), labels=labels[:n].numpy())
    return path


def test_evaluate_a_samples_file_writes_metrics_and_report(tmp_path, capsys):
    samples = digits_samples(tmp_path / "s.npz")
    out = tmp_path / "eval"
    code = main(["evaluate", str(samples), "--dataset", "digits", "--metrics", "acc", "--classifiers", "logreg,mlp",
                 "--epochs", "30", "--out", str(out)])
    assert code == 0
    metrics = json.loads((out / "metrics.json").read_text())["metrics"]
    logreg = metrics["downstream"]["classifiers"]["logreg"]
    assert logreg["synthetic"]["test_images"] == 360 and "real_ceiling" in logreg
    assert 0.5 < logreg["synthetic"]["test_accuracy"] <= 1
    assert (out / "report.html").exists() and (out / "report.md").exists()
    assert "accuracy logreg" in capsys.readouterr().out


@pytest.mark.parametrize("args, message", [
    (["--metrics", "acc,bogus"], "unknown bogus"),
    (["--classifiers", "svm"], "--classifiers: unknown svm"),
])
def test_bad_options_are_one_line_and_exit_2(tmp_path, capsys, args, message):
    samples = digits_samples(tmp_path / "s.npz", n=20)
    code = main(["evaluate", str(samples), "--dataset", "digits", "--out", str(tmp_path / "o"), *args])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and message in err


@pytest.mark.parametrize("arrays, message", [
    ({"images": np.zeros((3, 8, 8), dtype=np.float32), "labels": np.zeros(3, dtype=np.int64)}, "must be uint8"),
    ({"pixels": np.zeros((3, 8, 8, 1), dtype=np.uint8)}, "needs arrays 'images' and 'labels'"),
    ({"images": np.zeros((3, 8, 8, 1), dtype=np.uint8), "labels": np.zeros(2, dtype=np.int64)}, "one entry per image"),
])
def test_bad_samples_files_are_one_line_and_exit_2(tmp_path, capsys, arrays, message):
    bad = tmp_path / "bad.npz"
    np.savez(bad, **arrays)
    code = main(["evaluate", str(bad), "--dataset", "digits", "--metrics", "acc", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and message in err
    assert not (tmp_path / "o").exists()


def test_samples_file_needs_a_dataset(tmp_path, capsys):
    assert main(["evaluate", str(digits_samples(tmp_path / "s.npz", n=20))]) == 2
    assert "--dataset is required" in capsys.readouterr().err


def test_evaluate_a_run_folder_generates_samples_and_reports_privacy_and_curves(tmp_path):
    (tmp_path / "tiny.yaml").write_text(TINY_RUN)
    run = tmp_path / "run"
    assert main(["train", str(tmp_path / "tiny.yaml"), "--run-dir", str(run), "--set", "privacy.steps=3",
                 "--set", "training.checkpoint_every=3", "--set", "sampling.steps=3"]) == 0
    assert main(["evaluate", str(run), "--num", "40", "--metrics", "acc", "--classifiers", "logreg", "--epochs", "1",
                 "--no-ceiling"]) == 0
    out = run / "owner" / "evaluation"  # owner-side by default: it uses private data without noise
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["privacy"]["spent"]["steps"] == 3
    assert "real_ceiling" not in saved["metrics"]["downstream"]["classifiers"]["logreg"]
    assert np.load(out / "samples.npz")["images"].shape == (40, 8, 8, 1)
    page = (out / "report.html").read_text()
    assert "epsilon spent" in page and page.count("<svg") == 2  # loss and epsilon over steps
    assert not (run / "release" / "evaluation").exists()


INCEPTION = os.environ.get("DPDIFFUSION_INCEPTION")


@pytest.mark.skipif(not (INCEPTION and Path(INCEPTION).is_file()), reason="needs the Inception detector "
                    "(DPDIFFUSION_INCEPTION)")
def test_a_runs_reference_features_stay_on_the_owners_side_and_clear_cache_removes_them(tmp_path, monkeypatch, capsys):
    """Features of the private training split are un-noised functions of private data: a run's evaluation caches
    them under RUN_DIR/owner/cache (named in the report), never in the shared cache; `clear-cache` removes them."""
    shared = tmp_path / "xdg"
    monkeypatch.setenv("XDG_CACHE_HOME", str(shared))
    run = tmp_path / "run"
    assert main(["train", write_config(tmp_path, TINY_RUN), "--run-dir", str(run)]) == 0
    assert main(["evaluate", str(run), "--num", "6", "--metrics", "fid", "--ref-num", "6"]) == 0
    cached = list((run / "owner" / "cache").glob("*.features.npy"))
    assert len(cached) == 1 and not (shared / "dpdiffusion" / "fid").exists()
    saved = json.loads((run / "owner" / "evaluation" / "metrics.json").read_text())
    assert saved["metrics"]["fid"]["reference"]["cache"] == str(run / "owner" / "cache")
    assert str(run / "owner" / "cache") in (run / "owner" / "evaluation" / "report.md").read_text()
    capsys.readouterr()
    assert main(["clear-cache", str(run)]) == 0
    assert "removed 1 cached feature file" in capsys.readouterr().out and not cached[0].exists()
    # the shared cache: features go, the detector and downloads stay
    fid = shared / "dpdiffusion" / "fid"
    fid.mkdir(parents=True)
    for name in ("mnist-train-28px-10-abc.features.npy", ".mnist-train-28px-10-abc.features.0-5.npy"):
        np.save(fid / name, np.zeros(2))
    (shared / "dpdiffusion" / "inception-2015-12-05.pt").write_bytes(b"detector")
    assert main(["clear-cache"]) == 0
    assert "removed 2 cached feature files" in capsys.readouterr().out
    assert not list(fid.iterdir()) and (shared / "dpdiffusion" / "inception-2015-12-05.pt").is_file()
    assert main(["clear-cache", str(run), "--cache-dir", str(fid)]) == 2
    assert main(["clear-cache", str(tmp_path / "nowhere")]) == 2
