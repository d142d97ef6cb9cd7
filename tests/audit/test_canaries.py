import math

import numpy as np
import pytest
import torch

from dpdiffusion.audit.canaries import (
    AuditedDataset,
    audit_canaries,
    canary_file,
    draw_canaries,
    epsilon_lower_bound,
    load_canaries,
    p_value,
    save_canaries,
    with_canaries,
)
from dpdiffusion.data.dataset import ArrayDataset


def binomial_tail(r: int, v: int, q: float) -> float:
    """P[Binomial(r, q) >= v], summed term by term."""
    return sum(math.comb(r, j) * q**j * (1 - q) ** (r - j) for j in range(v, r + 1))


def delta_term(r: int, v: int, q: float) -> float:
    """max over i in 1..v of P[v - i <= Binomial(r, q) < v] / i, by brute force."""
    return max((sum(math.comb(r, j) * q**j * (1 - q) ** (r - j) for j in range(v - i, v)) / i
                for i in range(1, v + 1)), default=0.0)


@pytest.mark.parametrize("r,v,eps,delta", [(20, 15, 0.0, 0.0), (20, 15, 0.7, 0.0), (30, 28, 2.0, 1e-3), (10, 0, 1.0, 1e-2)])
def test_p_value_matches_the_binomial_tail_plus_the_delta_term(r, v, eps, delta):
    q = 1 / (1 + math.exp(-eps))
    expected = min(1.0, binomial_tail(r, v, q) + 2 * 50 * delta * delta_term(r, v, q))
    assert p_value(50, r, v, eps, delta) == pytest.approx(expected, rel=1e-9, abs=1e-15)


def test_p_value_grows_with_epsilon_and_delta():
    values = [p_value(100, 40, 35, eps, 0.0) for eps in (0.0, 0.5, 1.0, 2.0, 4.0)]
    assert values == sorted(values)
    assert p_value(100, 40, 35, 1.0, 1e-3) > p_value(100, 40, 35, 1.0, 0.0)


def test_lower_bound_is_the_largest_rejected_epsilon():
    bound = epsilon_lower_bound(1000, 100, 90, delta=1e-5)
    assert bound > 0
    assert p_value(1000, 100, 90, bound, 1e-5) < 0.05 <= p_value(1000, 100, 90, bound + 1e-3, 1e-5)
    assert epsilon_lower_bound(1000, 100, 50, delta=1e-5) == 0.0  # chance level proves nothing
    assert epsilon_lower_bound(1000, 0, 0, delta=1e-5) == 0.0


def randomised_response_scores(included: np.ndarray, epsilon: float, rng: np.random.Generator) -> np.ndarray:
    """The scores of an attacker against an epsilon-DP mechanism at its best: randomised response on membership."""
    truthful = rng.random(len(included)) < 1 / (1 + math.exp(-epsilon))
    guess = np.where(truthful, included, ~included)
    return guess + rng.random(len(included)) * 0.5  # ties broken at random


def test_bound_never_exceeds_the_true_epsilon_but_detects_leakage():
    rng = np.random.default_rng(0)
    true_epsilon, above = 1.0, 0
    bounds = []
    for _ in range(40):
        included = rng.random(2000) < 0.5
        result = audit_canaries(randomised_response_scores(included, true_epsilon, rng), included, delta=0.0)
        bounds.append(result["epsilon_lower_bound"])
        above += result["epsilon_lower_bound"] > true_epsilon
    assert above <= 4  # at 95% confidence: ~2 expected at most; the Bonferroni correction makes it rarer
    assert np.median(bounds) > 0.4  # and it sees the leakage of an epsilon-1 mechanism


def test_scores_unrelated_to_inclusion_give_no_bound():
    rng = np.random.default_rng(1)
    positive = 0
    for _ in range(40):
        included = rng.random(500) < 0.5
        positive += audit_canaries(rng.random(500), included, delta=1e-5)["epsilon_lower_bound"] > 0
    assert positive <= 4


def test_separating_scores_give_a_positive_bound():
    included = np.arange(200) % 2 == 0
    result = audit_canaries(included.astype(float), included, delta=1e-5)
    assert result["epsilon_lower_bound"] > 1.0
    assert result["best"]["correct"] == result["best"]["guesses"]


def dataset(n=10):
    return ArrayDataset(torch.randint(0, 256, (n, 1, 8, 8), dtype=torch.uint8), torch.arange(n) % 10,
                        transform=lambda x: x.float() / 127.5 - 1)


def test_canaries_are_binary_images_shaped_like_the_data_and_half_included():
    data = dataset()
    canaries = draw_canaries(4000, data, num_classes=10, seed=3)
    assert canaries.images.shape == (4000, 1, 8, 8) and canaries.images.dtype == torch.uint8
    assert set(canaries.images.unique().tolist()) == {0, 255}
    assert canaries.labels.min() >= 0 and canaries.labels.max() < 10
    assert abs(canaries.included.float().mean().item() - 0.5) < 0.03
    again = draw_canaries(4000, data, num_classes=10, seed=3)
    assert torch.equal(again.images, canaries.images) and torch.equal(again.included, canaries.included)


def test_audited_dataset_adds_the_included_canaries_on_top_of_the_plan(tmp_path):
    data = dataset()
    canaries = draw_canaries(30, data, num_classes=10, seed=0)
    audited = AuditedDataset(data, canaries)
    assert audited.planned_size == 10 and len(audited) == 10 + int(canaries.included.sum())
    batch = audited.batch(torch.arange(len(audited)))
    assert torch.equal(batch["x"][10:], canaries.images[canaries.included].float() / 127.5 - 1)
    save_canaries(tmp_path, canaries)
    loaded = load_canaries(tmp_path)
    assert torch.equal(loaded.images, canaries.images) and torch.equal(loaded.included, canaries.included)


def test_with_canaries_keeps_the_draw_on_resume_and_refuses_mismatches(tmp_path):
    data = dataset()
    first = with_canaries(data, 12, 10, tmp_path, resume=False)
    assert canary_file(tmp_path).is_file()
    resumed = with_canaries(data, 12, 10, tmp_path, resume=True)
    assert torch.equal(first.x, resumed.x)
    with pytest.raises(ValueError, match="started with 12 canaries"):
        with_canaries(data, 13, 10, tmp_path, resume=True)
    with pytest.raises(FileExistsError, match="already holds a run"):
        with_canaries(data, 12, 10, tmp_path, resume=False)
    with pytest.raises(ValueError, match="without canaries"):
        with_canaries(data, 12, 10, tmp_path / "other", resume=True)


def test_a_single_canary_is_refused_in_one_line_and_two_give_a_valid_result(tmp_path, capsys):
    from dpdiffusion.audit.canaries import check_canary_count
    from dpdiffusion.cli import main
    from tests.tiny import TINY_RUN, write_config

    with pytest.raises(ValueError, match="at least 2 canaries") as refused:
        audit_canaries(np.array([0.3]), np.array([True]), delta=1e-5)
    assert len(str(refused.value).splitlines()) == 1
    with pytest.raises(ValueError, match="at least 2 canaries"):
        check_canary_count(0)
    result = audit_canaries(np.array([0.9, 0.1]), np.array([True, False]), delta=1e-5)
    assert result["best"]["guesses"] == 2 and result["best"]["correct"] == 2
    assert 0 <= result["epsilon_lower_bound"] < math.inf
    run = tmp_path / "run"
    assert main(["train", write_config(tmp_path, TINY_RUN), "--run-dir", str(run), "--audit-canaries", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "at least 2 canaries" in err[0]
    assert not (run / "release").exists()


def test_canaries_are_drawn_from_secret_streams_the_inclusion_from_its_own(monkeypatch):
    """Not from a torch generator (which keeps 32 bits of its seed: canary images shown to an auditor would name
    it, and with it the inclusion draw); the inclusion draw is a stream of its own, keyed by the OS."""
    from dpdiffusion.dpsgd.secret_random import SecretStream

    purposes = []
    fresh = SecretStream.fresh.__func__

    def recording(cls, purpose):
        purposes.append(purpose)
        return fresh(cls, purpose)

    def refused(*args, **kwargs):
        raise AssertionError("a torch generator was used")

    monkeypatch.setattr(SecretStream, "fresh", classmethod(recording))
    monkeypatch.setattr(torch, "Generator", refused)
    a, b = (draw_canaries(200, dataset(), num_classes=10) for _ in range(2))
    assert sorted(set(purposes)) == [b"audit canary images", b"audit canary inclusion"]
    assert not torch.equal(a.images, b.images) and not torch.equal(a.included, b.included)
