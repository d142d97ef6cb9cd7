import math

import pytest
import torch

from dpdiffusion.diffusion.loss import DenoisingLoss
from dpdiffusion.diffusion.preconditioning import EDMPrecond
from dpdiffusion.dpsgd.per_example import make_engine
from dpdiffusion.nets.unet import UNet, UNetConfig
from tests.dpsgd.toys import reference_per_example_grads

TINY = dict(img_resolution=8, model_channels=8, channel_mult=(1, 2), num_blocks=1, attn_resolutions=(4,), num_classes=3)


def test_preconditioning_matches_edm_table_1():
    precond = EDMPrecond(torch.nn.Identity(), sigma_data=0.5)
    sigma = torch.tensor([0.01, 1.0, 80.0])
    c_skip, c_out, c_in, c_noise = precond.coefficients(sigma)
    torch.testing.assert_close(c_skip, 0.25 / (sigma**2 + 0.25))
    torch.testing.assert_close(c_out, sigma * 0.5 / (sigma**2 + 0.25).sqrt())
    torch.testing.assert_close(c_in, 1 / (sigma**2 + 0.25).sqrt())
    torch.testing.assert_close(c_noise, sigma.log() / 4)
    # the effective training target has unit variance: lambda * c_out^2 = 1 (EDM eq. 8)
    torch.testing.assert_close(precond.loss_weight(sigma) * c_out**2, torch.ones(3))


def test_denoiser_is_identity_at_tiny_noise_for_a_zero_network():
    model = EDMPrecond(UNet(UNetConfig(**TINY)), sigma_data=math.sqrt(1 / 3))  # zero-initialised output layer
    x = torch.randn(2, 1, 8, 8)
    torch.testing.assert_close(model(x, torch.full((2,), 1e-4), torch.tensor([0, 1])), x, atol=1e-6, rtol=1e-6)


def test_draws_have_multiplicity_shape_and_log_normal_levels():
    loss = DenoisingLoss(EDMPrecond(torch.nn.Identity()), multiplicity=5, num_classes=10)
    draws = loss.draw({"x": torch.zeros(2000, 1, 4, 4), "y": torch.zeros(2000, dtype=torch.long)},
                      torch.Generator().manual_seed(0))
    assert draws["sigma"].shape == (2000, 5) and draws["noise"].shape == (2000, 5, 1, 4, 4)
    log_sigma = draws["sigma"].log()
    assert abs(log_sigma.mean().item() + 1.2) < 0.03 and abs(log_sigma.std().item() - 1.2) < 0.03
    assert abs(draws["keep_label"].float().mean().item() - 0.9) < 0.01
    assert (draws["keep_label"] == draws["keep_label"][:, :1]).all()  # one label draw per example


@pytest.mark.parametrize("engine", ["vmap", "layerwise", "opacus"])
def test_per_example_gradients_of_the_edm_loss_with_a_unet(engine):
    torch.manual_seed(0)
    model = EDMPrecond(UNet(UNetConfig(**TINY)))
    with torch.no_grad():
        model.net.conv_out.weight.normal_(0, 0.1)
    loss = DenoisingLoss(model, multiplicity=3, num_classes=3)
    generator = torch.Generator().manual_seed(1)
    batch = {"x": torch.randn(3, 1, 8, 8, generator=generator), "y": torch.tensor([0, 2, 1])}
    draws = loss.draw(batch, generator)
    grads, losses = make_engine(engine, model, loss).per_example_grads(batch, draws)
    expected = reference_per_example_grads(model, loss, batch, draws)
    for name in expected:
        torch.testing.assert_close(grads[name], expected[name], atol=1e-5, rtol=1e-4, msg=name)
    torch.testing.assert_close(losses, loss(model, batch, draws).detach(), atol=1e-5, rtol=1e-5)
