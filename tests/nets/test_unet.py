import pytest
import torch
from torch import nn
from torch.func import functional_call, grad, vmap

from dpdiffusion.dpsgd.validation import check_per_example
from dpdiffusion.nets.unet import UNet, UNetConfig, count_parameters

# Two levels (8x8, 4x4) with attention at 4x4: every kind of block, in milliseconds.
TINY = dict(img_resolution=8, model_channels=8, channel_mult=(1, 2), num_blocks=1, attn_resolutions=(4,))


def perturbed(model: nn.Module, seed: int = 0) -> nn.Module:
    """Move the near-zero initialised layers away from zero, so that outputs depend on every input."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=generator))
    return model


def inputs(config: UNetConfig, b: int, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(b, config.in_channels, config.img_resolution, config.img_resolution, generator=generator)
    noise_labels = torch.randn(b, generator=generator)
    labels = torch.randint(0, config.num_classes + 1, (b,), generator=generator) if config.num_classes else None
    return x, noise_labels, labels


SHAPE_CONFIGS = {
    "tiny": UNetConfig(**TINY),
    "tiny-conditional": UNetConfig(**TINY, num_classes=3),
    "mnist-shape": UNetConfig(model_channels=8, num_classes=10),  # 28x28x1, levels 28/14/7, attention at 7
    "cifar-shape": UNetConfig(img_resolution=32, in_channels=3, out_channels=3, model_channels=8,
                              attn_resolutions=(8,)),
    "rgb-to-gray-2heads": UNetConfig(img_resolution=16, in_channels=3, out_channels=1, model_channels=8,
                                     channel_mult=(1, 2, 2, 2), attn_resolutions=(4, 2), attn_heads=2),
}


@pytest.mark.parametrize("name", SHAPE_CONFIGS)
@pytest.mark.parametrize("b", [1, 3])
def test_output_shape(name, b):
    config = SHAPE_CONFIGS[name]
    out = UNet(config)(*inputs(config, b))
    assert out.shape == (b, config.out_channels, config.img_resolution, config.img_resolution)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", ["tiny", "tiny-conditional", "mnist-shape"])
def test_empty_batch(name):
    config = SHAPE_CONFIGS[name]
    out = UNet(config)(*inputs(config, 0))
    assert out.shape == (0, config.out_channels, config.img_resolution, config.img_resolution)


def test_default_config_has_dpdm_mnist_size():
    unconditional = count_parameters(UNet(UNetConfig()))
    assert 1.6e6 <= unconditional <= 1.9e6
    # a class-conditional model adds only its label table: (num_classes + 1) x embedding width
    conditional = count_parameters(UNet(UNetConfig(num_classes=10)))
    assert conditional - unconditional == 11 * 32 * 4


def test_no_batch_norm_or_running_statistics():
    model = UNet(UNetConfig(num_classes=10))
    check_per_example(model)  # raises on BatchNorm, tracked InstanceNorm or running_* buffers
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    assert list(model.buffers()) == []
    norms = [m for m in model.modules() if isinstance(m, nn.GroupNorm)]
    assert norms and all(m.num_groups == min(32, m.num_channels // 4) and m.eps == 1e-6 for m in norms)


def test_output_starts_near_zero():
    """Zero-like init of the output conv (EDM): the untrained F_x barely moves the preconditioned denoiser."""
    config = UNetConfig(**TINY)
    out = UNet(config)(*inputs(config, 2))
    assert out.abs().max() < 1e-3


def test_examples_are_independent():
    config = UNetConfig(**TINY, num_classes=3)
    model = perturbed(UNet(config))
    x, noise_labels, labels = inputs(config, 4)
    together = model(x, noise_labels, labels)
    alone = torch.cat([model(x[i : i + 1], noise_labels[i : i + 1], labels[i : i + 1]) for i in range(4)])
    torch.testing.assert_close(together, alone, atol=1e-5, rtol=1e-4)
    # changing the other examples leaves example 0 unchanged
    x2, noise2, labels2 = inputs(config, 4, seed=1)
    x2[0], noise2[0], labels2[0] = x[0], noise_labels[0], labels[0]
    torch.testing.assert_close(model(x2, noise2, labels2)[0], together[0], atol=1e-5, rtol=1e-4)


def test_per_example_gradients_under_vmap_match_a_loop():
    config = UNetConfig(**TINY, num_classes=3)
    model = perturbed(UNet(config), seed=1)
    params = {n: p.detach() for n, p in model.named_parameters()}
    x, noise_labels, labels = inputs(config, 3, seed=2)

    def loss(params, xi, ni, yi):
        out = functional_call(model, params, (xi[None], ni[None], yi[None]))
        return (out - xi[None]).pow(2).mean()

    batched = vmap(grad(loss), in_dims=(None, 0, 0, 0), randomness="error")(params, x, noise_labels, labels)
    names = list(params)
    for i in range(3):
        single = model(x[i : i + 1], noise_labels[i : i + 1], labels[i : i + 1])
        expected = torch.autograd.grad((single - x[i : i + 1]).pow(2).mean(), [dict(model.named_parameters())[n]
                                                                              for n in names])
        for name, g in zip(names, expected):
            assert batched[name].shape == (3, *g.shape)
            torch.testing.assert_close(batched[name][i], g, atol=1e-5, rtol=1e-4, msg=name)
    assert any(batched[n].abs().max() > 0 for n in names if n.startswith("label_embedding"))


def test_no_label_differs_from_a_label_and_is_the_default():
    config = UNetConfig(**TINY, num_classes=3)
    model = perturbed(UNet(config), seed=2)
    x, noise_labels, _ = inputs(config, 2)
    label_0 = model(x, noise_labels, torch.zeros(2, dtype=torch.long))
    no_label = model(x, noise_labels, torch.full((2,), 3))
    assert (label_0 - no_label).abs().max() > 1e-3
    torch.testing.assert_close(model(x, noise_labels, None), no_label)


def test_noise_level_changes_the_output():
    config = UNetConfig(**TINY)
    model = perturbed(UNet(config), seed=3)
    x, noise_labels, _ = inputs(config, 2)
    assert (model(x, noise_labels) - model(x, noise_labels + 0.5)).abs().max() > 1e-3


def test_unconditional_model_refuses_labels():
    with pytest.raises(ValueError, match="unconditional"):
        UNet(UNetConfig(**TINY))(torch.zeros(1, 1, 8, 8), torch.zeros(1), torch.zeros(1, dtype=torch.long))


def test_config_accepts_lists_as_tuples():
    config = UNetConfig(img_resolution=8, channel_mult=[1, 2], attn_resolutions=[4])
    assert config.channel_mult == (1, 2) and config.attn_resolutions == (4,)
    hash(config)


@pytest.mark.parametrize(
    "bad, match",
    [
        (dict(img_resolution=30), "divisible by 2"),  # 3 levels need a multiple of 4
        (dict(img_resolution=0), "img_resolution"),
        (dict(channel_mult=()), "channel_mult"),
        (dict(channel_mult=(1, 0)), "channel_mult"),
        (dict(attn_resolutions=(5,)), "attn_resolutions"),
        (dict(num_blocks=0), "num_blocks"),
        (dict(model_channels=0), "model_channels"),
        (dict(model_channels=31), "even"),
        (dict(num_classes=-1), "num_classes"),
        (dict(dropout=1.0), "dropout"),
        (dict(embedding_channels_mult=0), "embedding_channels_mult"),
        (dict(attn_heads=3), "attn_heads"),
    ],
)
def test_invalid_config_raises(bad, match):
    with pytest.raises(ValueError, match=match):
        UNetConfig(**bad)
