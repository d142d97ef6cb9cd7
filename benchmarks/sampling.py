"""Sampling throughput (images/s) of DPDM's MNIST UNet: Heun at 18 and 40 steps, Churn at 256 steps.

    python benchmarks/sampling.py [--batch 256] [--json] [--out benchmarks/results/sampling_cpu.json]

Throughput does not depend on the weights, so the network is freshly initialised (EDM's init).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import time

import torch

from dpdiffusion.diffusion.preconditioning import EDMPrecond
from dpdiffusion.diffusion.samplers import guided, sample_heun
from dpdiffusion.diffusion.schedules import ImageNoise, karras_sigmas
from dpdiffusion.nets.unet import UNet, UNetConfig

SETTINGS = {
    "heun-18": dict(steps=18),
    "heun-40": dict(steps=40),
    "churn-256": dict(steps=256, S_churn=40.0, S_min=0.05, S_max=50.0, S_noise=1.003),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--settings", default=",".join(SETTINGS))
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--out")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = EDMPrecond(UNet(UNetConfig(num_classes=10)), sigma_data=math.sqrt(1 / 3)).eval().requires_grad_(False)
    labels = torch.randint(0, 10, (args.batch,))
    rows = []
    for name in args.settings.split(","):
        setting = dict(SETTINGS[name])
        sigmas = karras_sigmas(setting.pop("steps"))
        noise = ImageNoise(range(args.batch))
        x = noise.randn((1, 28, 28)) * sigmas[0]
        start = time.perf_counter()
        sample_heun(guided(model, labels), x, sigmas, noise=noise, **setting)
        seconds = time.perf_counter() - start
        evaluations = 2 * (len(sigmas) - 1) - 1
        rows.append({"sampler": name, "network_evaluations": evaluations, "seconds": seconds,
                     "images_per_s": args.batch / seconds})
        if not args.json:
            print(f"{name:10s} {evaluations:4d} NFE  {seconds:8.1f} s  {args.batch / seconds:8.2f} images/s", flush=True)
    result = {"benchmark": "sampling", "batch": args.batch, "threads": args.threads, "torch": torch.__version__,
              "machine": f"{platform.machine()} {os.cpu_count()} cpus", "rows": rows}
    if args.out:
        with open(args.out, "w") as f:
            f.write(json.dumps(result, indent=2) + "\n")
    if args.json:
        print(json.dumps(result))


if __name__ == "__main__":
    main()
