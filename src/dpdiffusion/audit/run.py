"""``dpdiffusion audit RUN_DIR``: membership inference on members vs held-out non-members, and the one-run canary
bound if the run was trained with ``--audit-canaries``. The audit reads the private data and the secret canary
draw without noise: its report stays with the data owner (``RUN_DIR/owner/audit/``)."""

from __future__ import annotations

import dataclasses
import html
import math
from pathlib import Path

import numpy as np
import torch

from dpdiffusion.audit.canaries import audit_canaries, check_canary_count, load_canaries
from dpdiffusion.audit.membership import ScoreGrid, denoising_scores, membership_metrics
from dpdiffusion.data.datasets import load_dataset
from dpdiffusion.data.transforms import to_model_range
from dpdiffusion.diffusion.generate import load_release
from dpdiffusion.evaluation.report import svg_plot
from dpdiffusion.io import write_json_atomic
from dpdiffusion.release import check_located, owner_data
from dpdiffusion.run_folder import RunFolder

AUDIT_NOTE = ("Owner-side report: membership scores are computed from private training images and the secret canary "
              "draw without noise. An empirical lower bound below the claimed epsilon does not prove the guarantee; "
              "one above it proves the implementation wrong.")


def _pick(n: int, count: int, seed: int) -> torch.Tensor:
    """``count`` positions of ``n`` chosen by a public seed (never by content)."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:min(n, count)]


def audit_run(run_dir: str | Path, *, members: int = 1000, grid: ScoreGrid = ScoreGrid(), seed: int = 0,
              data_dir: str | None = None, data_path: str | None = None, test_path: str | None = None) -> dict:
    """Audit a finished run; write ``owner/audit/report.{json,md,html}`` and ``roc.svg``; return the report. The
    private data's settings come from the owner's ``RUN_DIR/config.json`` (the release withholds its paths),
    overridden by ``data_dir``, ``data_path`` and ``test_path``."""
    run_dir = Path(run_dir)
    model, config, privacy = load_release(run_dir)
    data = owner_data(run_dir, config.data)
    data = dataclasses.replace(data, data_dir=data_dir or data.data_dir, path=data_path or data.path,
                               test_path=test_path or data.test_path)
    check_located(data, "--data-path and --test-path")
    canaries = load_canaries(run_dir)
    if canaries is not None:
        check_canary_count(len(canaries))  # before the costly scoring
        drawn = ((privacy.data.audit_canaries or {}) if privacy is not None and privacy.data else {}).get("drawn")
        if drawn != len(canaries):  # canaries the run did not train with would measure nothing
            raise ValueError(f"{run_dir}: owner/audit holds {len(canaries)} canaries but the run's report says "
                             f"{drawn or 'none'} were drawn for its training; the canary file is not this run's")
    conditional = bool(config.model.num_classes)

    def scores(dataset, rows: torch.Tensor) -> np.ndarray:
        batch = dataset.batch(rows)
        return denoising_scores(model, batch["x"], batch["y"] if conditional else None, grid)

    train, test = load_dataset(data, "train"), load_dataset(data, "test")
    count = min(members, len(train), len(test))
    inside = scores(train, _pick(len(train), count, seed))
    outside = scores(test, _pick(len(test), count, seed + 1))
    private = privacy is not None and privacy.private  # a model without a report claims nothing
    claimed = privacy.epsilon if privacy is not None and private else math.inf
    delta = privacy.spent.delta if privacy is not None and privacy.spent.delta > 0 else 1e-5
    report = {
        "run": str(run_dir),
        "claimed": {"epsilon": claimed, "delta": delta, "private": private},
        "membership": {**membership_metrics(inside, outside), "attack": "denoising loss",
                       "grid": dataclasses.asdict(grid), "members_from": "train", "nonmembers_from": "test"},
    }
    if canaries is not None:
        x = to_model_range(canaries.images)
        y = canaries.labels if conditional else None
        canary_scores = denoising_scores(model, x, y, grid)
        result = audit_canaries(canary_scores, canaries.included.numpy(), delta)
        result["within_claim"] = result["epsilon_lower_bound"] <= claimed
        report["canaries"] = result
    write_audit_report(RunFolder(run_dir).audit, report)
    return report


def write_audit_report(out: Path, report: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    m = report["membership"]
    svg = svg_plot(m["roc"]["fpr"], m["roc"]["tpr"], title=f"ROC, denoising-loss attack (AUC {m['auc']:.3f})",
                   xlabel="false-positive rate", ylabel="true-positive rate")
    (out / "roc.svg").write_text(svg)
    write_json_atomic(out / "report.json", report)
    claimed = report["claimed"]
    rows = [("claimed", f"epsilon {claimed['epsilon']:.4g} at delta {claimed['delta']:.3g}"
                        + ("" if claimed["private"] else " (NOT private: a control run)")),
            ("membership inference", f"ROC AUC {m['auc']:.3f}, TPR {m['tpr_at_fpr']:.3f} at FPR {m['fpr']:.0%} "
                                     f"({m['members']} members vs {m['nonmembers']} non-members)")]
    if "canaries" in report:
        c, best = report["canaries"], report["canaries"]["best"]
        rows.append(("canary audit (one run)",
                     f"epsilon >= {c['epsilon_lower_bound']:.3f} at {c['confidence']:.0%} confidence "
                     f"({best['correct']}/{best['guesses']} correct guesses, {c['canaries']} canaries, "
                     f"{c['included']} included){'' if c['within_claim'] else ' -- ABOVE the claimed epsilon'}"))
    md = ["# Privacy audit", "", f"> {AUDIT_NOTE}", "", "| | |", "|---|---|"]
    md += [f"| {k} | {v} |" for k, v in rows] + ["", "![ROC](roc.svg)", ""]
    (out / "report.md").write_text("\n".join(md))
    table = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in rows)
    (out / "report.html").write_text(
        "<!doctype html><html><head><meta charset='utf-8'><title>Privacy audit</title></head>"
        f"<body style='font-family:sans-serif;max-width:960px;margin:2em auto'><h1>Privacy audit</h1>"
        f"<p>{html.escape(AUDIT_NOTE)}</p><table>{table}</table>{svg}</body></html>")
