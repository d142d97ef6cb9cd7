"""Owner-side monitoring: TensorBoard events under owner/tensorboard, nothing under release/, training unchanged."""

import io
import json
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from dpdiffusion.cli import main
from dpdiffusion.data.dataset import ArrayDataset
from dpdiffusion.data.datasets import load_dataset
from dpdiffusion.diffusion.generate import load_release
from dpdiffusion.methods import METHODS, dpdm
from dpdiffusion.monitoring import GRID_TAG, SampleGrid
from dpdiffusion.privacy.plan import PrivacyPlan
from dpdiffusion.runconfig import ConfigError, TrainingConfig, changed_settings, load_config
from dpdiffusion.training import Trainer
from tests.dpsgd.toys import NoisyRegressionLoss, TinyDenoiser, make_batch
from tests.tiny import TINY_RUN, write_config

MONITORED = ["privacy/epsilon", "train/batch_size", "train/clipped_fraction", "train/learning_rate", "train/loss"]
GRID = ["training.tensorboard=true", "training.sample_grid_every=1", "training.sample_grid_images=4",
        "training.sample_grid_steps=3"]


def events(folder):
    """Every events file in ``folder``, as TensorBoard reads them (a restart's orphaned steps purged)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(folder), size_guidance={"scalars": 0, "images": 0})
    accumulator.Reload()
    return accumulator


def scalars(accumulator):
    """Tag -> [(step, value)] in the order shown (a step shown twice would appear twice)."""
    return {tag: [(e.step, e.value) for e in accumulator.Scalars(tag)] for tag in accumulator.Tags()["scalars"]}


def train_tiny(tmp_path, name, overrides=()):
    config = load_config(write_config(tmp_path, TINY_RUN), list(overrides))
    dataset = load_dataset(config.data, "train")
    run_plan = METHODS["dpdm"].plan(config, len(dataset))
    dpdm.train(config, dataset, run_plan, tmp_path / name, progress=False, secret_seed=7)
    return config, run_plan


def test_a_monitored_run_writes_its_statistics_and_grids_under_owner_and_trains_the_same(tmp_path):
    pytest.importorskip("tensorboard")
    config, run_plan = train_tiny(tmp_path, "on", GRID)
    train_tiny(tmp_path, "off")
    on, off = tmp_path / "on", tmp_path / "off"

    logged = [json.loads(line) for line in (on / "owner/log.jsonl").read_text().splitlines()]
    accumulator = events(on / "owner/tensorboard")
    shown = {tag: dict(values) for tag, values in scalars(accumulator).items()}
    assert sorted(shown) == MONITORED
    assert all(sorted(values) == [1, 2] for values in shown.values())  # log_every: 1, two steps
    for record in logged:
        step, size = record["step"], record["batch_size"]
        assert shown["train/loss"][step] == pytest.approx(record["loss_sum"] / size, rel=1e-6)
        assert shown["train/clipped_fraction"][step] == pytest.approx(record["clipped"] / size, rel=1e-6)
        assert shown["train/batch_size"][step] == size
        assert shown["train/learning_rate"][step] == pytest.approx(config.training.lr, rel=1e-6)
        assert shown["privacy/epsilon"][step] == pytest.approx(run_plan.main_plan.epsilon_after(step), rel=1e-6)
    released = json.loads((on / "release/privacy.json").read_text())
    assert shown["privacy/epsilon"][2] == pytest.approx(released["spent"]["epsilon"], rel=1e-6)

    # the grid of the last step is the released (EMA) model's, sampled from the fixed seed
    grids = accumulator.Images(GRID_TAG)
    assert [g.step for g in grids] == [1, 2]
    from PIL import Image

    shown_grid = np.asarray(Image.open(io.BytesIO(grids[-1].encoded_image_string)))
    model, released_config, _ = load_release(on)
    expected = SampleGrid(released_config, images=4, steps=3).sample(model)
    assert expected.shape == (80, 80, 1)  # 2 x 2 images of 8 + 2 pixels, upscaled 4 times
    np.testing.assert_array_equal(shown_grid.reshape(expected.shape[:2] + (-1,))[..., :1], expected)

    # monitoring changes neither the training nor release/; without it there is no tensorboard folder
    assert not (off / "owner/tensorboard").exists()
    assert sorted(p.name for p in (on / "release").iterdir()) == sorted(p.name for p in (off / "release").iterdir())
    weights_on, weights_off = load_file(on / "release/model.safetensors"), load_file(off / "release/model.safetensors")
    assert set(weights_on) == set(weights_off)
    for name, value in weights_on.items():
        torch.testing.assert_close(value, weights_off[name], atol=0, rtol=0)
    report_off = json.loads((off / "release/privacy.json").read_text())
    assert {k: v for k, v in released.items() if k != "written"} == {
        k: v for k, v in report_off.items() if k != "written"}


def toy_trainer(run_dir):
    torch.manual_seed(0)
    data = make_batch(40, torch.Generator().manual_seed(9))
    plan = PrivacyPlan(dataset_size=40, expected_batch_size=8, steps=12, max_grad_norm=1.0, noise_multiplier=1.0,
                       delta=1e-3)
    return Trainer(TinyDenoiser(), NoisyRegressionLoss(2), ArrayDataset(data["x"], data["y"]), plan=plan,
                   run_dir=run_dir, training=TrainingConfig(checkpoint_every=4, log_every=2, tensorboard=True),
                   secret_seed=42, progress=False)


def test_a_resumed_run_appends_and_shows_as_the_uninterrupted_one(tmp_path):
    pytest.importorskip("tensorboard")
    toy_trainer(tmp_path / "straight").fit()
    toy_trainer(tmp_path / "resumed").fit(max_steps=6)  # logs steps 2, 4, 6; checkpoints steps 4 and 6
    (tmp_path / "resumed/owner/checkpoints/step-00000006.safetensors").unlink()  # as if it crashed before writing it
    toy_trainer(tmp_path / "resumed").fit(resume=True)  # from step 4: its step 6 replaces the first's
    folder = tmp_path / "resumed/owner/tensorboard"
    assert len(list(folder.glob("events.out.tfevents.*"))) == 2
    straight, resumed = scalars(events(tmp_path / "straight/owner/tensorboard")), scalars(events(folder))
    assert [step for step, _ in resumed["train/loss"]] == [2, 4, 6, 8, 10, 12]  # step 6 once
    assert resumed == straight  # a resume is bit-exact, and so is what it shows


def test_missing_tensorboard_is_refused_in_one_line_before_training(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails as if it were not installed
    config, run = write_config(tmp_path, TINY_RUN), tmp_path / "run"
    assert main(["train", config, "--run-dir", str(run), "--set", "training.tensorboard=true"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "pip install 'dpdiffusion[tensorboard]'" in err
    assert not run.exists()
    with pytest.raises(ConfigError, match=r"dpdiffusion\[tensorboard\]"):
        toy_trainer(tmp_path / "library")
    assert not (tmp_path / "library").exists()
    assert main(["train", config, "--run-dir", str(run), "--dry-run"]) == 0  # off: tensorboard is not needed


def test_monitoring_settings_are_checked_and_a_resume_may_change_them(tmp_path):
    path = write_config(tmp_path, TINY_RUN)
    with pytest.raises(ConfigError, match="sample_grid_every"):
        load_config(path, ["training.sample_grid_every=5"])  # a grid needs tensorboard on
    with pytest.raises(ConfigError, match="sample_grid_images"):
        load_config(path, ["training.tensorboard=true", "training.sample_grid_images=0"])
    off, on = load_config(path), load_config(path, GRID)
    assert changed_settings(off.to_dict(), on.to_dict()) == {}
    assert changed_settings(off.to_dict(), load_config(path, [*GRID, "training.lr=0.1"]).to_dict()) == {
        "training.lr": (off.training.lr, 0.1)}
