"""One Markdown table of the runs in an OUT_DIR of ``mnist_cpu.sh`` (here or in ``benchmarks/dpsad/``): epsilon spent, training time, FID,
precision/recall and the CNN's accuracy on the real test set.

    python benchmarks/finetune/summarise.py OUT_DIR
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def row(run: Path) -> str | None:
    metrics = run / "evaluation" / "metrics.json"
    if not metrics.is_file():
        return None
    m = json.loads(metrics.read_text())["metrics"]
    cnn = m["downstream"]["classifiers"]["cnn"]["synthetic"]["test_accuracy"]
    pr = m.get("precision_recall", {})
    scores = (f"{m['fid']['value']:.1f} | {pr.get('precision', float('nan')):.3f} / "
              f"{pr.get('recall', float('nan')):.3f} | {100 * cnn:.1f} |")
    if not (run / "release" / "privacy.json").is_file():  # a public stage-1 model alone
        return f"| {run.name} | public data only | 0 (no private data) | | | | 0 | | {scores}"
    privacy = json.loads((run / "release" / "privacy.json").read_text())
    timing = run.parent / f"{run.name}.time.json"
    seconds = json.loads(timing.read_text())["train_seconds"] if timing.is_file() else float("nan")
    plan, data = privacy["plan"], privacy.get("data", {})
    if "parts" in plan:  # a composed run (DP-SAD): the student's part, and the teacher's mode
        plan = {**plan["parts"]["student"], "steps": sum(p["steps"] for p in plan["parts"].values())}
        data = {**data, "start": {"kind": f"teacher {privacy['teacher']['mode']}"}}
    public = data.get("public") or {}
    start = data.get("start", {}).get("kind", "")
    if public:
        start = f"public {public['dataset']} {public.get('subset', '')}".strip()
    return (f"| {run.name} | {start} | {privacy['spent']['epsilon']:.3f} | {plan['noise_multiplier']:.3f} | "
            f"{plan['expected_batch_size']} | {plan['multiplicity']} | {plan['steps']} | {seconds / 60:.1f} | {scores}")


def main() -> None:
    out = Path(sys.argv[1])
    print("| run | start | epsilon | sigma | B | K | DP steps | train min | FID | P / R | CNN % |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for run in sorted(p for p in out.iterdir() if p.is_dir()):
        line = row(run)
        if line:
            print(line)


if __name__ == "__main__":
    main()
