import pytest
import torch

from dpdiffusion.diffusion.samplers import guided, sample_ancestral, sample_ddim, sample_heun
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
    ],
)
def test_samplers_reach_the_data_distribution(sampler, steps, kwargs):
    seeds = list(range(64))
    x = initial(seeds)
    out = sampler(gaussian_denoiser, x, karras_sigmas(steps), noise=ImageNoise([s + 1000 for s in seeds]), **kwargs)
    assert abs(out.mean().item() - MU) < 0.03
    assert abs(out.std().item() - S) < 0.03


@pytest.mark.parametrize("sampler", [sample_heun, sample_ancestral])
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
