"""Loss-based membership inference on a trained denoiser.

Each image is scored by its denoising loss on a fixed grid of noise levels, with fixed noises drawn from the
image's position and a public seed (so members and non-members are scored the same way): a model that
memorised an image denoises it better. Score = minus the mean loss (higher = more member-like). ROC AUC and the
true-positive rate at a fixed false-positive rate come from scikit-learn.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from sklearn.metrics import roc_auc_score, roc_curve

from dpdiffusion.diffusion.generate import image_seeds
from dpdiffusion.diffusion.preconditioning import Precond


@dataclass(frozen=True)
class ScoreGrid:
    """The attack's fixed grid: ``levels`` noise levels geometrically spaced in [sigma_min, sigma_max], ``noises``
    noise draws per level and image, from ``seed``."""

    levels: int = 8
    noises: int = 2
    sigma_min: float = 0.02
    sigma_max: float = 2.0
    seed: int = 0

    def sigmas(self) -> torch.Tensor:
        return torch.logspace(np.log10(self.sigma_min), np.log10(self.sigma_max), self.levels, dtype=torch.float64)


@torch.no_grad()
def denoising_scores(model: Precond, images: torch.Tensor, labels: torch.Tensor | None, grid: ScoreGrid = ScoreGrid(),
                     *, batch_size: int = 128) -> np.ndarray:
    """Minus the mean weighted denoising loss of each image (model range [-1, 1]) over the grid, shape [N]."""
    model = model.eval()
    sigmas = grid.sigmas().to(torch.float32)
    draws = grid.levels * grid.noises
    sigma = sigmas.repeat_interleave(grid.noises)  # [draws]
    weight = model.loss_weight(sigma)
    seeds = image_seeds(grid.seed, len(images))  # each image's noises depend on its position only
    scores = []
    for start in range(0, len(images), batch_size):
        x = images[start:start + batch_size].to(torch.float32)
        b = len(x)
        noise = torch.stack([torch.randn(draws, *x.shape[1:], generator=torch.Generator().manual_seed(s))
                             for s in seeds[start:start + b]])
        clean = x.unsqueeze(1).expand(b, draws, *x.shape[1:]).reshape(b * draws, *x.shape[1:])
        s = sigma.repeat(b)
        noisy = clean + s.view(-1, 1, 1, 1) * noise.reshape(b * draws, *x.shape[1:])
        y = None if labels is None else labels[start:start + b].repeat_interleave(draws)
        denoised = model(noisy, s, y)
        loss = (denoised - clean).pow(2).reshape(b, draws, -1).mean(dim=2) * weight
        scores.append(-loss.mean(dim=1))
    return torch.cat(scores).double().numpy() if scores else np.zeros(0)


def membership_metrics(member_scores: np.ndarray, nonmember_scores: np.ndarray, *, fpr: float = 0.01) -> dict:
    """ROC AUC, the TPR at ``fpr``, and the ROC curve (thinned to at most ~200 points for the report)."""
    y_true = np.r_[np.ones(len(member_scores)), np.zeros(len(nonmember_scores))]
    y_score = np.r_[member_scores, nonmember_scores]
    false_pos, true_pos, _ = roc_curve(y_true, y_score)
    tpr_at = float(np.max(true_pos[false_pos <= fpr])) if np.any(false_pos <= fpr) else 0.0
    keep = np.unique(np.r_[np.linspace(0, len(false_pos) - 1, min(len(false_pos), 200)).astype(int)])
    return {"auc": float(roc_auc_score(y_true, y_score)), "fpr": fpr, "tpr_at_fpr": tpr_at,
            "members": len(member_scores), "nonmembers": len(nonmember_scores),
            "roc": {"fpr": false_pos[keep].tolist(), "tpr": true_pos[keep].tolist()}}
