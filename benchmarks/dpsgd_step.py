"""Time a plain training step, our DP step and Opacus' DP step side by side, on the same UNet and batch.

    python benchmarks/dpsgd_step.py                  # K in {1, 4, 16, 32}, batch 64, table
    python benchmarks/dpsgd_step.py --ks 1 --json    # one JSON object (ratio_dp_to_plain, ratio_opacus_to_plain)
    python benchmarks/dpsgd_step.py --out benchmarks/results/dpsgd_step_cpu.json

Each (mode, K) runs in a fresh subprocess so that its peak memory (max RSS above the process's baseline
after building the model and batch) belongs to it alone. Modes:
  plain   mean loss over the batch (all K draws), one backward, Adam step: the non-private cost
  dp      our DP step (DPSGD with the chosen engine: per-example grads, clip, noise, Adam)
  opacus  the same DPSGD with stock Opacus hooks computing the per-example gradients
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import time

import torch

from dpdiffusion.config import Performance
from dpdiffusion.diffusion.loss import EDMLoss
from dpdiffusion.diffusion.preconditioning import EDMPrecond
from dpdiffusion.dpsgd.step import DPSGD
from dpdiffusion.nets.unet import UNet, UNetConfig, count_parameters
from dpdiffusion.privacy.ledger import PrivacyLedger
from dpdiffusion.privacy.plan import PrivacyPlan

MODES = ("plain", "dp", "opacus")


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def build(batch_size: int, k: int, seed: int = 0):
    torch.manual_seed(seed)
    precond = EDMPrecond(UNet(UNetConfig(num_classes=10)), sigma_data=math.sqrt(1 / 3))
    loss = EDMLoss(precond, multiplicity=k, num_classes=10)
    generator = torch.Generator().manual_seed(seed)
    batch = {
        "x": torch.rand(batch_size, 1, 28, 28, generator=generator) * 2 - 1,
        "y": torch.randint(0, 10, (batch_size,), generator=generator),
    }
    return precond, loss, batch


def make_step(mode: str, precond, loss, batch, micro_batch_size: int, engine: str):
    optimizer = torch.optim.Adam(precond.parameters(), lr=3e-4)
    draw_generator = torch.Generator().manual_seed(1)
    if mode == "plain":

        def step():
            draws = loss.draw(batch, draw_generator)
            optimizer.zero_grad(set_to_none=True)
            loss(precond, batch, draws).mean().backward()
            optimizer.step()

        return step
    plan = PrivacyPlan(
        dataset_size=60000, expected_batch_size=len(batch["x"]), steps=10**6, max_grad_norm=1.0,
        noise_multiplier=1.0, delta=1e-5, multiplicity=loss.multiplicity,
    )
    dp = DPSGD(
        precond, loss, optimizer, ledger=PrivacyLedger(plan),
        performance=Performance(engine="opacus" if mode == "opacus" else engine, micro_batch_size=micro_batch_size),
        draw_generator=draw_generator, noise_generator=torch.Generator().manual_seed(2),
    )
    return lambda: dp.step(batch)


def worker(mode: str, k: int, args) -> dict:
    torch.set_num_threads(args.threads)
    precond, loss, batch = build(args.batch, k)
    step = make_step(mode, precond, loss, batch, args.micro_batch, args.engine)
    baseline = rss_mb()
    for _ in range(args.warmup):
        step()
    times = []
    for _ in range(args.reps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {
        "mode": mode, "k": k, "median_s": statistics.median(times), "times_s": times,
        "peak_rss_mb": peak, "extra_mb": peak - baseline, "parameters": count_parameters(precond),
    }


def measure(mode: str, k: int, args) -> dict:
    command = [sys.executable, __file__, "--worker", mode, "--worker-k", str(k)] + passthrough(args)
    out = subprocess.run(command, capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"{mode} K={k} failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def passthrough(args) -> list[str]:
    return [
        "--batch", str(args.batch), "--reps", str(args.reps), "--warmup", str(args.warmup),
        "--threads", str(args.threads), "--micro-batch", str(args.micro_batch), "--engine", args.engine,
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--ks", default="1,4,16,32", help="multiplicities, comma-separated")
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--micro-batch", type=int, default=64, help="examples per per-example-gradient chunk")
    parser.add_argument("--engine", default="vmap", help="our engine for the 'dp' mode")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--out", help="also write the JSON result to this file")
    parser.add_argument("--worker", choices=MODES, help=argparse.SUPPRESS)
    parser.add_argument("--worker-k", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.worker_k, args)))
        return

    ks = [int(k) for k in args.ks.split(",")]
    modes = args.modes.split(",")
    rows = []
    for k in ks:
        results = {mode: measure(mode, k, args) for mode in modes}
        row = {"k": k, **{f"{m}_s": r["median_s"] for m, r in results.items()},
               **{f"{m}_extra_mb": r["extra_mb"] for m, r in results.items()}}
        if "plain" in results:
            for m in modes:
                if m != "plain":
                    row[f"ratio_{m}_to_plain"] = results[m]["median_s"] / results["plain"]["median_s"]
        rows.append(row)
        if not args.json:
            print(json.dumps(row), file=sys.stderr, flush=True)
    first = rows[0]
    result = {
        "benchmark": "dpsgd_step",
        "model": "UNet (DDPM++, GroupNorm) MNIST config + EDM preconditioning",
        "parameters": count_parameters(build(1, 1)[0]),
        "batch": args.batch, "threads": args.threads, "micro_batch": args.micro_batch, "engine": args.engine,
        "reps": args.reps, "machine": f"{platform.machine()} {os.cpu_count()} cpus", "torch": torch.__version__,
        "ratio_dp_to_plain": first.get("ratio_dp_to_plain"),
        "ratio_opacus_to_plain": first.get("ratio_opacus_to_plain"),
        "rows": rows,
    }
    text = json.dumps(result, indent=None if args.json else 2)
    if args.out:
        with open(args.out, "w") as f:
            f.write(json.dumps(result, indent=2) + "\n")
    if args.json:
        print(text)
    else:
        print(f"UNet, batch {args.batch}, {args.threads} threads, median of {args.reps}")
        print(f"{'K':>3} {'plain s':>8} {'dp s':>8} {'opacus s':>9} {'dp/plain':>9} {'opacus/plain':>13} "
              f"{'plain MB':>9} {'dp MB':>8} {'opacus MB':>10}")
        for r in rows:
            print(f"{r['k']:>3} {r.get('plain_s', float('nan')):8.3f} {r.get('dp_s', float('nan')):8.3f} "
                  f"{r.get('opacus_s', float('nan')):9.3f} {r.get('ratio_dp_to_plain', float('nan')):9.2f} "
                  f"{r.get('ratio_opacus_to_plain', float('nan')):13.2f} {r.get('plain_extra_mb', float('nan')):9.0f} "
                  f"{r.get('dp_extra_mb', float('nan')):8.0f} {r.get('opacus_extra_mb', float('nan')):10.0f}")


if __name__ == "__main__":
    main()
