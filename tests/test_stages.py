"""A run as stages composed in one plan: the four ways a release could under-report its epsilon, each refused
or composed; the composed plan against an independent dp-accounting composition; stage records."""

import json
import math
from pathlib import Path

import dp_accounting
import numpy as np
import pytest
import torch
from PIL import Image

from dpdiffusion.cli import main
from dpdiffusion.data.dataset import ArrayDataset, shared_images
from dpdiffusion.data.datasets import load_images
from dpdiffusion.data.transforms import resize
from dpdiffusion.diffusion.denoiser import build_denoiser
from dpdiffusion.dpsgd.mechanism import DPMechanism
from dpdiffusion.methods import dpsad, start
from dpdiffusion.methods.pretrain import pretrain
from dpdiffusion.privacy.plan import PrivacyPlan
from dpdiffusion.run_folder import RunFolder
from dpdiffusion.runconfig import ConfigError, DataConfig, load_config
from dpdiffusion.stages import Stage, StageMismatchError, StageRecords
from tests.dpsgd.toys import NoisyRegressionLoss, TinyDenoiser, make_batch
from tests.methods.test_dpsad import TINY as DPSAD_TINY
from tests.tiny import TINY_RUN, write_config


def error_lines(capsys) -> list[str]:
    return [line for line in capsys.readouterr().err.splitlines() if line.startswith("dpdiffusion")]


# -- 4: a resume that cannot load a checkpoint never starts over ------------------------------------------------------
@pytest.mark.parametrize("damage", ["delete", "corrupt"])
def test_resume_without_a_checkpoint_that_loads_refuses_and_keeps_the_release(tmp_path, capsys, damage):
    config, run = write_config(tmp_path, TINY_RUN), tmp_path / "run"
    assert main(["train", config, "--run-dir", str(run)]) == 0
    release = {p.name: p.read_bytes() for p in (run / "release").iterdir()}
    for checkpoint in (run / "owner/checkpoints").iterdir():
        if damage == "delete":
            checkpoint.unlink()
        else:
            checkpoint.write_bytes(checkpoint.read_bytes()[:100])
    capsys.readouterr()
    assert main(["train", config, "--run-dir", str(run), "--resume"]) == 2
    lines = error_lines(capsys)
    err = [line for line in lines if "skipping checkpoint" not in line]  # the notes of unloadable ones, on stderr
    assert len(lines) - len(err) == (1 if damage == "corrupt" else 0)
    assert len(err) == 1 and "cannot resume" in err[0] and "release/privacy.json" in err[0]
    assert {p.name: p.read_bytes() for p in (run / "release").iterdir()} == release  # nothing overwritten


def test_a_run_that_never_checkpointed_may_start_over(tmp_path):
    run = RunFolder(tmp_path / "run")
    run.owner.mkdir(parents=True)
    run.log.write_text('{"step": 1}\n')  # the owner's log alone: nothing left the owner
    assert run.traces_of_training() == []


# -- 1: a finished DP teacher is reused only with the settings it was trained with ------------------------------------
@pytest.mark.parametrize("change", ["dpsad.teacher_steps=3", "dpsad.teacher_noise_ratio=2.0", "dpsad.teacher_lr=0.01"])
def test_a_finished_dp_teacher_is_not_reused_with_other_settings(tmp_path, capsys, change):
    config, run = write_config(tmp_path, DPSAD_TINY), tmp_path / "run"
    assert main(["train", config, "--run-dir", str(run)]) == 0
    release = (run / "release/privacy.json").read_bytes()
    capsys.readouterr()
    assert main(["train", config, "--run-dir", str(run), "--resume", "--set", change]) == 2
    err = error_lines(capsys)
    key = change.split("=")[0].split(".")[1]
    assert len(err) == 1 and "stage teacher was made with other settings" in err[0]
    assert key in err[0] or "noise_multiplier" in err[0]
    assert (run / "release/privacy.json").read_bytes() == release
    assert main(["train", config, "--run-dir", str(run), "--resume"]) == 0  # unchanged settings: reused
    report = json.loads((run / "release/privacy.json").read_text())
    stages = {s["name"]: s for s in report["stages"]}
    assert list(stages) == ["teacher", "student", "discriminator"]
    assert stages["teacher"]["output_sha256"] == StageRecords(RunFolder(run)).sha256("teacher")


def test_a_stage_record_names_what_changed_and_a_changed_output(tmp_path):
    run = RunFolder(tmp_path)
    output = tmp_path / "out.bin"
    output.write_bytes(b"weights")
    plan = PrivacyPlan(dataset_size=100, expected_batch_size=10, steps=5, max_grad_norm=1.0, noise_multiplier=1.0,
                       delta=1e-3)
    stage = Stage("teacher", "private", plan, settings={"dpsad.teacher_lr": 0.001})
    with pytest.raises(StageMismatchError, match="no record"):
        StageRecords(run).check_reusable(stage, output)
    StageRecords(run).finished(stage, output)
    StageRecords(run).check_reusable(stage, output)
    with pytest.raises(StageMismatchError, match=r"settings: dpsad.teacher_lr: 0.001 -> 0.002"):
        StageRecords(run).check_reusable(Stage("teacher", "private", plan, settings={"dpsad.teacher_lr": 0.002}),
                                         output)
    with pytest.raises(StageMismatchError, match=r"plan: steps: 5 -> 6"):
        StageRecords(run).check_reusable(Stage("teacher", "private", PrivacyPlan(**{**plan.__dict__, "steps": 6}),
                                               settings={"dpsad.teacher_lr": 0.001}), output)
    output.write_bytes(b"other weights")
    with pytest.raises(StageMismatchError, match="missing or changed"):
        StageRecords(run).check_reusable(stage, output)


# -- 2: a start trained on the private data -------------------------------------------------------------------------
def non_private_model(tmp_path, config_path) -> Path:
    """A model file trained by plain steps on the run's private data (as DP-SAD's teacher 'none' writes one)."""
    cfg = load_config(config_path, ["pretrain.steps=1", "pretrain.batch_size=8"])
    data = ArrayDataset(torch.randn(16, 1, 8, 8), torch.arange(16) % 10)
    out = tmp_path / "plain" / "model.safetensors"
    trained_on = {"private_without_privacy": start.describe_data(cfg.data, 1437).to_dict()}
    return pretrain(build_denoiser(cfg.model, cfg.diffusion), cfg, data, out, trained_on=trained_on, progress=False)


def test_a_start_trained_without_privacy_on_the_private_data_needs_a_flag_and_is_reported(tmp_path, capsys):
    config = write_config(tmp_path, TINY_RUN)
    init = ["--set", f"finetune.init={non_private_model(tmp_path, config)}"]
    run = tmp_path / "run"
    assert main(["train", config, "--run-dir", str(run), *init]) == 2
    assert "--allow-non-private-start" in error_lines(capsys)[0] and not run.exists()
    assert main(["train", config, "--run-dir", str(run), *init, "--set", "finetune.init_private_data=other"]) == 2
    assert "does not hold" in error_lines(capsys)[0]  # the header says it was this dataset
    assert main(["train", config, "--run-dir", str(run), *init, "--allow-non-private-start"]) == 0
    assert "NOT differentially private" in capsys.readouterr().out
    report = json.loads((run / "release/privacy.json").read_text())
    assert report["private"] is False and "without privacy" in report["warning"]
    assert [s["reads"] for s in report["stages"]] == ["private-without-privacy", "private"]


def test_a_dp_start_of_other_data_is_not_composed_but_the_same_data_cannot_be_called_other(tmp_path, capsys):
    config = write_config(tmp_path, TINY_RUN)
    first = tmp_path / "first"
    assert main(["train", config, "--run-dir", str(first), "--set", "data.subset=':700'"]) == 0
    common = ["--set", f"finetune.init={first}", "--set", "finetune.init_private_data=other"]
    capsys.readouterr()
    assert main(["train", config, "--dry-run", *common, "--set", "data.subset='600:'"]) == 2
    assert "its spend must be composed" in error_lines(capsys)[0]  # overlapping ranges of one dataset
    assert main(["train", config, "--dry-run", *common, "--set", "data.subset='700:'"]) == 0
    dry = json.loads(capsys.readouterr().out)
    assert [s["name"] for s in dry["privacy"]["stages"]] == ["start", "dpsgd"]
    assert "other private data" in dry["stages"]["start"]["note"]
    assert dry["privacy"]["planned_epsilon"] <= 5


# -- 3: public and private data compared by content -----------------------------------------------------------------
def write_folder(root: Path, images: np.ndarray, labels: np.ndarray) -> Path:
    for i, (image, label) in enumerate(zip(images, labels, strict=True)):
        folder = root / f"class{label}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image[0]).save(folder / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def digits_folder(tmp_path_factory):
    x, y = load_images(DataConfig(name="digits"), "train")
    return write_folder(tmp_path_factory.mktemp("faces") / "private", x[:300].numpy(), y[:300].numpy())


@pytest.mark.parametrize("written", ["symlink", "trailing-slash", "dot-dot"])
def test_one_image_folder_written_another_way_is_not_public(tmp_path, digits_folder, written):
    if written == "symlink":
        public = tmp_path / "link"
        public.symlink_to(digits_folder)
    elif written == "trailing-slash":
        public = Path(str(digits_folder) + "/")
    else:
        public = digits_folder / ".." / digits_folder.name
    folder = "{name: imagefolder, path: %s, resolution: 8, channels: 1}"
    cfg = load_config(write_config(tmp_path, TINY_RUN), [f"data={folder % digits_folder}",
                                                         f"pretrain.data={folder % public}", "pretrain.steps=1"])
    with pytest.raises(ConfigError, match="also in the private data"):
        start.start_model(cfg, tmp_path / "run", delta=1e-4, progress=False)


def test_the_same_images_at_another_size_are_found_and_different_images_are_not():
    x, _ = load_images(DataConfig(name="digits"), "train")
    private = resize(x[:400], 16)  # e.g. celeba32
    public = resize(resize(x[:400], 32), 16)  # e.g. celeba64 loaded at 32 px: resampled, not equal
    exact, near = shared_images(public, private)
    assert exact < 50 and exact + near >= 0.9 * len(public)
    assert shared_images(private[:200], private[200:]) == (0, 0)  # different digits
    assert shared_images(private[:5], private) == (5, 0)


def test_a_fixed_split_of_one_dataset_by_position_stays_allowed(tmp_path):
    cfg = load_config(write_config(tmp_path, TINY_RUN), ["data.subset='500:'", "pretrain.steps=1",
                                                         "pretrain.data={name: digits, subset: ':500'}"])
    model, _, public, begin = start.start_model(cfg, tmp_path / "run", delta=1e-4, progress=False)
    assert public is not None and public.subset == ":500" and begin.kind == "pretrained on the public data in this run"


# -- one plan: the composition against an independent one -----------------------------------------------------------
def test_the_composed_plan_is_dp_accountings_pld_composition_of_the_stages(tmp_path):
    cfg = load_config(write_config(tmp_path, DPSAD_TINY), ["privacy.accountant=pld"])
    run_plan = dpsad.plan(cfg, 1437)
    accountant = dp_accounting.pld.PLDAccountant(value_discretization_interval=1e-4)
    for stage in run_plan.stages:
        p = stage.plan
        assert p is not None
        event = dp_accounting.PoissonSampledDpEvent(p.expected_batch_size / p.dataset_size,
                                                    dp_accounting.GaussianDpEvent(p.noise_multiplier))
        accountant.compose(event, p.steps)
    independent = accountant.get_epsilon(run_plan.composed.delta)
    assert run_plan.planned_epsilon == pytest.approx(independent, rel=0.01)
    assert run_plan.planned_epsilon <= 5
    shares = [s["dp"]["epsilon_alone"] for s in run_plan.to_dict()["stages"]]
    assert all(0 < share < run_plan.planned_epsilon for share in shares)


def test_a_mechanism_is_one_poisson_sampled_gaussian_per_step():
    data = make_batch(40, torch.Generator().manual_seed(0))
    plan = PrivacyPlan(dataset_size=40, expected_batch_size=8, steps=3, max_grad_norm=1.0, noise_multiplier=1.3,
                       delta=1e-3)
    model = TinyDenoiser()
    mechanism = DPMechanism(model, NoisyRegressionLoss(2), ArrayDataset(data["x"], data["y"]), plan=plan,
                            optimizer=torch.optim.SGD(model.parameters(), lr=0.1), draw_seed=0, secret_seed=1)
    expected = dp_accounting.SelfComposedDpEvent(
        dp_accounting.PoissonSampledDpEvent(0.2, dp_accounting.GaussianDpEvent(1.3)), 3)
    assert mechanism.dp_event() == expected
    mechanism.step()
    assert mechanism.steps_taken == 1 and mechanism.event(mechanism.steps_taken).steps == 1
    tensors: dict = {}
    meta = mechanism.state_dict(tensors)
    assert meta["ledger"]["steps_taken"] == 1 and "secret.sampling" in tensors and "secret.noise" in tensors
    assert math.isfinite(plan.planned_epsilon)
