"""The embedded demo: DP warm-up + DPDM on scikit-learn's digits at epsilon 10, minutes on a laptop CPU.

Trains the ``digits-eps10-cpu`` preset, samples a grid and a synthetic set with uniform labels, and
reports the downstream accuracy of a classifier trained only on synthetic images and tested on the real
held-out digits (every fifth image, never trained on) -- the data owner's diagnostic, kept in ``owner/`` with a grid
of synthetic digits beside real held-out ones, so a newcomer can judge them.
"""

from __future__ import annotations

import datetime
import time
from pathlib import Path

import numpy as np

from dpdiffusion.data.datasets import check_fits_model, load_dataset
from dpdiffusion.diffusion.generate import generate, load_release, save_grid
from dpdiffusion.evaluation.report import save_comparison_grid
from dpdiffusion.io import write_json_atomic
from dpdiffusion.methods import dpdm
from dpdiffusion.run_folder import RunFolder
from dpdiffusion.runconfig import ConfigError, load_config

PRESET = "digits-eps10-cpu"


def downstream_accuracy(train_images: np.ndarray, train_labels: np.ndarray, test_images: np.ndarray,
                        test_labels: np.ndarray) -> float:
    """Logistic regression on flattened pixels in [0, 1], trained on one set and scored on the other."""
    from sklearn.linear_model import LogisticRegression

    def features(images: np.ndarray) -> np.ndarray:
        return images.reshape(len(images), -1).astype(np.float64) / 255.0

    classifier = LogisticRegression(max_iter=2000)
    classifier.fit(features(train_images), train_labels)
    return float(classifier.score(features(test_images), test_labels))


def run(run_dir: Path | None, overrides: list[str], num_samples: int, progress: bool = True) -> dict:
    started = time.perf_counter()
    config = load_config(PRESET, overrides)
    classes = max(config.model.num_classes, 1)
    if num_samples < 2 * classes:  # refused before training: the downstream check needs every class twice
        raise ConfigError(f"--num-samples must be at least {2 * classes} (two per class), got {num_samples}")
    run_dir = run_dir or Path("runs") / f"demo-{datetime.datetime.now():%Y%m%d-%H%M%S}"
    dataset = load_dataset(config.data, "train")
    check_fits_model(dataset, config.model)  # the shape the network (and the warm-up's sensitivity) is made for
    run_plan = dpdm.plan(config, len(dataset))  # every stage of the preset (the DP warm-up's too)
    trainer = dpdm.train(config, dataset, run_plan, run_dir, progress=progress)
    trained = time.perf_counter()

    released, released_config, privacy = load_release(run_dir)  # only what may leave the owner from here on
    images, labels = generate(released, released_config, num=num_samples, seed=0)
    run = RunFolder(run_dir)
    samples = run.release / "samples.npz"
    np.savez_compressed(samples, images=images, labels=labels)
    save_grid(images, run.release / "samples.png")

    test = load_dataset(config.data, "test")
    test_images = test.x.permute(0, 2, 3, 1).numpy()
    accuracy = downstream_accuracy(images, labels, test_images, test.y.numpy())
    comparison = run.owner / "comparison.png"  # real held-out digits: the owner's, not for release
    save_comparison_grid(images, labels, test_images, test.y.numpy(), comparison,
                         num_classes=released_config.model.num_classes)
    evaluation = {
        "diagnostic": "owner-side: scored on the real held-out digits (index % 5 == 0), never trained on",
        "classifier": "logistic regression on pixels, trained on synthetic images only",
        "synthetic_images": int(num_samples),
        "real_test_images": len(test),
        "accuracy": accuracy,
        "train_seconds": trained - started,
        "total_seconds": time.perf_counter() - started,
    }
    write_json_atomic(run.owner / "evaluation.json", evaluation)
    return {"run_dir": str(run_dir), "epsilon": trainer.epsilon_spent(), "delta": run_plan.main_plan.delta,
            "grid": str(run.release / "samples.png"), "comparison": str(comparison),
            "privacy": privacy.to_dict() if privacy else None,
            **evaluation}


def main(run_dir: Path | None, overrides: list[str], num_samples: int) -> int:
    result = run(run_dir, overrides, num_samples)
    print(f"demo finished in {result['total_seconds'] / 60:.1f} min ({result['train_seconds'] / 60:.1f} min training)")
    print(f"  privacy: epsilon {result['epsilon']:.3g} at delta {result['delta']:.3g} "
          f"(report: {result['run_dir']}/release/privacy.json)")
    print(f"  samples: {result['grid']}")
    print(f"  synthetic digits (left) beside real held-out digits (right), one row per class: {result['comparison']}")
    print(f"  downstream accuracy on the real held-out digits: {result['accuracy']:.1%} "
          f"(logistic regression trained on {result['synthetic_images']} synthetic images)")
    return 0
