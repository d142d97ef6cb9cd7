"""Bad input at the command line: one line naming what is wrong, exit 2, and nothing already written touched.
(Loader-level damage -- flipped, truncated, missing files -- is tested per loader in tests/data.)"""

import gzip

import pytest

from dpdiffusion.cli import main
from tests.tiny import TINY_RUN, write_config


def error_lines(capsys) -> list[str]:
    return [line for line in capsys.readouterr().err.splitlines() if line.startswith("dpdiffusion")]


def fails_in_one_line(argv, capsys, *needles) -> None:
    assert main(argv) == 2
    lines = error_lines(capsys)
    assert len(lines) == 1, lines
    for needle in needles:
        assert needle in lines[0], lines[0]


@pytest.mark.parametrize("override,needle", [
    ("model.img_resolution=16", "the images are 1x8x8"),  # wrong size for the network
    ("model.in_channels=3", "the model expects 3x8x8"),  # wrong number of channels
    ("data.subset=0:10", "smaller than the expected batch size 64"),
    ("data.subset=5:2", "selects no image"),  # empty
    ("privacy.target_epsilon=0", "target epsilon"),
    ("privacy.target_epsilon=-3", "target epsilon"),
    ("privacy.delta=0.01", "must lie in (0, 1/N)"),
    ("privacy.delta=0", "must lie in (0, 1/N)"),
    ("privacy.steps=0", "at least 1 step"),
    ("privacy.max_grad_norm=nan", "privacy.max_grad_norm"),
    ("privacy.batch_sise=64", "unknown configuration key 'privacy.batch_sise'"),
    ("trainig.lr=1", "unknown configuration key 'trainig'"),
    ("training.lr=-1", "lr must be a finite number >= 0"),
    ("training.ema_decay=1", "ema_decay"),
    ("data.name=nowhere", "unknown dataset"),
])
def test_bad_settings_are_refused_before_anything_is_written(tmp_path, capsys, override, needle):
    run = tmp_path / "run"
    fails_in_one_line(["train", write_config(tmp_path, TINY_RUN), "--run-dir", str(run), "--set", override],
                      capsys, needle)
    assert not run.exists()


def test_damaged_dataset_files_are_named(tmp_path, capsys):
    (tmp_path / "mnist").mkdir()
    with gzip.open(tmp_path / "mnist" / "train-images-idx3-ubyte.gz", "wb") as f:
        f.write(b"\x00\x00\x08\x03 not MNIST")
    config = write_config(tmp_path, TINY_RUN.replace("name: digits", "name: mnist"))
    fails_in_one_line(["train", config, "--dry-run", "--data-dir", str(tmp_path)], capsys,
                      "train-images-idx3-ubyte.gz", "corrupted")
    (tmp_path / "mnist" / "train-images-idx3-ubyte.gz").write_bytes(b"\x1f\x8b\x08\x00")  # a cut-off gzip
    fails_in_one_line(["train", config, "--dry-run", "--data-dir", str(tmp_path)], capsys,
                      "train-images-idx3-ubyte.gz")


def test_image_folder_problems_are_named(tmp_path, capsys):
    (tmp_path / "images" / "a").mkdir(parents=True)
    config = write_config(tmp_path, TINY_RUN.replace(
        "data: {name: digits}", f"data: {{name: imagefolder, path: {tmp_path / 'images'}, resolution: 8, channels: 1}}"))
    fails_in_one_line(["train", config, "--dry-run"], capsys, "has no images")
    (tmp_path / "images" / "a" / "x.png").write_bytes(b"\x89PNG\r\n\x1a\n cut")
    fails_in_one_line(["train", config, "--dry-run"], capsys, "x.png is not a readable image")


def test_bad_configuration_files(tmp_path, capsys):
    broken = tmp_path / "broken.yaml"
    broken.write_text("data: {name: digits\n")
    fails_in_one_line(["train", str(broken), "--dry-run"], capsys, "not valid YAML")
    broken.write_text("- a list\n")
    fails_in_one_line(["train", str(broken), "--dry-run"], capsys, "expected a mapping")
    fails_in_one_line(["train", str(tmp_path / "missing.yaml"), "--dry-run"], capsys, "missing.yaml")


def test_an_occupied_run_folder_is_left_as_it_was(tmp_path, capsys):
    run = tmp_path / "run"
    config = write_config(tmp_path, TINY_RUN)
    assert main(["train", config, "--run-dir", str(run)]) == 0
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    capsys.readouterr()
    fails_in_one_line(["train", config, "--run-dir", str(run)], capsys, "already holds a run")
    other = write_config(tmp_path, TINY_RUN.replace("target_epsilon: 5", "target_epsilon: 3"), "other.yaml")
    fails_in_one_line(["train", other, "--run-dir", str(run), "--resume"], capsys)  # changed privacy settings
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before
