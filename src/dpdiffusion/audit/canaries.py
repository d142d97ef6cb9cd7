"""One-run canary audit (Steinke, Nasr, Jagielski 2023, "Privacy auditing with one (1) training run").

M canaries -- random binary images with random labels, far from any real image -- are drawn before training;
each is added to the training data independently with probability 1/2. The draw stays with the data owner
(``RUN_DIR/owner/audit/canaries.safetensors``), apart from the released model. After training, the auditor scores
every canary (``membership.denoising_scores``), guesses "in" for the k best-scoring and "out" for the k worst, and
counts the correct guesses. If training is (ε, δ)-DP, the number of correct guesses is dominated by a binomial with
success probability e^ε / (1 + e^ε) (up to a δ term), which turns the count into a lower bound on ε that holds
with the stated confidence. The canaries are sampled with the accounted rate like every other example; the
plan's dataset size (hence q) is that of the real data, so it does not depend on the secret draw.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from scipy import stats

from dpdiffusion.checkpoint import load_checkpoint, save_checkpoint
from dpdiffusion.data.dataset import ArrayDataset
from dpdiffusion.dpsgd.secret_random import SecretStream
from dpdiffusion.run_folder import RunFolder

# Pre-registered guess counts, as fractions of M: the bound is the best over these, each tested at
# (1 - confidence) / len(GUESS_FRACTIONS) (Bonferroni), so choosing the best does not inflate the confidence.
GUESS_FRACTIONS = (0.02, 0.05, 0.1, 0.2, 0.5)


@dataclass(frozen=True)
class Canaries:
    """Canary images (uint8, the dataset's layout), labels, and the secret inclusion draw."""

    images: torch.Tensor
    labels: torch.Tensor
    included: torch.Tensor  # bool [M]

    def __len__(self) -> int:
        return len(self.images)


def draw_canaries(count: int, like: ArrayDataset, num_classes: int, seed: int | None = None) -> Canaries:
    """``count`` random binary images shaped like ``like``'s, random labels, and inclusion with probability 1/2.
    Drawn from secret streams (``seed`` None: keyed by the OS CSPRNG; a seed is for tests only). The inclusion
    draw has its own stream: canaries handed to an outside auditor do not give away which went in (a torch
    generator keeps 32 bits of its seed, so its images would name it)."""
    check_canary_count(count)

    def stream(purpose: bytes) -> SecretStream:
        return SecretStream.fresh(purpose) if seed is None else SecretStream.reproducible_from(seed, purpose)

    shape = (count, *like.x.shape[1:])
    drawn = stream(b"audit canary images")
    images = (drawn.uniform(math.prod(shape)).view(shape) < 0.5).to(torch.uint8) * 255
    classes = max(num_classes, 1)
    labels = (drawn.uniform(count) * classes).long().clamp_(max=classes - 1)
    included = stream(b"audit canary inclusion").bernoulli(count, 0.5)
    return Canaries(images.to(like.x.dtype), labels.to(like.y.dtype), included)


def save_canaries(run_dir: str | Path, canaries: Canaries) -> Path:
    path = canary_file(run_dir)
    save_checkpoint(path, {"images": canaries.images, "labels": canaries.labels,
                           "included": canaries.included.to(torch.uint8)}, {"count": len(canaries)})
    return path


def load_canaries(run_dir: str | Path) -> Canaries | None:
    path = canary_file(run_dir)
    if not path.is_file():
        return None
    tensors, _ = load_checkpoint(path)
    return Canaries(tensors["images"], tensors["labels"], tensors["included"].bool())


class AuditedDataset(ArrayDataset):
    """The private examples followed by the included canaries. ``planned_size`` is the number of private
    examples: the plan's q = B / planned_size is public and does not reveal how many canaries went in."""

    def __init__(self, dataset: ArrayDataset, canaries: Canaries):
        keep = canaries.included
        super().__init__(torch.cat([dataset.x, canaries.images[keep]]), torch.cat([dataset.y, canaries.labels[keep]]),
                         transform=dataset.transform, source=dataset.source, class_names=dataset.class_names)
        self.planned_size, self.canaries_drawn = len(dataset), len(canaries)


def with_canaries(dataset: ArrayDataset, count: int | None, num_classes: int, run_dir: str | Path, *,
                  resume: bool) -> ArrayDataset:
    """The training set with ``count`` canaries (None: none): drawn and saved for a new run, reloaded on resume,
    where the count must be the one the run started with."""
    stored = (canary_file(run_dir)).exists()
    if not resume:
        if stored or RunFolder(run_dir).traces_of_training() or RunFolder(run_dir).release.exists():
            raise FileExistsError(f"{run_dir} already holds a run; resume it with --resume or pick another folder")
        if count is None:
            return dataset
        canaries = draw_canaries(count, dataset, num_classes)
        save_canaries(run_dir, canaries)
        return AuditedDataset(dataset, canaries)
    loaded = load_canaries(run_dir)
    started_with = len(loaded) if loaded is not None else None
    if started_with != count:
        began = f"with {started_with} canaries" if started_with else "without canaries"
        raise ValueError(f"--audit-canaries {count or 'not given'}: the run in {run_dir} was started {began}; "
                         "pass the same")
    return dataset if loaded is None else AuditedDataset(dataset, loaded)


# -- the lower bound -----------------------------------------------------------------------------------------------
MIN_CANARIES = 2  # the audit guesses "in" for one canary and "out" for another, at least


def check_canary_count(count: int) -> None:
    if count < MIN_CANARIES:
        raise ValueError(f"the canary audit needs at least {MIN_CANARIES} canaries (one guessed in, one out), got "
                         f"{count}: train with --audit-canaries {MIN_CANARIES} or more")


def p_value(m: int, r: int, v: int, epsilon: float, delta: float) -> float:
    """Probability of at least ``v`` correct guesses out of ``r`` (of ``m`` canaries) if training were
    (epsilon, delta)-DP (Steinke et al. 2023: the binomial tail of epsilon-DP randomised response plus
    their term for delta)."""
    if not 0 <= v <= r <= m:
        raise ValueError(f"need 0 <= v <= r <= m, got v={v}, r={r}, m={m}")
    q = 1.0 / (1.0 + math.exp(-epsilon))  # the accuracy of epsilon-DP randomised response
    beta = float(stats.binom.sf(v - 1, r, q))
    # alpha = max over i of P[v - i <= Binomial(r, q) < v] / i
    tail = np.cumsum(stats.binom.pmf(np.arange(v - 1, -1, -1), r, q)) if v else np.zeros(0)
    alpha = float(np.max(tail / np.arange(1, v + 1))) if v else 0.0
    return min(1.0, beta + alpha * delta * 2 * m)


def epsilon_lower_bound(m: int, r: int, v: int, delta: float, confidence: float = 0.95) -> float:
    """The largest epsilon that ``v`` correct guesses of ``r`` reject at ``confidence``; 0 if none is rejected."""
    level = 1.0 - confidence
    if r == 0 or p_value(m, r, v, 0.0, delta) >= level:
        return 0.0
    low, high = 0.0, 1.0
    while p_value(m, r, v, high, delta) < level:
        low, high = high, 2 * high
        if high > 1e3:
            return math.inf
    for _ in range(50):
        mid = (low + high) / 2
        low, high = (mid, high) if p_value(m, r, v, mid, delta) < level else (low, mid)
    return low


def audit_canaries(scores: np.ndarray, included: np.ndarray, delta: float, confidence: float = 0.95) -> dict:
    """Guess "in" for the k highest and "out" for the k lowest ``scores`` (higher = more member-like), for each
    pre-registered k; the reported bound is the best of them, each tested at a Bonferroni-corrected level."""
    scores, included = np.asarray(scores, dtype=np.float64), np.asarray(included, dtype=bool)
    m = len(scores)
    check_canary_count(m)
    if len(included) != m:
        raise ValueError(f"{m} scores but {len(included)} inclusion flags")
    order = np.argsort(-scores, kind="stable")
    level = (1.0 - confidence) / len(GUESS_FRACTIONS)
    trials = []
    for fraction in GUESS_FRACTIONS:
        k = max(1, min(m // 2, int(round(fraction * m))))
        correct = int(included[order[:k]].sum() + (~included[order[m - k:]]).sum())
        trials.append({"guesses": 2 * k, "correct": correct,
                       "epsilon_lower_bound": epsilon_lower_bound(m, 2 * k, correct, delta, 1.0 - level)})
    best = max(trials, key=lambda t: t["epsilon_lower_bound"])
    return {"canaries": m, "included": int(included.sum()), "confidence": confidence, "delta": delta,
            "epsilon_lower_bound": best["epsilon_lower_bound"], "best": best, "trials": trials}


def canary_file(run_dir: str | Path) -> Path:
    """The secret draw of which canaries went in: the owner's, never released."""
    return RunFolder(run_dir).audit / "canaries.safetensors"
