"""Time a plain training step, our DP step and Opacus' DP step side by side, on the same UNet and batch.

    python benchmarks/dpsgd_step.py                  # K in {1, 8, 32} x batch in {64, 256}, table
    python benchmarks/dpsgd_step.py --ks 1 --batches 64 --json   # one JSON object (ratio_dp_to_plain, ...)
    python benchmarks/dpsgd_step.py --out benchmarks/results/dpsgd_step_cpu.json
    python benchmarks/dpsgd_step.py --ks 1 --batches 64 --one-process --reps 15   # modes taking turns in one process

Each (mode, batch, K) runs in a fresh subprocess so that its peak memory (max RSS above the process's
baseline after building the model and batch) belongs to it alone; with ``--one-process`` all modes share
this process and take turns step by step (the ratio then shares the machine's speed of the moment, memory
is not measured). Every mode processes the batch in chunks
of ``--rows`` model rows (rows // K examples with their K draws), so activation memory is the same for all
K. One warm-up step on a single chunk comes first. Modes:
  plain      mean loss over the batch (all K draws), backward, Adam step: the non-private cost
  layerwise  our DP step (the default engine): per-layer per-example gradients, ghost norms and book-keeping
             sums for the layers where those are cheaper (mixed ghost clipping), clip, noise, Adam
  materialised  the same engine with every layer's per-example gradients materialised (no ghost norms)
  ghost      the same engine with ghost norms on every Linear and Conv2d layer (pure ghost clipping)
  vmap       our DP step with torch.func vmap per-example gradients (the reference engine)
  opacus     our DP step with stock Opacus hooks computing the per-example gradients
"ratio_dp_to_plain" is the default engine's ratio in the first cell.

    python benchmarks/dpsgd_step.py --noise --ks 1 --batches 256   # the secret noise's share of a DP step

``--noise`` times, in one process and taking turns, the DP noise of one step for every parameter of the model
from the secret stream (``dpsgd.secret_random``: SHAKE-128, float64 Box-Muller, a sum of two Gaussians, added
in float64), torch's Mersenne-Twister ``randn`` added in float32 (what the noise cost before), and one
default-engine DP step on the batch, and prints each noise's share of the step.
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

from dpdiffusion.allocator import keep_freed_memory
from dpdiffusion.config import Performance
from dpdiffusion.diffusion.loss import DenoisingLoss
from dpdiffusion.diffusion.preconditioning import EDMPrecond
from dpdiffusion.dpsgd.secret_random import SecretStream
from dpdiffusion.dpsgd.step import DPSGD
from dpdiffusion.nets.unet import UNet, UNetConfig, count_parameters
from dpdiffusion.privacy.ledger import PrivacyLedger
from dpdiffusion.privacy.plan import PrivacyPlan

MODES = ("plain", "layerwise", "materialised", "ghost", "vmap", "opacus")
DEFAULT_ENGINE = "layerwise"


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


# name -> (network, image channels, image size, description)
MODELS = {
    "mnist": (UNetConfig(num_classes=10), 1, 28, "DPDM's MNIST UNet (DDPM++ with GroupNorm) + EDM preconditioning"),
    # a wider UNet at CIFAR-10's size: its low-resolution layers dominate the parameters, as in larger models
    "cifar-wide": (UNetConfig(img_resolution=32, in_channels=3, out_channels=3, model_channels=64,
                              channel_mult=(1, 2, 2, 2), attn_resolutions=(16,), num_classes=10), 3, 32,
                   "a 32x32 RGB UNet, 64 channels x (1, 2, 2, 2), attention at 16x16, + EDM preconditioning"),
}


def build(batch_size: int, k: int, seed: int = 0, model: str = "mnist"):
    network, channels, size, _ = MODELS[model]
    torch.manual_seed(seed)
    precond = EDMPrecond(UNet(network), sigma_data=math.sqrt(1 / 3))
    loss = DenoisingLoss(precond, multiplicity=k, num_classes=10)
    generator = torch.Generator().manual_seed(seed)
    batch = {
        "x": torch.rand(batch_size, channels, size, size, generator=generator) * 2 - 1,
        "y": torch.randint(0, 10, (batch_size,), generator=generator),
    }
    return precond, loss, batch


def make_step(mode: str, precond, loss, expected_batch_size: int, micro_batch_size: int):
    """A function ``step(batch)`` doing one training step of ``mode``."""
    optimizer = torch.optim.Adam(precond.parameters(), lr=3e-4)
    draw_generator = torch.Generator().manual_seed(1)
    if mode == "plain":

        def step(batch):
            b = len(batch["x"])
            draws = loss.draw(batch, draw_generator)
            optimizer.zero_grad(set_to_none=True)
            for start in range(0, b, micro_batch_size):  # gradient accumulation over the same chunks
                part = {k: v[start : start + micro_batch_size] for k, v in batch.items()}
                part_draws = {k: v[start : start + micro_batch_size] for k, v in draws.items()}
                (loss(precond, part, part_draws).sum() / b).backward()
            optimizer.step()

        return step
    plan = PrivacyPlan(
        dataset_size=60000, expected_batch_size=expected_batch_size, steps=10**6, max_grad_norm=1.0,
        noise_multiplier=1.0, delta=1e-5, multiplicity=loss.multiplicity,
    )
    dp = DPSGD(
        precond, loss, optimizer, ledger=PrivacyLedger(plan),
        performance=Performance(engine="layerwise" if mode == "materialised" else mode,
                                micro_batch_size=micro_batch_size),
        draw_seed=1, noise=SecretStream.fresh(b"noise"),
    )
    if mode == "materialised":
        dp.engine.ghost = "never"
    return dp.step


def worker(mode: str, batch_size: int, k: int, args) -> dict:
    torch.set_num_threads(args.threads)
    if args.allocator == "keep":
        keep_freed_memory()
    chunk = max(1, args.rows // k)
    precond, loss, batch = build(batch_size, k, model=args.model)
    if args.channels_last:
        precond = precond.to(memory_format=torch.channels_last)
        batch = {**batch, "x": batch["x"].contiguous(memory_format=torch.channels_last)}
    first_chunk = {name: v[:chunk] for name, v in batch.items()}
    step = make_step(mode, precond, loss, batch_size, chunk)
    baseline = rss_mb()
    for _ in range(args.warmup):
        step(first_chunk)
    times = []
    for _ in range(args.reps):
        start = time.perf_counter()
        step(batch)
        times.append(time.perf_counter() - start)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {
        "mode": mode, "k": k, "batch": batch_size, "median_s": statistics.median(times), "times_s": times,
        "peak_rss_mb": peak, "extra_mb": peak - baseline, "parameters": count_parameters(precond),
    }


def measure(mode: str, batch: int, k: int, args) -> dict:
    command = [sys.executable, __file__, "--worker", mode, "--worker-k", str(k), "--worker-batch", str(batch)]
    out = subprocess.run(command + passthrough(args), capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"{mode} batch {batch} K={k} failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def passthrough(args) -> list[str]:
    layout = ["--channels-last"] if args.channels_last else []
    return [*layout, "--model", args.model, "--allocator", args.allocator, "--reps", str(args.reps),
            "--warmup", str(args.warmup), "--threads", str(args.threads), "--rows", str(args.rows)]


def cell(batch: int, k: int, modes: list[str], args) -> dict:
    """One (batch, K) cell: every mode in its own process, the modes alternating for ``--rounds`` rounds; a
    mode's time is the median over rounds of its per-process median (process-to-process speed varies on a
    shared machine), its memory the largest peak."""
    rounds = [{mode: measure(mode, batch, k, args) for mode in modes} for _ in range(args.rounds)]
    results = {mode: {"median_s": statistics.median(r[mode]["median_s"] for r in rounds),
                      "extra_mb": max(r[mode]["extra_mb"] for r in rounds),
                      "parameters": rounds[0][mode]["parameters"]} for mode in modes}
    parameters = next(iter(results.values()))["parameters"]
    row = {"batch": batch, "k": k, "examples_per_chunk": max(1, args.rows // k),
           # what materialising engines hold per chunk, whatever K: examples x parameters x 4 bytes
           "per_example_grads_mb": max(1, args.rows // k) * parameters * 4 / 2**20,
           **{f"{m}_s": r["median_s"] for m, r in results.items()},
           **{f"{m}_extra_mb": r["extra_mb"] for m, r in results.items()}}
    if "plain" in results:
        for m in modes:
            if m != "plain":
                row[f"ratio_{m}_to_plain"] = results[m]["median_s"] / results["plain"]["median_s"]
                # the same ratio within each round: its spread shows how far one round can be trusted
                row[f"ratio_{m}_to_plain_by_round"] = [r[m]["median_s"] / r["plain"]["median_s"] for r in rounds]
    return row


def one_process_cell(batch: int, k: int, modes: list[str], args) -> dict:
    """One (batch, K) cell with every mode in this process, side by side: each mode has its own copy of the
    same model and batch, and the modes take turns step by step for ``--reps`` steps each, so a drift in the
    machine's speed hits them alike. A mode's time is the median of its steps; "..._by_step" ratios pair each
    DP step with the plain step just before it. Memory is not measured (the modes share one process)."""
    torch.set_num_threads(args.threads)
    if args.allocator == "keep":
        keep_freed_memory()
    chunk = max(1, args.rows // k)
    steps, data, parameters = {}, None, 0
    for mode in modes:
        precond, loss, data = build(batch, k, model=args.model)
        parameters = count_parameters(precond)
        steps[mode] = make_step(mode, precond, loss, batch, chunk)
        for _ in range(args.warmup):
            steps[mode]({name: v[:chunk] for name, v in data.items()})
    times = {mode: [] for mode in modes}
    for _ in range(args.reps):
        for mode in modes:
            start = time.perf_counter()
            steps[mode](data)
            times[mode].append(time.perf_counter() - start)
    row = {"batch": batch, "k": k, "examples_per_chunk": chunk, "one_process": True,
           "per_example_grads_mb": chunk * parameters * 4 / 2**20,
           **{f"{m}_s": statistics.median(t) for m, t in times.items()},
           **{f"{m}_times_s": t for m, t in times.items()}}
    if "plain" in times:
        for m in modes:
            if m != "plain":
                row[f"ratio_{m}_to_plain"] = row[f"{m}_s"] / row["plain_s"]
                row[f"ratio_{m}_to_plain_by_step"] = [d / p for d, p in zip(times[m], times["plain"])]
    return row


def noise_cost(batch: int, k: int, args) -> dict:
    """Seconds of the secret noise, of torch's randn noise and of one DP step, side by side (see --noise)."""
    from dpdiffusion.dpsgd.noise import add_noise

    torch.set_num_threads(args.threads)
    if args.allocator == "keep":
        keep_freed_memory()
    precond, loss, data = build(batch, k, model=args.model)
    zeros = {n: torch.zeros_like(p) for n, p in precond.named_parameters()}
    stream, generator = SecretStream.fresh(b"noise"), torch.Generator().manual_seed(0)

    def secure() -> None:
        add_noise(zeros, noise_multiplier=1.0, max_grad_norm=1.0, stream=stream)

    def mersenne() -> None:
        {n: z + torch.randn(z.shape, generator=generator) for n, z in zeros.items()}

    dp_step = make_step("layerwise", precond, loss, batch, max(1, args.rows // k))
    for _ in range(args.warmup):
        secure(), mersenne(), dp_step({name: v[: max(1, args.rows // k)] for name, v in data.items()})
    times: dict[str, list[float]] = {"secure_noise": [], "randn_noise": [], "dp_step": []}
    for _ in range(args.reps):
        for name, run in (("secure_noise", secure), ("randn_noise", mersenne), ("dp_step", lambda: dp_step(data))):
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    medians = {f"{name}_s": statistics.median(t) for name, t in times.items()}
    return {"benchmark": "noise", "model": args.model, "parameters": count_parameters(precond), "batch": batch, "k": k,
            "threads": args.threads, **medians, **{f"{name}_times_s": t for name, t in times.items()},
            "secure_noise_share_of_step": medians["secure_noise_s"] / medians["dp_step_s"],
            "randn_noise_share_of_step": medians["randn_noise_s"] / medians["dp_step_s"],
            "machine": f"{platform.machine()} {os.cpu_count()} cpus, torch {torch.__version__}"}


def markdown(results: list[dict]) -> str:
    """Seconds per step of plain, ratios to plain and peak extra memory, one line per (batch, K)."""
    lines = ["| B | K | plain s | " + " | ".join(f"{m}/plain" for m in MODES[1:])
             + " | extra MB: " + " / ".join(MODES) + " | per-example grads MB (materialised, per chunk) |",
             "|---" * (3 + len(MODES) - 1 + 2) + "|"]
    for result in results:
        for r in result["rows"]:
            ratios = [f"{r[f'ratio_{m}_to_plain']:.2f}x" if f"ratio_{m}_to_plain" in r else "not run" for m in MODES[1:]]
            memory = [f"{r[f'{m}_extra_mb']:.0f}" if f"{m}_extra_mb" in r else "-" for m in MODES]
            lines.append(f"| {r['batch']} | {r['k']} | {r['plain_s']:.2f} | " + " | ".join(ratios)
                         + f" | {' / '.join(memory)} | {r['per_example_grads_mb']:.0f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=tuple(MODELS), default="mnist",
                        help="the UNet (mnist: DPDM's MNIST UNet, the yardstick)")
    parser.add_argument("--batches", default="64,256", help="expected batch sizes, comma-separated")
    parser.add_argument("--ks", default="1,8,32", help="multiplicities, comma-separated")
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--reps", type=int, default=3, help="timed steps per process")
    parser.add_argument("--rounds", type=int, default=1, help="processes per mode, the modes alternating")
    parser.add_argument("--warmup", type=int, default=1, help="warm-up steps on one chunk")
    parser.add_argument("--one-process", action="store_true",
                        help="all modes in this process, taking turns step by step (no memory figures)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--rows", type=int, default=64, help="model rows per chunk (examples x K draws)")
    parser.add_argument("--allocator", choices=("keep", "default"), default="keep",
                        help="keep: dpdiffusion.allocator.keep_freed_memory() in every mode, as training does")
    parser.add_argument("--channels-last", action="store_true", help="model and images in channels-last layout")
    parser.add_argument("--noise", action="store_true", help="the secret noise's cost next to a DP step (see above)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--out", help="also write the JSON result to this file")
    parser.add_argument("--table", nargs="+", metavar="JSON", help="print recorded results as one markdown table")
    parser.add_argument("--worker", choices=MODES, help=argparse.SUPPRESS)
    parser.add_argument("--worker-k", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--worker-batch", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.worker_batch, args.worker_k, args)))
        return

    if args.table:
        print(markdown([json.load(open(path)) for path in args.table]))
        return
    if args.noise:
        batch, k = int(args.batches.split(",")[0]), int(args.ks.split(",")[0])
        result = noise_cost(batch, k, args)
        print(json.dumps(result, indent=None if args.json else 1))
        if args.out:
            with open(args.out, "w") as f:
                json.dump(result, f, indent=1)
        return
    modes = args.modes.split(",")
    rows = []
    for batch in (int(b) for b in args.batches.split(",")):
        for k in (int(k) for k in args.ks.split(",")):
            rows.append(one_process_cell(batch, k, modes, args) if args.one_process else cell(batch, k, modes, args))
            if not args.json:
                print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    first = rows[0]
    result = {
        "benchmark": "dpsgd_step",
        "model": MODELS[args.model][3],
        "parameters": count_parameters(build(1, 1, model=args.model)[0]),
        "threads": args.threads, "rows_per_chunk": args.rows, "allocator": args.allocator,
        "channels_last": args.channels_last, "default_engine": DEFAULT_ENGINE,
        "reps": args.reps, "rounds": args.rounds, "one_process": args.one_process,
        "machine": f"{platform.machine()} {os.cpu_count()} cpus", "torch": torch.__version__,
        "ratio_dp_to_plain": first.get(f"ratio_{DEFAULT_ENGINE}_to_plain"),
        "ratio_opacus_to_plain": first.get("ratio_opacus_to_plain"),
        "rows": rows,
    }
    if args.out:
        with open(args.out, "w") as f:
            f.write(json.dumps(result, indent=2) + "\n")
    if args.json:
        print(json.dumps(result))
        return
    print(f"UNet ({result['parameters']} parameters), {args.threads} threads, {args.rows} rows per chunk, "
          f"median of {args.reps}; seconds per step, ratio to plain, peak extra MB")
    others = [m for m in modes if m != "plain"]
    print(f"{'B':>4} {'K':>3} " + " ".join(f"{m + ' s':>11}" for m in modes)
          + " " + " ".join(f"{m + '/plain':>15}" for m in others) + " " + " ".join(f"{m + ' MB':>12}" for m in modes))
    for r in rows:
        print(f"{r['batch']:>4} {r['k']:>3} " + " ".join(f"{r[m + '_s']:11.3f}" for m in modes)
              + " " + " ".join(f"{r.get(f'ratio_{m}_to_plain', float('nan')):15.2f}" for m in others)
              + " " + " ".join(f"{r.get(m + '_extra_mb', float('nan')):12.0f}" for m in modes))


if __name__ == "__main__":
    main()
