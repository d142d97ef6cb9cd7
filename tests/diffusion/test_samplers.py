import pytest
import torch

from dpdiffusion.diffusion.samplers import (
    guided,
    network_evaluations,
    sample_ancestral,
    sample_ddim,
    sample_dpmpp_2m,
    sample_dpmpp_3m,
    sample_heun,
)
from dpdiffusion.diffusion.schedules import ImageNoise, karras_sigmas

MU, S = 0.3, 0.5  # data: every pixel ~ N(MU, S^2) independently


def gaussian_denoiser(x, sigma):
    """The exact denoiser E[y | y + sigma n = x] for Gaussian data."""
    sigma = sigma.view(-1, *([1] * (x.dim() - 1)))
    return MU + S**2 / (S**2 + sigma**2) * (x - MU)


def initial(seeds, sigma_max=80.0, shape=(1, 8, 8)):
    return ImageNoise(seeds).randn(shape) * sigma_max


def test_karras_schedule():
    sigmas = karras_sigmas(18)
    assert len(sigmas) == 19 and sigmas[-1] == 0
    assert sigmas[0] == pytest.approx(80.0) and sigmas[-2] == pytest.approx(0.002)
    assert torch.all(sigmas[1:] < sigmas[:-1])
    with pytest.raises(ValueError):
        karras_sigmas(0)


@pytest.mark.parametrize(
    "sampler,steps,kwargs",
    [
        (sample_heun, 18, {}),
        (sample_heun, 40, dict(S_churn=40, S_min=0.05, S_max=50, S_noise=1.003)),
        (sample_ddim, 500, {}),  # first-order samplers need many steps on this schedule
        (sample_ddim, 500, dict(eta=0.5)),
        (sample_ancestral, 500, {}),
        (sample_dpmpp_2m, 18, {}),
        (sample_dpmpp_3m, 32, {}),
    ],
)
def test_samplers_reach_the_data_distribution(sampler, steps, kwargs):
    seeds = list(range(64))
    x = initial(seeds)
    out = sampler(gaussian_denoiser, x, karras_sigmas(steps), noise=ImageNoise([s + 1000 for s in seeds]), **kwargs)
    assert abs(out.mean().item() - MU) < 0.03
    assert abs(out.std().item() - S) < 0.03


def exact_flow(x, sigma_max=80.0):
    """The probability-flow ODE's solution at sigma = 0 for Gaussian data: (x - MU) / sqrt(S^2 + sigma^2) is
    constant along the flow, so x(0) = MU + S (x(sigma_max) - MU) / sqrt(S^2 + sigma_max^2)."""
    return MU + S * (x - MU) / (S**2 + sigma_max**2) ** 0.5


def flow_error(sampler, x, steps):
    return (sampler(gaussian_denoiser, x, karras_sigmas(steps).double()) - exact_flow(x)).abs().max().item()


@pytest.mark.parametrize("sampler", [sample_heun, sample_dpmpp_2m, sample_dpmpp_3m])
def test_deterministic_samplers_follow_the_exact_flow(sampler):
    assert flow_error(sampler, initial(range(16)).double(), 64) < 0.04 * S  # outputs spread over +-3 S


@pytest.mark.parametrize("sampler", [sample_heun, sample_dpmpp_2m])
def test_second_order_samplers_converge_at_second_order(sampler):
    """Doubling the levels divides the error by about 4 (second order); DDIM (Euler, first order) only halves it."""
    x = initial(range(4)).double()
    errors = [flow_error(sampler, x, n) for n in (16, 32, 64)]
    first_order = [flow_error(sample_ddim, x, n) for n in (16, 32, 64)]
    assert errors[0] / errors[1] > 3.5 and errors[1] / errors[2] > 3.5
    assert 1.5 < first_order[1] / first_order[2] < 2.5
    assert errors[2] < first_order[2] / 5


def test_dpmpp_3m_converges_at_third_order():
    x = initial(range(4)).double()
    errors = [flow_error(sample_dpmpp_3m, x, n) for n in (32, 64, 128)]
    assert errors[0] / errors[1] > 6 and errors[1] / errors[2] > 6


@pytest.mark.parametrize("sampler", [sample_dpmpp_2m, sample_dpmpp_3m])
def test_multistep_samplers_with_one_level_give_the_denoised_estimate(sampler):
    x = initial([3, 4])
    torch.testing.assert_close(sampler(gaussian_denoiser, x, karras_sigmas(1)),
                               gaussian_denoiser(x, torch.full((2,), 80.0)))


def test_network_evaluations():
    assert network_evaluations("heun", 18) == 35 and network_evaluations("dpmpp2m", 10) == 10
    calls = []

    def counting(x, sigma):
        calls.append(len(x))
        return gaussian_denoiser(x, sigma)

    for name, sampler in (("heun", sample_heun), ("dpmpp2m", sample_dpmpp_2m), ("dpmpp3m", sample_dpmpp_3m)):
        calls.clear()
        sampler(counting, initial([0, 1]), karras_sigmas(7))
        assert len(calls) == network_evaluations(name, 7)


@pytest.mark.parametrize("sampler", [sample_heun, sample_ancestral, sample_dpmpp_2m, sample_dpmpp_3m])
def test_an_image_depends_only_on_its_seed(sampler):
    seeds = [5, 6, 7, 8]
    sigmas = karras_sigmas(10)
    kwargs = dict(S_churn=10) if sampler is sample_heun else {}
    together = sampler(gaussian_denoiser, initial(seeds), sigmas, noise=ImageNoise([s + 1 for s in seeds]), **kwargs)
    alone = torch.cat([
        sampler(gaussian_denoiser, initial([s]), sigmas, noise=ImageNoise([s + 1]), **kwargs) for s in seeds
    ])
    torch.testing.assert_close(together, alone)


def test_deterministic_samplers_need_no_noise():
    x = initial([0, 1])
    a = sample_heun(gaussian_denoiser, x, karras_sigmas(8))
    b = sample_heun(gaussian_denoiser, x, karras_sigmas(8))
    torch.testing.assert_close(a, b)
    with pytest.raises(ValueError, match="noise"):
        sample_ddim(gaussian_denoiser, x, karras_sigmas(8), eta=1.0)


def test_classifier_free_guidance_weights():
    def model(x, sigma, labels):
        return x * 0 + labels.float().view(-1, 1, 1, 1)  # "denoises" to its label

    x, sigma, labels = torch.zeros(3, 1, 2, 2), torch.ones(3), torch.tensor([1, 2, 3])
    assert torch.all(guided(model, labels, guidance=1.0)(x, sigma) == labels.view(-1, 1, 1, 1))
    assert torch.all(guided(model, labels, guidance=0.0, null_label=10)(x, sigma) == 10)
    out = guided(model, labels, guidance=2.0, null_label=10)(x, sigma)
    torch.testing.assert_close(out, (10 + 2 * (labels - 10)).float().view(-1, 1, 1, 1).expand_as(out))
