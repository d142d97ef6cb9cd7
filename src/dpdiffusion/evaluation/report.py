"""The evaluation report: metrics.json, sample grids, and the same content as Markdown and as one
self-contained HTML page (images inlined, plots as inline SVG)."""

from __future__ import annotations

import base64
import html
import math
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from dpdiffusion.diffusion.generate import save_grid
from dpdiffusion.io import write_json_atomic
from dpdiffusion.privacy.report import PrivacyReport

OWNER_NOTE = ("Owner-side report: FID and precision/recall against the private training split, the real-data ceiling "
              "and the training curves are computed from private data without noise and are not covered by the "
              "privacy guarantee. Keep this report with the data owner; release only the model, the synthetic "
              "images and the privacy report.")


def svg_plot(xs: list[float], ys: list[float], *, title: str, xlabel: str, ylabel: str,
             width: int = 420, height: int = 240) -> str:
    """A minimal line plot as an SVG string (no plotting dependency)."""
    pad_l, pad_r, pad_t, pad_b = 56, 12, 26, 36
    points = [(x, y) for x, y in zip(xs, ys, strict=True) if math.isfinite(x) and math.isfinite(y)]
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" '
             f'font-size="11"><rect width="100%" height="100%" fill="white"/>',
             f'<text x="{width / 2}" y="16" text-anchor="middle" font-size="13">{html.escape(title)}</text>']
    if points:
        x0, x1 = min(p[0] for p in points), max(p[0] for p in points)
        y0, y1 = min(p[1] for p in points), max(p[1] for p in points)
        x1, y1 = (x1 if x1 > x0 else x0 + 1), (y1 if y1 > y0 else y0 + 1)
        sx = lambda x: pad_l + (x - x0) / (x1 - x0) * (width - pad_l - pad_r)  # noqa: E731
        sy = lambda y: height - pad_b - (y - y0) / (y1 - y0) * (height - pad_t - pad_b)  # noqa: E731
        path = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in points)
        parts.append(f'<polyline fill="none" stroke="#1f77b4" stroke-width="1.5" points="{path}"/>')
        for value in (y0, (y0 + y1) / 2, y1):
            parts.append(f'<text x="{pad_l - 4}" y="{sy(value) + 4:.1f}" text-anchor="end">{value:.3g}</text>')
        for value in (x0, x1):
            parts.append(f'<text x="{sx(value):.1f}" y="{height - pad_b + 14}" text-anchor="middle">{value:.4g}</text>')
    parts.append(f'<line x1="{pad_l}" y1="{height - pad_b}" x2="{width - pad_r}" y2="{height - pad_b}" stroke="black"/>')
    parts.append(f'<line x1="{pad_l}" y1="{pad_t}" x2="{pad_l}" y2="{height - pad_b}" stroke="black"/>')
    parts.append(f'<text x="{width / 2}" y="{height - 6}" text-anchor="middle">{html.escape(xlabel)}</text>')
    parts.append(f'<text x="12" y="{height / 2}" transform="rotate(-90 12 {height / 2})" text-anchor="middle">'
                 f'{html.escape(ylabel)}</text></svg>')
    return "".join(parts)


def epsilon_curve(plan: dict, points: int = 12) -> tuple[list[float], list[float]]:
    """Epsilon after s steps at a few s, from the public privacy plan (not from data)."""
    from dpdiffusion.privacy import epsilon

    steps = int(plan.get("steps", 0))
    if not steps or not plan.get("noise_multiplier"):
        return [], []
    xs = sorted({max(1, round(steps * i / points)) for i in range(1, points + 1)})
    ys = [epsilon(noise_multiplier=plan["noise_multiplier"], sample_rate=plan["sample_rate"], steps=s,
                  delta=plan["delta"], accountant=plan.get("accountant", "prv")) for s in xs]
    return [float(x) for x in xs], ys


def _metric_rows(metrics: dict) -> list[tuple[str, str]]:
    rows = []
    if "fid" in metrics:
        ref = metrics["fid"]["reference"]
        rows.append(("FID", f"{metrics['fid']['value']:.2f} ({metrics['fid']['synthetic_images']} synthetic vs "
                            f"{ref['images']} of {ref['of']} {ref['dataset']} {ref['split']} images, {ref['resolution']}px)"))
        if "caution" in metrics["fid"]:
            rows.append(("FID caution", metrics["fid"]["caution"]))
    if "kid" in metrics:
        kid, ref = metrics["kid"], metrics["kid"]["reference"]
        rows.append(("KID (unbiased, cubic kernel)", f"{kid['value']:.5f} +- {kid['std']:.5f} over {kid['subsets']} "
                     f"subsets of {kid['subset_size']} ({kid['synthetic_images']} synthetic vs {ref['images']} "
                     f"{ref['dataset']} {ref['split']} images)"))
    for key in ("fid", "kid"):
        if key in metrics and "cache" in metrics[key]["reference"]:
            ref = metrics[key]["reference"]
            rows.append(("reference features cached in", f"{ref['cache']} (remove with `dpdiffusion clear-cache`)"))
            break
    if "precision_recall" in metrics:
        pr = metrics["precision_recall"]
        rows.append((f"precision / recall (Inception features, k = {pr['k']})", f"{pr['precision']:.3f} / {pr['recall']:.3f} "
                     f"({pr['synthetic_images']} synthetic, {pr['real_images']} real)"))
    downstream = metrics.get("downstream", {})
    if "skipped" in downstream:
        rows.append(("downstream accuracy", downstream["skipped"]))
    for name, why in downstream.get("left_out", {}).items():
        rows.append((f"accuracy, {name}", why))
    for name, entry in downstream.get("classifiers", {}).items():
        syn = entry["synthetic"]
        text = (f"{syn['test_accuracy']:.2%} on {downstream['test_split']} ({syn['train_images']} synthetic training "
                f"images, epoch {syn['best_epoch']}/{syn['epochs']} chosen on {syn['val_images']} synthetic)")
        if "real_ceiling" in entry:
            text += f"; trained on real data: {entry['real_ceiling']['test_accuracy']:.2%}"
        rows.append((f"accuracy, {name}", text))
    return rows


def _privacy_rows(privacy: PrivacyReport | None) -> list[tuple[str, str]]:
    if privacy is None:
        return [("privacy", "unknown: a samples file without its run's privacy report")]
    if not privacy.private:
        return [("privacy", privacy.warning or "NOT differentially private")]
    spent = privacy.spent
    steps = ", ".join(f"{k} {v}" for k, v in spent.steps.items()) if isinstance(spent.steps, Mapping) else spent.steps
    rows = [("epsilon spent", f"{spent.epsilon:.4g} at delta {spent.delta:.3g} ({steps} steps, {privacy.accountant} "
                              "accountant)")]
    for name, plan in privacy.parts.items():
        label = "privacy plan" if len(privacy.parts) == 1 else f"privacy plan, {name}"
        rows.append((label, f"sigma {plan.get('noise_multiplier', float('nan')):.4g}, q "
                            f"{plan.get('sample_rate', float('nan')):.4g}, C {plan.get('max_grad_norm')}, K "
                            f"{plan.get('multiplicity')}, N {plan.get('dataset_size')}, {plan.get('steps')} steps"))
    if privacy.dataset_size is not None:
        rows.append(("N of the plan", f"{privacy.dataset_size.value}: {privacy.dataset_size.to_dict()['source']}"))
    return rows


def save_comparison_grid(synthetic: np.ndarray, synthetic_labels: np.ndarray, real: np.ndarray, real_labels: np.ndarray,
                         path: Path, *, num_classes: int, per_class: int = 8) -> None:
    """One row per class: ``per_class`` synthetic images, a blank, then ``per_class`` real images of that class
    (the first ones of each, in order), so a reader can judge the synthetic images against real ones."""
    if synthetic.shape[1:] != real.shape[1:]:
        raise ValueError(f"synthetic images {synthetic.shape[1:]} and real images {real.shape[1:]} differ in shape")
    blank = np.zeros(synthetic.shape[1:], dtype=np.uint8)
    cells = []
    for c in range(num_classes):
        for images, labels in ((synthetic, synthetic_labels), (real, real_labels)):
            chosen = list(images[labels == c][:per_class])
            cells += chosen + [blank] * (per_class - len(chosen))
            if images is synthetic:
                cells.append(blank)
    save_grid(np.stack(cells), path, columns=2 * per_class + 1, max_images=len(cells))


def write_report(out: Path, *, title: str, images: np.ndarray, labels: np.ndarray, metrics: dict,
                 privacy: PrivacyReport | None, log: list[dict], num_classes: int) -> dict[str, Path]:
    """Write metrics.json, grids, report.md and report.html into ``out``; returns their paths."""
    out.mkdir(parents=True, exist_ok=True)
    files = {"metrics": out / "metrics.json", "grid": out / "samples.png", "markdown": out / "report.md",
             "html": out / "report.html"}
    write_json_atomic(files["metrics"], {"title": title, "privacy": privacy.to_dict() if privacy else None,
                                         "metrics": metrics})
    save_grid(images, files["grid"])
    class_grids = {}
    if num_classes and (labels >= 0).all():
        for c in range(num_classes):
            path = out / f"samples_class{c}.png"
            save_grid(images[labels == c], path, max_images=20)
            class_grids[c] = path
    plots = {}
    if log:
        steps = [float(r["step"]) for r in log]
        losses = [r["loss_sum"] / max(1, r["batch_size"]) for r in log]
        plots["loss"] = svg_plot(steps, losses, title="training loss (mean per example)", xlabel="step", ylabel="loss")
    if privacy is not None and len(privacy.parts) == 1:  # a composed plan's stages are rows, not one curve
        plan = next(iter(privacy.parts.values()))
        xs, ys = epsilon_curve(dict(plan))
        if xs:
            plots["epsilon"] = svg_plot(xs, ys, title=f"epsilon spent (delta {plan['delta']:.3g})",
                                        xlabel="step", ylabel="epsilon")
    for name, svg in plots.items():
        (out / f"{name}.svg").write_text(svg)

    rows = _privacy_rows(privacy) + _metric_rows(metrics)
    md = [f"# {title}", "", f"> {OWNER_NOTE}", "", "| | |", "|---|---|"]
    md += [f"| {k} | {v} |" for k, v in rows]
    md += ["", "## Samples", "", "![samples](samples.png)", ""]
    md += [f"class {c}: ![class {c}]({p.name})  " for c, p in class_grids.items()]
    md += ["", "## Training", ""] + [f"![{name}]({name}.svg)" for name in plots]
    files["markdown"].write_text("\n".join(md) + "\n")

    def data_uri(path: Path) -> str:
        return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()

    table = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in rows)
    grids = "".join(f'<figure><img src="{data_uri(p)}" alt="class {c}"><figcaption>class {c}</figcaption></figure>'
                    for c, p in class_grids.items())
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title><style>"
            "body{font-family:sans-serif;max-width:960px;margin:2em auto}th{text-align:left;padding-right:1em}"
            "figure{display:inline-block;margin:4px}img{image-rendering:pixelated}"
            ".note{background:#fff4e0;padding:.6em;border-left:4px solid #e8a33d}</style></head><body>"
            f"<h1>{html.escape(title)}</h1><p class='note'>{html.escape(OWNER_NOTE)}</p><table>{table}</table>"
            f"<h2>Samples</h2><img src='{data_uri(files['grid'])}' alt='samples'><div>{grids}</div>"
            f"<h2>Training</h2>{''.join(plots.values())}</body></html>")
    files["html"].write_text(page)
    return files
