import pytest
import torch

from dpdiffusion.data.csvfile import load_csv, load_csv_split
from dpdiffusion.data.download import DatasetFileError
from dpdiffusion.data.imagefolder import load_image_folder
from dpdiffusion.data.labels import FROM_CSV
from dpdiffusion.runconfig import ConfigError
from tests.data.fakes import write_png


def images(root):
    write_png(root / "img" / "a.png", (12, 8), 10)
    write_png(root / "img" / "b.png", (5, 9), 200, mode="L")
    write_png(root / "img" / "c.png", (6, 6), 90, mode="RGBA")


def write_csv(path, rows, header="path,label"):
    path.write_text("\n".join([header, *rows]) + "\n")
    return path


def test_rows_are_decoded_as_an_image_folder_would_decode_them(tmp_path):
    images(tmp_path)
    write_png(tmp_path / "folder" / "x" / "a.png", (12, 8), 10)
    csv = write_csv(tmp_path / "list.csv", ["img/a.png,1", f"{tmp_path / 'img' / 'b.png'},0", "img/c.png,1"])
    x, y, names = load_csv(csv, resolution=4, channels=3)
    assert x.dtype == torch.uint8 and x.shape == (3, 3, 4, 4) and y.tolist() == [1, 0, 1] and names is None
    reference, _ = load_image_folder(tmp_path / "folder", resolution=4, channels=3)
    assert torch.equal(x[0], reference[0])
    assert [int(v) for v in x[:, 0, 0, 0]] == [10, 200, 90]


def test_class_names_are_numbered_in_sorted_order_and_fix_the_test_split(tmp_path):
    images(tmp_path)
    write_csv(tmp_path / "train.csv", ["img/a.png,dog", "img/b.png,cat", "img/c.png,dog"])
    x, y, names = load_csv_split("train", str(tmp_path / "train.csv"), None, 4, channels=1)
    assert y.tolist() == [1, 0, 1] and names is not None and names.names == ("cat", "dog") and names.source == FROM_CSV
    write_csv(tmp_path / "test.csv", ["img/c.png,dog"])
    _, y, names = load_csv_split("test", str(tmp_path / "train.csv"), str(tmp_path / "test.csv"), 4, channels=1)
    assert y.tolist() == [1] and names.names == ("cat", "dog")
    write_csv(tmp_path / "test.csv", ["img/c.png,bee"])
    with pytest.raises(DatasetFileError, match=r"test.csv line 2: the class 'bee' is not one of the training split's"):
        load_csv_split("test", str(tmp_path / "train.csv"), str(tmp_path / "test.csv"), 4)


@pytest.mark.parametrize("rows, header, message", [
    (["img/a.png,0", "img/missing.png,1"], "path,label", r"list.csv line 3: img/missing.png not found"),
    (["img/a.png,0", "img/b.png,-2"], "path,label", r"list.csv line 3: the label -2 is negative"),
    (["img/a.png,0", ",1"], "path,label", r"list.csv line 3: the path is empty"),
    (["img/a.png,cat", "img/b.png,"], "path,label", r"list.csv line 3: the label is empty"),
    (["img/a.png,0"], "file,label", r"has no column 'path' in its header"),
    ([], "path,label", "lists no images"),
])
def test_hostile_rows_are_one_line_errors(tmp_path, rows, header, message):
    images(tmp_path)
    write_csv(tmp_path / "list.csv", rows, header)
    with pytest.raises(DatasetFileError, match=message) as raised:
        load_csv(tmp_path / "list.csv", 4)
    assert "\n" not in str(raised.value)


def test_settings_and_files_are_checked(tmp_path):
    (tmp_path / "bytes.csv").write_bytes(b"path,label\n\xff\xfe,1\n")
    cases = [
        (lambda: load_csv_split("train", None, None, 4), ConfigError, "data.path: required for csv"),
        (lambda: load_csv_split("train", str(tmp_path / "x.csv"), None, None), ConfigError, "data.resolution"),
        (lambda: load_csv_split("test", str(tmp_path / "x.csv"), None, 4), ConfigError, "data.test_path"),
        (lambda: load_csv(tmp_path / "nowhere.csv", 4), DatasetFileError, "nowhere.csv not found"),
        (lambda: load_csv(tmp_path / "bytes.csv", 4), DatasetFileError, "not a readable CSV"),
    ]
    for call, error, message in cases:
        with pytest.raises(error, match=message) as raised:
            call()
        assert "\n" not in str(raised.value)
