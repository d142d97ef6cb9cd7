import xml.etree.ElementTree as ET

import numpy as np
import pytest

from dpdiffusion.evaluation.report import OWNER_NOTE, svg_plot, write_report
from dpdiffusion.privacy.report import PrivacyReport


def test_svg_plot_is_well_formed_even_without_points():
    for xs, ys in (([1, 2, 3], [0.5, 0.2, 0.1]), ([], []), ([1], [float("nan")])):
        root = ET.fromstring(svg_plot(xs, ys, title="t <&>", xlabel="x", ylabel="y"))
        assert root.tag.endswith("svg")


def test_report_has_metrics_grids_privacy_and_plots(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, size=(30, 8, 8, 1), dtype=np.uint8)
    labels = np.arange(30) % 3
    metrics = {"fid": {"value": 12.5, "synthetic_images": 30,
                       "reference": {"dataset": "digits", "split": "train", "images": 20, "of": 20, "resolution": 8}}}
    privacy = PrivacyReport.from_dict({"private": True, "accountant": "prv", "spent": {"epsilon": 1.5, "delta": 1e-5, "steps": 10},
               "plan": {"noise_multiplier": 1.0, "sample_rate": 0.01, "steps": 10, "delta": 1e-5, "accountant": "rdp",
                        "max_grad_norm": 1.0, "multiplicity": 1, "dataset_size": 100}})
    log = [{"step": s, "loss_sum": 10.0 / s, "batch_size": 5} for s in (1, 2, 3)]
    files = write_report(tmp_path, title="t", images=images, labels=labels, metrics=metrics, privacy=privacy, log=log,
                         num_classes=3)
    page = files["html"].read_text()
    assert "12.50" in page and "1.5 at delta 1e-05" in page and page.count("<svg") == 2
    assert OWNER_NOTE.split(":")[0] in page and "data:image/png;base64," in page
    assert (tmp_path / "samples_class2.png").exists() and "![loss](loss.svg)" in files["markdown"].read_text()


def test_comparison_grid_puts_each_class_in_its_row_synthetic_left_real_right(tmp_path):
    from PIL import Image

    from dpdiffusion.evaluation.report import save_comparison_grid

    # image value = 10 * class + (1 for synthetic, 2 for real): every cell says where it came from
    labels = np.repeat(np.arange(3), 4)
    synthetic = (10 * labels + 1).astype(np.uint8)[:, None, None, None] * np.ones((1, 8, 8, 1), np.uint8)
    real = (10 * labels[:9] + 2).astype(np.uint8)[:, None, None, None] * np.ones((1, 8, 8, 1), np.uint8)
    save_comparison_grid(synthetic, labels, real, labels[:9], tmp_path / "g.png", num_classes=3, per_class=4)
    grid = np.asarray(Image.open(tmp_path / "g.png"))[::4, ::4]  # undo the 4x upscaling of 8-pixel images
    cells = grid[1::10, 1::10][:3, :9]  # top-left pixel of each 10x10 cell (8 pixels + 2 border)
    for c in range(3):
        assert list(cells[c, :4]) == [10 * c + 1] * 4 and cells[c, 4] == 0
        expected_real = [10 * c + 2] * 4 if c < 2 else [22, 0, 0, 0]  # class 2 has one real image here
        assert list(cells[c, 5:]) == expected_real
    with pytest.raises(ValueError, match="differ in shape"):
        save_comparison_grid(synthetic, labels, real[:, :4], labels[:9], tmp_path / "h.png", num_classes=3)
