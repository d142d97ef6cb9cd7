"""``evaluate`` checks what it needs before it samples: each refusal is one line, exit 2, and the sampler was never
called; cautions are printed before sampling and kept in the report."""

import json
import urllib.request

import numpy as np
import pytest

import dpdiffusion.diffusion.generate as generate_module
import dpdiffusion.evaluation.inception as inception_module
from dpdiffusion.cli import main
from dpdiffusion.evaluation.checks import fid_caution
from tests.evaluation.test_evaluate_cli import digits_samples
from tests.tiny import TINY_RUN, write_config


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("checks")
    assert main(["train", write_config(folder, TINY_RUN), "--run-dir", str(folder / "run")]) == 0
    return folder / "run"  # digits, 8x8 grayscale, 10 classes


@pytest.fixture
def no_sampling(monkeypatch):
    def refuse(*args, **kwargs):
        pytest.fail("evaluate started sampling before its checks had passed")

    monkeypatch.setattr(generate_module, "generate", refuse)


def refused(capsys, argv: list[str]) -> str:
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err
    return err


def test_a_missing_detector_is_named_before_sampling(run_dir, tmp_path, capsys, no_sampling):
    err = refused(capsys, ["evaluate", str(run_dir), "--num", "50", "--metrics", "fid", "--inception",
                           str(tmp_path / "nowhere.pt"), "--out", str(tmp_path / "o")])
    assert "nowhere.pt not found" in err and "--inception" in err and "DPDIFFUSION_INCEPTION" in err
    assert not (tmp_path / "o").exists()


def test_offline_without_a_detector_fails_before_sampling(run_dir, tmp_path, capsys, monkeypatch, no_sampling):
    monkeypatch.delenv("DPDIFFUSION_INCEPTION", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))

    def offline(*args, **kwargs):
        raise urllib.request.URLError("no network")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    err = refused(capsys, ["evaluate", str(run_dir), "--num", "50", "--metrics", "kid", "--out", str(tmp_path / "o")])
    assert "could not download the Inception detector" in err and "DPDIFFUSION_INCEPTION" in err


@pytest.mark.parametrize("args, names", [
    (["--dataset", "nosuch"], ["unknown dataset 'nosuch'", "--dataset"]),
    (["--dataset", "imagefolder", "--data-path", "folder"], ["test split", "--test-path"]),
])
def test_real_data_that_cannot_be_loaded_is_named_before_sampling(run_dir, tmp_path, capsys, no_sampling, args, names):
    err = refused(capsys, ["evaluate", str(run_dir), "--num", "50", "--metrics", "acc", "--classifiers", "logreg",
                           "--out", str(tmp_path / "o"), *args])
    assert "cannot load the real" in err and all(name in err for name in names)


def test_a_classifier_asked_for_that_cannot_take_the_images_is_refused_before_sampling(run_dir, tmp_path, capsys,
                                                                                         no_sampling):
    err = refused(capsys, ["evaluate", str(run_dir), "--num", "50", "--metrics", "acc", "--classifiers", "logreg,cnn",
                           "--out", str(tmp_path / "o")])
    assert "cnn needs images of at least 18x18, these are 8x8" in err


def test_too_few_images_for_fid_are_refused_before_sampling(run_dir, tmp_path, capsys, no_sampling, monkeypatch):
    monkeypatch.setenv("DPDIFFUSION_INCEPTION", str(tmp_path / "absent.pt"))  # the count is checked before the file
    err = refused(capsys, ["evaluate", str(run_dir), "--num", "1", "--metrics", "fid", "--out", str(tmp_path / "o")])
    assert "at least 2 images on each side, got 1 synthetic" in err


def test_a_default_classifier_too_large_for_the_images_is_left_out_with_a_warning(tmp_path, capsys):
    samples = digits_samples(tmp_path / "s.npz", n=200)  # 8x8 grayscale: the defaults are logreg, mlp, cnn
    out = tmp_path / "o"
    assert main(["evaluate", str(samples), "--dataset", "digits", "--metrics", "acc", "--epochs", "1", "--no-ceiling",
                 "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert "warning: downstream classifier cnn left out: it needs images of at least 18x18, these are 8x8" in err
    downstream = json.loads((out / "metrics.json").read_text())["metrics"]["downstream"]
    assert set(downstream["classifiers"]) == {"logreg", "mlp"} and "18x18" in downstream["left_out"]["cnn"]
    assert "cnn left out" in (out / "report.md").read_text()


def fake_features(images, detector, **kwargs):
    """Stand-in Inception features (the real network is slow on CPU): the pixels, spread over 2048 dimensions."""
    flat = images.reshape(len(images), -1).astype(np.float64) / 255
    return np.tile(flat, (1, -(-2048 // flat.shape[1])))[:, :2048]


def test_fid_on_few_images_is_cautioned_before_sampling_and_in_the_report(run_dir, tmp_path, capsys, monkeypatch):
    detector = tmp_path / "detector.pt"
    detector.write_bytes(b"stand-in")
    monkeypatch.setattr(inception_module, "load_detector", lambda path=None: object())
    monkeypatch.setattr(inception_module, "inception_features", fake_features)
    real_generate = generate_module.generate

    def generate(*args, **kwargs):
        print("SAMPLING STARTS", file=__import__("sys").stderr)
        return real_generate(*args, **kwargs)

    monkeypatch.setattr(generate_module, "generate", generate)
    out = tmp_path / "o"
    assert main(["evaluate", str(run_dir), "--num", "30", "--metrics", "fid,kid", "--ref-num", "100", "--inception",
                 str(detector), "--cache-dir", str(tmp_path / "cache"), "--out", str(out)]) == 0
    err = capsys.readouterr().err
    warning = [line for line in err.splitlines() if "FID rests on" in line]
    assert len(warning) == 1 and "30 synthetic and 100 reference images, fewer than 2048" in warning[0]
    assert err.index("FID rests on") < err.index("SAMPLING STARTS")
    metrics = json.loads((out / "metrics.json").read_text())["metrics"]
    assert metrics["fid"]["caution"] == fid_caution(30, 100)
    assert metrics["kid"]["subset_size"] == 30 and np.isfinite(metrics["kid"]["value"]) and metrics["kid"]["std"] >= 0
    for report in ("report.md", "report.html"):
        text = (out / report).read_text()
        assert "FID caution" in text and "KID" in text


def test_no_caution_from_2048_images_on_each_side():
    assert fid_caution(2048, 60000) is None
    assert "2047 synthetic" in fid_caution(2047, 60000) and "10 reference" in fid_caution(5000, 10)
