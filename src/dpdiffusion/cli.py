"""The ``dpdiffusion`` command line."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from typing import Sequence

from dpdiffusion import __version__
from dpdiffusion.io import json_safe
from dpdiffusion.privacy import ACCOUNTANTS, epsilon, noise_multiplier


class CliError(Exception):
    """Bad input from the user: printed as one line, exit status 2."""


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def add_privacy_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "privacy",
        help="calibrate the noise multiplier for a target epsilon, or compute epsilon for a noise multiplier",
        description="Privacy calculator for DP-SGD with Poisson sampling (the Gaussian mechanism).",
    )
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--epsilon", type=float, help="target epsilon: print the noise multiplier that meets it")
    target.add_argument("--noise-multiplier", type=float, help="noise multiplier: print the epsilon it spends")
    parser.add_argument("--delta", type=float, required=True)
    parser.add_argument("--sample-rate", type=float, required=True, help="Poisson sample rate q = B / N")
    parser.add_argument("--steps", type=_positive_int, required=True)
    parser.add_argument("--accountant", choices=ACCOUNTANTS, default="prv")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.set_defaults(handler=run_privacy)


def run_privacy(args: argparse.Namespace) -> int:
    common = dict(sample_rate=args.sample_rate, steps=args.steps, delta=args.delta, accountant=args.accountant)
    if args.epsilon is not None:
        sigma = noise_multiplier(target_epsilon=args.epsilon, **common)
        spent = epsilon(noise_multiplier=sigma, **common)
    else:
        sigma = args.noise_multiplier
        spent = epsilon(noise_multiplier=sigma, **common)
    result = {
        "noise_multiplier": sigma,
        "epsilon": spent,
        "delta": args.delta,
        "sample_rate": args.sample_rate,
        "steps": args.steps,
        "accountant": args.accountant,
    }
    if args.json:
        print(json.dumps(json_safe(result)))
    elif args.epsilon is not None:
        print(f"{sigma:.6g}")
    else:
        print(f"{spent:.6g}")
    return 0


def add_presets_parser(subparsers) -> None:
    parser = subparsers.add_parser("presets", help="list the shipped presets, one line each")
    parser.set_defaults(handler=run_presets)


def run_presets(args: argparse.Namespace) -> int:
    from dpdiffusion.runconfig import load_config, preset_names

    for name in preset_names():
        print(f"{name:32s} {load_config(name).description}")
    return 0


def add_train_parser(subparsers) -> None:
    parser = subparsers.add_parser("train", help="train a differentially private diffusion model")
    parser.add_argument("config", help="a preset name (see `dpdiffusion presets`) or a YAML file")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a configuration key, e.g. --set privacy.target_epsilon=1 (repeatable)")
    parser.add_argument("--run-dir", help="run folder (default runs/<config name>)")
    parser.add_argument("--resume", action="store_true", help="continue the run in --run-dir from its last checkpoint")
    parser.add_argument("--dry-run", action="store_true", help="print the resolved configuration and privacy plan as JSON")
    parser.set_defaults(handler=run_train)


def run_train(args: argparse.Namespace) -> int:
    from pathlib import Path

    from dpdiffusion.data.datasets import load_dataset
    from dpdiffusion.methods import dpdm
    from dpdiffusion.runconfig import load_config, resolve_plan

    config = load_config(args.config, args.set)
    dataset = load_dataset(config.data, "train")
    plan = resolve_plan(config.privacy, len(dataset))
    if args.dry_run:
        summary = {
            "config": config.to_dict(),
            "dataset": {"name": config.data.name, "split": "train", "size": len(dataset)},
            "privacy": {**plan.to_dict(), "planned_epsilon": plan.planned_epsilon},
        }
        print(json.dumps(json_safe(summary), indent=2))
        return 0
    trainer = dpdm.train(config, dataset, plan, Path(args.run_dir or Path("runs") / config.name), resume=args.resume)
    ledger = trainer.ledger
    print(f"trained {ledger.steps_taken}/{plan.steps} steps, epsilon {ledger.epsilon_spent():.4g} at delta "
          f"{plan.delta:.3g}; release in {trainer.run.release}")
    return 0


SAMPLER_NAMES = ("ancestral", "churn", "ddim", "heun")  # diffusion.samplers.SAMPLERS, without importing torch


def add_sample_parser(subparsers) -> None:
    parser = subparsers.add_parser("sample", help="generate synthetic images from a finished run's released model")
    parser.add_argument("run_dir", metavar="RUN_DIR")
    parser.add_argument("--num", type=_positive_int, required=True, help="number of images")
    parser.add_argument("--out", required=True, help="FILE.npz: images (uint8 N x H x W x C) and labels (int64 N)")
    parser.add_argument("--sampler", choices=SAMPLER_NAMES, help="default: the run's sampling.sampler")
    parser.add_argument("--steps", type=int, help="noise levels (default: the run's sampling.steps)")
    parser.add_argument("--guidance", type=float, help="classifier-free guidance weight w (1: conditional only)")
    parser.add_argument("--seed", type=_positive_int, default=0, help="public seed of labels and noise")
    parser.add_argument("--labels", help="comma-separated labels, one per image (default: uniform draws)")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.set_defaults(handler=run_sample)


def run_sample(args: argparse.Namespace) -> int:
    from pathlib import Path

    import numpy as np
    import torch

    from dpdiffusion.diffusion.generate import generate, load_release, save_grid

    out = Path(args.out)
    if out.suffix != ".npz":
        raise CliError(f"--out must name a .npz file, got {out}")
    model, config, _ = load_release(args.run_dir)
    overrides = {k: v for k, v in (("sampler", args.sampler), ("steps", args.steps), ("guidance", args.guidance)) if v is not None}
    sampling = dataclasses.replace(config.sampling, **overrides)
    if sampling.sampler == "churn" and sampling.S_churn == 0:
        sampling = dataclasses.replace(sampling, S_churn=40.0, S_min=0.05, S_max=50.0, S_noise=1.003)
    labels = None
    if args.labels:
        try:
            labels = torch.tensor([int(v) for v in args.labels.split(",")])
        except ValueError as error:
            raise CliError(f"--labels must be comma-separated integers, got {args.labels!r}") from error
    images, drawn = generate(model, config, num=args.num, sampling=sampling, labels=labels, seed=args.seed,
                             batch_size=args.batch_size)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.stem}.tmp.npz")
    np.savez_compressed(tmp, images=images, labels=drawn)
    tmp.replace(out)
    save_grid(images, out.with_suffix(".png"))
    print(f"wrote {len(images)} images to {out} and a grid to {out.with_suffix('.png')}")
    return 0


def add_demo_parser(subparsers) -> None:
    parser = subparsers.add_parser("demo", help="train on scikit-learn's digits at epsilon 10 and show the result")
    parser.add_argument("--run-dir", help="run folder (default runs/demo-<time>)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override the preset")
    parser.add_argument("--num-samples", type=int, default=1000, help="synthetic images for the downstream check")
    parser.set_defaults(handler=run_demo)


def run_demo(args: argparse.Namespace) -> int:
    from pathlib import Path

    from dpdiffusion import demo

    return demo.main(Path(args.run_dir) if args.run_dir else None, args.set, args.num_samples)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dpdiffusion",
        description="Differentially private diffusion models: train on private images, release synthetic ones.",
    )
    parser.add_argument("--version", action="version", version=f"dpdiffusion {__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_privacy_parser(subparsers)
    add_train_parser(subparsers)
    add_presets_parser(subparsers)
    add_sample_parser(subparsers)
    add_demo_parser(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.handler(args)
    except (CliError, ValueError, OSError, RuntimeError) as error:
        message = str(error).splitlines()[0] if str(error) else type(error).__name__
        print(f"dpdiffusion {args.command}: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"dpdiffusion {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
