"""Time a plain training step, our DP step and Opacus' DP step side by side, on the same UNet and batch.

    python benchmarks/dpsgd_step.py                  # K in {1, 4, 16, 32}, batch 64, table
    python benchmarks/dpsgd_step.py --ks 1 --json    # one JSON object (ratio_dp_to_plain, ratio_opacus_to_plain)
    python benchmarks/dpsgd_step.py --out benchmarks/results/dpsgd_step_cpu.json

Each (mode, K) runs in a fresh subprocess so that its peak memory (max RSS above the process's baseline
after building the model and batch) belongs to it alone. Every mode processes the batch in chunks of
``--rows`` model rows (rows // K examples with their K draws), so activation memory is the same for all K.
Modes:
  plain      mean loss over the batch (all K draws), backward, Adam step: the non-private cost
  layerwise  our DP step with the default engine (per-layer per-example gradients), clip, noise, Adam
  vmap       our DP step with torch.func vmap per-example gradients
  opacus     our DP step with stock Opacus hooks computing the per-example gradients
"ratio_dp_to_plain" is the default engine's (layerwise) ratio.
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
from dpdiffusion.diffusion.loss import DenoisingLoss
from dpdiffusion.diffusion.preconditioning import EDMPrecond
from dpdiffusion.dpsgd.step import DPSGD
from dpdiffusion.nets.unet import UNet, UNetConfig, count_parameters
from dpdiffusion.privacy.ledger import PrivacyLedger
from dpdiffusion.privacy.plan import PrivacyPlan

MODES = ("plain", "layerwise", "vmap", "opacus")
DEFAULT_ENGINE = "layerwise"


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def build(batch_size: int, k: int, seed: int = 0):
    torch.manual_seed(seed)
    precond = EDMPrecond(UNet(UNetConfig(num_classes=10)), sigma_data=math.sqrt(1 / 3))
    loss = DenoisingLoss(precond, multiplicity=k, num_classes=10)
    generator = torch.Generator().manual_seed(seed)
    batch = {
        "x": torch.rand(batch_size, 1, 28, 28, generator=generator) * 2 - 1,
        "y": torch.randint(0, 10, (batch_size,), generator=generator),
    }
    return precond, loss, batch


def make_step(mode: str, precond, loss, batch, micro_batch_size: int):
    optimizer = torch.optim.Adam(precond.parameters(), lr=3e-4)
    draw_generator = torch.Generator().manual_seed(1)
    if mode == "plain":
        b = len(batch["x"])

        def step():
            draws = loss.draw(batch, draw_generator)
            optimizer.zero_grad(set_to_none=True)
            for start in range(0, b, micro_batch_size):  # gradient accumulation over the same chunks
                part = {k: v[start : start + micro_batch_size] for k, v in batch.items()}
                part_draws = {k: v[start : start + micro_batch_size] for k, v in draws.items()}
                (loss(precond, part, part_draws).sum() / b).backward()
            optimizer.step()

        return step
    plan = PrivacyPlan(
        dataset_size=60000, expected_batch_size=len(batch["x"]), steps=10**6, max_grad_norm=1.0,
        noise_multiplier=1.0, delta=1e-5, multiplicity=loss.multiplicity,
    )
    dp = DPSGD(
        precond, loss, optimizer, ledger=PrivacyLedger(plan),
        performance=Performance(engine=mode, micro_batch_size=micro_batch_size),
        draw_generator=draw_generator, noise_generator=torch.Generator().manual_seed(2),
    )
    return lambda: dp.step(batch)


def worker(mode: str, k: int, args) -> dict:
    torch.set_num_threads(args.threads)
    precond, loss, batch = build(args.batch, k)
    step = make_step(mode, precond, loss, batch, max(1, args.rows // k))
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
        "--threads", str(args.threads), "--rows", str(args.rows),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--ks", default="1,4,16,32", help="multiplicities, comma-separated")
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--rows", type=int, default=64, help="model rows per chunk (examples x K draws)")
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
        "batch": args.batch, "threads": args.threads, "rows_per_chunk": args.rows, "default_engine": DEFAULT_ENGINE,
        "reps": args.reps, "machine": f"{platform.machine()} {os.cpu_count()} cpus", "torch": torch.__version__,
        "ratio_dp_to_plain": first.get(f"ratio_{DEFAULT_ENGINE}_to_plain"),
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
        print(f"UNet ({result['parameters']} parameters), batch {args.batch}, {args.threads} threads, "
              f"{args.rows} rows per chunk, median of {args.reps}")
        header = f"{'K':>3} " + " ".join(f"{m + ' s':>12}" for m in modes)
        header += " " + " ".join(f"{m + '/plain':>16}" for m in modes if m != "plain")
        header += " " + " ".join(f"{m + ' MB':>13}" for m in modes)
        print(header)
        for r in rows:
            line = f"{r['k']:>3} " + " ".join(f"{r[m + '_s']:12.3f}" for m in modes)
            line += " " + " ".join(f"{r[f'ratio_{m}_to_plain']:16.2f}" for m in modes if m != "plain")
            line += " " + " ".join(f"{r[m + '_extra_mb']:13.0f}" for m in modes)
            print(line)


if __name__ == "__main__":
    main()
