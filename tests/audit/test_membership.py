import numpy as np
import pytest
import torch

from dpdiffusion.audit.membership import ScoreGrid, denoising_scores, membership_metrics
from dpdiffusion.diffusion.preconditioning import EDMPrecond


def pairwise_auc(members: np.ndarray, nonmembers: np.ndarray) -> float:
    """P[member score > non-member score] + half the ties, over all pairs."""
    wins = sum((m > n) + 0.5 * (m == n) for m in members for n in nonmembers)
    return wins / (len(members) * len(nonmembers))


def best_tpr(members: np.ndarray, nonmembers: np.ndarray, fpr: float) -> float:
    """The best TPR of any threshold "score >= t" whose FPR is at most ``fpr``, by scanning every threshold."""
    best = 0.0
    for t in np.r_[members, nonmembers, np.inf]:
        if np.mean(nonmembers >= t) <= fpr:
            best = max(best, float(np.mean(members >= t)))
    return best


@pytest.mark.parametrize("shift", [0.0, 0.5, 3.0])
def test_metrics_match_slow_references(shift):
    rng = np.random.default_rng(0)
    members = np.round(rng.normal(shift, 1, 300), 1)  # rounded: ties included
    nonmembers = np.round(rng.normal(0, 1, 250), 1)
    metrics = membership_metrics(members, nonmembers, fpr=0.01)
    assert metrics["auc"] == pytest.approx(pairwise_auc(members, nonmembers))
    assert metrics["tpr_at_fpr"] == pytest.approx(best_tpr(members, nonmembers, 0.01))
    assert metrics["roc"]["fpr"][0] == 0 and metrics["roc"]["tpr"][-1] == 1


class Memoriser(EDMPrecond):
    """A denoiser that returns the nearest of its training images (under the posterior weights): an overfit model."""

    def __init__(self, train: torch.Tensor):
        super().__init__(torch.nn.Identity(), sigma_data=0.5)
        self.images = train

    def forward(self, x, sigma, labels=None):
        d = ((x.unsqueeze(1) - self.images.unsqueeze(0)) ** 2).flatten(2).sum(2)
        w = torch.softmax(-d / (2 * sigma.view(-1, 1) ** 2), dim=1)
        return torch.einsum("bn,nchw->bchw", w, self.images)


def test_a_memorising_denoiser_is_caught_and_scores_do_not_depend_on_batching():
    torch.manual_seed(0)
    data = torch.rand(40, 1, 6, 6) * 2 - 1
    model = Memoriser(data[:20])
    grid = ScoreGrid(levels=4, noises=2, sigma_min=0.05, sigma_max=0.5)
    members = denoising_scores(model, data[:20], None, grid, batch_size=7)
    nonmembers = denoising_scores(model, data[20:], None, grid, batch_size=20)
    assert np.allclose(members, denoising_scores(model, data[:20], None, grid, batch_size=20), rtol=1e-5, atol=1e-7)
    assert membership_metrics(members, nonmembers)["auc"] > 0.95


def test_noises_come_from_the_position_and_the_public_seed():
    torch.manual_seed(1)
    model = Memoriser(torch.rand(5, 1, 4, 4) * 2 - 1)
    x = torch.rand(1, 1, 4, 4).expand(3, 1, 4, 4)  # one image at three positions
    grid = ScoreGrid(levels=2, noises=1, seed=0)
    scores = denoising_scores(model, x, None, grid)
    assert scores.shape == (3,) and len(set(scores.tolist())) == 3  # each position its own noises
    assert np.array_equal(scores, denoising_scores(model, x, None, grid))  # reproducible from the seed
    assert not np.allclose(scores, denoising_scores(model, x, None, ScoreGrid(levels=2, noises=1, seed=1)))
