"""The ``dpdiffusion`` command line."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Sequence

from dpdiffusion import __version__
from dpdiffusion.io import json_safe
from dpdiffusion.privacy import ACCOUNTANTS, SampledGaussian, epsilon, noise_multiplier
from dpdiffusion.privacy.accounting import PRV_MAX_GRID_POINTS, prv_falls_back
from dpdiffusion.privacy.plan import noise_swamps_signal


class CliError(Exception):
    """Bad input from the user: printed as one line, exit status 2."""


def warn(command: str, message: str, word: str = "warning") -> None:
    print(f"dpdiffusion {command}: {word}: {message}", file=sys.stderr)


def note_prv_fallback(command: str, events: Sequence[SampledGaussian], *, delta: float, accountant: str) -> None:
    """A note on stderr when the prv accountant gave dp-accounting's PLD bound for ``events`` (``prv_falls_back``)."""
    if accountant == "prv" and prv_falls_back(events, delta=delta):
        warn(command, f"epsilon is small for the number of steps: the prv accountant's grid would exceed "
                      f"{PRV_MAX_GRID_POINTS:.0e} points, so epsilon is dp-accounting's PLD bound (tight, and a valid "
                      "upper bound too)", word="note")


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def _count(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {text}")
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
    parser.add_argument("--batch-size", type=_count, help="expected batch size B: warn when sigma / B >= 1 (the noise "
                        "swamps the signal)")
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
    swamped = noise_swamps_signal(sigma, args.batch_size) if args.batch_size else None
    if swamped:
        warn("privacy", swamped)
    note_prv_fallback("privacy", [SampledGaussian(sigma, args.sample_rate, args.steps)], delta=args.delta,
                      accountant=args.accountant)
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
    parser.add_argument("--data-dir", help="local dataset copies, <dir>/<dataset>/<files> (same as --set data.data_dir=DIR; "
                        "also for pretrain.data)")
    parser.add_argument("--allow-non-private-start", action="store_true",
                        help="start from a model trained on the private data without privacy (finetune.init): the "
                             "release is NOT differentially private, and its privacy report says so")
    parser.add_argument("--allow-non-private-teacher", action="store_true",
                        help="DP-SAD with dpsad.teacher=none (the paper's setting): the release is NOT differentially "
                             "private end to end, and its privacy report says so")
    parser.add_argument("--audit-canaries", type=_count, metavar="M",
                        help="insert M random canaries, each included with probability 1/2 (the draw stays in "
                             "RUN_DIR/owner/audit), for `dpdiffusion audit` (method dpdm)")
    parser.set_defaults(handler=run_train)


def run_train(args: argparse.Namespace) -> int:
    """Train on one process, or as one rank of a ``torchrun`` job (``dpdiffusion.distributed``)."""
    from dpdiffusion import distributed

    world = distributed.init_from_env()
    try:
        code = train_on(args, world)
        distributed.barrier(world)  # the ranks leave together: gloo can abort a rank whose peer tears down first
        return code
    finally:
        distributed.close()


def train_on(args: argparse.Namespace, world) -> int:
    """Load the configuration and the private data, then plan, describe or train through the method."""
    from pathlib import Path

    from dpdiffusion import distributed
    from dpdiffusion.data.datasets import check_fits_model, load_dataset
    from dpdiffusion.data.known_sizes import planned_without_files
    from dpdiffusion.methods import METHODS
    from dpdiffusion.monitoring import require as require_monitoring
    from dpdiffusion.runconfig import load_config

    config = load_config(args.config, args.set)
    require_monitoring(config.training)  # an optional package it needs is missing: refused before any training
    if args.data_dir:
        config = dataclasses.replace(config, data=dataclasses.replace(config.data, data_dir=args.data_dir))
        if config.pretrain.data is not None and config.pretrain.data.data_dir is None:
            public = dataclasses.replace(config.pretrain.data, data_dir=args.data_dir)
            config = dataclasses.replace(config, pretrain=dataclasses.replace(config.pretrain, data=public))
    method = METHODS[config.method]
    if args.audit_canaries and not method.audit_canaries:
        raise CliError(f"--audit-canaries: not supported by method {method.name} (use method dpdm)")
    flags = {"--allow-non-private-start": args.allow_non_private_start,
             "--allow-non-private-teacher": args.allow_non_private_teacher}
    wrong = [flag for flag, given in flags.items() if given and flag != method.non_private_flag]
    if wrong:
        raise CliError(f"{wrong[0]}: does not apply to method {method.name} (its flag is {method.non_private_flag})")
    allow_non_private = flags[method.non_private_flag]
    run_dir = Path(args.run_dir or Path("runs") / config.name)
    if args.resume and not args.dry_run and not run_dir.is_dir():
        raise CliError(f"--resume: {run_dir} does not exist, so there is no run to resume (leave out --resume to "
                       "start a new run there)")
    # a dry-run of a canonical dataset that is not on disk plans from its published size (not with pretrain.data,
    # whose check compares images with the private ones)
    offline = planned_without_files(config.data, config.model) if args.dry_run and not config.pretrain.data else None
    if offline is None:
        with distributed.main_first(world):  # rank 0 downloads what is missing; the others then find it
            dataset = load_dataset(config.data, "train")
        check_fits_model(dataset, config.model)
    else:
        warn("train", offline.note, word="note")
    run_plan = method.plan(config, len(dataset if offline is None else offline), allow_non_private=allow_non_private)
    if world.is_main:
        composed = run_plan.composed
        for name, part in composed.parts:
            swamped = part.noise_warning() if name not in composed.fixed else None  # fixed: spent before this run
            if swamped:
                warn("train", f"{name}: {swamped}")
        note_prv_fallback("train", composed.events(), delta=composed.delta, accountant=composed.accountant)
    if args.dry_run:
        print(json.dumps(json_safe(method.describe(config, dataset if offline is None else offline, run_plan)), indent=2))
        return 0
    if method.audit_canaries:
        from dpdiffusion.audit.canaries import with_canaries

        with distributed.main_first(world):  # rank 0 draws and saves the canaries; the others read them
            dataset = with_canaries(dataset, args.audit_canaries, config.model.num_classes, run_dir,
                                    resume=args.resume or not world.is_main)
    trainer = method.train(config, dataset, run_plan, run_dir, resume=args.resume, allow_non_private=allow_non_private)
    if world.is_main:
        taken = trainer.steps_taken()
        steps = ", ".join(f"{name} {taken[name]}/{plan.steps}" for name, plan in run_plan.composed.parts)
        print(f"trained {method.name}: {steps} steps; total epsilon {trainer.epsilon_spent():.4g} at delta "
              f"{run_plan.composed.delta:.3g}; release in {trainer.run.release}")
        if trainer.not_private():
            print(f"warning: {trainer.not_private()}")
    return 0


def add_init_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "init", help="write a starting configuration for your own images (folder, CSV, npz or Hugging Face dataset)",
        description="Inspect the data's layout (kind, number of images and classes, the first image's size and "
                    "channels) and write a starting YAML configuration sized for this machine.")
    parser.add_argument("data", metavar="DATA", help="an image folder, a .csv, a .npz, a folder saved by datasets' "
                        "save_to_disk, or a Hugging Face hub name")
    parser.add_argument("--out", default="config.yaml", help="the configuration to write (never overwritten)")
    machine = parser.add_mutually_exclusive_group()
    machine.add_argument("--gpu", dest="gpu", action="store_true", default=None, help="size for a GPU (DPDM's sizes)")
    machine.add_argument("--cpu", dest="gpu", action="store_false", help="size for a CPU (default without CUDA)")
    parser.set_defaults(handler=run_init)


def run_init(args: argparse.Namespace) -> int:
    from dpdiffusion.init_config import init

    out, layout, gpu = init(args.data, args.out, args.gpu)
    print(f"wrote {out}: {layout.source} data, {layout.size} images, {layout.num_classes} classes, sized for a "
          f"{'GPU' if gpu else 'CPU'}; check it with `dpdiffusion train {out} --dry-run`")
    return 0


SAMPLER_NAMES = ("ancestral", "churn", "ddim", "dpmpp2m", "dpmpp3m", "heun")  # diffusion.samplers.SAMPLERS, without importing torch


def add_sample_parser(subparsers) -> None:
    parser = subparsers.add_parser("sample", help="generate synthetic images from a finished run's released model")
    parser.add_argument("run_dir", metavar="RUN_DIR", help="a finished run folder, or a model file of ours "
                        "(e.g. RUN_DIR/public/model.safetensors, the public stage-1 model)")
    parser.add_argument("--num", type=_positive_int, required=True, help="number of images")
    parser.add_argument("--out", required=True, help="npz: FILE.npz, images (uint8 N x H x W x C) and labels (int64 N); "
                        "png: a new or empty FOLDER, OUT/<class>/<index>.png (OUT/<index>.png if unconditional)")
    parser.add_argument("--format", choices=("npz", "png"), default="npz", help="one .npz file (default) or PNG files")
    parser.add_argument("--sampler", choices=SAMPLER_NAMES, help="default: the run's sampling.sampler")
    parser.add_argument("--steps", type=int, help="noise levels (default: the run's sampling.steps)")
    parser.add_argument("--guidance", type=float, help="classifier-free guidance weight w (1: conditional only)")
    parser.add_argument("--seed", type=_positive_int, default=0, help="public seed of labels and noise")
    parser.add_argument("--labels", help="comma-separated labels, one per image (default: uniform draws)")
    parser.add_argument("--batch-size", type=_count, default=256)
    parser.set_defaults(handler=run_sample)


def run_sample(args: argparse.Namespace) -> int:
    from pathlib import Path

    import torch

    from dpdiffusion.diffusion.generate import generate, load_model_file, load_release
    from dpdiffusion.diffusion.sample_output import check_output, write_npz, write_png_folder
    from dpdiffusion.privacy.report import PrivacyReport

    out = Path(args.out)
    check_output(out, args.format)
    source = Path(args.run_dir)
    if source.is_file():
        model, config, meta = load_model_file(source)
        report = PrivacyReport.from_dict(meta["privacy"]) if meta.get("privacy") else None
    else:
        model, config, report = load_release(source)
    described = report.data.private if report is not None and report.data is not None else None
    layout_names = tuple(described.class_names or ()) if described is not None else ()
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
                             batch_size=args.batch_size, progress=True)
    if args.format == "png":
        names = config.data.class_names or layout_names  # declared, else as the report took them from the layout
        write_png_folder(out, images, drawn, num_classes=config.model.num_classes, class_names=names)
        print(f"wrote {len(images)} images to {out}/ as PNG files")
    else:
        write_npz(out, images, drawn)
        print(f"wrote {len(images)} images to {out} and a grid to {out.with_suffix('.png')}")
    return 0


def add_demo_parser(subparsers) -> None:
    parser = subparsers.add_parser("demo", help="train on scikit-learn's digits at epsilon 10 and show the result")
    parser.add_argument("--run-dir", help="run folder (default runs/demo-<time>)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override the preset")
    parser.add_argument("--num-samples", type=_count, default=1000, help="synthetic images for the downstream check")
    parser.set_defaults(handler=run_demo)


def run_demo(args: argparse.Namespace) -> int:
    from pathlib import Path

    from dpdiffusion import demo

    return demo.main(Path(args.run_dir) if args.run_dir else None, args.set, args.num_samples)


def add_evaluate_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "evaluate", help="FID, KID, precision/recall and downstream accuracy of synthetic images, with a report",
        description="Evaluate a run's released model (RUN_DIR: samples are generated) or a samples file against a "
                    "real dataset. Writes metrics.json, report.md and report.html (default: RUN_DIR/owner/evaluation "
                    "or beside the samples file): owner-side results that use private data without noise. The "
                    "detector, the real data and the classifiers' input sizes are checked before any sampling.")
    parser.add_argument("source", metavar="RUN_DIR|SAMPLES.npz")
    parser.add_argument("--dataset", help="real dataset to compare with (default: the run's)")
    parser.add_argument("--data-dir", help="local dataset copies (else $DPDIFFUSION_DATA_DIR, else downloads)")
    parser.add_argument("--data-path", help="imagefolder: the training folder (one sub-folder per class)")
    parser.add_argument("--test-path", help="imagefolder: the test folder")
    parser.add_argument("--metrics", default="fid,kid,pr,acc", help="comma-separated: fid, kid, pr, acc")
    parser.add_argument("--num", type=_count, default=60000, help="images to generate from RUN_DIR (DPDM: 60000)")
    parser.add_argument("--out", help="output folder")
    parser.add_argument("--seed", type=_positive_int, default=0)
    parser.add_argument("--ref-split", default="train", help="reference split for FID and precision/recall")
    parser.add_argument("--ref-num", type=_positive_int, help="reference images (default: the whole split)")
    parser.add_argument("--fid-num", type=_count, help="synthetic images for FID, KID and precision/recall (default: all)")
    parser.add_argument("--pr-num", type=_count, default=10000, help="images per side for precision/recall")
    parser.add_argument("--inception", help="local Inception detector (else $DPDIFFUSION_INCEPTION, else download)")
    parser.add_argument("--classifiers", help="comma-separated: logreg, mlp, cnn, resnet9 (default by channels)")
    parser.add_argument("--epochs", type=_count, default=50, help="classifier epochs (DPDM: 50)")
    parser.add_argument("--no-ceiling", action="store_true", help="skip the classifiers trained on real data")
    parser.add_argument("--batch-size", type=_count, default=256, help="sampling batch size")
    parser.add_argument("--cache-dir", help="where reference features are cached (default: RUN_DIR/owner/cache for a "
                        "run folder, else the shared cache); `dpdiffusion clear-cache` removes them")
    parser.set_defaults(handler=run_evaluate)


def run_evaluate(args: argparse.Namespace) -> int:
    from pathlib import Path

    from dpdiffusion.evaluation.classifiers import ClassifierSettings
    from dpdiffusion.evaluation.command import RealData, evaluate_source, summary
    from dpdiffusion.evaluation.evaluate import EvaluationSettings
    from dpdiffusion.run_folder import RunFolder

    source = Path(args.source)
    settings = EvaluationSettings(
        metrics=tuple(m for m in args.metrics.split(",") if m), num=args.num, seed=args.seed, ref_split=args.ref_split,
        ref_num=args.ref_num, fid_num=args.fid_num, pr_num=args.pr_num, inception=args.inception,
        classifiers=tuple(c for c in (args.classifiers or "").split(",") if c) or None,
        classifier=ClassifierSettings(epochs=args.epochs, seed=args.seed), ceiling=not args.no_ceiling,
        cache=Path(args.cache_dir) if args.cache_dir else (RunFolder(source).cache if source.is_dir() else None),
    )
    real = RealData(dataset=args.dataset, data_dir=args.data_dir, path=args.data_path, test_path=args.test_path)
    metrics, files = evaluate_source(source, settings, real, out=Path(args.out) if args.out else None,
                                     batch_size=args.batch_size, warn=lambda message: warn("evaluate", message))
    for line in summary(metrics):
        print(line)
    print(f"report: {files['html']} and {files['markdown']}")
    return 0


def add_audit_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "audit", help="empirical privacy audit of a finished run (membership inference; canaries if trained with them)",
        description="Membership inference (denoising loss on a fixed grid) on training members vs held-out test "
                    "images, and the one-run canary lower bound on epsilon. Reads private data: the report is written "
                    "to RUN_DIR/owner/audit and stays with the data owner.")
    parser.add_argument("run_dir", metavar="RUN_DIR", help="a finished run folder")
    parser.add_argument("--members", type=_count, default=1000, help="members and non-members to score (each)")
    parser.add_argument("--levels", type=_count, default=8, help="noise levels of the attack's grid")
    parser.add_argument("--noises", type=_count, default=2, help="noise draws per level and image")
    parser.add_argument("--seed", type=_positive_int, default=0, help="public seed of the choice of images and noises")
    parser.add_argument("--data-dir", help="local dataset copies (as for train)")
    parser.add_argument("--data-path", help="imagefolder: the training folder (default: from RUN_DIR/config.json)")
    parser.add_argument("--test-path", help="imagefolder: the held-out folder (default: from RUN_DIR/config.json)")
    parser.add_argument("--json", action="store_true", help="print the report as one JSON object")
    parser.set_defaults(handler=run_audit)


def run_audit(args: argparse.Namespace) -> int:
    from dpdiffusion.audit.membership import ScoreGrid
    from dpdiffusion.audit.run import audit_run

    report = audit_run(args.run_dir, members=args.members, grid=ScoreGrid(levels=args.levels, noises=args.noises,
                                                                           seed=args.seed),
                       seed=args.seed, data_dir=args.data_dir, data_path=args.data_path, test_path=args.test_path)
    if args.json:
        print(json.dumps(json_safe(report)))
        return 0
    m = report["membership"]
    print(f"claimed epsilon {report['claimed']['epsilon']:.4g} at delta {report['claimed']['delta']:.3g}")
    print(f"membership inference: AUC {m['auc']:.3f}, TPR {m['tpr_at_fpr']:.3f} at FPR {m['fpr']:.0%}")
    if "canaries" in report:
        c = report["canaries"]
        print(f"canary audit: epsilon >= {c['epsilon_lower_bound']:.3f} at {c['confidence']:.0%} confidence "
              f"({c['best']['correct']}/{c['best']['guesses']} correct, {c['canaries']} canaries)")
    print(f"report: {args.run_dir}/owner/audit/report.html")
    return 0


def add_export_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "export", help="write a finished run's release in another library's format (diffusers)",
        description="Write RUN_DIR/release as a folder diffusers loads: unet/ (UNet2DModel), scheduler/ (its EDM "
                    "scheduler), privacy.json and README.md (the model card). Needs model.architecture: unet2d (or a "
                    "fine-tuned diffusers model).")
    parser.add_argument("run_dir", metavar="RUN_DIR", help="a finished run folder")
    parser.add_argument("--format", choices=("diffusers",), default="diffusers")
    parser.add_argument("--out", required=True, help="the folder to write (must not exist, or be empty)")
    parser.add_argument("--license", default="other", help="the license in the model card's front matter")
    parser.set_defaults(handler=run_export)


def run_export(args: argparse.Namespace) -> int:
    from dpdiffusion.export import export_diffusers

    out = export_diffusers(args.run_dir, args.out, license=args.license)
    print(f"wrote {out} (load with UNet2DModel.from_pretrained('{out}', subfolder='unet'); model card: {out}/README.md)")
    return 0


def add_clear_cache_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "clear-cache", help="remove cached Inception reference features (of private data: un-noised)",
        description="Remove the Inception features of real images that `evaluate` caches: a run's (RUN_DIR/owner/cache), "
                    "a cache folder's (--cache-dir), or the shared cache's. Downloads and the detector are kept.")
    parser.add_argument("run_dir", nargs="?", metavar="RUN_DIR", help="a run folder (default: the shared cache)")
    parser.add_argument("--cache-dir", help="a cache folder given to `evaluate --cache-dir`")
    parser.set_defaults(handler=run_clear_cache)


def run_clear_cache(args: argparse.Namespace) -> int:
    from pathlib import Path

    from dpdiffusion.evaluation.fid import clear_reference_cache, shared_cache
    from dpdiffusion.run_folder import RunFolder

    if args.run_dir and args.cache_dir:
        raise CliError("give RUN_DIR or --cache-dir, not both")
    if args.run_dir and not Path(args.run_dir).is_dir():
        raise CliError(f"{args.run_dir} is not a run folder")
    root = RunFolder(args.run_dir).cache if args.run_dir else Path(args.cache_dir) if args.cache_dir else shared_cache()
    removed = clear_reference_cache(root)
    print(f"removed {len(removed)} cached feature file{'' if len(removed) == 1 else 's'} from {root}")
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
    add_init_parser(subparsers)
    add_sample_parser(subparsers)
    add_demo_parser(subparsers)
    add_evaluate_parser(subparsers)
    add_audit_parser(subparsers)
    add_export_parser(subparsers)
    add_clear_cache_parser(subparsers)
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
