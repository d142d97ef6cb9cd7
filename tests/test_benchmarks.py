"""The step benchmark and its profile run end to end at a tiny size (their numbers are not checked: timings
are never asserted; this keeps the scripts working as the engine changes)."""

import json
import subprocess
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def run(script: str, *args: str) -> str:
    out = subprocess.run([sys.executable, str(BENCHMARKS / script), *args], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout


def test_step_benchmark_measures_every_mode_and_cell():
    modes = ["plain", "layerwise", "ghost", "vmap", "opacus"]
    result = json.loads(run("dpsgd_step.py", "--batches", "2,3", "--ks", "1,2", "--rows", "2", "--reps", "1",
                            "--threads", "1", "--modes", ",".join(modes), "--json"))
    assert [(r["batch"], r["k"]) for r in result["rows"]] == [(2, 1), (2, 2), (3, 1), (3, 2)]
    for row in result["rows"]:
        assert all(row[f"{m}_s"] > 0 for m in modes)
        assert all(row[f"ratio_{m}_to_plain"] > 0 for m in modes if m != "plain")
    assert result["ratio_dp_to_plain"] == result["rows"][0][f"ratio_{result['default_engine']}_to_plain"]


def test_profile_names_the_stages():
    text = run("dpsgd_profile.py", "--batch", "2", "--k", "2", "--rows", "2", "--threads", "1", "--warmup", "0")
    for stage in ("plain:forward", "plain:backward", "dp:forward", "dp:backward", "dp:per_layer_rules",
                  "dp:clip_and_sum", "dp:noise", "dp:optimizer"):
        assert stage in text
