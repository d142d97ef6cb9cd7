"""The step benchmark and its profile run end to end at a tiny size (their numbers are not checked: timings
are never asserted; this keeps the scripts working as the engine changes); the synthetic-uses benchmark's sample
cache grows without resampling what it holds."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.tiny import TINY_RUN

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
TINY = ["--rows", "2", "--reps", "1", "--threads", "1"]


def run(script: str, *args: str) -> str:
    out = subprocess.run([sys.executable, str(BENCHMARKS / script), *args], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout


def test_step_benchmark_measures_every_mode():
    modes = ["plain", "layerwise", "materialised", "ghost", "vmap", "opacus"]
    result = json.loads(run("dpsgd_step.py", "--batches", "2", "--ks", "2", *TINY, "--modes", ",".join(modes),
                            "--json"))
    (row,) = result["rows"]
    assert all(row[f"{m}_s"] > 0 and row[f"{m}_extra_mb"] >= 0 for m in modes)
    assert all(row[f"ratio_{m}_to_plain"] > 0 for m in modes if m != "plain")
    assert result["ratio_dp_to_plain"] == row[f"ratio_{result['default_engine']}_to_plain"]


def test_step_benchmark_in_one_process_pairs_each_step_with_plain():
    result = json.loads(run("dpsgd_step.py", "--batches", "2", "--ks", "1", *TINY, "--reps", "3", "--one-process",
                            "--modes", "plain,layerwise,materialised", "--json"))
    (row,) = result["rows"]
    assert result["one_process"] and row["one_process"]
    for mode in ("layerwise", "materialised"):
        assert len(row[f"{mode}_times_s"]) == 3 and len(row[f"ratio_{mode}_to_plain_by_step"]) == 3
        assert row[f"ratio_{mode}_to_plain"] == row[f"{mode}_s"] / row["plain_s"]
    assert "plain_extra_mb" not in row  # one process: no memory figure per mode


def test_cells_rounds_and_markdown_table(tmp_path):
    path = tmp_path / "r.json"
    run("dpsgd_step.py", "--batches", "2,3", "--ks", "1", *TINY, "--rounds", "2", "--modes", "plain,layerwise",
        "--json", "--out", str(path))
    result = json.loads(path.read_text())
    assert [(r["batch"], r["k"]) for r in result["rows"]] == [(2, 1), (3, 1)]
    assert all(len(r["ratio_layerwise_to_plain_by_round"]) == 2 for r in result["rows"])
    table = run("dpsgd_step.py", "--table", str(path)).splitlines()
    assert table[0].startswith("| B | K | plain s |") and len(table) == 4
    assert table[2].count("not run") == 4  # materialised, ghost, vmap and opacus were not measured


def test_profile_names_the_stages():
    text = run("dpsgd_profile.py", "--batch", "2", "--k", "2", "--rows", "2", "--threads", "1", "--warmup", "0")
    for stage in ("plain:forward", "plain:backward", "dp:forward", "dp:backward", "dp:per_layer_rules",
                  "dp:clip_and_sum", "dp:noise", "dp:optimizer"):
        assert stage in text


def test_stage_clocks_without_the_profiler():
    text = run("dpsgd_profile.py", "--batch", "2", "--k", "1", "--rows", "2", "--threads", "1", "--warmup", "0",
               "--timers", "2")
    assert "(median of 2, no profiler)" in text and "ratio layerwise/plain of the median steps" in text
    for stage in ("plain:forward", "plain:backward", "dp:forward", "dp:backward", "dp:ghost_norms",
                  "dp:per_layer_rules", "dp:clip_and_sum", "dp:bookkeeping", "dp:noise"):
        assert stage in text


def test_synthetic_uses_cache_grows_in_chunks(tmp_path):
    import importlib.util

    from dpdiffusion.cli import main
    from tests.tiny import TINY_RUN, write_config

    spec = importlib.util.spec_from_file_location("synthetic_uses", BENCHMARKS / "finetune" / "synthetic_uses.py")
    uses = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(uses)
    assert main(["train", write_config(tmp_path, TINY_RUN), "--run-dir", str(tmp_path / "run")]) == 0
    cache = tmp_path / "uses.samples.npz"
    images, labels, _ = uses.sample(tmp_path / "run", 7, "ddim", 2, cache, chunk=4)
    assert images.shape == (7, 8, 8, 1) and labels.shape == (7,)
    with np.load(cache) as f:
        assert int(f["parts"]) == 2 and len(f["images"]) == 7
    more, more_labels, _ = uses.sample(tmp_path / "run", 10, "ddim", 2, cache, chunk=4)
    assert np.array_equal(more[:7], images) and np.array_equal(more_labels[:7], labels)
    with np.load(cache) as f:
        assert int(f["parts"]) == 3 and len(f["images"]) == 10
    # the appended chunk has its own seed: not a repeat of the first chunk's images
    assert not np.array_equal(more[7:10], images[:3])
    fewer, _, _ = uses.sample(tmp_path / "missing-run", 5, "ddim", 2, cache)  # served from the cache alone
    assert np.array_equal(fewer, images[:5])


class FakeDetector(torch.nn.Module):
    """A stand-in for the Inception detector with its call signature: a fixed random projection of pooled pixels
    to 2048 features (fast, deterministic)."""

    def __init__(self):
        super().__init__()
        self.proj = torch.nn.Linear(48, 2048)

    def forward(self, x: torch.Tensor, return_features: bool = False) -> torch.Tensor:
        return self.proj(torch.nn.functional.adaptive_avg_pool2d(x / 255.0, 4).flatten(1))


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")
def test_utility_benchmark_end_to_end(tmp_path):
    """Train, sample, evaluate on a custom (tiny) protocol; a second call reuses the run and the samples; a run
    trained with other settings is refused; --table prints the results."""
    import os

    torch.manual_seed(0)
    detector = tmp_path / "detector.pt"
    torch.jit.script(FakeDetector()).save(str(detector))
    (tmp_path / "tiny.yaml").write_text(TINY_RUN)
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    args = [str(tmp_path / "tiny.yaml"), "--run-dir", str(tmp_path / "run"), "--num", "60", "--epochs", "1",
            "--fid-num", "30", "--inception", str(detector), "--out", str(tmp_path / "out")]

    def utility(*extra: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, str(BENCHMARKS / "utility.py"), *args, *extra], capture_output=True,
                              text=True, timeout=300, env=env)

    first = utility()
    assert first.returncode == 0, first.stderr[-2000:]
    result = json.loads((tmp_path / "out" / "utility_tiny_full-custom.json").read_text())
    protocol = result["protocol"]
    assert protocol["name"] == "full-custom" and not protocol["headline"] and protocol["synthetic"] == 60
    metrics = result["metrics"]
    assert metrics["synthetic_images"] == 30
    assert {split: e["reference"]["images"] for split, e in metrics["fid"].items()} == {"train": 1437, "test": 360}
    assert all(e["value"] >= 0 for e in metrics["fid"].values())
    assert 0 <= metrics["precision_recall"]["precision"] <= 1
    downstream = metrics["downstream"]
    assert set(downstream["classifiers"]) == {"logreg", "mlp"} and "cnn" in downstream["left_out"][0]
    assert downstream["classifiers"]["logreg"]["synthetic"]["train_images"] == 54
    assert result["privacy"]["epsilon"] > 0 and result["privacy"]["steps"] == 2
    assert set(result["wall_seconds"]) == {"train", "sample", "features", "classifiers"}
    assert result["sampling"]["nfe"] == 7 and not result["reused_run"]  # Heun, 4 levels
    assert (tmp_path / "out" / "utility_tiny_full-custom.png").is_file()
    assert "Not a headline figure" in (tmp_path / "out" / "utility_tiny_full-custom.md").read_text()

    again = utility("--sampler", "dpmpp2m", "--steps", "3")
    assert again.returncode == 0, again.stderr[-2000:]
    second = json.loads((tmp_path / "out" / "utility_tiny_full-custom_dpmpp2m-3.json").read_text())
    assert second["reused_run"] and second["wall_seconds"]["train"] == result["wall_seconds"]["train"]
    assert second["sampling"]["nfe"] == 3
    assert len(list((tmp_path / "run" / "release" / "synthetic").glob("*.npz"))) == 2

    # an evaluation stopped part-way resumes: each finished phase is kept owner-side and reused
    kept = tmp_path / "run" / "owner" / "utility" / "utility_tiny_full-custom.phases.json"
    phases = json.loads(kept.read_text())
    assert {"downstream", "image"} <= set(phases)
    del phases["image"]  # as if stopped while computing the features
    kept.write_text(json.dumps(phases))
    resumed = utility("--feature-cache", str(tmp_path / "features"))
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    third = json.loads((tmp_path / "out" / "utility_tiny_full-custom.json").read_text())
    assert third["wall_seconds"]["classifiers"] == result["wall_seconds"]["classifiers"]  # reused, not rerun
    assert third["metrics"]["downstream"] == result["metrics"]["downstream"]
    # the shared owner-side cache: the reference features and the scored synthetic images' (a stopped phase resumes)
    cached = sorted(p.name.split("-")[1] for p in (tmp_path / "features").glob("digits-*-8px-*.features.npy"))
    assert cached == ["synthetic", "test", "train"]
    fid = lambda r: {split: e["value"] for split, e in r["metrics"]["fid"].items()}  # noqa: E731
    assert fid(third) == fid(result)  # cached features are the features

    refused = utility("--set", "privacy.steps=3")
    assert refused.returncode != 0 and "other settings (privacy.steps)" in refused.stderr

    printed = run("utility.py", "--table", *map(str, sorted((tmp_path / "out").glob("*.json"))))
    assert printed.count("\n") == 4 and "full-custom" in printed


def test_recipe_search_gives_each_candidate_the_steps_of_its_budget(tmp_path):
    (tmp_path / "tiny.yaml").write_text(TINY_RUN)
    (tmp_path / "candidates.yaml").write_text("small: []\nbig: [privacy.batch_size=256]\n")
    printed = run("recipe_search.py", str(tmp_path / "tiny.yaml"), "--candidates", str(tmp_path / "candidates.yaml"),
                  "--budget-min", "0.5", "--probe-steps", "1", "--plan", "--runs", str(tmp_path / "runs"))
    plans = {p["candidate"]: p for p in map(json.loads, printed.splitlines())}
    assert set(plans) == {"small", "big"}
    for plan in plans.values():
        assert plan["budget_seconds"] == 30 and plan["steps"] == max(1, int(30 / plan["probe_seconds_per_step"]))
    assert not (tmp_path / "runs").exists()  # --plan trains nothing


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")
def test_recipe_search_trains_and_scores_a_candidate_with_its_budgeted_steps(tmp_path):
    import os

    detector = tmp_path / "detector.pt"
    torch.jit.script(FakeDetector()).save(str(detector))
    (tmp_path / "tiny.yaml").write_text(TINY_RUN)
    (tmp_path / "candidates.yaml").write_text("small: [training.lr=2.0e-3]\n")
    out = subprocess.run(
        [sys.executable, str(BENCHMARKS / "recipe_search.py"), str(tmp_path / "tiny.yaml"), "--candidates",
         str(tmp_path / "candidates.yaml"), "--budget-min", "0.01", "--probe-steps", "1", "--runs",
         str(tmp_path / "runs"), "--out", str(tmp_path / "out"), "--", "--num", "40", "--epochs", "1", "--fid-num",
         "20", "--inception", str(detector)],
        capture_output=True, text=True, timeout=300, env={**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache")})
    assert out.returncode == 0, out.stderr[-2000:]
    plan = json.loads(out.stdout.splitlines()[0])
    (result,) = [json.loads(p.read_text()) for p in (tmp_path / "out").glob("*.json")]
    assert result["name"] == "tiny-0.01min-small" and result["privacy"]["steps"] == plan["steps"]
    assert result["training"]["lr"] == 2e-3 and "training.lr=2.0e-3" in result["overrides"]
