import pytest
import torch
from scipy import stats

from dpdiffusion.dpsgd.noise import add_noise
from dpdiffusion.dpsgd.secret_random import SecretStream


@pytest.mark.parametrize("sigma,c", [(1.0, 1.0), (0.7, 3.0), (5.0, 0.1)])
def test_noise_is_gaussian_with_std_sigma_c(sigma, c):
    stream = SecretStream.reproducible_from(7, b"noise")
    summed = {"w": torch.zeros(100, 100), "b": torch.full((50,), 2.0)}
    noisy = add_noise(summed, noise_multiplier=sigma, max_grad_norm=c, stream=stream)
    samples = torch.cat([noisy["w"].flatten(), noisy["b"] - 2.0]).double().numpy()
    result = stats.kstest(samples, "norm", args=(0.0, sigma * c))
    assert result.pvalue > 1e-3
    # and not some other scale: the same samples are far from N(0, (2 sigma C)^2)
    assert stats.kstest(samples, "norm", args=(0.0, 2 * sigma * c)).pvalue < 1e-6


def test_noise_is_fresh_in_every_coordinate_and_call():
    stream = SecretStream.reproducible_from(0, b"noise")
    summed = {"a": torch.zeros(1000), "b": torch.zeros(1000)}
    first = add_noise(summed, noise_multiplier=1.0, max_grad_norm=1.0, stream=stream)
    second = add_noise(summed, noise_multiplier=1.0, max_grad_norm=1.0, stream=stream)
    assert abs(float(torch.corrcoef(torch.stack([first["a"], first["b"]]))[0, 1])) < 0.15
    assert abs(float(torch.corrcoef(torch.stack([first["a"], second["a"]]))[0, 1])) < 0.15


def test_zero_noise_leaves_the_sum():
    summed = {"w": torch.arange(4.0)}
    out = add_noise(summed, noise_multiplier=0.0, max_grad_norm=1.0, stream=SecretStream.fresh(b"noise"))
    torch.testing.assert_close(out["w"], summed["w"])


def test_negative_noise_refused():
    with pytest.raises(ValueError, match="noise multiplier"):
        add_noise({"w": torch.zeros(2)}, noise_multiplier=-1.0, max_grad_norm=1.0, stream=SecretStream.fresh(b"noise"))
