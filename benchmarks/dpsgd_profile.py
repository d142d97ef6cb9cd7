"""Where a DP step's time goes: one step of the benchmark UNet under torch.profiler, by stage and by op.

    python benchmarks/dpsgd_profile.py --batch 64 --k 1
    python benchmarks/dpsgd_profile.py --batch 64 --k 8 --out benchmarks/results/dpsgd_profile_cpu_b64_k8.txt
    python benchmarks/dpsgd_profile.py --batch 64 --k 1 --timers 10   # stage clocks, no profiler

The stages are the ``dp:*`` scopes the engine and the step open (``torch.profiler.record_function``):
draw, forward, backward (to the layers' outputs), ghost_norms, per_layer_rules (per-example parameter
gradients), clip_and_sum, bookkeeping (the ghost layers' clipped sums), noise, optimizer. A plain step
(forward, backward, Adam) of the same model and batch is profiled beside it, so the stage times can be read
against the non-private cost. The profiler's own cost per op inflates the DP step (many more, smaller ops) and
its per-layer rules most: ``--timers N`` instead times N steps of each, taking turns, with a clock around each
scope (medians), which is what the ratio benchmark sees.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections import defaultdict
from contextlib import contextmanager

import torch
from torch.profiler import ProfilerActivity, profile, record_function

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from dpsgd_step import build, make_step  # noqa: E402  (the same model, batch and steps as the ratio benchmark)

import dpdiffusion.dpsgd.per_example as per_example_module  # noqa: E402
import dpdiffusion.dpsgd.step as step_module  # noqa: E402


def plain_scoped_step(precond, loss, micro_batch_size: int):
    optimizer = torch.optim.Adam(precond.parameters(), lr=3e-4)
    draw_generator = torch.Generator().manual_seed(1)

    def step(batch):
        b = len(batch["x"])
        draws = loss.draw(batch, draw_generator)
        optimizer.zero_grad(set_to_none=True)
        for start in range(0, b, micro_batch_size):
            part = {k: v[start : start + micro_batch_size] for k, v in batch.items()}
            part_draws = {k: v[start : start + micro_batch_size] for k, v in draws.items()}
            with record_function("plain:forward"):
                value = loss(precond, part, part_draws).sum() / b
            with record_function("plain:backward"):
                value.backward()
        with record_function("plain:optimizer"):
            optimizer.step()

    return step


def stage_times(prof, prefix: str) -> dict[str, float]:
    """Total wall (CPU) milliseconds inside each scope that starts with ``prefix``."""
    totals: dict[str, float] = defaultdict(float)
    for event in prof.events():
        if event.name.startswith(prefix):
            totals[event.name] += event.cpu_time_total / 1000
    return dict(totals)


def profiled(step, batch, warmup: int):
    for _ in range(warmup):
        step(batch)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        with record_function("step"):
            step(batch)
    return prof


class StageClock:
    """Stands in for ``record_function``: adds each scope's wall time to ``totals`` (seconds)."""

    def __init__(self):
        self.totals: dict[str, float] = defaultdict(float)

    @contextmanager
    def __call__(self, name: str):
        start = time.perf_counter()
        try:
            yield
        finally:
            self.totals[name] += time.perf_counter() - start


def clocked(steps: dict, batch, warmup: int, n: int) -> dict[str, dict[str, float]]:
    """Median milliseconds per scope (and per whole ``step``) over ``n`` steps of each, taking turns."""
    clock = StageClock()
    for module in (per_example_module, step_module, sys.modules[__name__]):
        module.record_function = clock
    times: dict[str, dict[str, list]] = {name: defaultdict(list) for name in steps}
    for name, step in steps.items():
        for _ in range(warmup):
            step(batch)
    for _ in range(n):
        for name, step in steps.items():
            clock.totals.clear()
            start = time.perf_counter()
            step(batch)
            times[name]["step"].append(time.perf_counter() - start)
            for scope, seconds in clock.totals.items():
                times[name][scope].append(seconds)
    return {name: {scope: 1000 * statistics.median(v) for scope, v in t.items()} for name, t in times.items()}


def clocked_report(steps: dict, batch, args) -> list[str]:
    medians = clocked(steps, batch, args.warmup, args.timers)
    lines = []
    for name, scopes in medians.items():
        lines.append(f"\n{name} step: {scopes['step']:.0f} ms (median of {args.timers}, no profiler)")
        for stage, ms in sorted(scopes.items(), key=lambda kv: -kv[1]):
            if stage not in ("step", "dp:per_example_grads"):
                lines.append(f"  {stage:<22} {ms:8.0f} ms  {100 * ms / scopes['step']:5.1f}%")
    lines.append(f"ratio {args.engine}/plain of the median steps: "
                 f"{medians[args.engine]['step'] / medians['plain']['step']:.2f}")
    return lines


def profiled_report(steps: dict, batch, args) -> list[str]:
    lines, totals = [], {}
    for name, step in steps.items():
        prefix = "plain:" if name == "plain" else "dp:"
        prof = profiled(step, batch, args.warmup)
        total = totals[name] = stage_times(prof, "step")["step"]
        lines.append(f"\n{name} step: {total:.0f} ms")
        for stage, ms in sorted(stage_times(prof, prefix).items(), key=lambda kv: -kv[1]):
            if stage != "dp:per_example_grads":  # it contains forward, backward and per_layer_rules
                lines.append(f"  {stage:<22} {ms:8.0f} ms  {100 * ms / total:5.1f}%")
        lines.append(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.top))
    lines.append(f"ratio {args.engine}/plain under the profiler: {totals[args.engine] / totals['plain']:.2f}")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--k", type=int, default=1)
    parser.add_argument("--engine", default="layerwise")
    parser.add_argument("--rows", type=int, default=64, help="model rows per chunk (examples x K draws)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--top", type=int, default=15)
    parser.add_argument("--timers", type=int, default=0, metavar="N",
                        help="no profiler: N steps of each, taking turns, a clock around each scope (medians)")
    parser.add_argument("--out", help="also write the report to this file")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    chunk = max(1, args.rows // args.k)

    lines = [f"batch {args.batch}, K {args.k}, {chunk} examples per chunk, engine {args.engine}, "
             f"{args.threads} threads, torch {torch.__version__}"]
    steps = {}
    for name in ("plain", args.engine):
        precond, loss, batch = build(args.batch, args.k)
        steps[name] = (plain_scoped_step(precond, loss, chunk) if name == "plain"
                       else make_step(args.engine, precond, loss, args.batch, chunk))
    if args.timers:
        lines += clocked_report(steps, batch, args)
    else:
        lines += profiled_report(steps, batch, args)
    text = "\n".join(lines)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
