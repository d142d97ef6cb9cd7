import os

import pytest

from dpdiffusion.data.datasets import DATASETS
from dpdiffusion.nets.unet import count_parameters
from dpdiffusion.runconfig import load_config, preset_names, resolve_plan


@pytest.mark.parametrize("name", preset_names())
def test_every_preset_parses_with_a_description(name):
    config = load_config(name)
    assert config.name == name and config.description


@pytest.mark.parametrize("eps", [1, 10])
def test_mnist_presets_are_dpdm_settings(eps):
    config = load_config(f"mnist-eps{eps}")
    p = config.privacy
    assert (p.target_epsilon, p.delta, p.batch_size, p.epochs, p.multiplicity, p.max_grad_norm) == (eps, 1e-5, 4096, 300, 32, 1.0)
    assert config.diffusion.sigma_data == pytest.approx(3 ** -0.5)
    assert (config.model.model_channels, config.model.channel_mult, config.model.num_blocks,
            config.model.attn_resolutions) == (32, (1, 2, 2), 2, (7,))
    plan = resolve_plan(p, 60000)
    assert plan.steps == 4395 and plan.planned_epsilon <= eps


@pytest.mark.skipif(not os.environ.get("DPDIFFUSION_DATA_DIR"), reason="needs a local copy of MNIST")
def test_mnist_dry_run_reads_the_local_copy(capsys):
    import json

    from dpdiffusion.cli import main

    assert main(["train", "mnist-eps10", "--dry-run"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["dataset"]["size"] == 60000 and out["privacy"]["noise_multiplier"] == pytest.approx(2.388, rel=0.01)


# The paper's settings (DPDM, Table and reference configs): (delta, B, epochs, K, parameterisation, classes)
PAPER = {
    "mnist-eps0.2": (0.2, 1e-5, 4096, 300, 32, "v", 10),
    "fmnist-eps0.2": (0.2, 1e-5, 4096, 300, 32, "v", 10),
    "fmnist-eps1": (1, 1e-5, 4096, 300, 32, "edm", 10),
    "fmnist-eps10": (10, 1e-5, 4096, 300, 32, "edm", 10),
    "celeba32-eps1": (1, 1e-6, 2048, 300, 32, "edm", 0),
    "celeba32-eps10": (10, 1e-6, 2048, 300, 32, "edm", 0),
    "celeba64-eps1": (1, 1e-6, 2048, 300, 8, "edm", 0),
    "celeba64-eps10": (10, 1e-6, 2048, 300, 8, "edm", 0),
    "cifar10-eps10": (10, 1e-5, 2048, 500, 8, "edm", 10),
}


@pytest.mark.parametrize("name", sorted(PAPER))
def test_paper_presets(name):
    config = load_config(name)
    p = config.privacy
    eps, delta, batch, epochs, k, parameterisation, classes = PAPER[name]
    assert (p.target_epsilon, p.delta, p.batch_size, p.epochs, p.multiplicity, p.max_grad_norm) == (eps, delta, batch, epochs, k, 1.0)
    assert config.diffusion.parameterisation == parameterisation and config.model.num_classes == classes
    assert config.data.name in DATASETS


@pytest.mark.parametrize("name", preset_names())
def test_every_preset_names_a_known_dataset_and_builds_its_denoiser(name):
    from dpdiffusion.diffusion.denoiser import build_denoiser

    config = load_config(name)
    assert config.data.name in DATASETS
    model = build_denoiser(config.model, config.diffusion)
    if name.startswith(("mnist", "fmnist")) and not name.endswith("-cpu"):
        assert abs(count_parameters(model) - 1.75e6) < 0.02e6  # DPDM's MNIST network


def test_epsilon_0_2_presets_really_target_0_2():
    plan = resolve_plan(load_config("mnist-eps0.2").privacy, 60000)
    assert plan.planned_epsilon <= 0.2 and plan.noise_multiplier > 10


def test_finetune_mnist_cpu_holds_out_10k_public_images_from_the_private_50k():
    from dpdiffusion.data.datasets import subset_range

    config = load_config("finetune-mnist-eps1-cpu")
    assert config.name.startswith("finetune-") and config.privacy.target_epsilon == 1
    assert (config.data.name, config.pretrain.data.name) == ("mnist", "mnist")
    public, private = subset_range(config.pretrain.data.subset, 60000), subset_range(config.data.subset, 60000)
    assert len(public) == 10000 and len(private) == 50000 and not set(public) & set(private)


def test_finetune_digits_to_mnist_pretrains_on_upscaled_digits():
    config = load_config("finetune-digits-to-mnist-eps1-cpu")
    assert (config.pretrain.data.name, config.pretrain.data.resolution) == ("digits", 28)
    assert config.data.name == "mnist" and config.data.subset is None and config.privacy.target_epsilon == 1


@pytest.mark.parametrize("name, eps", [("finetune-cifar10-eps1", 1), ("finetune-cifar10-eps5", 5),
                                       ("finetune-cifar10-eps10", 10), ("finetune-camelyon17-eps10", 10)])
def test_finetune_gpu_presets_are_the_papers_setup(name, eps):
    from dpdiffusion.diffusion.denoiser import build_denoiser

    config = load_config(name)
    assert config.privacy.target_epsilon == eps and config.pretrain.data.name == "imagenet32"
    assert not config.pretrain.labels  # ImageNet's classes are not the private data's
    assert config.diffusion.parameterisation == "vp" and config.diffusion.time_weights == (0.015, 0.785, 0.2)
    assert config.diffusion.augment_flip and config.diffusion.augment_translate == 4
    assert 75e6 < count_parameters(build_denoiser(config.model, config.diffusion)) < 90e6  # "~80M parameters"


@pytest.mark.parametrize("dataset", ["mnist", "fmnist", "celeba32", "celeba64"])
@pytest.mark.parametrize("eps", [1, 10])
def test_dpsad_presets_are_end_to_end_private(dataset, eps):
    config = load_config(f"dpsad-{dataset}-eps{eps}")
    assert config.method == "dpsad" and config.data.name == dataset and config.privacy.target_epsilon == eps
    d = config.dpsad
    assert (d.teacher, d.timesteps, d.adversarial_weight) == ("dp", 500, 1.0)  # the paper's T and lambda
    assert config.privacy.multiplicity == 1 and d.teacher_steps > 0
    assert config.model.num_classes == (2 if dataset.startswith("celeba") else 10)  # class-conditional, as the paper


def test_dpsad_cpu_preset_meets_its_total_target_with_a_dp_teacher():
    from dpdiffusion.methods.dpsad import resolve_dpsad_plan

    plan = resolve_dpsad_plan(load_config("dpsad-mnist-eps10-cpu"), 60000)
    assert [name for name, _ in plan.parts] == ["teacher", "student", "discriminator"]
    assert 9.9 < plan.planned_epsilon <= 10


# DP-FETA's settings (DPImageBench's configs): dataset size N, central images (B_c, rounds, sigma_c), DP-SGD (B,
# epochs, K); sigma_c is the paper's fixed value, reached here through the calibrated ratio to DP-SGD's sigma
FETA = {
    "feta-mnist-eps1": (60000, 6000, 5, 5.0, 4096, 150, 32),
    "feta-mnist-eps10": (60000, 6000, 5, 5.0, 4096, 150, 32),
    "feta-fmnist-eps1": (60000, 6000, 5, 5.0, 4096, 150, 32),
    "feta-fmnist-eps10": (60000, 6000, 5, 5.0, 4096, 150, 32),
    "feta-celeba32-eps1": (162770, 12000, 250, 10.0, 4096, 150, 32),
    "feta-celeba32-eps10": (162770, 12000, 250, 10.0, 4096, 150, 32),
    "feta-cifar10-eps10": (50000, 6000, 5, 5.0, 4096, 150, 32),
}


@pytest.mark.parametrize("name", sorted(FETA))
def test_feta_presets_are_dp_fetas_settings(name):
    from dpdiffusion.methods.dpdm import warmup_plan

    config = load_config(name)
    n, central_batch, rounds, central_sigma, batch, epochs, k = FETA[name]
    w, p = config.warmup, config.privacy
    assert (w.central_batch_size, w.central_rounds, w.downsample) == (central_batch, rounds, 2)
    assert (p.batch_size, p.epochs, p.multiplicity) == (batch, epochs, k)
    composed = warmup_plan(config, n, resolve_plan(p, n)).composed
    assert composed.plan("central images").noise_multiplier == pytest.approx(central_sigma, rel=0.01)
    assert composed.planned_epsilon <= p.target_epsilon


@pytest.mark.parametrize("eps", [1, 10])
def test_feta_cpu_presets_spend_their_target_over_central_images_and_dpsgd(eps):
    from dpdiffusion.methods.dpdm import warmup_plan

    config = load_config(f"feta-mnist-eps{eps}-cpu")
    composed = warmup_plan(config, 60000, resolve_plan(config.privacy, 60000)).composed
    central, dpsgd = composed.plan("central images"), composed.plan("dpsgd")
    assert central.noise_multiplier == pytest.approx(4.0 * dpsgd.noise_multiplier)
    assert config.warmup.steps > 0 and config.warmup.augment_translate > 0
    assert eps * 0.99 <= composed.planned_epsilon <= eps
