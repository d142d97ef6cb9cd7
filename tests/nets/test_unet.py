import pytest
import torch
from torch.func import functional_call, grad, vmap

from dpdiffusion.nets.unet import UNet, UNetConfig, count_parameters

TINY = dict(img_resolution=8, model_channels=8, channel_mult=(1, 2), num_blocks=1, attn_resolutions=(4,))


def perturbed(model, seed=0):
    """Move zero-initialised layers away from zero so that outputs depend on every input."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=generator) * 0.1)
    return model


def test_mnist_size_matches_dpdm():
    assert 1.6e6 <= count_parameters(UNet(UNetConfig(num_classes=10))) <= 1.9e6


@pytest.mark.parametrize(
    "config",
    [UNetConfig(**TINY), UNetConfig(**TINY, num_classes=3),
     UNetConfig(img_resolution=16, in_channels=3, out_channels=3, model_channels=8, channel_mult=(1, 2, 2),
                num_blocks=1, attn_resolutions=(8,))],
)
@pytest.mark.parametrize("b", [0, 1, 3])
def test_output_shape(config, b):
    model = UNet(config)
    x = torch.randn(b, config.in_channels, config.img_resolution, config.img_resolution)
    labels = torch.randint(0, config.num_classes + 1, (b,)) if config.num_classes else None
    assert model(x, torch.randn(b), labels).shape == (b, config.out_channels, config.img_resolution, config.img_resolution)


def test_no_batch_statistics_anywhere():
    model = UNet(UNetConfig(num_classes=10))
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules())
    assert not any(name.split(".")[-1].startswith("running_") for name, _ in model.named_buffers())


def test_examples_are_independent():
    torch.manual_seed(0)
    model = perturbed(UNet(UNetConfig(**TINY, num_classes=3)))
    x, sigma, labels = torch.randn(4, 1, 8, 8), torch.randn(4), torch.tensor([0, 1, 2, 3])
    together = model(x, sigma, labels)
    alone = torch.cat([model(x[i : i + 1], sigma[i : i + 1], labels[i : i + 1]) for i in range(4)])
    torch.testing.assert_close(together, alone, atol=1e-5, rtol=1e-4)


def test_per_example_gradients_under_vmap_match_a_loop():
    torch.manual_seed(1)
    model = perturbed(UNet(UNetConfig(**TINY, num_classes=3)))
    params = {n: p.detach() for n, p in model.named_parameters()}
    x, sigma, labels = torch.randn(3, 1, 8, 8), torch.randn(3), torch.tensor([0, 3, 1])

    def loss(params, xi, si, yi):
        return functional_call(model, params, (xi[None], si[None], yi[None])).pow(2).mean()

    batched = vmap(grad(loss), in_dims=(None, 0, 0, 0))(params, x, sigma, labels)
    for i in range(3):
        single = torch.autograd.grad(model(x[i : i + 1], sigma[i : i + 1], labels[i : i + 1]).pow(2).mean(),
                                     list(model.parameters()))
        for (name, _), g in zip(model.named_parameters(), single):
            torch.testing.assert_close(batched[name][i], g, atol=1e-5, rtol=1e-4, msg=name)


def test_the_no_label_class_conditions_differently():
    torch.manual_seed(2)
    model = perturbed(UNet(UNetConfig(**TINY, num_classes=3)))
    x, sigma = torch.randn(1, 1, 8, 8), torch.randn(1)
    with_label = model(x, sigma, torch.tensor([0]))
    without = model(x, sigma, torch.tensor([3]))
    assert not torch.allclose(with_label, without)
    torch.testing.assert_close(model(x, sigma, None), without)


def test_zero_initialised_output():
    model = UNet(UNetConfig(**TINY))
    assert model(torch.randn(2, 1, 8, 8), torch.randn(2)).abs().max() == 0


@pytest.mark.parametrize(
    "bad,match",
    [(dict(img_resolution=30), "divisible"), (dict(attn_resolutions=(5,)), "attn_resolutions"),
     (dict(model_channels=30), "multiple of 4"), (dict(dropout=1.0), "dropout"), (dict(channel_mult=()), "channel_mult")],
)
def test_invalid_config(bad, match):
    with pytest.raises(ValueError, match=match):
        UNetConfig(**bad)
