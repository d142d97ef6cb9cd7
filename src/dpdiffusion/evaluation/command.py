"""The body of ``dpdiffusion evaluate``: a run folder (sample its released model) or a samples file, checked
(``checks.prepare``) before any sampling, evaluated, and written as a report."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dpdiffusion.evaluation.checks import prepare
from dpdiffusion.evaluation.evaluate import EvaluationSettings, evaluate, load_samples, read_log
from dpdiffusion.evaluation.report import write_report
from dpdiffusion.run_folder import RunFolder
from dpdiffusion.runconfig import ConfigError, DataConfig


@dataclass(frozen=True)
class RealData:
    """Where the real data is, as the flags give it (None: the run's own, or the defaults)."""

    dataset: str | None = None
    data_dir: str | None = None
    path: str | None = None
    test_path: str | None = None


def evaluate_source(source: Path, settings: EvaluationSettings, real: RealData, *, out: Path | None = None,
                    batch_size: int = 256, warn: Callable[[str], None] = print) -> tuple[dict, dict[str, Path]]:
    """Evaluate a run folder or a samples file; the metrics and the report's files. Cautions go to ``warn`` (and
    into the report) before any sampling."""
    if source.is_dir():
        from dpdiffusion.diffusion.generate import generate, load_release
        from dpdiffusion.release import check_located, owner_data

        model, config, privacy = load_release(source)
        located = owner_data(source, config.data)  # the release withholds the private data's paths
        data = dataclasses.replace(located, name=real.dataset or located.name, data_dir=real.data_dir or located.data_dir,
                                   resolution=config.model.img_resolution, path=real.path or located.path,
                                   test_path=real.test_path or located.test_path)
        check_located(data, "--data-path (and --test-path)")
        out = out or RunFolder(source).evaluation
        side = config.model.img_resolution
        prepared = prepare(data, settings, shape=(side, side, config.model.in_channels), synthetic=settings.num,
                           labelled=config.model.num_classes > 0)
        for note in prepared.notes:
            warn(note)
        images, labels = generate(model, config, num=settings.num, seed=settings.seed, batch_size=batch_size,
                                  progress=settings.progress)
        out.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(out / "samples.npz", images=images, labels=labels)
        num_classes, log = config.model.num_classes, read_log(source)
    elif source.suffix == ".npz":
        if not source.is_file():
            raise ConfigError(f"{source} not found")
        if not real.dataset:
            raise ConfigError("--dataset is required with a samples file")
        images, labels = load_samples(source)
        data = DataConfig(name=real.dataset, data_dir=real.data_dir, resolution=int(images.shape[1]), path=real.path,
                          test_path=real.test_path, channels=int(images.shape[-1]))
        out = out or source.with_name(f"{source.stem}-evaluation")
        prepared = prepare(data, settings, shape=images.shape[1:], synthetic=len(images),
                           labelled=bool((labels >= 0).all()))
        for note in prepared.notes:
            warn(note)
        num_classes, privacy, log = int(max(labels.max(), 0)) + 1, None, []
    else:
        raise ConfigError(f"{source} is neither a run folder nor a .npz samples file")
    metrics = evaluate(images, labels, data, settings, num_classes, prepared)
    files = write_report(out, title=f"Evaluation of {source}", images=images, labels=labels, metrics=metrics,
                         privacy=privacy, log=log, num_classes=num_classes)
    return metrics, files


def summary(metrics: dict) -> list[str]:
    """The metrics in a few lines for the terminal."""
    lines = []
    if "fid" in metrics:
        lines.append(f"FID {metrics['fid']['value']:.2f}")
    if "kid" in metrics:
        lines.append(f"KID {metrics['kid']['value']:.5f} +- {metrics['kid']['std']:.5f}")
    if "precision_recall" in metrics:
        lines.append(f"precision {metrics['precision_recall']['precision']:.3f} recall "
                     f"{metrics['precision_recall']['recall']:.3f}")
    for name, entry in metrics.get("downstream", {}).get("classifiers", {}).items():
        ceiling = entry.get("real_ceiling", {}).get("test_accuracy")
        lines.append(f"accuracy {name}: {entry['synthetic']['test_accuracy']:.2%}"
                     + (f" (real-data ceiling {ceiling:.2%})" if ceiling is not None else ""))
    return lines
