import json

import pytest
import torch
from safetensors.torch import load_file

from dpdiffusion.cli import main
from dpdiffusion.diffusion.denoiser import build_denoiser
from dpdiffusion.methods import dpdm, pretrain, start
from dpdiffusion.runconfig import ConfigError, load_config
from dpdiffusion.stages import file_sha256
from tests.tiny import write_config

# Public = the first 500 of the digits training split, private = the rest: a fixed split by position.
TINY = """
data: {name: digits, subset: "500:"}
pretrain: {data: {name: digits, subset: ":500"}, steps: 3, batch_size: 32}
model: {img_resolution: 8, model_channels: 8, channel_mult: [1], num_blocks: 1, attn_resolutions: [], num_classes: 10}
diffusion: {parameterisation: vp, time_bands: [0, 200, 800, 1000], time_weights: [0.015, 0.785, 0.2], augment_translate: 1}
privacy: {target_epsilon: 5, delta: 1.0e-4, batch_size: 64, steps: 2, multiplicity: 2}
training: {checkpoint_every: 2, log_every: 1}
sampling: {steps: 4}
"""


@pytest.fixture
def config(tmp_path):
    return write_config(tmp_path, TINY)


def tensors_equal(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_pretraining_then_dp_fine_tuning_reports_public_private_and_start(config, tmp_path):
    run = tmp_path / "run"
    # learning rate 0 in the DP stage: the release must then be exactly the public model it started from
    assert main(["train", config, "--run-dir", str(run), "--set", "training.lr=0.0"]) == 0
    public_model = run / "public" / "model.safetensors"
    assert tensors_equal(load_file(public_model), load_file(run / "release" / "model.safetensors"))
    report = json.loads((run / "release" / "privacy.json").read_text())
    data = report["data"]
    assert data["private"] == {"dataset": "digits", "split": "train", "subset": "500:", "size": 937}
    assert data["public"] == {"dataset": "digits", "split": "train", "subset": ":500", "size": 500}
    assert data["start"]["kind"] == "pretrained on the public data in this run"
    assert data["start"]["sha256"] == file_sha256(public_model) and data["start"]["steps"] == 3
    assert report["plan"]["dataset_size"] == 937 and report["spent"]["steps"] == 2
    log = [json.loads(line) for line in (run / "public" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2, 3]  # log_every 1


def test_pretraining_changes_the_model_and_resume_reuses_it(config, tmp_path, monkeypatch):
    cfg = load_config(config)
    torch.manual_seed(0)
    model, _, public, _ = start.start_model(cfg, tmp_path / "run", delta=1e-4, progress=False)
    torch.manual_seed(0)
    fresh = build_denoiser(cfg.model, cfg.diffusion)
    assert not tensors_equal(model.state_dict(), fresh.state_dict())
    assert public is not None and public.size == 500

    def no_pretraining(*args, **kwargs):
        raise AssertionError("pretrained again")

    monkeypatch.setattr(start, "pretrain", no_pretraining)
    again, *_ = start.start_model(cfg, tmp_path / "run", delta=1e-4, resume=True, progress=False)
    assert tensors_equal(again.state_dict(), model.state_dict())
    with pytest.raises(FileExistsError, match="already holds a run"):
        start.start_model(cfg, tmp_path / "run", delta=1e-4, progress=False)


def test_start_from_a_release_names_its_spend_and_checks_the_architecture(config, tmp_path, capsys):
    first = tmp_path / "first"
    assert main(["train", config, "--run-dir", str(first), "--set", "pretrain.data=null"]) == 0
    first_report = json.loads((first / "release" / "privacy.json").read_text())
    assert first_report["data"]["public"] is None
    assert first_report["data"]["start"]["kind"] == "random initialisation"
    second = tmp_path / "second"
    # a DP start on the same private data: its spend is composed in, so the same target leaves nothing
    capsys.readouterr()
    assert main(["train", config, "--run-dir", str(second), "--set", "pretrain.data=null",
                 "--set", f"finetune.init={first}"]) == 2
    assert "already spent epsilon" in capsys.readouterr().err and not second.exists()
    assert main(["train", config, "--run-dir", str(second), "--set", "pretrain.data=null", "--set",
                 "privacy.target_epsilon=10", "--set", f"finetune.init={first}", "--set", "training.lr=0.0"]) == 0
    assert tensors_equal(load_file(first / "release/model.safetensors"), load_file(second / "release/model.safetensors"))
    report = json.loads((second / "release" / "privacy.json").read_text())
    start = report["data"]["start"]
    assert start["kind"] == "dpdiffusion model" and start["trained_on"]["private"]["subset"] == "500:"
    assert start["trained_on"]["epsilon"] == pytest.approx(first_report["spent"]["epsilon"])
    assert start["composed_into_this_run"] == ["start.dpsgd"]
    stages = {s["name"]: s for s in report["stages"]}
    assert stages["start.dpsgd"]["dp"]["spent_before_this_run"] is True
    assert stages["start.dpsgd"]["dp"]["noise_multiplier"] == first_report["plan"]["noise_multiplier"]
    assert 5 < report["spent"]["epsilon"] <= 10  # the total of both runs, composed
    capsys.readouterr()
    assert main(["train", config, "--run-dir", str(tmp_path / "third"), "--set", "pretrain.data=null",
                 "--set", f"finetune.init={first}", "--set", "model.model_channels=16"]) == 2
    assert "model.model_channels=8" in capsys.readouterr().err


def test_a_start_swapped_before_resume_is_refused(config, tmp_path, capsys):
    """Two DP releases with the same plan (another seed): a run started from one cannot resume from the other,
    though its plan would be the same -- its weights carry the first one's training."""
    import shutil

    first, other, run = tmp_path / "first", tmp_path / "other", tmp_path / "run"
    for folder, seed in ((first, 0), (other, 1)):
        assert main(["train", config, "--run-dir", str(folder), "--set", "pretrain.data=null",
                     "--set", f"training.seed={seed}"]) == 0
    start_file = tmp_path / "start.safetensors"
    shutil.copy(first / "release" / "model.safetensors", start_file)
    common = ["--run-dir", str(run), "--set", "pretrain.data=null", "--set", f"finetune.init={start_file}",
              "--set", "privacy.target_epsilon=10", "--set", "privacy.steps=4"]
    assert main(["train", config, *common]) == 0
    shutil.copy(other / "release" / "model.safetensors", start_file)
    capsys.readouterr()
    assert main(["train", config, *common, "--resume"]) == 2
    assert "another start than the run began with" in capsys.readouterr().err
    shutil.copy(first / "release" / "model.safetensors", start_file)  # restored: it resumes
    assert main(["train", config, *common, "--resume"]) == 0


def test_frozen_parameters_stay_fixed_and_get_no_per_example_gradients(config, tmp_path):
    run = tmp_path / "run"
    frozen = '["net.map*", "net.conv_in.*"]'
    assert main(["train", config, "--run-dir", str(run), "--set", f"finetune.frozen={frozen}"]) == 0
    public, released = load_file(run / "public/model.safetensors"), load_file(run / "release/model.safetensors")
    fixed = [k for k in public if k.startswith(("net.map", "net.conv_in."))]
    assert fixed and all(torch.equal(public[k], released[k]) for k in fixed)
    assert any(not torch.equal(public[k], released[k]) for k in public if k not in fixed)

    cfg = load_config(config, ["pretrain.data=null", f"finetune.frozen={frozen}"])
    model, loss = finetune_model_and_loss(cfg)
    from dpdiffusion.dpsgd.per_example import make_engine

    batch = {"x": torch.randn(3, 1, 8, 8), "y": torch.tensor([1, 2, 3])}
    grads, _ = make_engine("layerwise", model, loss).per_example_grads(batch, loss.draw(batch, torch.Generator()))
    assert set(grads) == {n for n, p in model.named_parameters() if p.requires_grad}
    assert not any(n.startswith(("net.map", "net.conv_in.")) for n in grads)


def finetune_model_and_loss(cfg):

    model = build_denoiser(cfg.model, cfg.diffusion)
    start.apply_freezing(model, cfg)
    return dpdm.build(cfg, model)


@pytest.mark.parametrize("override, message", [
    ('finetune.frozen=["net.nothing*"]', "matches no parameter"),
    ('finetune.trainable=["net.nothing*"]', "matches no parameter"),
    ('finetune.frozen=["*"]', "no parameter to train"),
])
def test_freezing_patterns_are_checked(config, override, message):
    cfg = load_config(config, [override])
    with pytest.raises(ConfigError, match=message):
        start.apply_freezing(build_denoiser(cfg.model, cfg.diffusion), cfg)


def test_pretraining_and_an_init_checkpoint_exclude_each_other(config, tmp_path, capsys):
    assert main(["train", config, "--dry-run", "--set", f"finetune.init={tmp_path}"]) == 2
    assert "not both" in capsys.readouterr().err


def test_public_labels_outside_the_private_classes_need_pretraining_without_labels(config):
    cfg = load_config(config, ["model.num_classes=5"])
    with pytest.raises(ConfigError, match="pretrain.labels: false"):
        pretrain.check_public_labels(cfg, torch.tensor([0, 9]))
    pretrain.check_public_labels(load_config(config, ["model.num_classes=5", "pretrain.labels=false"]),
                                 torch.tensor([0, 9]))


def test_dry_run_shows_the_public_and_the_private_dataset(config, capsys):
    assert main(["train", config, "--dry-run"]) == 0
    stages = json.loads(capsys.readouterr().out)["stages"]
    assert stages["public"]["subset"] == ":500" and stages["public"]["size"] == 500
    assert stages["private"]["subset"] == "500:" and stages["private"]["size"] == 937
    assert stages["start"]["kind"] == "pretrained on the public data in this run"
    assert stages["trainable_parameters"] > 0


@pytest.mark.parametrize("public, private", [(":500", "400:"), (None, "500:"), (":500", None), ("-100:", "1000:")])
def test_public_pretraining_may_not_see_private_images(config, public, private, tmp_path, capsys):
    overrides = [f"pretrain.data.subset={repr(public) if public else 'null'}",
                 f"data.subset={repr(private) if private else 'null'}"]
    cfg = load_config(config, overrides)
    with pytest.raises(ConfigError, match="share .* training images"):
        start.start_model(cfg, tmp_path / "run", delta=1e-4, progress=False)
    assert main(["train", config, "--dry-run", *[a for o in overrides for a in ("--set", o)]]) == 2
    assert "public pretraining would see private data" in capsys.readouterr().err
