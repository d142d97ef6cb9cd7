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

    import torch

    from dpdiffusion.data.datasets import load_dataset
    from dpdiffusion.io import write_json_atomic
    from dpdiffusion.methods import dpdm
    from dpdiffusion.runconfig import load_config, resolve_plan
    from dpdiffusion.training import ArrayDataset, Trainer, TrainSettings

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
    if config.performance.threads:
        torch.set_num_threads(config.performance.threads)
    torch.manual_seed(config.training.seed)
    model, loss = dpdm.build(config)
    run_dir = Path(args.run_dir or Path("runs") / config.name)
    settings = TrainSettings(**dataclasses.asdict(config.training))
    trainer = Trainer(model, loss, dataset, plan=plan, run_dir=run_dir, performance=config.performance,
                      settings=settings, config=config.to_dict())
    ledger = trainer.fit(resume=args.resume)
    write_json_atomic(run_dir / "config.json", config.to_dict())
    print(f"trained {ledger.steps_taken}/{plan.steps} steps, epsilon {ledger.epsilon_spent():.4g} at delta "
          f"{plan.delta:.3g}; release in {trainer.run.release}")
    return 0


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
