"""What a release says about the private dataset: with a declared public size N^ the plan is for N^ and no file
under ``release/`` carries the true N (nor q = B / N, nor delta = 1 / (10 N)); without one the report says that N
is used; the private data's paths never leave the owner (``RUN_DIR/config.json`` keeps them, and owner-side commands
find them there)."""

import json
import re
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dpdiffusion.cli import main
from dpdiffusion.data.dataset import ArrayDataset, DeclaredSize, planned_size, with_declared_size
from dpdiffusion.data.datasets import load_images
from dpdiffusion.dpsgd.mechanism import DPMechanism
from dpdiffusion.methods import dpsad
from dpdiffusion.privacy.plan import PrivacyPlan
from dpdiffusion.privacy.report import DECLARED_SIZE, DatasetSize, PrivacyReport
from dpdiffusion.release import WITHHELD, released_config
from dpdiffusion.runconfig import ConfigError, DataConfig, PrivacyConfig, load_config, resolve_plan
from tests.dpsgd.toys import NoisyRegressionLoss, TinyDenoiser, make_batch
from tests.methods.test_dpsad import TINY as DPSAD_TINY
from tests.tiny import TINY_RUN, write_config

N = 1437  # digits' training split (the held-out fifth is the test split)
TINY_DEFAULT_DELTA = TINY_RUN.replace("delta: 1.0e-4, ", "")  # delta from N (or N^)


def released_bytes(run: Path) -> dict[str, bytes]:
    """Every file under ``run/release``: whole, except a safetensors file, of which its header (the JSON with
    the configuration and the privacy report). Its tensor data is raw floats, where any four digits occur by
    chance; what the release says in words lies in the header."""
    files = {}
    for path in sorted((run / "release").rglob("*")):
        if not path.is_file():
            continue
        data = path.read_bytes()
        if path.suffix == ".safetensors":
            (length,) = struct.unpack("<Q", data[:8])
            data = data[8:8 + length]
        files[str(path.relative_to(run))] = data
    return files


def header(run: Path) -> dict:
    data = (run / "release" / "model.safetensors").read_bytes()
    (length,) = struct.unpack("<Q", data[:8])
    return json.loads(json.loads(data[8:8 + length])["__metadata__"]["dpdiffusion"])


def as_number(value: int) -> re.Pattern[bytes]:
    """The decimal ``value`` as a number of its own (not digits inside a longer number or a float's decimals)."""
    return re.compile(rb"(?<![0-9.])" + str(value).encode() + rb"(?![0-9])")


# -- the plan ----------------------------------------------------------------------------------------------------------
def test_a_declared_size_makes_the_plan_and_the_default_delta_and_epochs_public():
    plan = resolve_plan(PrivacyConfig(target_epsilon=5, batch_size=64, epochs=2, public_dataset_size=1500), N)
    assert plan.dataset_size == 1500 and plan.sample_rate == 64 / 1500 and plan.delta == 1 / 15000
    assert plan.steps == 47  # ceil(2 * 1500 / 64): epochs counted in N^ examples
    own = resolve_plan(PrivacyConfig(target_epsilon=5, batch_size=64, epochs=2), N)
    assert own.dataset_size == N and own.delta == 1 / (10 * N)


def test_a_declared_size_whose_delta_is_not_below_1_over_n_is_refused():
    with pytest.raises(ConfigError, match="public_dataset_size: delta .* not below 1/N of the private dataset"):
        resolve_plan(PrivacyConfig(target_epsilon=5, batch_size=8, steps=2, public_dataset_size=100), N)
    with pytest.raises(ConfigError, match="public_dataset_size must be >= 1"):
        load_config("digits-eps10-cpu", ["privacy.public_dataset_size=0"])


def test_every_dpsad_stage_is_planned_for_the_declared_size(tmp_path):
    cfg = load_config(write_config(tmp_path, DPSAD_TINY), ["privacy.public_dataset_size=2000", "privacy.delta=null"])
    run_plan = dpsad.plan(cfg, N)
    assert {stage.plan.dataset_size for stage in run_plan.stages if stage.plan} == {2000}
    assert run_plan.composed.delta == 1 / 20000


def test_poisson_sampling_runs_over_every_real_example_at_the_public_rate():
    """Plan for N^ = 100 on 200 real examples, B = 20: q = 0.2, so about 40 examples a step, not 20 -- each real
    example is included with probability q; the mechanism takes the dataset only with the size of its plan."""
    data = make_batch(200, torch.Generator().manual_seed(0))
    real = ArrayDataset(data["x"], data["y"])
    plan = PrivacyPlan(dataset_size=100, expected_batch_size=20, steps=12, max_grad_norm=1.0, noise_multiplier=1.0,
                       delta=1e-3)
    model = TinyDenoiser()

    def mechanism(dataset):
        return DPMechanism(model, NoisyRegressionLoss(), dataset, plan=plan, draw_seed=0, secret_seed=1,
                           optimizer=torch.optim.SGD(model.parameters(), lr=0.0))

    with pytest.raises(ValueError, match="the plan is for 100 examples"):
        mechanism(real)
    declared = with_declared_size(real, 100)
    assert isinstance(declared, DeclaredSize) and len(declared) == 200 and planned_size(declared) == 100
    assert with_declared_size(declared, 100) is declared and with_declared_size(real, None) is real
    assert declared.x is real.x  # images, labels and the rest are the dataset's
    dp = mechanism(declared)
    sizes = [dp.step().batch_size for _ in range(12)]
    assert 30 < np.mean(sizes) < 50


# -- the release -------------------------------------------------------------------------------------------------------
def test_with_a_declared_size_no_file_of_the_release_carries_the_true_n(tmp_path):
    run = tmp_path / "run"
    assert main(["train", write_config(tmp_path, TINY_DEFAULT_DELTA), "--run-dir", str(run),
                 "--set", "privacy.public_dataset_size=1500"]) == 0
    files = released_bytes(run)
    assert set(files) == {"release/README.md", "release/model.safetensors", "release/privacy.json"}
    traces = [as_number(N), re.compile(re.escape(repr(64 / N).encode())), re.compile(re.escape(repr(1 / (10 * N)).encode()))]
    for name, data in files.items():
        for trace in traces:
            assert not trace.search(data), (name, trace.pattern)
    report = PrivacyReport.from_dict(json.loads((run / "release" / "privacy.json").read_text()))
    assert report.dataset_size == DatasetSize(1500, declared=True)
    assert report.to_dict()["dataset_size"] == {"value": 1500, "source": DECLARED_SIZE}
    assert report.plan["dataset_size"] == 1500 and report.plan["sample_rate"] == 64 / 1500
    assert report.spent.delta == 1 / 15000
    assert report.data is not None and report.data.private.size is None and report.data.private.subset is None
    assert header(run)["config"]["privacy"]["public_dataset_size"] == 1500
    assert json.loads((run / "config.json").read_text())["privacy"]["public_dataset_size"] == 1500  # the owner's
    assert main(["sample", str(run), "--num", "4", "--out", str(tmp_path / "s.npz")]) == 0  # a release still loads


def test_without_a_declared_size_the_report_says_the_private_n_is_used(tmp_path):
    run = tmp_path / "run"
    assert main(["train", write_config(tmp_path, TINY_RUN), "--run-dir", str(run)]) == 0
    written = json.loads((run / "release" / "privacy.json").read_text())
    assert written["dataset_size"]["value"] == N == written["plan"]["dataset_size"]
    assert "private dataset's size" in written["dataset_size"]["source"]
    assert "N itself is private" in written["dataset_size"]["source"]
    assert PrivacyReport.from_dict(written).dataset_size == DatasetSize(N, declared=False)
    assert written["data"]["private"]["size"] == N


def test_the_released_configuration_withholds_the_private_datas_locations():
    config = load_config("digits-eps10-cpu", ["data.data_dir=/owner/copies", "data.subset='0:700'",
                                              "data.path=/owner/faces", "data.test_path=/owner/faces-test"]).to_dict()
    released, withheld = released_config(config)
    assert withheld == ["data.path", "data.test_path", "data.data_dir"]
    assert all(released["data"][k.split(".")[1]] is None for k in withheld) and released["data"]["subset"] == "0:700"
    assert config["data"]["path"] == "/owner/faces"  # the owner's copy is left as it was
    config["privacy"]["public_dataset_size"] = 1000
    released, withheld = released_config(config)
    assert "data.subset" in withheld and released["data"]["subset"] is None  # a range of a canonical dataset gives N
    assert set(WITHHELD) >= {"data.path", "data.test_path", "data.data_dir"}
    config["pretrain"]["data"] = {"name": "imagefolder", "path": "/owner/faces/public", "test_path": "/owner/faces/t"}
    released, withheld = released_config(config)  # public data may lie in the private data's own folder tree
    assert {"pretrain.data.path", "pretrain.data.test_path"} <= set(withheld)
    assert released["pretrain"]["data"]["path"] is None and "/owner" not in json.dumps(released)


# -- an image folder: its path stays with the owner ----------------------------------------------------------------------
def write_folder(root: Path, images: torch.Tensor, labels: torch.Tensor) -> Path:
    for i, (image, label) in enumerate(zip(images.numpy(), labels.numpy(), strict=True)):
        folder = root / f"c{label}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image[0]).save(folder / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def folder_run(tmp_path_factory):
    """A tiny run on an image folder whose path names it as private."""
    root = tmp_path_factory.mktemp("owner")
    x, y = load_images(DataConfig(name="digits"), "train")
    private = root / "secret-patient-scans"
    write_folder(private / "train", x[:200], y[:200])
    write_folder(private / "test", x[200:260], y[200:260])
    data = f"data: {{name: imagefolder, path: {private / 'train'}, test_path: {private / 'test'}, resolution: 8, channels: 1}}"
    config = write_config(root, TINY_RUN.replace("data: {name: digits}", data))
    run = root / "run"
    assert main(["train", config, "--run-dir", str(run)]) == 0
    return run, private, config


def test_an_image_folder_runs_release_holds_no_private_path(folder_run):
    run, private, _ = folder_run
    for name, data in released_bytes(run).items():
        assert b"secret-patient-scans" not in data and str(private).encode() not in data, name
    weights = (run / "release" / "model.safetensors").read_bytes()
    assert b"secret-patient-scans" not in weights  # the whole file, tensors included
    assert set(header(run)["withheld"]) == {"data.path", "data.test_path"}
    assert header(run)["config"]["data"]["path"] is None
    owner = json.loads((run / "config.json").read_text())  # the owner's configuration keeps it
    assert owner["data"]["path"] == str(private / "train")


def test_public_pretraining_on_a_folder_names_it_in_the_release_without_its_path(folder_run, tmp_path):
    """Public data in the private data's folder tree (here its held-out images): the release says which data
    was public, never where it lies."""
    _, private, config = folder_run
    run = tmp_path / "run"
    public = f"{{name: imagefolder, path: {private / 'test'}, resolution: 8, channels: 1}}"
    assert main(["train", config, "--run-dir", str(run), "--set", f"pretrain.data={public}",
                 "--set", "pretrain.steps=2", "--set", "pretrain.batch_size=16"]) == 0
    report = json.loads((run / "release" / "privacy.json").read_text())
    assert report["data"]["public"]["dataset"] == "imagefolder" and "path" not in report["data"]["public"]
    for name, data in released_bytes(run).items():
        assert b"secret-patient-scans" not in data and str(private).encode() not in data, name


def test_owner_side_commands_find_the_folder_in_the_owners_config_or_take_it_as_flags(folder_run, tmp_path, capsys):
    run, private, _ = folder_run
    common = ["--num", "20", "--metrics", "acc", "--classifiers", "logreg", "--epochs", "1", "--no-ceiling"]
    assert main(["evaluate", str(run), *common, "--out", str(tmp_path / "a")]) == 0
    assert main(["audit", str(run), "--members", "10", "--levels", "2", "--noises", "1", "--json"]) == 0
    release_only = tmp_path / "release-only"  # what a recipient of the release has
    shutil.copytree(run / "release", release_only / "release")
    capsys.readouterr()
    assert main(["evaluate", str(release_only), *common, "--out", str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--data-path" in err[0] and "withheld" in err[0]
    assert main(["evaluate", str(release_only), *common, "--out", str(tmp_path / "c"), "--data-path",
                 str(private / "train"), "--test-path", str(private / "test")]) == 0
    assert main(["audit", str(release_only), "--members", "10", "--levels", "2", "--noises", "1"]) == 2
    assert "--data-path" in capsys.readouterr().err


def test_a_dp_start_on_the_same_folder_cannot_be_called_other_data(folder_run, capsys):
    """The release no longer names its folder, but its run's owner-side configuration does."""
    run, _, config = folder_run
    capsys.readouterr()
    assert main(["train", config, "--dry-run", "--set", f"finetune.init={run}",
                 "--set", "finetune.init_private_data=other"]) == 2
    assert "its spend must be composed" in capsys.readouterr().err


def test_a_start_trained_without_privacy_is_named_in_the_release_without_its_path_or_size(tmp_path):
    from dpdiffusion.methods.start import read_start

    weights = tmp_path / "plain.safetensors"
    weights.write_bytes(b"weights")
    meta = {"trained_on": {"private_without_privacy": {"dataset": "imagefolder", "size": 200, "path": "/owner/scans"}},
            "steps": 1}
    config = load_config(write_config(tmp_path, TINY_RUN), ["privacy.public_dataset_size=1500"])
    named = read_start(config, meta, weights, delta=1e-5).to_dict()["trained_on"]["private_without_privacy"]
    assert named == {"dataset": "imagefolder", "split": "train"}


def test_png_samples_are_foldered_by_the_class_names_the_report_took_from_the_layout(folder_run, tmp_path):
    run, _, _ = folder_run
    private = json.loads((run / "release/privacy.json").read_text())["data"]["private"]
    assert private["class_names"] == [f"c{i}" for i in range(10)] and "folder names" in private["class_names_source"]
    for source, out in ((run, tmp_path / "a"), (run / "release/model.safetensors", tmp_path / "b")):
        assert main(["sample", str(source), "--num", "12", "--format", "png", "--out", str(out)]) == 0
        assert {p.name for p in out.iterdir()} <= set(private["class_names"]) and len(list(out.rglob("*.png"))) == 12
