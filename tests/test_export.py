"""``dpdiffusion export --format diffusers``: the folder loads in diffusers, its EDM scheduler with diffusers' own
sampling loop reproduces our samplers for the same noise, it carries no private path, and what cannot be expressed
in diffusers is refused in one line with nothing written."""

import json

import pytest
import torch
import yaml

diffusers = pytest.importorskip("diffusers")

from dpdiffusion.cli import main  # noqa: E402
from dpdiffusion.data.datasets import load_images  # noqa: E402
from dpdiffusion.diffusion.generate import load_release  # noqa: E402
from dpdiffusion.diffusion.samplers import SAMPLERS  # noqa: E402
from dpdiffusion.diffusion.schedules import karras_sigmas  # noqa: E402
from dpdiffusion.export import ddpm_scheduler  # noqa: E402
from dpdiffusion.runconfig import DataConfig  # noqa: E402
from tests.test_release import write_folder  # noqa: E402
from tests.tiny import TINY_RUN, write_config  # noqa: E402

UNET2D = TINY_RUN.replace(
    "model: {img_resolution: 8, model_channels: 8, channel_mult: [1], num_blocks: 1, attn_resolutions: [], "
    "num_classes: 10}",
    "model: {img_resolution: 8, model_channels: 8, channel_mult: [1, 2], num_blocks: 1, attn_resolutions: [4], "
    "num_classes: 10, architecture: unet2d}")


@pytest.fixture(scope="module")
def unet2d_run(tmp_path_factory):
    """A tiny UNet2DModel run on an image folder whose path names it as private, exported."""
    root = tmp_path_factory.mktemp("owner")
    x, y = load_images(DataConfig(name="digits"), "train")
    private = root / "secret-cohort-oncology"
    write_folder(private / "train", x[:200], y[:200])
    data = f"data: {{name: imagefolder, path: {private / 'train'}, resolution: 8, channels: 1}}"
    assert "architecture: unet2d" in UNET2D
    config = write_config(root, UNET2D.replace("data: {name: digits}", data))
    run, out = root / "run", root / "exported"
    assert main(["train", config, "--run-dir", str(run)]) == 0
    assert main(["export", str(run), "--format", "diffusers", "--out", str(out), "--license", "cc-by-4.0"]) == 0
    return run, out, private


def diffusers_loop(folder, scheduler_class, noise, labels, steps):
    """Sampling as a diffusers user would: the exported UNet and scheduler, no dpdiffusion code."""
    unet = diffusers.UNet2DModel.from_pretrained(str(folder), subfolder="unet").eval()
    scheduler = scheduler_class.from_pretrained(str(folder), subfolder="scheduler")
    scheduler.set_timesteps(steps)
    x = noise * scheduler.sigmas[0]
    for t in scheduler.timesteps:
        with torch.no_grad():
            out = unet(scheduler.scale_model_input(x, t), t, class_labels=labels).sample
        x = scheduler.step(out, t, x).prev_sample
    return x


@pytest.mark.parametrize("ours, theirs", [("ddim", "EDMEulerScheduler"),
                                          ("dpmpp2m", "EDMDPMSolverMultistepScheduler")])
@pytest.mark.parametrize("steps", [4, 12])
def test_diffusers_own_edm_schedulers_reproduce_our_samples(unet2d_run, ours, theirs, steps):
    run, out, _ = unet2d_run
    model, config, _ = load_release(run)
    noise = torch.randn(5, 1, 8, 8, generator=torch.Generator().manual_seed(steps))
    labels = torch.tensor([0, 3, 5, 9, 10])  # 10: "no label"
    sigmas = karras_sigmas(steps, sigma_min=config.sampling.sigma_min, sigma_max=config.sampling.sigma_max,
                           rho=config.sampling.rho)
    expected = SAMPLERS[ours](lambda x, sigma: model(x, sigma, labels), noise * sigmas[0], sigmas)
    got = diffusers_loop(out, getattr(diffusers, theirs), noise, labels, steps)
    assert expected.abs().max() > 0.1  # a trained network's samples, not zeros
    assert torch.allclose(got, expected, atol=1e-4), float((got - expected).abs().max())


def test_the_exported_folder_holds_the_release_and_a_model_card(unet2d_run):
    run, out, _ = unet2d_run
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "privacy.json", "scheduler", "unet"]
    assert json.loads((out / "privacy.json").read_text()) == json.loads((run / "release/privacy.json").read_text())
    config = json.loads((out / "unet/config.json").read_text())
    assert config["_class_name"] == "UNet2DModel" and config["num_class_embeds"] == 11
    assert (out / "unet/diffusion_pytorch_model.safetensors").is_file()
    assert not list(out.rglob("*.bin")) and not list(out.rglob("*.pt"))  # nothing that unpickles
    card = (out / "README.md").read_text()
    front = yaml.safe_load(card.split("---")[1])
    assert front["library_name"] == "diffusers" and front["license"] == "cc-by-4.0"
    assert "differential-privacy" in front["tags"]
    epsilon = json.loads((out / "privacy.json").read_text())["spent"]["epsilon"]
    assert f"{epsilon:.4g}" in card and "add/remove-one" in card and "EDMEulerScheduler" in card


def test_the_export_names_no_private_path(unet2d_run):
    _, out, private = unet2d_run
    for path in out.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            assert b"secret-cohort-oncology" not in data and str(private).encode() not in data, path


def test_our_own_unet_is_refused_in_one_line_and_nothing_is_written(tmp_path, capsys):
    run, out = tmp_path / "run", tmp_path / "out"
    assert main(["train", write_config(tmp_path, TINY_RUN), "--run-dir", str(run)]) == 0
    capsys.readouterr()
    assert main(["export", str(run), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "architecture: unet2d" in err[0]
    assert not out.exists() and not list(tmp_path.glob(".out*"))


def test_an_existing_folder_is_not_overwritten(unet2d_run, tmp_path, capsys):
    run, _, _ = unet2d_run
    out = tmp_path / "taken"
    out.mkdir()
    (out / "mine.txt").write_text("keep")
    assert main(["export", str(run), "--out", str(out)]) == 2
    assert "exists" in capsys.readouterr().err and (out / "mine.txt").read_text() == "keep"
    assert main(["export", str(tmp_path / "no-run"), "--out", str(tmp_path / "x")]) == 2


def test_a_fine_tuned_models_schedule_round_trips_through_ddpm_betas():
    reference = diffusers.DDPMScheduler(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02,
                                        beta_schedule="scaled_linear")
    rebuilt = ddpm_scheduler(reference.alphas_cumprod)
    assert torch.allclose(rebuilt.alphas_cumprod.double(), reference.alphas_cumprod.double(), rtol=1e-5)


def test_an_export_used_as_a_start_brings_its_spend_with_it(unet2d_run, tmp_path, capsys):
    """The exported folder carries the release's privacy report: a run on the same data that starts from it
    composes that spend (at the same target nothing is left), as it would from the release itself; a folder
    without a report is taken as public."""
    run, out, _ = unet2d_run
    config = json.loads((run / "config.json").read_text())
    path = tmp_path / "again.yaml"
    path.write_text(json.dumps({**config, "privacy": {**config["privacy"], "noise_multiplier": None}}))
    capsys.readouterr()
    assert main(["train", str(path), "--dry-run", "--set", f"finetune.init={out}"]) == 2
    assert "already spent epsilon" in capsys.readouterr().err
    assert main(["train", str(path), "--dry-run", "--set", f"finetune.init={out}",
                 "--set", "privacy.target_epsilon=10", "--set", "privacy.steps=1"]) == 0
    start = json.loads(capsys.readouterr().out)["stages"]["start"]
    assert start["kind"] == "diffusers UNet2DModel" and start["composed_into_this_run"] == ["start.dpsgd"]
