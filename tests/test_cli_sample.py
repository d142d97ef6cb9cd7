import typing

import numpy as np
import pytest

from dpdiffusion.cli import SAMPLER_NAMES, main
from dpdiffusion.diffusion.generate import generate, load_release
from dpdiffusion.diffusion.samplers import SAMPLERS
from dpdiffusion.runconfig import ConfigError, SamplerName, load_config
from tests.tiny import TINY_RUN

TINY = TINY_RUN


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sample")
    (folder / "tiny.yaml").write_text(TINY)
    assert main(["train", str(folder / "tiny.yaml"), "--run-dir", str(folder / "run")]) == 0
    return folder / "run"


def test_cli_knows_every_sampler():
    assert set(SAMPLER_NAMES) == set(SAMPLERS) == set(typing.get_args(SamplerName))


def test_a_sampler_typo_fails_when_the_configuration_loads():
    with pytest.raises(ConfigError, match="sampling.sampler: expected one of"):
        load_config("digits-eps10-cpu", ["sampling.sampler=dpmpp_2m"])


@pytest.mark.parametrize("sampler", SAMPLER_NAMES)
def test_sample_writes_npz_and_grid(run_dir, tmp_path, sampler):
    out = tmp_path / "s.npz"
    assert main(["sample", str(run_dir), "--num", "12", "--out", str(out), "--sampler", sampler, "--steps", "3"]) == 0
    data = np.load(out)
    assert data["images"].shape == (12, 8, 8, 1) and data["images"].dtype == np.uint8
    assert data["labels"].shape == (12,) and data["labels"].dtype == np.int64
    assert data["labels"].min() >= 0 and data["labels"].max() < 10
    assert out.with_suffix(".png").exists()


def test_images_do_not_depend_on_the_batch_size(run_dir):
    model, config, privacy = load_release(run_dir)
    assert privacy is not None and privacy.spent.steps == 2
    a, la = generate(model, config, num=6, seed=3, batch_size=6)
    b, lb = generate(model, config, num=6, seed=3, batch_size=4)
    assert np.array_equal(a, b) and np.array_equal(la, lb)
    c, _ = generate(model, config, num=6, seed=4, batch_size=6)
    assert not np.array_equal(a, c)


def test_labels_are_uniform_not_from_the_data(run_dir):
    model, config, _ = load_release(run_dir)
    _, labels = generate(model, config, num=2000, seed=0, batch_size=2000,
                         sampling=config.sampling.__class__(steps=1))
    counts = np.bincount(labels, minlength=10)
    assert counts.min() > 150 and counts.max() < 250


def test_given_labels_are_used(run_dir, tmp_path):
    out = tmp_path / "l.npz"
    assert main(["sample", str(run_dir), "--num", "3", "--out", str(out), "--labels", "7,7,1"]) == 0
    assert np.load(out)["labels"].tolist() == [7, 7, 1]


@pytest.mark.parametrize(
    "args,message",
    [
        (["--num", "2", "--out", "x.txt"], ".npz"),
        (["--num", "2", "--out", "x.npz", "--labels", "a,b"], "comma-separated integers"),
        (["--num", "2", "--out", "x.npz", "--labels", "1,99"], "labels in"),
    ],
)
def test_bad_sample_arguments(run_dir, tmp_path, args, message, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["sample", str(run_dir), *args]) == 2
    assert message in capsys.readouterr().err


def test_missing_run_folder(tmp_path, capsys):
    assert main(["sample", str(tmp_path / "none"), "--num", "1", "--out", str(tmp_path / "a.npz")]) == 2
    assert "not found" in capsys.readouterr().err


def test_sample_reads_a_model_file_as_well_as_a_run_folder(run_dir, tmp_path):
    from_folder, from_file = tmp_path / "a.npz", tmp_path / "b.npz"
    assert main(["sample", str(run_dir), "--num", "4", "--out", str(from_folder), "--steps", "3"]) == 0
    assert main(["sample", str(run_dir / "release" / "model.safetensors"), "--num", "4", "--out", str(from_file),
                 "--steps", "3"]) == 0
    assert np.array_equal(np.load(from_folder)["images"], np.load(from_file)["images"])


def decode_png_folder(folder, num):
    """Image i and its class folder, from ``folder/<class>/<i>.png``."""
    from PIL import Image

    found = {int(p.stem): (p.parent.name, np.asarray(Image.open(p))) for p in folder.glob("*/*.png")}
    assert sorted(found) == list(range(num))
    images = np.stack([found[i][1] for i in range(num)])
    return images[..., None] if images.ndim == 3 else images, [found[i][0] for i in range(num)]


def test_png_format_decodes_to_the_npz_images_of_the_same_seed(run_dir, tmp_path, capsys):
    npz, folder = tmp_path / "s.npz", tmp_path / "pngs"
    assert main(["sample", str(run_dir), "--num", "12", "--out", str(npz), "--steps", "3", "--seed", "5"]) == 0
    assert main(["sample", str(run_dir), "--num", "12", "--out", str(folder), "--steps", "3", "--seed", "5",
                 "--format", "png"]) == 0
    data = np.load(npz)
    images, classes = decode_png_folder(folder, 12)
    assert images.dtype == np.uint8 and np.array_equal(images, data["images"])
    assert classes == [str(label) for label in data["labels"]]  # no class names recorded: the label index
    assert not list(tmp_path.glob(".pngs*")) and str(folder) in capsys.readouterr().out


def test_png_format_refuses_a_non_empty_folder_before_sampling(run_dir, tmp_path, capsys, monkeypatch):
    import dpdiffusion.diffusion.generate as generate_module

    monkeypatch.setattr(generate_module, "generate", lambda *a, **k: pytest.fail("sampled before refusing"))
    folder = tmp_path / "pngs"
    folder.mkdir()
    (folder / "keep.txt").write_text("mine")
    assert main(["sample", str(run_dir), "--num", "2", "--out", str(folder), "--format", "png"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "exists and is not an empty folder" in err
    assert [p.name for p in folder.iterdir()] == ["keep.txt"]
    assert main(["sample", str(run_dir), "--num", "2", "--out", str(tmp_path / "x.npz"), "--format", "png"]) == 2
    assert "names a folder" in capsys.readouterr().err


def test_png_format_fills_an_empty_folder(run_dir, tmp_path):
    folder = tmp_path / "empty"
    folder.mkdir()
    assert main(["sample", str(run_dir), "--num", "3", "--out", str(folder), "--steps", "2", "--format", "png"]) == 0
    assert len(list(folder.glob("*/*.png"))) == 3


def test_bad_batch_sizes_and_labels_for_an_unconditional_model_are_refused(run_dir, tmp_path, capsys):
    import dataclasses

    import torch

    from dpdiffusion.runconfig import ConfigError

    for size in ("0", "-5"):  # a negative size once wrote an npz of 0 images and num labels, exit 0
        with pytest.raises(SystemExit) as raised:
            main(["sample", str(run_dir), "--num", "4", "--batch-size", size, "--out", str(tmp_path / "s.npz")])
        assert raised.value.code == 2 and not (tmp_path / "s.npz").exists()
    model, config, _ = load_release(run_dir)
    with pytest.raises(ConfigError, match="batch size must be >= 1"):
        generate(model, config, num=4, seed=0, batch_size=0)
    unconditional = dataclasses.replace(config, model=dataclasses.replace(config.model, num_classes=0))
    with pytest.raises(ConfigError, match="the model is unconditional"):
        generate(model, unconditional, num=2, seed=0, labels=torch.tensor([0, 1]))
