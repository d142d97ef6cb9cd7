"""The step benchmark and its profile run end to end at a tiny size (their numbers are not checked: timings
are never asserted; this keeps the scripts working as the engine changes)."""

import json
import subprocess
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
TINY = ["--rows", "2", "--reps", "1", "--threads", "1"]


def run(script: str, *args: str) -> str:
    out = subprocess.run([sys.executable, str(BENCHMARKS / script), *args], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout


def test_step_benchmark_measures_every_mode():
    modes = ["plain", "layerwise", "ghost", "vmap", "opacus"]
    result = json.loads(run("dpsgd_step.py", "--batches", "2", "--ks", "2", *TINY, "--modes", ",".join(modes),
                            "--json"))
    (row,) = result["rows"]
    assert all(row[f"{m}_s"] > 0 and row[f"{m}_extra_mb"] >= 0 for m in modes)
    assert all(row[f"ratio_{m}_to_plain"] > 0 for m in modes if m != "plain")
    assert result["ratio_dp_to_plain"] == row[f"ratio_{result['default_engine']}_to_plain"]


def test_cells_rounds_and_markdown_table(tmp_path):
    path = tmp_path / "r.json"
    run("dpsgd_step.py", "--batches", "2,3", "--ks", "1", *TINY, "--rounds", "2", "--modes", "plain,layerwise",
        "--json", "--out", str(path))
    result = json.loads(path.read_text())
    assert [(r["batch"], r["k"]) for r in result["rows"]] == [(2, 1), (3, 1)]
    assert all(len(r["ratio_layerwise_to_plain_by_round"]) == 2 for r in result["rows"])
    table = run("dpsgd_step.py", "--table", str(path)).splitlines()
    assert table[0].startswith("| B | K | plain s |") and len(table) == 4
    assert table[2].count("not run") == 3  # ghost, vmap and opacus were not measured


def test_profile_names_the_stages():
    text = run("dpsgd_profile.py", "--batch", "2", "--k", "2", "--rows", "2", "--threads", "1", "--warmup", "0")
    for stage in ("plain:forward", "plain:backward", "dp:forward", "dp:backward", "dp:per_layer_rules",
                  "dp:clip_and_sum", "dp:noise", "dp:optimizer"):
        assert stage in text
