import json
import shutil

import pytest
import torch

diffusers = pytest.importorskip("diffusers")

from dpdiffusion.cli import main  # noqa: E402
from dpdiffusion.diffusion.generate import generate, load_release  # noqa: E402
from dpdiffusion.dpsgd.per_example import make_engine  # noqa: E402
from dpdiffusion.methods import dpdm  # noqa: E402
from dpdiffusion.nets.diffusers_unet import (  # noqa: E402
    DDPMPrecond,
    DiffusersError,
    is_diffusers_folder,
    load_diffusers_denoiser,
)
from dpdiffusion.runconfig import load_config  # noqa: E402


def tiny_unet(num_class_embeds=11):
    torch.manual_seed(0)
    return diffusers.UNet2DModel(
        sample_size=8, in_channels=1, out_channels=1, layers_per_block=1, block_out_channels=(8, 16),
        down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"),
        norm_num_groups=4, attention_head_dim=8, num_class_embeds=num_class_embeds,
    )


@pytest.fixture
def pipeline(tmp_path):
    """A pipeline-style folder: unet/ (safetensors) and scheduler/ (DDPM, linear betas)."""
    folder = tmp_path / "pretrained"
    tiny_unet().save_pretrained(folder / "unet", safe_serialization=True)
    diffusers.DDPMScheduler(num_train_timesteps=1000).save_pretrained(folder / "scheduler")
    return folder


def test_the_adapter_feeds_the_model_its_own_inputs(pipeline):
    model, spec = load_diffusers_denoiser(pipeline)
    unet = diffusers.UNet2DModel.from_pretrained(pipeline / "unet")
    alphas = diffusers.DDPMScheduler.from_pretrained(pipeline / "scheduler").alphas_cumprod
    t = torch.tensor([0, 17, 500, 999])
    sigma = (1 / alphas[t] - 1).sqrt()
    assert torch.allclose(model.timestep(sigma), t.float(), atol=1e-3)  # sigma -> the model's own timestep
    x, labels = torch.randn(4, 1, 8, 8), torch.tensor([0, 3, 10, 7])
    with torch.no_grad():
        denoised = model(x, sigma, labels)
        x_t = x * alphas[t].sqrt().view(-1, 1, 1, 1)  # the DDPM input: sqrt(alpha_bar) (x0 + sigma n)
        eps = unet(x_t, t, class_labels=labels).sample
    assert torch.allclose(denoised, x - sigma.view(-1, 1, 1, 1) * eps, atol=1e-5)
    assert spec["unet"]["num_class_embeds"] == 11 and len(spec["alphas_cumprod"]) == 1000


def test_an_ideal_noise_prediction_recovers_the_clean_image():
    class Oracle(torch.nn.Module):
        def forward(self, x_in, c_noise, labels=None):
            return self.noise

    alphas = diffusers.DDPMScheduler(num_train_timesteps=1000).alphas_cumprod
    oracle = Oracle()
    model = DDPMPrecond(oracle, alphas)
    clean, noise, sigma = torch.randn(3, 1, 4, 4), torch.randn(3, 1, 4, 4), torch.tensor([0.05, 1.0, 40.0])
    oracle.noise = noise
    assert torch.allclose(model(clean + sigma.view(-1, 1, 1, 1) * noise, sigma), clean, atol=1e-5)
    _, c_out, _, _ = model.coefficients(sigma)
    assert torch.allclose(model.loss_weight(sigma) * c_out**2, torch.ones(3))


@pytest.mark.filterwarnings("ignore:There is a performance drop")  # vmap over attention: slow, still exact
def test_per_example_gradients_of_the_adapted_model_agree_across_engines(pipeline):
    config = load_config("finetune-mnist-eps1-cpu", ["model.img_resolution=8", "model.attn_resolutions=[]",
                                                     "privacy.multiplicity=2"])
    model, _ = load_diffusers_denoiser(pipeline)
    _, loss = dpdm.build(config, model)
    batch = {"x": torch.randn(3, 1, 8, 8), "y": torch.tensor([1, 2, 3])}
    draws = loss.draw(batch, torch.Generator().manual_seed(0))
    layerwise, losses = make_engine("layerwise", model, loss).per_example_grads(batch, draws)
    model2, _ = load_diffusers_denoiser(pipeline)
    _, loss2 = dpdm.build(config, model2)
    reference, losses2 = make_engine("vmap", model2, loss2).per_example_grads(batch, draws)
    assert torch.allclose(losses, losses2, atol=1e-5)
    assert layerwise.keys() == reference.keys()
    for name in reference:
        assert torch.allclose(layerwise[name], reference[name], atol=1e-5, rtol=1e-4), name


def test_fine_tune_a_diffusers_model_and_sample_without_its_folder(pipeline, tmp_path):
    yaml = tmp_path / "ft.yaml"
    yaml.write_text(f"""
data: {{name: digits}}
finetune: {{init: "{pipeline}"}}
model: {{img_resolution: 8, in_channels: 1, num_classes: 10, attn_resolutions: []}}
diffusion: {{time_bands: [0, 200, 800, 1000], time_weights: [0.015, 0.785, 0.2]}}
privacy: {{target_epsilon: 5, delta: 1.0e-4, batch_size: 32, steps: 2}}
training: {{checkpoint_every: 2, log_every: 1}}
sampling: {{steps: 4}}
""")
    run = tmp_path / "run"
    assert main(["train", str(yaml), "--run-dir", str(run)]) == 0
    report = json.loads((run / "release/privacy.json").read_text())
    assert report["data"]["start"]["kind"] == "diffusers UNet2DModel"
    assert report["data"]["start"]["path"] == pipeline.name  # the owner's folders stay out of the release
    shutil.rmtree(pipeline)  # the release carries the architecture and the schedule
    model, config, _ = load_release(run)
    assert isinstance(model, DDPMPrecond)
    images, labels = generate(model, config, num=3, seed=1)
    assert images.shape == (3, 8, 8, 1) and ((labels >= 0) & (labels < 10)).all()


def test_folders_that_cannot_be_adapted_are_refused(pipeline, tmp_path):
    assert is_diffusers_folder(pipeline) and is_diffusers_folder(pipeline / "unet") and not is_diffusers_folder(tmp_path)
    pickled = tmp_path / "pickled"
    tiny_unet().save_pretrained(pickled, safe_serialization=False)  # diffusion_pytorch_model.bin only
    with pytest.raises(DiffusersError, match="only safetensors"):
        load_diffusers_denoiser(pickled)
    config = json.loads((pipeline / "scheduler/scheduler_config.json").read_text())
    (pipeline / "scheduler/scheduler_config.json").write_text(json.dumps({**config, "prediction_type": "v_prediction"}))
    with pytest.raises(DiffusersError, match="only epsilon-prediction"):
        load_diffusers_denoiser(pipeline)


def test_a_run_whose_shape_or_labels_differ_from_the_model_is_refused(pipeline, tmp_path, capsys):
    yaml = tmp_path / "ft.yaml"
    yaml.write_text(f"data: {{name: digits}}\nfinetune: {{init: '{pipeline}'}}\n"
                    "model: {img_resolution: 16, num_classes: 10, attn_resolutions: []}\nprivacy: {steps: 2}\n")
    assert main(["train", str(yaml), "--dry-run"]) == 2
    assert "the images are 1x8x8" in capsys.readouterr().err  # the data do not fit the configured network
    assert main(["train", str(yaml), "--dry-run", "--set", "data.resolution=16"]) == 2
    assert "1-channel 8x8 model" in capsys.readouterr().err  # the network does not fit the start checkpoint
    assert main(["train", str(yaml), "--dry-run", "--set", "model.img_resolution=8", "--set", "model.num_classes=12"]) == 2
    assert "has 11 class embeddings" in capsys.readouterr().err
    assert main(["train", str(yaml), "--dry-run", "--set", "model.img_resolution=8"]) == 0
    assert json.loads(capsys.readouterr().out)["stages"]["start"]["kind"] == "diffusers UNet2DModel"
