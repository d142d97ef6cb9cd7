"""The best recipe for a fixed budget of DP training time: each candidate (a preset plus overrides) gets the number
of steps that fits the budget on this machine, is trained, and is scored by the utility yardstick.

    python benchmarks/recipe_search.py PRESET --candidates benchmarks/recipes/mnist_cpu.yaml --budget-min 60 \
        [--only NAME,...] [--quick] [--overhead 1.1] [--runs runs/search] [--out benchmarks/results] [-- UTILITY ARGS]
    python benchmarks/recipe_search.py PRESET --candidates FILE --budget-min 60 --plan   # steps only, no training

The candidates file maps a name to a list of ``KEY=VALUE`` overrides of the preset. A candidate's steps come from
timing a few DP steps of its configuration (model, batch size B, K, engine) on *random* images of the dataset's
shape -- public data, so the probe spends no privacy -- times ``--overhead`` (the training loop's own cost: EMA,
data, checkpoints; measure it on a finished run as its training time per step over the probe's). The noise scale
is then calibrated for those steps as usual, so every candidate spends the preset's epsilon.

Choosing among candidates by their accuracy on private data is itself a use of the private data: a search like
this one costs privacy beyond each run's epsilon unless it runs on public stand-in data. The shipped presets are
chosen once, here, and their epsilon is the shipped run's; the write-up says so.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).parent))

import utility  # noqa: E402


def seconds_per_step(source: str, overrides: list[str], probe_steps: int = 3) -> float:
    """Median wall time of one DP step of this configuration on random images (after one warm-up step)."""
    import torch

    from dpdiffusion.data.datasets import load_dataset
    from dpdiffusion.dpsgd.secret_random import SecretStream
    from dpdiffusion.dpsgd.step import DPSGD
    from dpdiffusion.methods import dpdm
    from dpdiffusion.privacy.ledger import PrivacyLedger
    from dpdiffusion.privacy.plan import PrivacyPlan
    from dpdiffusion.runconfig import load_config

    config = load_config(source, overrides)
    if config.performance.threads:
        torch.set_num_threads(config.performance.threads)
    size = len(load_dataset(config.data, "train"))  # the public size only: q = B / N
    model, loss = dpdm.build(config)
    privacy = config.privacy
    plan = PrivacyPlan(dataset_size=size, expected_batch_size=privacy.batch_size, steps=10**6,
                       max_grad_norm=privacy.max_grad_norm, noise_multiplier=1.0, delta=privacy.delta,
                       multiplicity=privacy.multiplicity)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.training.lr)
    dp = DPSGD(model, loss, optimizer, ledger=PrivacyLedger(plan), performance=config.performance, draw_seed=1,
               noise=SecretStream.fresh(b"noise"))
    generator = torch.Generator().manual_seed(0)
    shape = (privacy.batch_size, config.model.in_channels, config.model.img_resolution, config.model.img_resolution)
    batch = {"x": torch.rand(shape, generator=generator) * 2 - 1,
             "y": torch.randint(0, max(1, config.model.num_classes), (privacy.batch_size,), generator=generator)}
    times = []
    for i in range(probe_steps + 1):
        start = time.perf_counter()
        dp.step(batch)
        if i:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def read_candidates(path: Path, only: str | None) -> dict[str, list[str]]:
    candidates = yaml.safe_load(path.read_text())
    if not isinstance(candidates, dict) or not all(isinstance(v, list) for v in candidates.values()):
        sys.exit(f"recipe_search: {path} must map each candidate name to a list of KEY=VALUE overrides")
    if only:
        names = only.split(",")
        unknown = [n for n in names if n not in candidates]
        if unknown:
            sys.exit(f"recipe_search: no candidate named {', '.join(unknown)} in {path}")
        candidates = {n: candidates[n] for n in names}
    return {name: [str(v) for v in overrides] for name, overrides in candidates.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("preset")
    parser.add_argument("--candidates", required=True, type=Path)
    parser.add_argument("--budget-min", type=float, required=True, help="minutes of DP training per candidate")
    parser.add_argument("--only", help="comma-separated candidate names (default: all, in the file's order)")
    parser.add_argument("--quick", action="store_true", help="score on the quick protocol (the search's)")
    parser.add_argument("--overhead", type=float, default=1.0, help="training time per step over the probe's")
    parser.add_argument("--probe-steps", type=int, default=3)
    parser.add_argument("--again", action="store_true", help="score candidates that already have a result")
    parser.add_argument("--plan", action="store_true", help="print each candidate's steps; train nothing")
    parser.add_argument("--runs", default="runs/search", help="folder of the candidates' run folders")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    argv = list(sys.argv[1:] if argv is None else argv)
    cut = argv.index("--") if "--" in argv else len(argv)
    args, extra = parser.parse_args(argv[:cut]), argv[cut + 1 :]  # after --: more options for utility.py
    budget = 60 * args.budget_min
    tag = f"{Path(args.preset).stem}-{args.budget_min:g}min"
    for name, overrides in read_candidates(args.candidates, args.only).items():
        run_dir = Path(args.runs) / f"{tag}-{name}"
        scored = Path(args.out) / f"utility_{tag}-{name}{'_quick' if args.quick else ''}.json"
        if scored.is_file() and not args.again:
            print(f"recipe_search: {name} already scored ({scored}); --again to score it again", flush=True)
            continue
        planned = run_dir / "search_plan.json"
        if planned.is_file():  # the steps were fixed when this candidate started: keep them on a rerun
            plan = json.loads(planned.read_text())
        else:
            per_step = seconds_per_step(args.preset, overrides, args.probe_steps) * args.overhead
            plan = {"candidate": name, "overrides": overrides, "budget_seconds": budget, "probe_seconds_per_step":
                    per_step / args.overhead, "overhead": args.overhead, "steps": max(1, int(budget / per_step))}
        print(json.dumps(plan), flush=True)
        if args.plan:
            continue
        run_dir.mkdir(parents=True, exist_ok=True)
        planned.write_text(json.dumps(plan, indent=2) + "\n")
        steps = [f"privacy.steps={plan['steps']}", "privacy.epochs=null"]
        utility.main([args.preset, *sum((["--set", o] for o in [*overrides, *steps]), []), "--name", f"{tag}-{name}",
                      "--run-dir", str(run_dir), "--out", args.out, *(["--quick"] if args.quick else []), *extra])
    return 0


if __name__ == "__main__":
    sys.exit(main())
