"""DP warm-up as stages of one run: central images (DP, composed into the plan), warm-up training on the release
only, then DP-SGD; reuse on resume only as configured; the warm-up stage never reads the private data."""

import json

import pytest
import torch
from safetensors.torch import save_file

from dpdiffusion.cli import main
from dpdiffusion.data.dataset import ArrayDataset, DeclaredSize
from dpdiffusion.dpsgd.secret_random import SecretStream
from dpdiffusion.run_folder import RunFolder
from dpdiffusion.stages import Stage, StageRecords, file_sha256
from dpdiffusion.runconfig import load_config
from dpdiffusion.warmup import stages as warmup
from dpdiffusion.warmup.central_images import central_images_plan, release_central_images
from tests.tiny import TINY_RUN, write_config

WARM = TINY_RUN + "warmup: {central_rounds: 3, central_batch_size: 300, central_noise_ratio: 2.0, steps: 3, batch_size: 16}\n"


def released_file(tmp_path):
    """A central-images release of 50 random 8x8 images in 10 classes, saved as a run saves it; and its plan."""
    data = ArrayDataset(torch.rand(50, 1, 8, 8) * 2 - 1, torch.arange(50) % 10)
    plan = central_images_plan(dataset_size=50, batch_size=20, rounds=2, noise_multiplier=1.0, delta=1e-3,
                               image_shape=(1, 8, 8), downsample=2)
    released = release_central_images(DeclaredSize(data, 50), plan, num_classes=10, downsample=2,
                                      sampling=SecretStream.fresh(b"s"), noise=SecretStream.fresh(b"n"))
    path = tmp_path / "central.safetensors"
    save_file({"images": released.images}, str(path),
              metadata={"dpdiffusion": json.dumps({"downsample": 2, "plan": plan.to_dict()})})
    return path, plan


def test_a_warm_up_run_composes_its_stages_in_one_plan_and_reports_each(tmp_path, capsys):
    config, run = write_config(tmp_path, WARM), tmp_path / "run"
    assert main(["train", config, "--dry-run"]) == 0
    dry = json.loads(capsys.readouterr().out)
    assert [s["name"] for s in dry["privacy"]["stages"]] == ["central images", "warm-up training", "dpsgd"]
    assert main(["train", config, "--run-dir", str(run)]) == 0
    report = json.loads((run / "release" / "privacy.json").read_text())
    stages = {s["name"]: s for s in report["stages"]}
    assert stages["central images"]["reads"] == "private" and stages["warm-up training"]["reads"] == "release"
    central, dpsgd = report["plan"]["parts"]["central images"], report["plan"]["parts"]["dpsgd"]
    assert central["noise_multiplier"] == pytest.approx(2.0 * dpsgd["noise_multiplier"])
    assert central["max_grad_norm"] == 4.0 and central["steps"] == 3  # sqrt(1 x 4 x 4) at the pooled size
    assert 0 < stages["central images"]["dp"]["epsilon_alone"] < report["spent"]["epsilon"] <= 5.0
    assert report["spent"]["epsilon"] == pytest.approx(5.0, rel=0.01)  # calibrated together to the target
    assert report["method"] == "DP warm-up + DPDM" and report["data"]["start"]["kind"].startswith("warm-up")
    assert (run / "release" / "central_images.safetensors").is_file() and (run / "warmup" / "model.safetensors").is_file()
    records = json.loads((run / "owner" / "stages.json").read_text())  # each stage's wall time, owner-side
    assert records["central images"]["seconds"] > 0 and records["warm-up training"]["seconds"] > 0
    assert "seconds" not in (run / "release" / "privacy.json").read_text()

    # resume reuses the release and refuses other settings (the same run, to keep the suite short)
    released = (run / "release" / "central_images.safetensors").read_bytes()
    assert main(["train", config, "--run-dir", str(run), "--resume"]) == 0
    assert (run / "release" / "central_images.safetensors").read_bytes() == released  # never drawn twice
    capsys.readouterr()
    assert main(["train", config, "--run-dir", str(run), "--resume", "--set", "warmup.central_rounds=4"]) != 0
    err = capsys.readouterr().err
    assert "central images" in err
    assert main(["train", config, "--run-dir", str(run)]) != 0  # a new run over it is refused
    # its warm-up model is no public start: trained on DP releases whose spend its file does not carry
    capsys.readouterr()
    assert main(["train", config, "--dry-run", "--set", "warmup.central_rounds=0",
                 "--set", f"finetune.init={run / 'warmup' / 'model.safetensors'}"]) != 0
    assert "was trained on release" in capsys.readouterr().err


def test_the_warm_up_stage_reads_only_the_release(tmp_path):
    """``warm_up`` gets the released file: with the private data made unreachable (an image folder that does not
    exist), it trains from the release alone."""
    cfg = load_config(write_config(tmp_path, WARM), ["data.name=imagefolder", f"data.path={tmp_path / 'gone'}"])
    path, plan = released_file(tmp_path)
    stage = warmup.stages(cfg, plan)[1]
    out = warmup.warm_up(cfg, path, stage, RunFolder(tmp_path / "run"), progress=False)
    assert out.is_file() and not (tmp_path / "gone").exists()


def test_warm_up_settings_are_checked(tmp_path, capsys):
    config = write_config(tmp_path, WARM)
    assert main(["train", config, "--dry-run", "--set", "warmup.steps=0"]) != 0
    assert "warmup.steps" in capsys.readouterr().err
    assert main(["train", config, "--dry-run", "--set", "pretrain.data={name: digits}"]) != 0
    assert "random initialisation" in capsys.readouterr().err
    for bad in ("0", "-2"):  # a negative factor once gave the bound of a pooled size to unpooled images
        assert main(["train", config, "--dry-run", "--set", f"warmup.downsample={bad}"]) != 0
        assert "warmup.downsample must be an integer >= 1" in capsys.readouterr().err
    assert main(["train", config, "--dry-run", "--set", "method=dpsad"]) != 0  # its teacher would ignore it or fail
    assert "a start for method dpdm" in capsys.readouterr().err


def test_a_warm_up_run_with_a_declared_size_plans_its_releases_for_that_size(tmp_path):
    """With ``privacy.public_dataset_size`` the central images' plan is for N^, and the release divides by the
    expected count of N^'s rate, as DP-SGD's; the true N appears in no released file."""
    config, run = write_config(tmp_path, WARM), tmp_path / "run"
    assert main(["train", config, "--run-dir", str(run), "--set", "privacy.public_dataset_size=1500"]) == 0
    report = json.loads((run / "release" / "privacy.json").read_text())
    assert report["plan"]["parts"]["central images"]["dataset_size"] == 1500
    assert report["plan"]["parts"]["dpsgd"]["dataset_size"] == 1500
    assert all(b"1437" not in f.read_bytes() for f in (run / "release").rglob("*") if f.is_file())


def test_a_release_drawn_before_and_left_out_of_the_plan_now_is_refused(tmp_path):
    """A resumed run whose settings drop a stage that an earlier attempt already drew (its file, or its record)
    would spend it unreported: refused before anything else is drawn; a drawn stage in the plan must match it."""
    from dpdiffusion.stages import StageMismatchError

    cfg = load_config(write_config(tmp_path, WARM))
    _, central = released_file(tmp_path)
    planned = tuple(warmup.stages(cfg, central))  # central images and warm-up training: no frequency features
    run = RunFolder(tmp_path / "run")
    warmup.check_drawn(run.root, planned)  # an empty folder: nothing drawn
    run.release.mkdir(parents=True)
    drawn = run.release / "frequency_features.safetensors"
    drawn.write_bytes(b"an earlier attempt's release")
    with pytest.raises(StageMismatchError, match="already drew frequency_features.safetensors"):
        warmup.check_drawn(run.root, planned)
    StageRecords(run).finished(Stage(warmup.FREQUENCY, "private", central), drawn)
    drawn.unlink()
    with pytest.raises(StageMismatchError, match="already drew frequency_features.safetensors"):
        warmup.check_drawn(run.root, planned)  # recorded, though its file is gone
    run.stages.unlink()
    (run.release / "central_images.safetensors").write_bytes(b"drawn with settings nobody recorded")
    with pytest.raises(StageMismatchError, match="no record of how it was made"):
        warmup.check_drawn(run.root, planned)  # a stage in the plan: reused only as recorded


def test_frequency_features_are_a_third_dp_stage_and_feed_the_warm_up_set(tmp_path):
    extra = ["--set", "warmup.frequency_features=32", "--set", "warmup.frequency_noise_ratio=3.0",
             "--set", "warmup.generator_steps=5", "--set", "warmup.generated_per_class=4"]
    config, run = write_config(tmp_path, WARM), tmp_path / "run"
    assert main(["train", config, "--run-dir", str(run), *extra]) == 0
    report = json.loads((run / "release" / "privacy.json").read_text())
    assert [s["name"] for s in report["stages"]] == ["central images", "frequency features", "warm-up training",
                                                     "dpsgd"]
    parts = report["plan"]["parts"]
    assert parts["frequency features"]["noise_multiplier"] == pytest.approx(3.0 * parts["dpsgd"]["noise_multiplier"])
    assert parts["frequency features"]["max_grad_norm"] == 1.0 and parts["frequency features"]["sample_rate"] == 1.0
    assert report["spent"]["epsilon"] == pytest.approx(5.0, rel=0.01)
    from safetensors import safe_open

    with safe_open(str(run / "warmup" / "model.safetensors"), "pt") as f:
        header = json.loads(f.metadata()["dpdiffusion"])
    assert set(header["trained_on"]["release"]) == {"central_images_sha256", "frequency_features_sha256"}
    assert (run / "release" / "frequency_features.safetensors").is_file()
    note = report["data"]["start"]["note"]  # the start names both releases it was warmed on
    assert f"central images sha256 {file_sha256(run / 'release' / 'central_images.safetensors')}" in note
    assert f"frequency features sha256 {file_sha256(run / 'release' / 'frequency_features.safetensors')}" in note


def test_warm_up_augments_its_few_images_with_fixed_translations(tmp_path, monkeypatch):
    """``warmup.augment_translate`` reaches the warm-up's loss (each example a shifted copy, reflect padding), is one
    of the warm-up stage's settings (a change is not reused), and a negative shift is refused."""
    from dpdiffusion.methods import pretrain as pretrain_module

    cfg = load_config(write_config(tmp_path, WARM), ["warmup.augment_translate=2"])
    seen = []
    real = pretrain_module.DenoisingLoss

    def spy(*args, **kwargs):
        seen.append(kwargs["augment"])
        return real(*args, **kwargs)

    monkeypatch.setattr(pretrain_module, "DenoisingLoss", spy)
    path, plan = released_file(tmp_path)
    stage = warmup.stages(cfg, plan)[1]
    assert stage.settings["warmup.augment_translate"] == 2 and stage.settings["warmup.augment_flip"] is False
    warmup.warm_up(cfg, path, stage, RunFolder(tmp_path / "run"), progress=False)
    assert seen and seen[0].crop_padding == 2 and not seen[0].flip

    loss = real(warmup.build_denoiser(cfg.model, cfg.diffusion), augment=seen[0])
    x = torch.linspace(-1, 1, 64).view(1, 1, 8, 8).repeat(32, 1, 1, 1)
    draws = loss.draw({"x": x, "y": torch.zeros(32, dtype=torch.long)}, torch.Generator().manual_seed(0))
    shifted = draws["clean"][:, 0]
    assert not torch.equal(shifted, x) and shifted.shape == x.shape
    assert main(["train", write_config(tmp_path, WARM), "--dry-run", "--set", "warmup.augment_translate=-1"]) != 0
