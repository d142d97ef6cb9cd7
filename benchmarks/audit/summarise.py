"""The audit figures of `benchmarks/audit/mnist_cpu.sh OUT` as one markdown table.
    python benchmarks/audit/summarise.py OUT"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def row(out: Path, name: str) -> str:
    report = json.loads((out / name / "owner" / "audit" / "report.json").read_text())
    claimed, m, c = report["claimed"], report["membership"], report.get("canaries", {})
    times = [json.loads(p.read_text()) for p in (out / f"{name}.time.json", out / f"{name}.audit-time.json")
             if p.is_file()]
    minutes = " / ".join(f"{v / 60:.1f}" for t in times for v in t.values())
    eps = f"{claimed['epsilon']:.3f}" if claimed["private"] else "∞ (not private)"
    bound = c.get("epsilon_lower_bound")
    canaries = (f"{c['canaries']} ({c['included']} in); best: {c['best']['correct']} of {c['best']['guesses']} "
                 f"guesses right" if c else "none")
    return (f"| {name} | {eps} | {m['auc']:.3f} | {m['tpr_at_fpr']:.3f} | {canaries} | "
            f"{'' if bound is None else f'{bound:.3f}'} | {minutes} |")


def main(out: str) -> None:
    out_dir = Path(out)
    print("| run | claimed ε | MI ROC AUC | TPR at 1% FPR | canaries | ε lower bound (95%) | train / audit min |")
    print("|---|---|---|---|---|---|---|")
    for name in ("dp", "control", "control-512"):
        if (out_dir / name / "owner" / "audit" / "report.json").is_file():
            print(row(out_dir, name))


if __name__ == "__main__":
    main(sys.argv[1])
