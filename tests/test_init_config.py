import pytest
import yaml

from dpdiffusion.data.layout import Layout
from dpdiffusion.init_config import config_text, planned_delta, supported_resolution
from dpdiffusion.runconfig import config_from_dict, load_config


@pytest.mark.parametrize("side, cap, expected", [(28, 32, 28), (32, 32, 32), (30, 32, 32), (29, 32, 28), (8, 32, 8),
                                                 (2, 32, 4), (500, 32, 32), (500, 64, 64), (45, 64, 44)])
def test_the_resolution_is_the_nearest_the_unet_takes(side, cap, expected):
    assert supported_resolution(side, cap) == expected and expected % 4 == 0


@pytest.mark.parametrize("preset", ["mnist-eps10-cpu", "fmnist-eps10", "celeba32-eps10", "digits-eps10-cpu"])
def test_delta_is_the_presets_choice_below_one_over_n(preset):
    size = {"mnist-eps10-cpu": 60000, "fmnist-eps10": 60000, "celeba32-eps10": 162770, "digits-eps10-cpu": 1437}[preset]
    assert planned_delta(size) == load_config(preset).privacy.delta
    for n in (1, 9, 10, 11, 99999, 100000):
        assert 0 < planned_delta(n) < 1 / n <= 10 * planned_delta(n) * (1 + 1e-12)  # the largest power of ten below


def test_cpu_and_gpu_sizes_follow_the_presets():
    layout = Layout("npz", "/data/x.npz", 60000, 10, 28, 1)
    cpu = config_from_dict(yaml.safe_load(config_text(layout, gpu=False)))
    gpu = config_from_dict(yaml.safe_load(config_text(layout, gpu=True)))
    preset_cpu, preset_gpu = load_config("mnist-eps10-cpu"), load_config("fmnist-eps10")
    for ours, preset in ((cpu, preset_cpu), (gpu, preset_gpu)):
        assert ours.model.model_channels == preset.model.model_channels
        assert ours.model.num_blocks == preset.model.num_blocks and ours.model.channel_mult == preset.model.channel_mult
        assert ours.privacy.batch_size == preset.privacy.batch_size
        assert ours.privacy.multiplicity == preset.privacy.multiplicity
        assert (ours.privacy.steps, ours.privacy.epochs) == (preset.privacy.steps, preset.privacy.epochs)
        assert ours.privacy.target_epsilon == 10 and ours.privacy.delta == 1e-5
    assert (cpu.data.name, cpu.data.path, cpu.data.resolution, cpu.data.channels) == ("npz", "/data/x.npz", 28, 1)
    assert (cpu.model.img_resolution, cpu.model.in_channels, cpu.model.num_classes) == (28, 1, 10)
    rgb = config_from_dict(yaml.safe_load(config_text(Layout("csv", "/d.csv", 50000, 10, 32, 3), gpu=True)))
    assert rgb.privacy.batch_size == 2048 and rgb.privacy.multiplicity == 8 and rgb.model.in_channels == 3


def test_small_data_one_class_and_awkward_names_still_make_a_valid_configuration():
    layout = Layout("imagefolder", '/data/odd "name": #1', 6, 1, 300, 3, ("a: b",))
    text = config_text(layout, gpu=False)
    config = config_from_dict(yaml.safe_load(text))
    assert config.data.path == '/data/odd "name": #1' and config.data.class_names == ()  # names: a comment only
    assert config.model.num_classes == 0 and config.diffusion.label_dropout == 0  # one class: unconditional
    assert config.privacy.batch_size <= 6 and config.privacy.delta < 1 / 6 and config.data.resolution == 32
    assert '# class_names: ["a: b"]' in text
