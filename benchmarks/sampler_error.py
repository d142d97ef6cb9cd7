"""How closely each deterministic sampler follows the probability-flow ODE of a trained model, against its NFE.

    python benchmarks/sampler_error.py RUN_DIR [--num 256] [--settings dpmpp2m:6,dpmpp2m:10,heun:18] [--out FILE.json]

The same initial noises (public seeds, scaled to ``--sigma-max``) are solved by each sampler and by a fine reference
(DPM-Solver++(3M) with ``--reference-steps`` levels from the same sigma_max); the table gives the root-mean-square
pixel difference to the reference (pixels in [-1, 1]) and the largest one. A cheap proxy to rank solvers at low
NFE before spending a utility run on them; it reads only the released model.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch

from dpdiffusion.diffusion.generate import image_seeds, load_release, uniform_labels
from dpdiffusion.diffusion.samplers import SAMPLERS, guided, network_evaluations
from dpdiffusion.diffusion.schedules import ImageNoise, karras_sigmas

DEFAULT = "heun:10,heun:18,dpmpp2m:6,dpmpp2m:8,dpmpp2m:10,dpmpp2m:18,dpmpp3m:6,dpmpp3m:8,dpmpp3m:10,dpmpp3m:18"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir")
    parser.add_argument("--num", type=int, default=256)
    parser.add_argument("--settings", default=DEFAULT, help="comma-separated SAMPLER:LEVELS")
    parser.add_argument("--reference-steps", type=int, default=200)
    parser.add_argument("--guidance", type=float, default=1.0)
    parser.add_argument("--sigma-max", type=float, default=80.0, help="the compared samplers' schedule (EDM's)")
    parser.add_argument("--sigma-min", type=float, default=0.002)
    parser.add_argument("--rho", type=float, default=7.0)
    parser.add_argument("--out")
    args = parser.parse_args(argv)
    model, config, _ = load_release(args.run_dir)
    shape = (config.model.in_channels, config.model.img_resolution, config.model.img_resolution)
    labels = uniform_labels(args.num, config.model.num_classes, 0) if config.model.num_classes else None
    denoiser = guided(model, labels, guidance=args.guidance, null_label=config.model.num_classes)

    def solve(name: str, steps: int, **schedule: float) -> tuple[torch.Tensor, float]:
        sigmas = karras_sigmas(steps, **schedule)
        x = ImageNoise(image_seeds(0, args.num)).randn(shape) * sigmas[0]
        start = time.perf_counter()
        out = SAMPLERS[name](denoiser, x, sigmas)
        return out, time.perf_counter() - start

    reference, _ = solve("dpmpp3m", args.reference_steps, sigma_max=args.sigma_max)  # the same start x
    rows = []
    for setting in args.settings.split(","):
        name, steps = setting.split(":")
        out, seconds = solve(name, int(steps), sigma_min=args.sigma_min, sigma_max=args.sigma_max, rho=args.rho)
        diff = (out - reference).flatten(1)
        rows.append({"sampler": name, "steps": int(steps), "nfe": network_evaluations(name, int(steps)),
                     "rmse": diff.pow(2).mean().sqrt().item(), "max": diff.abs().max().item(), "seconds": seconds})
        print(f"{name:8s} {steps:>4s} levels {rows[-1]['nfe']:3d} NFE  rmse {rows[-1]['rmse']:.4f}  "
              f"max {rows[-1]['max']:.3f}  {seconds:.1f} s", flush=True)
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"benchmark": "sampler_error", "run_dir": args.run_dir, "num": args.num,
                       "reference": f"dpmpp3m {args.reference_steps} levels", "guidance": args.guidance,
                       "schedule": {"sigma_min": args.sigma_min, "sigma_max": args.sigma_max, "rho": args.rho},
                       "rows": rows}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
