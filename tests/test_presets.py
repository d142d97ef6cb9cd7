import os

import pytest

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
