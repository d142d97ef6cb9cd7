"""The noise calibration's search: the smallest scale within 0.1% that meets the target, checked against functions
whose root is known, a slow scan, and ones built to trip a search (infinite, zero, jittery and step-like epsilons)."""

import math

import pytest

from dpdiffusion.privacy.accounting import calibrate

TOLERANCE = 1e-3


def counted(f):
    calls = []

    def g(s):
        calls.append(s)
        return f(s)
    return g, calls


def assert_smallest_within_tolerance(f, target, s):
    assert f(s) <= target  # the result meets the target: it was evaluated there
    assert f(s / (1 + TOLERANCE)) > target  # and nothing 0.1% smaller does


@pytest.mark.parametrize("power", [0.5, 1.0, 1.3, 2.0, 4.0])
@pytest.mark.parametrize("target", [0.05, 1.0, 10.0])
@pytest.mark.parametrize("guess", [1e-3, 1.0, 300.0])
def test_power_laws_are_solved_within_tolerance(power, target, guess):
    f = lambda s: 3.0 / s ** power  # noqa: E731
    s = calibrate(f, target_epsilon=target, initial_guess=guess)
    root = (3.0 / target) ** (1 / power)
    assert root <= s <= root * (1 + TOLERANCE)
    assert_smallest_within_tolerance(f, target, s)


def test_agrees_with_a_slow_scan_on_a_curved_decreasing_function():
    def f(s):
        return math.exp(2.0 / s) - 1 + 0.3 / s ** 3
    target = 4.0
    s = calibrate(f, target_epsilon=target)
    scan = next(x for x in (0.01 * 1.0001 ** k for k in range(200_000)) if f(x) <= target)  # steps of 0.01%
    assert scan / (1 + TOLERANCE) <= s <= scan * (1 + TOLERANCE)
    assert_smallest_within_tolerance(f, target, s)


def test_infinite_and_zero_epsilons_on_the_way():
    f = lambda s: math.inf if s < 0.5 else (0.0 if s > 2.0 else 1.0 / s)  # noqa: E731
    for target in (1.5, 0.6):
        s = calibrate(f, target_epsilon=target, initial_guess=10.0)
        assert_smallest_within_tolerance(f, target, s)


def test_a_jittery_accountant_still_gets_a_scale_that_meets_the_target():
    # an accountant's discretisation makes epsilon wobble by ~0.3%: not monotone at the scale of the tolerance
    f = lambda s: (2.0 / s) * (1 + 0.003 * math.sin(5000 * s))  # noqa: E731
    for target in (0.7, 1.0, 3.0, 9.0):
        f_counted, calls = counted(f)
        s = calibrate(f_counted, target_epsilon=target)
        assert f(s) <= target and len(calls) < 60
        assert s <= (2.0 / target) * 1.004  # near the smallest: within the wobble


def test_a_step_function_is_bracketed_to_the_tolerance():
    f = lambda s: 100.0 if s < 1.2345 else 0.01  # noqa: E731
    f_counted, calls = counted(f)
    s = calibrate(f_counted, target_epsilon=1.0)
    assert 1.2345 <= s <= 1.2345 * (1 + TOLERANCE) and len(calls) < 40


def test_bad_targets_and_unreachable_ones_are_refused():
    for bad in (0.0, -1.0, math.inf, math.nan):
        with pytest.raises(ValueError, match="finite number > 0"):
            calibrate(lambda s: 1 / s, target_epsilon=bad)
    with pytest.raises(ValueError, match="no noise multiplier below 1e6"):
        calibrate(lambda s: 5.0, target_epsilon=1.0)
