import math

import pytest

from dpdiffusion.privacy.composition import ComposedPlan
from dpdiffusion.privacy.plan import PrivacyPlan, PrivacyPlanError


def part(sigma, *, batch=100, steps=50, n=10000, delta=1e-5, accountant="prv", clip=1.0):
    return PrivacyPlan(dataset_size=n, expected_batch_size=batch, steps=steps, max_grad_norm=clip,
                       noise_multiplier=sigma, delta=delta, accountant=accountant)


def test_one_part_spends_what_its_own_plan_spends():
    plan = part(1.1)
    assert ComposedPlan((("student", plan),)).epsilon() == pytest.approx(plan.planned_epsilon, rel=1e-6)


def test_composition_is_the_accountants_not_a_sum():
    a, b = part(1.0), part(1.5, batch=200, steps=30)
    composed = ComposedPlan((("a", a), ("b", b))).epsilon()
    assert max(a.planned_epsilon, b.planned_epsilon) < composed < a.planned_epsilon + b.planned_epsilon
    # two identical independent parts compose like one part run for twice the steps
    twice = ComposedPlan((("a", a), ("a2", a))).epsilon()
    assert twice == pytest.approx(part(1.0, steps=100).planned_epsilon, rel=0.01)


def test_steps_taken_so_far_spend_less_and_no_steps_spend_nothing():
    plan = ComposedPlan((("a", part(1.0)), ("b", part(1.0))))
    assert plan.epsilon({"a": 0, "b": 0}) == 0
    assert 0 < plan.epsilon({"a": 10, "b": 0}) < plan.epsilon({"a": 10, "b": 10}) < plan.planned_epsilon


@pytest.mark.parametrize("accountant", ["prv", "rdp"])
def test_calibration_meets_the_total_target_and_keeps_the_ratios(accountant):
    drafts = (("teacher", part(1.0, batch=200, steps=40, accountant=accountant)),
              ("student", part(1.0, accountant=accountant)),
              ("discriminator", part(2.0, accountant=accountant)))
    plan = ComposedPlan.calibrated(target_epsilon=3.0, parts=drafts)
    assert plan.target_epsilon == 3.0
    assert 3.0 * 0.99 < plan.planned_epsilon <= 3.0
    sigmas = {name: p.noise_multiplier for name, p in plan.parts}
    assert sigmas["discriminator"] == pytest.approx(2 * sigmas["student"])
    assert sigmas["teacher"] == pytest.approx(sigmas["student"])
    assert plan.to_dict()["parts"]["student"]["noise_multiplier"] == sigmas["student"]


def test_a_non_private_part_makes_the_total_infinite():
    plan = ComposedPlan((("a", part(1.0)), ("b", part(0.0, clip=math.inf))))
    assert plan.epsilon() == math.inf and plan.epsilon({"a": 5, "b": 0}) < math.inf


@pytest.mark.parametrize("parts, message", [
    ((("a", part(1.0)), ("a", part(1.0))), "distinct names"),
    ((("a", part(1.0)), ("b", part(1.0, delta=1e-6))), "disagree on delta"),
    ((("a", part(1.0)), ("b", part(1.0, n=5000))), "disagree on dataset_size"),
    ((("a", PrivacyPlan(dataset_size=10000, expected_batch_size=100, steps=5, max_grad_norm=1.0,
                        noise_multiplier=1.0, delta=1e-5, target_epsilon=1.0)),), "no targets of their own"),
])
def test_inconsistent_parts_are_refused(parts, message):
    with pytest.raises(PrivacyPlanError, match=message):
        ComposedPlan(parts)
