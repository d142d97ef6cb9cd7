import math

import dp_accounting
import pytest

from dpdiffusion.privacy import SampledGaussian, composed_epsilon, epsilon, noise_multiplier
from dpdiffusion.privacy.accounting import PRV_MAX_GRID_POINTS, clear_cache, prv_falls_back

Q, STEPS, DELTA = 0.01, 1000, 1e-5


def independent_pld_epsilon(sigma, q, steps, delta, interval=1e-4):
    """dp-accounting's PLD accountant with a fine discretisation, set up here independently."""
    accountant = dp_accounting.pld.PLDAccountant(value_discretization_interval=interval)
    accountant.compose(dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(sigma)), steps)
    return accountant.get_epsilon(delta)


@pytest.mark.parametrize("target", [0.2, 1.0, 10.0])
def test_calibrated_sigma_meets_target_and_matches_pld(target):
    sigma = noise_multiplier(target_epsilon=target, sample_rate=Q, steps=STEPS, delta=DELTA)
    sigma_pld = noise_multiplier(target_epsilon=target, sample_rate=Q, steps=STEPS, delta=DELTA, accountant="pld")
    assert abs(sigma / sigma_pld - 1) < 0.005
    spent = independent_pld_epsilon(sigma, Q, STEPS, DELTA)
    assert abs(spent / target - 1) < 0.01
    assert epsilon(noise_multiplier=sigma, sample_rate=Q, steps=STEPS, delta=DELTA) <= target


@pytest.mark.parametrize("sigma", [0.8, 1.5, 4.0])
def test_epsilon_matches_independent_pld(sigma):
    ours = epsilon(noise_multiplier=sigma, sample_rate=Q, steps=STEPS, delta=DELTA)
    assert abs(ours / independent_pld_epsilon(sigma, Q, STEPS, DELTA) - 1) < 0.01


def test_rdp_is_an_upper_bound_of_the_tight_accountants():
    kwargs = dict(noise_multiplier=1.2, sample_rate=Q, steps=STEPS, delta=DELTA)
    rdp = epsilon(**kwargs, accountant="rdp")
    assert rdp >= epsilon(**kwargs, accountant="pld") and rdp >= epsilon(**kwargs, accountant="prv")


def test_epsilon_is_monotone():
    base = dict(noise_multiplier=1.0, sample_rate=Q, steps=STEPS, delta=DELTA, accountant="pld")
    e = epsilon(**base)
    assert epsilon(**{**base, "noise_multiplier": 1.2}) < e
    assert epsilon(**{**base, "steps": 2 * STEPS}) > e
    assert epsilon(**{**base, "sample_rate": 2 * Q}) > e
    assert epsilon(**{**base, "delta": 1e-3}) < e


def test_composition_of_different_events_is_not_a_sum_of_epsilons():
    a = SampledGaussian(noise_multiplier=1.0, sample_rate=Q, steps=500)
    b = SampledGaussian(noise_multiplier=2.0, sample_rate=2 * Q, steps=300)
    together = composed_epsilon([a, b], delta=DELTA, accountant="pld")
    alone = [composed_epsilon([e], delta=DELTA, accountant="pld") for e in (a, b)]
    assert max(alone) < together < sum(alone)
    same = composed_epsilon([a, a], delta=DELTA, accountant="pld")
    assert same == pytest.approx(epsilon(noise_multiplier=1.0, sample_rate=Q, steps=1000, delta=DELTA, accountant="pld"), rel=1e-6)


def test_edge_cases():
    assert epsilon(noise_multiplier=1.0, sample_rate=Q, steps=0, delta=DELTA) == 0.0
    assert math.isinf(epsilon(noise_multiplier=0.0, sample_rate=Q, steps=1, delta=DELTA))
    assert noise_multiplier(target_epsilon=1.0, sample_rate=Q, steps=0, delta=DELTA) == 0.0


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(noise_multiplier=1.0, sample_rate=0.0, steps=10, delta=DELTA), "sample rate"),
        (dict(noise_multiplier=1.0, sample_rate=1.5, steps=10, delta=DELTA), "sample rate"),
        (dict(noise_multiplier=-1.0, sample_rate=Q, steps=10, delta=DELTA), "noise multiplier"),
        (dict(noise_multiplier=1.0, sample_rate=Q, steps=-1, delta=DELTA), "steps"),
        (dict(noise_multiplier=1.0, sample_rate=Q, steps=10, delta=0.0), "delta"),
        (dict(noise_multiplier=1.0, sample_rate=Q, steps=10, delta=DELTA, accountant="gdp"), "accountant"),
    ],
)
def test_bad_arguments_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        epsilon(**kwargs)


@pytest.mark.parametrize("target", [0.0, -1.0, math.inf])
def test_bad_target_refused(target):
    with pytest.raises(ValueError, match="target epsilon"):
        noise_multiplier(target_epsilon=target, sample_rate=Q, steps=10, delta=DELTA)


@pytest.mark.slow
@pytest.mark.parametrize("target", [0.2, 1.0, 10.0])
def test_paper_scale_calibration_matches_pld(target):
    """DPDM's MNIST setting: B = 4096 of N = 60000 for 300 epochs."""
    q, steps = 4096 / 60000, 4395
    sigma = noise_multiplier(target_epsilon=target, sample_rate=q, steps=steps, delta=DELTA)
    assert abs(independent_pld_epsilon(sigma, q, steps, DELTA) / target - 1) < 0.01


def test_so_much_noise_that_rdp_proves_zero_is_zero_for_every_accountant():
    """RDP's bound is 0 here ((0, delta)-DP); PRV used to divide by it (NaN) and PLD to overflow."""
    kwargs = dict(noise_multiplier=3e4, sample_rate=0.004, steps=1000, delta=DELTA)
    assert [epsilon(**kwargs, accountant=a) for a in ("rdp", "pld", "prv")] == [0.0, 0.0, 0.0]


@pytest.mark.parametrize("target", [1e-4, 0.01])
def test_a_tiny_epsilon_calibrates_within_bounded_memory(target, monkeypatch):
    """PRV's grid at a 1e-4 target would hold 7e9 points (it was OOM-killed at 22.5 GB): past the cap, "prv" gives
    PLD's bound, which the commands report (``prv_falls_back``); the calibrated sigma meets the target."""
    from opacus.accountants import PRVAccountant

    def refuse(*args, **kwargs):
        raise AssertionError("the PRV accountant was asked for a grid over the cap")

    q, steps = 0.004, 1000
    monkeypatch.setattr(PRVAccountant, "get_epsilon", refuse)  # every evaluation near these targets falls back
    clear_cache()  # asked afresh, not answered from an earlier test's evaluations
    sigma = noise_multiplier(target_epsilon=target, sample_rate=q, steps=steps, delta=DELTA)
    assert sigma == noise_multiplier(target_epsilon=target, sample_rate=q, steps=steps, delta=DELTA, accountant="pld")
    assert prv_falls_back([SampledGaussian(sigma, q, steps)], delta=DELTA)
    spent = independent_pld_epsilon(sigma, q, steps, DELTA, interval=target / 1e4)
    assert 0.8 * target <= spent <= target  # PLD's grid follows RDP's bound, which floors near 0.0035 here


def test_an_ordinary_epsilon_stays_with_prv():
    assert PRV_MAX_GRID_POINTS >= 2.5e6  # DPDM's MNIST plan at epsilon 0.2 (mnist-eps0.2) needs 2.4e6
    assert not prv_falls_back([SampledGaussian(1.0, Q, STEPS)], delta=DELTA)


def test_a_repeated_question_is_answered_once_and_the_same(monkeypatch):
    """Evaluations are kept per process: the same events and delta ask each accountant once; any other question
    (another sigma, rate, step count, delta, accountant, or one event more) is asked afresh."""
    from opacus.accountants import PRVAccountant

    asked = []
    original = PRVAccountant.get_epsilon

    def counting(self, *args, **kwargs):
        asked.append(tuple(self.history))
        return original(self, *args, **kwargs)

    clear_cache()
    monkeypatch.setattr(PRVAccountant, "get_epsilon", counting)
    events = [SampledGaussian(1.0, Q, STEPS), SampledGaussian(2.0, 0.1, 10)]
    first = composed_epsilon(events, delta=DELTA)
    assert composed_epsilon(list(events), delta=DELTA) == first and len(asked) == 1
    assert composed_epsilon(tuple(SampledGaussian(e.noise_multiplier, e.sample_rate, float(e.steps)) for e in events),
                            delta=DELTA) == first and len(asked) == 1  # steps 1000.0 is the question of 1000
    others = [(events[:1], DELTA), (events + [SampledGaussian(1.0, Q, 1)], DELTA), (events, DELTA / 2),
              ([SampledGaussian(1.0 + 1e-12, Q, STEPS), events[1]], DELTA)]
    for n, (other, delta) in enumerate(others, start=2):
        composed_epsilon(other, delta=delta)
        assert len(asked) == n
    clear_cache()
    assert composed_epsilon(events, delta=DELTA) == first and len(asked) == len(others) + 2
    assert composed_epsilon(events, delta=DELTA, accountant="pld") == pytest.approx(first, rel=0.01)
