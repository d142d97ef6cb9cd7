"""Two uses of DP synthetic data (Ghalebikesabi et al. 2023), measured on one finished run:

1. downstream accuracy on the real test set as the number of synthetic training images grows;
2. hyperparameter selection on synthetic data: rank a few classifier settings by their accuracy on held-out
   *synthetic* images and by their accuracy on the *real* test set, and report the rank correlations
   (Spearman's rho, Kendall's tau). Tuning on synthetic data spends no privacy; tuning on real data would.

    python benchmarks/finetune/synthetic_uses.py RUN_DIR --counts 10000,60000 --out results.json

Images are sampled once (the largest count, fixed seeds, in chunks) and cached next to ``--out``; each count uses
the first n of them, and a larger count later only samples the images the cache lacks. Needs the run's real test
split (DPDIFFUSION_DATA_DIR).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import numpy as np

from dpdiffusion.diffusion.generate import generate, load_release
from dpdiffusion.evaluation.classifiers import ClassifierSettings, train_and_test
from dpdiffusion.evaluation.evaluate import real_images

# (classifier, learning rate, epochs): settings a user might choose between
SETTINGS = [("logreg", 3e-4, 10), ("mlp", 3e-4, 10), ("mlp", 3e-3, 10), ("cnn", 3e-4, 10), ("cnn", 3e-3, 10),
            ("cnn", 3e-5, 10), ("cnn", 3e-4, 2), ("mlp", 3e-5, 10)]


def sample(run_dir: Path, num: int, sampler: str, steps: int, cache: Path,
           chunk: int = 20000) -> tuple[np.ndarray, np.ndarray, float]:
    """The first ``num`` images of the cache, sampled and appended ``chunk`` at a time as needed.

    The cache is rewritten after each chunk, so a stopped run resumes where it was; chunk ``i`` (after the first
    sampling) uses seed ``i``, so appended images are independent of the ones already there.
    """
    images, labels, seconds, parts = np.zeros((0,), np.uint8), np.zeros((0,), np.int64), 0.0, 0
    if cache.is_file():
        with np.load(cache) as f:
            images, labels, seconds = f["images"], f["labels"], float(f["seconds"])
            parts = int(f["parts"]) if "parts" in f else 1
    if len(images) >= num:
        return images[:num], labels[:num], seconds
    model, config, _ = load_release(run_dir)
    sampling = dataclasses.replace(config.sampling, sampler=sampler, steps=steps)
    while len(images) < num:
        count = min(chunk, num - len(images))
        start = time.perf_counter()
        new_images, new_labels = generate(model, config, num=count, sampling=sampling, seed=parts, batch_size=500,
                                          progress=True)
        seconds += time.perf_counter() - start
        images = np.concatenate([images, new_images]) if len(images) else new_images
        labels = np.concatenate([labels, new_labels]) if len(labels) else new_labels
        parts += 1
        np.savez(cache, images=images, labels=labels, seconds=seconds, parts=parts)
        print(json.dumps({"sampled": len(images), "sampling_seconds": seconds}), flush=True)
    return images, labels, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--counts", default="10000,60000")
    parser.add_argument("--sampler", default="ddim")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--epochs", type=int, default=10, help="CNN epochs for the growth curve")
    parser.add_argument("--rank-images", type=int, default=10000, help="synthetic images for the ranking")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    counts = sorted(int(c) for c in args.counts.split(","))
    _, config, _ = load_release(args.run_dir)
    images, labels, seconds = sample(args.run_dir, max(counts + [args.rank_images]), args.sampler, args.steps,
                                     args.out.with_suffix(".samples.npz"))
    test_images, test_labels = real_images(config.data, "test")
    num_classes = config.model.num_classes
    result = {"run": str(args.run_dir), "sampler": f"{args.sampler} {args.steps} steps",
              "sampled": len(images), "sampling_seconds": seconds, "growth": [], "ranking": {}}
    for n in counts:
        start = time.perf_counter()
        out = train_and_test("cnn", images[:n], labels[:n], test_images, test_labels, num_classes=num_classes,
                             settings=ClassifierSettings(epochs=args.epochs))
        result["growth"].append({"synthetic_images": n, **out, "seconds": time.perf_counter() - start})
        print(json.dumps(result["growth"][-1]), flush=True)
    rows = []
    n = args.rank_images
    for name, lr, epochs in SETTINGS:
        out = train_and_test(name, images[:n], labels[:n], test_images, test_labels, num_classes=num_classes,
                             settings=ClassifierSettings(epochs=epochs, lr=lr))
        rows.append({"classifier": name, "lr": lr, "epochs": epochs, "synthetic_val_accuracy": out["val_accuracy"],
                     "real_test_accuracy": out["test_accuracy"]})
        print(json.dumps(rows[-1]), flush=True)
    from scipy.stats import kendalltau, spearmanr

    synthetic = [r["synthetic_val_accuracy"] for r in rows]
    real = [r["real_test_accuracy"] for r in rows]
    result["ranking"] = {
        "synthetic_images": n, "settings": rows,
        "spearman_rho": float(spearmanr(synthetic, real).statistic),
        "kendall_tau": float(kendalltau(synthetic, real).statistic),
        "best_on_synthetic": rows[int(np.argmax(synthetic))], "best_on_real": rows[int(np.argmax(real))],
        "rank_on_real_of_best_on_synthetic": 1 + sum(r > real[int(np.argmax(synthetic))] for r in real),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result["ranking"][k] for k in ("spearman_rho", "kendall_tau")}))


if __name__ == "__main__":
    main()
