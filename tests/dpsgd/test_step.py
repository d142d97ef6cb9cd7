import copy
import math

import pytest
import torch

from dpdiffusion.config import Performance
from dpdiffusion.distributed import block_generator
from dpdiffusion.dpsgd.step import DPSGD
from dpdiffusion.privacy.ledger import PrivacyBudgetError, PrivacyLedger
from dpdiffusion.privacy.plan import PrivacyPlan
from dpdiffusion.dpsgd.secret_random import SecretStream
from tests.dpsgd.toys import NoisyRegressionLoss, TinyDenoiser, make_batch


def make_plan(**overrides):
    settings = dict(
        dataset_size=100, expected_batch_size=6, steps=5, max_grad_norm=1.0, noise_multiplier=1.0, delta=1e-3
    )
    settings.update(overrides)
    return PrivacyPlan(**settings)


def make_dpsgd(model, plan, *, engine="vmap", micro_batch_size=64, multiplicity=1, lr=0.1, seed=0):
    return DPSGD(
        model,
        NoisyRegressionLoss(multiplicity),
        torch.optim.SGD(model.parameters(), lr=lr),
        ledger=PrivacyLedger(plan),
        performance=Performance(engine=engine, micro_batch_size=micro_batch_size),
        draw_seed=seed,
        noise=SecretStream.reproducible_from(seed + 1, b"noise"),
    )


def params_of(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("engine", ["vmap", "layerwise", "ghost", "opacus"])
def test_without_clipping_and_noise_a_dp_step_is_a_plain_step(engine, generator):
    torch.manual_seed(0)
    model = TinyDenoiser()
    plain = copy.deepcopy(model)
    batch = make_batch(6, generator)
    plan = make_plan(max_grad_norm=math.inf, noise_multiplier=0.0, expected_batch_size=6)
    dp = make_dpsgd(model, plan, engine=engine, multiplicity=2, seed=5)
    dp.step(batch)

    loss = NoisyRegressionLoss(2)
    draws = loss.draw(batch, block_generator(5, 0, 0))  # the same draws the DP step made (one block, step 0)
    optimizer = torch.optim.SGD(plain.parameters(), lr=0.1)
    loss(plain, batch, draws).mean().backward()
    optimizer.step()
    for name, p in plain.named_parameters():
        torch.testing.assert_close(dict(model.named_parameters())[name], p, atol=1e-6, rtol=1e-5, msg=name)


@pytest.mark.parametrize("engine", ["vmap", "layerwise", "ghost", "opacus"])
def test_micro_batching_does_not_change_the_result(engine, generator):
    batch = make_batch(7, generator)
    results = []
    for micro in (1, 3, 7, 64):
        torch.manual_seed(0)
        model = TinyDenoiser()
        dp = make_dpsgd(model, make_plan(), engine=engine, micro_batch_size=micro, multiplicity=3)
        dp.step(batch)
        dp.step(batch)
        results.append(params_of(model))
    for other in results[1:]:
        for name in results[0]:
            torch.testing.assert_close(other[name], results[0][name], atol=1e-6, rtol=1e-5, msg=name)


def test_engines_agree_on_a_full_step(generator):
    batch = make_batch(5, generator)
    results = []
    for engine in ("vmap", "layerwise", "ghost", "opacus"):
        torch.manual_seed(0)
        model = TinyDenoiser()
        make_dpsgd(model, make_plan(), engine=engine, multiplicity=2).step(batch)
        results.append(params_of(model))
    for other in results[1:]:
        for name in results[0]:
            torch.testing.assert_close(other[name], results[0][name], atol=1e-6, rtol=1e-5, msg=name)


def test_update_is_clipped_sum_plus_noise_over_expected_batch_size(generator):
    """Reconstruct one update by hand: (sum of clipped grads + N(0, s^2 C^2)) / B with B the public size."""
    torch.manual_seed(0)
    model = TinyDenoiser()
    before = params_of(model)
    plan = make_plan(expected_batch_size=10, max_grad_norm=0.5, noise_multiplier=2.0)
    dp = make_dpsgd(model, plan, lr=1.0)
    batch = make_batch(3, generator)  # realised size 3, public expected size 10
    draws = dp.draw(batch, first_block=0)  # the draws of step 0, block 0 (what the step will draw)
    summed, _, _ = dp.clipped_sum(batch, draws)
    noise = SecretStream.reproducible_from(1, b"noise").normal(sum(s.numel() for s in summed.values()))
    expected, start = {}, 0
    for name, s in summed.items():
        part = noise[start:start + s.numel()].view(s.shape).float()
        start += s.numel()
        expected[name] = before[name] - (s + 2.0 * 0.5 * part) / 10
    dp.step(batch)
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.detach(), expected[name], atol=1e-6, rtol=1e-5, msg=name)


def test_empty_batch_takes_a_full_noisy_step(generator):
    torch.manual_seed(0)
    model = TinyDenoiser()
    before = params_of(model)
    dp = make_dpsgd(model, make_plan())
    report = dp.step(make_batch(0, generator))
    assert report.batch_size == 0 and report.step == 1 and dp.ledger.steps_taken == 1
    assert any(not torch.equal(before[n], p) for n, p in model.named_parameters())


def test_ledger_advances_once_per_step_and_stops_at_the_plan(generator):
    torch.manual_seed(0)
    dp = make_dpsgd(TinyDenoiser(), make_plan(steps=3))
    batch = make_batch(4, generator)
    for expected in (1, 2, 3):
        assert dp.step(batch).step == expected
    before = params_of(dp.model)
    with pytest.raises(PrivacyBudgetError, match="planned steps"):
        dp.step(batch)
    assert all(torch.equal(before[n], p) for n, p in dp.model.named_parameters())
    assert dp.ledger.steps_taken == 3


def test_batch_norm_model_refused():
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.BatchNorm2d(2))
    with pytest.raises(ValueError, match="GroupNorm"):
        make_dpsgd(model, make_plan())
