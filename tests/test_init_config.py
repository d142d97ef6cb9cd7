import pytest
import yaml

from dpdiffusion.data.layout import Layout
from dpdiffusion.init_config import config_text, supported_resolution
from dpdiffusion.runconfig import config_from_dict, load_config


@pytest.mark.parametrize("side, cap, expected", [(28, 32, 28), (32, 32, 32), (30, 32, 32), (29, 32, 28), (8, 32, 8),
                                                 (2, 32, 4), (500, 32, 32), (500, 64, 64), (45, 64, 44)])
def test_the_resolution_is_the_nearest_the_unet_takes(side, cap, expected):
    assert supported_resolution(side, cap) == expected and expected % 4 == 0


@pytest.mark.parametrize("size", [1437, 60000, 162770])
def test_no_setting_written_is_a_function_of_n_beyond_a_batch_for_small_data(size):
    """The released configuration carries what init writes: delta is left to the plan's default (1 / (10 N) of the
    declared public size, or of N, which the report then says), and B is the machine's constant unless the data
    hold under ten batches, where it is a power of two and its comment says it tells N's magnitude."""
    for gpu in (False, True):
        text = config_text(Layout("npz", "/data/x.npz", size, 10, 28, 1), gpu=gpu)
        config = config_from_dict(yaml.safe_load(text))
        assert config.privacy.delta is None
        neighbours = {config_from_dict(yaml.safe_load(config_text(Layout("npz", "/data/x.npz", n, 10, 28, 1),
                                                                      gpu=gpu))).privacy.batch_size
                      for n in (size - 1, size, size + 1)}
        batch = config.privacy.batch_size
        assert batch & (batch - 1) == 0 and (len(neighbours) == 1 or "chosen from your data's size" in text)
        if size >= 10 * 4096:
            assert "chosen from your data's size" not in text


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
        assert ours.privacy.target_epsilon == 10 and ours.privacy.delta is None
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
    assert config.privacy.batch_size == 1 and config.privacy.delta is None and config.data.resolution == 32
    assert '# class_names: ["a: b"]' in text
