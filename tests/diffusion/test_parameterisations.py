"""VP, VE and v-prediction against their definitions: the denoiser reconstructs the clean image from the
ideal network output, the loss weight makes the network's target unit-scaled, and the training noise levels
follow their distributions."""

import math

import pytest
import torch
from scipy import stats

from dpdiffusion.diffusion.denoiser import build_denoiser, training_levels
from dpdiffusion.diffusion.loss import DenoisingLoss
from dpdiffusion.diffusion.noise_levels import LogUniform, TanUniform, VPTimes, vp_sigma, vp_sigma_inv
from dpdiffusion.diffusion.preconditioning import PARAMETERISATIONS, VPPrecond
from dpdiffusion.nets.unet import UNetConfig
from dpdiffusion.runconfig import ConfigError, DiffusionConfig

SIGMA = torch.tensor([0.003, 0.1, 1.0, 5.0, 80.0], dtype=torch.float64)


def ideal_output(name, x, noise, sigma):
    """What F should predict under each parameterisation (unit noise ``noise``, clean ``x``)."""
    s = sigma.view(-1, 1, 1, 1)
    if name == "vp":
        return noise  # epsilon-prediction
    if name == "ve":
        return -noise
    if name == "v":
        alpha = 1 / (1 + s**2).sqrt()
        return alpha * noise - s * alpha * x  # v = alpha eps - sigma_vp x
    raise ValueError(name)


@pytest.mark.parametrize("name", ["vp", "ve", "v"])
def test_denoiser_recovers_clean_image_from_the_ideal_network_output(name):
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(len(SIGMA), 1, 4, 4, generator=generator, dtype=torch.float64)
    noise = torch.randn(x.shape, generator=generator, dtype=torch.float64)
    noisy = x + SIGMA.view(-1, 1, 1, 1) * noise
    target = ideal_output(name, x, noise, SIGMA)
    seen = {}

    def net(inputs, c_noise, labels):
        seen["inputs"], seen["c_noise"] = inputs, c_noise
        return target

    precond = PARAMETERISATIONS[name](net)
    torch.testing.assert_close(precond(noisy, SIGMA), x)
    c_skip, c_out, c_in, c_noise = precond.coefficients(SIGMA)
    # the loss weight makes lambda ||D - x||^2 equal to ||F - F_ideal||^2
    torch.testing.assert_close(precond.loss_weight(SIGMA) * c_out**2, torch.ones_like(SIGMA, dtype=torch.float64))
    if name in ("vp", "v"):  # variance-preserving input: x_t = alpha x + sqrt(1 - alpha^2) eps
        alpha = 1 / (1 + SIGMA**2).sqrt()
        torch.testing.assert_close(seen["inputs"], alpha.view(-1, 1, 1, 1) * noisy)


def test_vp_time_conditioning_inverts_the_schedule():
    t = torch.linspace(1e-5, 1, 50, dtype=torch.float64)
    torch.testing.assert_close(vp_sigma_inv(vp_sigma(t)), t)
    _, _, _, c_noise = VPPrecond(torch.nn.Identity()).coefficients(vp_sigma(t))
    torch.testing.assert_close(c_noise, 999 * t)


def test_v_prediction_levels_are_tan_of_a_uniform_time_within_the_log_snr_range():
    levels = TanUniform(-9.0, 13.0)
    sigma = levels.sample((20000,), torch.Generator().manual_seed(0)).double()
    logsnr = -2 * sigma.log()
    assert logsnr.min() >= -9 - 1e-4 and logsnr.max() <= 13 + 1e-4
    t = 2 / math.pi * torch.atan(sigma)
    t_lo, t_hi = levels.time_range()
    assert stats.kstest(((t - t_lo) / (t_hi - t_lo)).numpy(), "uniform").pvalue > 1e-3
    with pytest.raises(ValueError):
        TanUniform(13.0, -9.0)


def test_ve_and_vp_levels_follow_their_distributions():
    g = torch.Generator().manual_seed(1)
    ve = LogUniform(0.02, 100).sample((20000,), g).double().log()
    assert stats.kstest(((ve - math.log(0.02)) / math.log(100 / 0.02)).numpy(), "uniform").pvalue > 1e-3
    vp = vp_sigma_inv(VPTimes().sample((20000,), g).double())
    assert stats.kstest(vp.numpy(), "uniform").pvalue > 1e-3


@pytest.mark.parametrize("name", sorted(PARAMETERISATIONS))
def test_each_parameterisation_trains_through_the_same_loss(name):
    diffusion = DiffusionConfig(parameterisation=name)
    model = build_denoiser(UNetConfig(img_resolution=8, model_channels=8, channel_mult=(1,), num_blocks=1,
                                      attn_resolutions=(), num_classes=2), diffusion)
    loss = DenoisingLoss(model, multiplicity=2, levels=training_levels(diffusion), num_classes=2)
    batch = {"x": torch.rand(3, 1, 8, 8) * 2 - 1, "y": torch.tensor([0, 1, 0])}
    values = loss(model, batch, loss.draw(batch, torch.Generator().manual_seed(0)))
    assert values.shape == (3,) and torch.isfinite(values).all()
    values.sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_unknown_parameterisation_is_a_config_error():
    with pytest.raises(ConfigError, match="diffusion.parameterisation"):
        training_levels(DiffusionConfig(parameterisation="ddpm"))


def test_ddpm_sigma_matches_the_cumulative_product_and_the_mixture_hits_its_weights():
    from dpdiffusion.diffusion.noise_levels import DDPMTimes, Mixture, ddpm_sigma

    betas = [1e-4 + (0.02 - 1e-4) * i / 999 for i in range(1000)]
    alpha_bar, expected = 1.0, []
    for beta in betas:
        alpha_bar *= 1 - beta
        expected.append(math.sqrt(1 / alpha_bar - 1))
    torch.testing.assert_close(ddpm_sigma(torch.arange(1000)), torch.tensor(expected, dtype=torch.float64))
    biased = training_levels(DiffusionConfig(time_bands=(0, 200, 800, 1000), time_weights=(0.015, 0.785, 0.2)))
    sigma = biased.sample((40000,), torch.Generator().manual_seed(0)).double()
    edges = ddpm_sigma(torch.tensor([200, 800]))
    shares = [(sigma < edges[0]).double().mean(), ((sigma >= edges[0]) & (sigma < edges[1])).double().mean(),
              (sigma >= edges[1]).double().mean()]
    for share, weight in zip(shares, (0.015, 0.785, 0.2)):
        assert abs(float(share) - weight) < 0.01
    with pytest.raises(ValueError):
        Mixture((DDPMTimes(),), (0.5,))
    with pytest.raises(ValueError):
        DDPMTimes(500, 100)


@pytest.mark.parametrize("bands, weights, message", [
    ((0, 200, 1000), (1.0,), "one more entry"),
    ((0, 200), (0.5,), "sum to 1"),
    ((200, 100), (1.0,), "t_min < t_max"),
    ((0, 1200), (1.0,), "t_max <= T"),
])
def test_bad_time_mixtures_are_config_errors(bands, weights, message):
    with pytest.raises(ConfigError, match=message):
        training_levels(DiffusionConfig(time_bands=bands, time_weights=weights))


def test_without_time_bands_each_parameterisation_keeps_its_own_levels():
    from dpdiffusion.diffusion.noise_levels import LogNormal, Mixture, VPTimes

    assert isinstance(training_levels(DiffusionConfig()), LogNormal)
    assert isinstance(training_levels(DiffusionConfig(parameterisation="vp")), VPTimes)
    assert isinstance(training_levels(DiffusionConfig(time_bands=(0, 1000), time_weights=(1.0,))), Mixture)
