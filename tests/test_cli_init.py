import json

import numpy as np
import pytest

from dpdiffusion.cli import main
from tests.data.fakes import write_png


def folder(tmp_path):
    for label, name in enumerate(("ant", "bee", "cat")):
        for i in range(4):
            write_png(tmp_path / "images" / name / f"{i}.png", (10, 9), 60 * label + i, mode="L")
    return tmp_path / "images"


def csv_file(tmp_path):
    folder(tmp_path)
    rows = [f"images/{name}/{i}.png,{name}" for name in ("ant", "bee", "cat") for i in range(4)]
    (tmp_path / "list.csv").write_text("\n".join(["path,label", *rows]) + "\n")
    return tmp_path / "list.csv"


def npz_file(tmp_path):
    np.savez(tmp_path / "arrays.npz", images=np.arange(12 * 9 * 9 * 3, dtype=np.uint8).reshape(12, 9, 9, 3),
             labels=np.arange(12) % 3)
    return tmp_path / "arrays.npz"


@pytest.mark.parametrize("make, source, channels", [(folder, "imagefolder", 1), (csv_file, "csv", 1), (npz_file, "npz", 3)])
def test_init_writes_a_configuration_the_dry_run_accepts(tmp_path, capsys, make, source, channels):
    data = make(tmp_path)
    out = tmp_path / "config.yaml"
    assert main(["init", str(data), "--out", str(out), "--cpu"]) == 0
    assert f"wrote {out}: {source} data, 12 images, 3 classes, sized for a CPU" in capsys.readouterr().out
    assert main(["train", str(out), "--dry-run", "--set", "privacy.steps=5"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["dataset"] == {"name": source, "split": "train", "size": 12}
    assert plan["config"]["data"]["resolution"] == 8 and plan["config"]["data"]["channels"] == channels
    assert plan["config"]["model"]["num_classes"] == 3 and plan["privacy"]["planned_epsilon"] <= 10
    private = plan["stages"]["private"]
    if source == "npz":
        assert "class_names" not in private
    else:
        assert private["class_names"] == ["ant", "bee", "cat"] and "layout, not its content" in private["class_names_source"]


def test_init_never_overwrites_a_file(tmp_path, capsys):
    out = tmp_path / "config.yaml"
    out.write_text("mine\n")
    assert main(["init", str(folder(tmp_path)), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "already exists" in err[0] and out.read_text() == "mine\n"


def test_init_on_bad_data_is_one_line_and_writes_nothing(tmp_path, capsys):
    (tmp_path / "list.csv").write_text("path,label\nmissing.png,0\n")
    out = tmp_path / "config.yaml"
    assert main(["init", str(tmp_path / "list.csv"), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "line 2: missing.png not found" in err[0] and not out.exists()


def test_declared_class_names_of_the_wrong_count_fail_the_dry_run_in_one_line(tmp_path, capsys):
    out = tmp_path / "config.yaml"
    assert main(["init", str(npz_file(tmp_path)), "--out", str(out), "--cpu"]) == 0
    assert main(["train", str(out), "--dry-run", "--set", "data.class_names=[a, b]"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "data.class_names: 2 names declared but model.num_classes is 3" in err[0]
    assert main(["train", str(out), "--dry-run", "--set", "privacy.steps=5", "--set", "data.class_names=[a, b, c]"]) == 0
    private = json.loads(capsys.readouterr().out)["stages"]["private"]
    assert private["class_names"] == ["a", "b", "c"] and private["class_names_source"].startswith("declared")
