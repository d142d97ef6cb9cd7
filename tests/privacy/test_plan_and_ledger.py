import json
import math

import pytest

from dpdiffusion.privacy.ledger import LedgerMismatchError, PrivacyBudgetError, PrivacyLedger
from dpdiffusion.privacy.plan import PrivacyPlan, PrivacyPlanError

BASE = dict(dataset_size=1000, expected_batch_size=50, steps=40, max_grad_norm=1.0, noise_multiplier=1.1, delta=1e-4)


def plan(**overrides):
    return PrivacyPlan(**{**BASE, **overrides})


def test_calibrated_plan_never_exceeds_its_target():
    p = PrivacyPlan.calibrated(
        target_epsilon=3.0, delta=1e-4, dataset_size=1000, expected_batch_size=50, epochs=2, max_grad_norm=1.0
    )
    assert p.steps == 40 and p.sample_rate == 0.05
    assert p.planned_epsilon <= 3.0
    assert p.planned_epsilon > 2.9  # and the noise is not wastefully large


@pytest.mark.parametrize("delta", [1e-3, 0.5, 0.0, 1.0])
def test_delta_of_one_over_n_or_more_is_refused(delta):
    with pytest.raises(PrivacyPlanError, match="delta"):
        plan(delta=delta)


@pytest.mark.parametrize(
    "overrides,match",
    [
        (dict(dataset_size=0), "empty"),
        (dict(expected_batch_size=2000), "expected batch size"),
        (dict(max_grad_norm=0.0), "clip norm"),
        (dict(multiplicity=0), "multiplicity"),
        (dict(accountant="moments"), "accountant"),
        (dict(noise_multiplier=0.0), "private run"),
        (dict(target_epsilon=-1.0), "target epsilon"),
    ],
)
def test_bad_plans_refused(overrides, match):
    with pytest.raises(PrivacyPlanError, match=match):
        plan(**overrides)


def test_steps_or_epochs_exactly_one():
    with pytest.raises(PrivacyPlanError, match="exactly one"):
        PrivacyPlan.calibrated(
            target_epsilon=1.0, delta=1e-4, dataset_size=1000, expected_batch_size=50, max_grad_norm=1.0
        )


def test_a_plan_over_its_target_is_refused():
    with pytest.raises(PrivacyBudgetError, match="more than its target"):
        PrivacyLedger(plan(noise_multiplier=0.5, target_epsilon=1.0))
    PrivacyLedger(plan(noise_multiplier=5.0, target_epsilon=1.0))  # well within: accepted


def test_ledger_counts_steps_and_stops_at_the_plan():
    ledger = PrivacyLedger(plan(steps=3))
    assert ledger.epsilon_spent() == 0.0
    for _ in range(3):
        ledger.record_step()
    assert ledger.epsilon_spent() == pytest.approx(ledger.plan.epsilon_after(3))
    with pytest.raises(PrivacyBudgetError):
        ledger.record_step()
    assert ledger.steps_taken == 3


def test_ledger_resumes_through_json(tmp_path):
    ledger = PrivacyLedger(plan())
    for _ in range(7):
        ledger.record_step()
    state = json.loads(json.dumps(ledger.state_dict(), allow_nan=False))
    resumed = PrivacyLedger(plan())
    resumed.load_state_dict(state)
    assert resumed.steps_taken == 7 and resumed.epsilon_spent() == ledger.epsilon_spent()


@pytest.mark.parametrize(
    "changed", [dict(noise_multiplier=1.0), dict(expected_batch_size=60), dict(max_grad_norm=2.0), dict(multiplicity=4), dict(delta=1e-5), dict(dataset_size=999)]
)
def test_resume_with_changed_privacy_settings_is_refused(changed):
    ledger = PrivacyLedger(plan())
    ledger.record_step()
    with pytest.raises(LedgerMismatchError, match="changed privacy settings"):
        PrivacyLedger(plan(**changed)).load_state_dict(ledger.state_dict())


def test_report_written_as_json_with_everything_spent(tmp_path):
    ledger = PrivacyLedger(plan(multiplicity=4))
    ledger.record_step()
    ledger.write(tmp_path / "privacy.json")
    report = json.loads((tmp_path / "privacy.json").read_text())
    assert report["private"] is True
    for key in ("sample_rate", "noise_multiplier", "max_grad_norm", "steps", "delta", "multiplicity", "accountant"):
        assert key in report["plan"]
    assert report["spent"]["steps"] == 1 and report["spent"]["epsilon"] > 0
    assert report["accountant"] == "prv"


def test_non_private_control_is_labelled(tmp_path):
    ledger = PrivacyLedger(plan(noise_multiplier=0.0, max_grad_norm=math.inf))
    ledger.record_step()
    ledger.write(tmp_path / "privacy.json")
    report = json.loads((tmp_path / "privacy.json").read_text())
    assert report["private"] is False and "NOT differentially private" in report["warning"]
    assert report["spent"]["epsilon"] == "inf"
    resumed = PrivacyLedger(plan(noise_multiplier=0.0, max_grad_norm=math.inf))
    resumed.load_state_dict(json.loads(json.dumps(ledger.state_dict(), allow_nan=False)))
    assert resumed.steps_taken == 1


def test_noise_that_swamps_the_signal_is_named():
    """sigma / B >= 1: each coordinate's noise in the noisy mean is at least C, the norm of the whole signal."""
    assert plan(noise_multiplier=49.0).noise_warning() is None
    warning = plan(noise_multiplier=50.0).noise_warning()
    assert warning is not None and "sigma / B = 50 / 50 = 1 >= 1" in warning and "\n" not in warning
    assert plan(noise_multiplier=0.0, max_grad_norm=math.inf).noise_warning() is None  # a non-private control
