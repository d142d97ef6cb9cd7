"""The utility yardstick: train a preset (or reuse its finished run), sample, evaluate on one named protocol, and
record every figure with its protocol, its image counts and the wall time of each phase.

    python benchmarks/utility.py PRESET [--set KEY=VALUE ...] [--quick] [--name NAME] [--run-dir DIR]
                                 [--sampler S --steps N --guidance W] [--ceiling] [--out benchmarks/results]
    python benchmarks/utility.py --table benchmarks/results/utility_*.json     # one Markdown table of results

Protocols (every figure names its own):
- ``full`` (DPDM's): 60,000 synthetic images with uniform labels; logistic regression, MLP and DPDM's CNN
  (ResNet-9 for colour) trained on 90% of them for 50 epochs (Adam 3e-4, batch 128), the epoch chosen on the
  synthetic 10% only, accuracy on the real test split; FID of 10,000 synthetic images against the whole
  training split *and* against the whole test split; precision/recall (k = 3) of 10,000 vs 10,000 against the
  training split.
- ``quick`` (``--quick``, for iteration; never a headline figure): 10,000 synthetic images, logistic regression
  and the CNN for 10 epochs, FID and precision/recall of 2,000 synthetic images against the whole test split.

DPDM's CNN needs images of at least 16 pixels: at 8x8 (digits) it is left out and the results say so.

``--num``, ``--epochs`` and ``--fid-num`` change the protocol's counts: the result is then named ``<protocol>-custom``
and is never a headline figure either.

Writes ``OUT/utility_<name>[_<protocol>][_<sampler>-<steps>[-w<guidance>]].json`` and ``.md``, and a PNG beside them:
synthetic images per class next to real *test* images. The run folder (default ``runs/utility/<name>``) keeps the
trained model (resumed if unfinished), the synthetic sets under ``release/synthetic/``, the training time and each
finished phase under ``owner/utility/`` (a stopped evaluation resumes at its first unfinished phase), and the
Inception features of the reference splits and of the scored synthetic images under ``owner/cache/`` (or
``--feature-cache``: one owner-side folder shared by the runs on the same data), chunk by chunk. The metrics are computed from private data without noise (FID against the training split,
accuracy on the test split): they belong to the data owner. One heavy job at a time on a small machine.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class Protocol:
    name: str
    synthetic: int  # images sampled, uniform labels; the classifiers train on 90% of them
    classifiers: tuple[str, ...]  # for grayscale images; colour images get ResNet-9 in place of the CNN
    epochs: int
    fid_synthetic: int  # the first this many synthetic images are scored by FID and precision/recall
    fid_references: tuple[str, ...]  # splits, each used whole
    pr_reference: str
    headline: bool

    def describe(self) -> str:
        refs = " and ".join(f"the whole {s} split" for s in self.fid_references)
        return (f"{self.name} protocol: {self.synthetic:,} synthetic images (uniform labels); "
                f"{', '.join(self.classifiers)} trained on 90% for {self.epochs} epochs (Adam 3e-4, batch 128), epoch "
                f"chosen on the synthetic 10%, accuracy on the real test split; FID of {self.fid_synthetic:,} synthetic "
                f"images against {refs}; precision/recall against the {self.pr_reference} split")


FULL = Protocol("full", 60000, ("logreg", "mlp", "cnn"), 50, 10000, ("train", "test"), "train", True)
QUICK = Protocol("quick", 10000, ("logreg", "cnn"), 10, 2000, ("test",), "test", False)


def classifiers_for(protocol: Protocol, channels: int, resolution: int) -> tuple[list[str], list[str]]:
    """The protocol's classifiers that fit these images, and the ones left out (with why)."""
    chosen, left_out = [], []
    for name in protocol.classifiers:
        if name == "cnn" and channels == 3:
            name = "resnet9"
        if name == "cnn" and resolution < 16:
            left_out.append(f"cnn (DPDM's unpadded CNN needs at least 16 pixels; these images have {resolution})")
            continue
        chosen.append(name)
    return chosen, left_out


def _flat(value: object, prefix: str = "") -> dict[str, object]:
    if isinstance(value, dict):
        out: dict[str, object] = {}
        for key, item in value.items():
            out.update(_flat(item, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: value}


def train(source: str, overrides: list[str], run_dir: Path) -> dict:
    """Train (resuming an unfinished run), or reuse a finished run whose configuration is the one asked for."""
    from dpdiffusion.cli import main as cli
    from dpdiffusion.diffusion.generate import load_release
    from dpdiffusion.io import json_safe, write_json_atomic
    from dpdiffusion.release import released_config
    from dpdiffusion.runconfig import load_config

    timing = run_dir / "owner" / "utility" / "train.json"
    previous = json.loads(timing.read_text()) if timing.is_file() else {}
    if (run_dir / "release" / "model.safetensors").is_file():
        _, released, _ = load_release(run_dir)
        wanted = _flat(json_safe(released_config(load_config(source, overrides).to_dict())[0]))  # as released
        have = _flat(json_safe(released.to_dict()))
        differ = sorted(k for k in set(wanted) | set(have)  # sampling settings do not change the trained model
                        if wanted.get(k) != have.get(k) and k not in ("data.data_dir", "name", "description")
                        and not k.startswith("sampling."))
        if differ:
            sys.exit(f"utility: {run_dir} was trained with other settings ({', '.join(differ[:5])}); "
                     "give another --run-dir or --name")
        return {"reused": True, "seconds": previous.get("seconds")}
    args = ["train", source, "--run-dir", str(run_dir)]
    for override in overrides:
        args += ["--set", override]
    if (run_dir / "owner").is_dir():
        args.append("--resume")
    start = time.perf_counter()
    code = cli(args)
    seconds = float(previous.get("seconds") or 0.0) + time.perf_counter() - start
    if code:
        sys.exit(f"utility: training failed (exit {code})")
    write_json_atomic(timing, {"seconds": seconds, "sessions": int(previous.get("sessions", 0)) + 1})
    return {"reused": False, "seconds": seconds}


def sample(run_dir: Path, sampling, num: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, float]:
    """``num`` images from the released model with uniform labels, cached in ``release/synthetic/`` (DP samples:
    post-processing of the release); a cached set of at least ``num`` images is reused."""
    from dpdiffusion.diffusion.generate import generate, load_release

    tag = (f"{sampling.sampler}-{sampling.steps}-w{sampling.guidance:g}-smax{sampling.sigma_max:g}-smin{sampling.sigma_min:g}"
           f"-rho{sampling.rho:g}-seed{seed}")
    cache = run_dir / "release" / "synthetic" / f"{tag}-{num}.npz"
    if cache.is_file():
        with np.load(cache) as f:
            return f["images"], f["labels"], float(f["seconds"])
    model, config, _ = load_release(run_dir)
    start = time.perf_counter()
    images, labels = generate(model, config, num=num, sampling=sampling, seed=seed, batch_size=128, progress=True)
    seconds = time.perf_counter() - start
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_name(f".{cache.stem}.tmp.npz")
    np.savez(tmp, images=images, labels=labels, seconds=seconds)
    tmp.replace(cache)
    return images, labels, seconds


def image_metrics(images: np.ndarray, data, protocol: Protocol, inception: str | None, cache: Path | None = None) -> dict:
    """FID against each reference split (whole) and precision/recall, on the first ``fid_synthetic`` images;
    reference and synthetic features cached in ``cache`` (the run's owner side; None: the shared cache), so that a
    stopped phase resumes from its last whole chunk of either."""
    from dpdiffusion.evaluation.evaluate import EvaluationSettings, cached_features, images_source, reference_features
    from dpdiffusion.evaluation.fid import Statistics, frechet_distance, reference_path
    from dpdiffusion.evaluation.inception import load_detector
    from dpdiffusion.evaluation.precision_recall import precision_recall

    detector = load_detector(inception)
    scored = images[: protocol.fid_synthetic]
    where = reference_path(data.name, "synthetic", scored.shape[1], len(scored), images_source(scored, inception), cache)
    fake = cached_features(scored, detector, where, progress=True, desc="synthetic").astype(np.float64)
    out: dict = {"fid": {}, "synthetic_images": len(scored)}
    references = {}
    for split in dict.fromkeys((*protocol.fid_references, protocol.pr_reference)):
        settings = EvaluationSettings(ref_split=split, inception=inception, cache=cache)
        references[split] = reference_features(data, settings, detector)
    for split in protocol.fid_references:
        real, info = references[split]
        out["fid"][split] = {"value": frechet_distance(Statistics.of(fake), Statistics.of(real)), "reference": info}
    real, info = references[protocol.pr_reference]
    rng = np.random.default_rng(0)
    count = min(len(real), len(fake))
    pick = lambda f: f[np.sort(rng.permutation(len(f))[:count])]  # noqa: E731
    out["precision_recall"] = {**precision_recall(pick(real), pick(fake), k=3), "real_images": count,
                               "synthetic_images": count, "reference": info}
    return out


def classifier_metrics(images: np.ndarray, labels: np.ndarray, test: tuple[np.ndarray, np.ndarray], data,
                       protocol: Protocol, num_classes: int, ceiling: bool) -> dict:
    from dpdiffusion.evaluation.classifiers import ClassifierSettings, train_and_test
    from dpdiffusion.evaluation.evaluate import real_images

    test_images, test_labels = test
    names, left_out = classifiers_for(protocol, images.shape[-1], images.shape[1])
    settings = ClassifierSettings(epochs=protocol.epochs)
    out: dict = {"test_split": f"{data.name} test", "test_images": len(test_images), "left_out": left_out,
                 "classifiers": {}}
    train_split = real_images(data, "train") if ceiling else None
    for name in names:
        entry = {"synthetic": train_and_test(name, images, labels, test_images, test_labels, num_classes=num_classes,
                                             settings=settings, progress=True)}
        if train_split is not None:
            entry["real_ceiling"] = train_and_test(name, *train_split, test_images, test_labels,
                                                   num_classes=num_classes, settings=settings, progress=True)
        out["classifiers"][name] = entry
    return out


def run(args: argparse.Namespace) -> dict:
    import torch

    from dpdiffusion.diffusion.generate import load_release
    from dpdiffusion.diffusion.samplers import network_evaluations
    from dpdiffusion.evaluation.evaluate import real_images
    from dpdiffusion.evaluation.report import save_comparison_grid
    from dpdiffusion.release import owner_data
    from dpdiffusion.run_folder import RunFolder

    protocol = QUICK if args.quick else FULL
    custom = {k: v for k, v in (("synthetic", args.num), ("epochs", args.epochs), ("fid_synthetic", args.fid_num))
              if v is not None}
    if custom:  # a protocol of the user's: labelled as such, never a headline figure
        protocol = dataclasses.replace(protocol, name=f"{protocol.name}-custom", headline=False, **custom)
    name = args.name or Path(args.preset).stem
    run_dir = Path(args.run_dir or Path("runs") / "utility" / name)
    phases: dict[str, float | None] = {}
    trained = train(args.preset, args.set, run_dir)
    phases["train"] = trained["seconds"]

    model, config, privacy = load_release(run_dir)
    overrides = {k: v for k, v in (("sampler", args.sampler), ("steps", args.steps), ("guidance", args.guidance),
                                   ("sigma_min", args.sigma_min), ("sigma_max", args.sigma_max), ("rho", args.rho))
                 if v is not None}
    sampling = dataclasses.replace(config.sampling, **overrides)
    images, labels, phases["sample"] = sample(run_dir, sampling, protocol.synthetic)
    data = dataclasses.replace(owner_data(run_dir, config.data), resolution=config.model.img_resolution)
    num_classes = config.model.num_classes
    test_images, test_labels = real_images(data, "test")  # read once: the classifiers' test set and the picture

    stem = f"utility_{name}" + ("" if protocol is FULL else f"_{protocol.name}")
    if overrides:
        stem += f"_{sampling.sampler}-{sampling.steps}" + (f"-w{sampling.guidance:g}" if sampling.guidance != 1 else "")
        stem += "".join(f"-{short}{overrides[key]:g}" for key, short in (("sigma_max", "smax"), ("sigma_min", "smin"),
                                                                          ("rho", "rho")) if key in overrides)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)  # the picture first: it needs no evaluation
    save_comparison_grid(images, labels, test_images, test_labels, out / f"{stem}.png", num_classes=num_classes)
    # each evaluation phase is kept owner-side as it finishes, so an interrupted evaluation resumes where it stopped
    done_file = run_dir / "owner" / "utility" / f"{stem}.phases.json"
    done = json.loads(done_file.read_text()) if done_file.is_file() else {}
    this = json.loads(json.dumps(dataclasses.asdict(protocol)))  # as read back (tuples as lists)
    if done.get("protocol") != this or done.get("synthetic_seconds") != phases["sample"]:
        done = {"protocol": this, "synthetic_seconds": phases["sample"]}  # other samples: evaluate them anew

    def keep(key: str, value: dict, seconds: float) -> None:
        from dpdiffusion.io import json_safe, write_json_atomic

        done[key], done[f"{key}_seconds"] = value, seconds
        write_json_atomic(done_file, json_safe(done))

    if "downstream" not in done:  # the classifiers first: the headline figure, and cheaper than the features
        start = time.perf_counter()
        keep("downstream", classifier_metrics(images, labels, (test_images, test_labels), data, protocol, num_classes,
                                              args.ceiling), time.perf_counter() - start)
    if "image" not in done:
        start = time.perf_counter()
        cache = Path(args.feature_cache) if args.feature_cache else RunFolder(run_dir).cache
        keep("image", image_metrics(images, data, protocol, args.inception, cache), time.perf_counter() - start)
    metrics = {**done["image"], "downstream": done["downstream"]}
    phases["features"], phases["classifiers"] = done["image_seconds"], done["downstream_seconds"]

    if privacy is None:
        raise SystemExit(f"{run_dir}: the release has no privacy report")
    plan = privacy.parts.get("dpsgd") or privacy.parts.get("student") or {}
    result = {
        "benchmark": "utility", "name": name, "preset": args.preset, "overrides": args.set,
        "protocol": {**dataclasses.asdict(protocol), "description": protocol.describe()},
        "run_dir": str(run_dir), "reused_run": trained["reused"],
        "privacy": {"epsilon": privacy.epsilon, "delta": privacy.spent.delta,
                    "sample_rate": plan.get("sample_rate"), "noise_multiplier": plan.get("noise_multiplier"),
                    "steps": plan.get("steps"), "batch_size": plan.get("expected_batch_size"),
                    "multiplicity": plan.get("multiplicity"), "max_grad_norm": plan.get("max_grad_norm"),
                    "accountant": privacy.accountant, "private": privacy.private},
        "model": {"parameters": sum(p.numel() for p in model.parameters()),
                  "model_channels": config.model.model_channels, "channel_mult": list(config.model.channel_mult),
                  "num_blocks": config.model.num_blocks},
        "training": {"lr": config.training.lr, "ema_decay": config.training.ema_decay},
        "sampling": {**dataclasses.asdict(sampling), "nfe": network_evaluations(sampling.sampler, sampling.steps),
                     "images_per_s": protocol.synthetic / phases["sample"] if phases["sample"] else None},
        "stages": stage_summary(privacy.stages, run_dir),
        "wall_seconds": phases, "metrics": metrics,
        "machine": f"{platform.machine()} {os.cpu_count()} cpus", "threads": torch.get_num_threads(),
        "torch": torch.__version__, "date": time.strftime("%Y-%m-%d"),
        "note": "owner-side: FID against the training split and accuracy on the test split are computed from "
                "private data without noise",
    }
    from dpdiffusion.io import json_safe

    (out / f"{stem}.json").write_text(json.dumps(json_safe(result), indent=2) + "\n")
    (out / f"{stem}.md").write_text(markdown(result, f"{stem}.png"))
    return result


def stage_summary(stages: tuple, run_dir: Path) -> list[dict]:
    """Each stage of the run: what it read, its DP event's epsilon alone and noise multiplier, and the wall time
    of the attempt that finished it (owner/stages.json; the last stage's is the training time's remainder)."""
    records_file = run_dir / "owner" / "stages.json"
    records = json.loads(records_file.read_text()) if records_file.is_file() else {}
    return [{"name": s["name"], "reads": s.get("reads"), "epsilon_alone": (s.get("dp") or {}).get("epsilon_alone"),
             "noise_multiplier": (s.get("dp") or {}).get("noise_multiplier"), "steps": (s.get("dp") or {}).get("steps"),
             "seconds": records.get(s["name"], {}).get("seconds")} for s in stages]


def summary(result: dict) -> dict[str, str]:
    """The headline cells of one result."""
    metrics, privacy, sampling = result["metrics"], result["privacy"], result["sampling"]
    cells = {"name": result["name"], "protocol": result["protocol"]["name"],
             "eps": f"{privacy['epsilon']:.2f}" if privacy.get("epsilon") is not None else "-",
             "sampler": f"{sampling['sampler']} {sampling['steps']} ({sampling['nfe']} NFE"
                        + (f", w {sampling['guidance']:g}" if sampling["guidance"] != 1 else "")
                        + ("" if (sampling.get("sigma_min", 0.002), sampling.get("sigma_max", 80.0), sampling.get("rho", 7.0))
                           == (0.002, 80.0, 7.0) else
                           f", sigma {sampling['sigma_min']:g}-{sampling['sigma_max']:g}, rho {sampling['rho']:g}") + ")"}
    for name, entry in metrics["downstream"]["classifiers"].items():
        cells[name] = f"{100 * entry['synthetic']['test_accuracy']:.1f}%"
    for split, entry in metrics["fid"].items():
        cells[f"FID {split}"] = f"{entry['value']:.1f}"
    pr = metrics["precision_recall"]
    cells["P / R"] = f"{pr['precision']:.2f} / {pr['recall']:.2f}"
    for phase, seconds in result["wall_seconds"].items():
        cells[f"{phase} min"] = f"{seconds / 60:.1f}" if seconds is not None else "-"
    return cells


def table(results: list[dict]) -> str:
    rows = [summary(r) for r in results]
    columns = list(dict.fromkeys(k for row in rows for k in row))
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(row.get(c, "-") for c in columns) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def markdown(result: dict, picture: str) -> str:
    privacy, fid = result["privacy"], result["metrics"]["fid"]
    lines = [f"# Utility: {result['name']} ({result['protocol']['name']} protocol)", "",
             result["protocol"]["description"] + ".", "",
             f"Not a headline figure: the {result['protocol']['name']} protocol is for iteration only."
             if not result["protocol"]["headline"]
             else "DPDM's full protocol.", "", table([result]), "",
             f"Privacy: epsilon {privacy['epsilon']} at delta {privacy['delta']} (q {privacy['sample_rate']}, "
             f"sigma {privacy['noise_multiplier']}, {privacy['steps']} steps, B {privacy['batch_size']}, "
             f"K {privacy['multiplicity']}, C {privacy['max_grad_norm']}, accountant {privacy['accountant']}).",
             f"Model: {result['model']['parameters']:,} parameters; preset `{result['preset']}` with "
             f"{result['overrides'] or 'no overrides'}; run `{result['run_dir']}`"
             + (" (reused)" if result["reused_run"] else "") + ".",
             "FID references: " + "; ".join(f"{split}: {e['reference']['images']:,} images" for split, e in fid.items())
             + f"; synthetic: {result['metrics']['synthetic_images']:,} images.",
             f"Machine: {result['machine']}, torch {result['torch']}, {result['threads']} threads, {result['date']}.",
             ""]
    if len(result.get("stages") or ()) > 1:
        lines += ["| stage | reads | steps / rounds | noise multiplier | epsilon alone | minutes |", "|---|---|---|---|---|---|"]
        lines += [f"| {s['name']} | {s['reads']} | {s['steps'] if s['steps'] is not None else '-'} | "
                  + (f"{s['noise_multiplier']:.3f}" if s["noise_multiplier"] is not None else "-") + " | "
                  + (f"{s['epsilon_alone']:.3f}" if s["epsilon_alone"] is not None else "-") + " | "
                  + (f"{s['seconds'] / 60:.1f}" if s["seconds"] is not None else "-") + " |" for s in result["stages"]]
        lines += ["", f"Epsilon of the whole run (all stages composed): {privacy['epsilon']}.", ""]
    left_out = result["metrics"]["downstream"].get("left_out")
    if left_out:
        lines += [f"Left out: {'; '.join(left_out)}.", ""]
    lines += ["Synthetic images (left of each row) beside real test images (right), one row per class:", "",
              f"![samples]({picture})", "", f"> {result['note']}.", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("preset", nargs="?", help="a preset name or a YAML file")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override the preset")
    parser.add_argument("--quick", action="store_true", help="the smaller iteration protocol (never a headline)")
    parser.add_argument("--name", help="name of the run and the results (default: the preset's)")
    parser.add_argument("--run-dir", help="the run folder (default runs/utility/NAME); a finished run is reused")
    parser.add_argument("--sampler", help="override the preset's sampling.sampler")
    parser.add_argument("--steps", type=int, help="override sampling.steps")
    parser.add_argument("--guidance", type=float, help="override sampling.guidance")
    parser.add_argument("--sigma-min", type=float, help="override sampling.sigma_min (EDM's schedule)")
    parser.add_argument("--sigma-max", type=float, help="override sampling.sigma_max")
    parser.add_argument("--rho", type=float, help="override sampling.rho")
    parser.add_argument("--num", type=int, help="synthetic images (a custom protocol, never a headline)")
    parser.add_argument("--epochs", type=int, help="classifier epochs (a custom protocol)")
    parser.add_argument("--fid-num", type=int, help="synthetic images scored by FID (a custom protocol)")
    parser.add_argument("--ceiling", action="store_true", help="also train each classifier on the real training split")
    parser.add_argument("--inception", help="the FID detector (default: $DPDIFFUSION_INCEPTION or the download)")
    parser.add_argument("--feature-cache", help="the owner's cache of reference features, shared by runs on the same "
                        "data (default: each run's owner/cache); features of private data: keep it owner-side")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"), help="results folder")
    parser.add_argument("--table", nargs="+", metavar="JSON", help="print one Markdown table of these results")
    args = parser.parse_args(argv)
    if args.table:
        print(table([json.loads(Path(p).read_text()) for p in args.table]), end="")
        return 0
    if not args.preset:
        parser.error("give a PRESET (or --table)")
    result = run(args)
    print(table([result]), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
