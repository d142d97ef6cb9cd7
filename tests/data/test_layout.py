import numpy as np
import pytest

from dpdiffusion.data.download import DatasetFileError
from dpdiffusion.data.layout import inspect_layout, source_of
from tests.data.fakes import write_png


def test_a_folder_a_csv_and_an_npz_are_told_apart_and_read_by_their_layout(tmp_path):
    write_png(tmp_path / "f" / "cat" / "a.png", (40, 30), 1)
    write_png(tmp_path / "f" / "cat" / "b.png", (8, 8), 1)
    write_png(tmp_path / "f" / "ant" / "c.png", (8, 8), 1)
    folder = inspect_layout(str(tmp_path / "f"))
    assert (folder.source, folder.size, folder.num_classes, folder.class_names) == ("imagefolder", 3, 2, ("ant", "cat"))
    assert (folder.side, folder.channels) == (8, 3)  # the first image: ant/c.png
    (tmp_path / "l.csv").write_text("path,label\nf/cat/a.png,3\nf/ant/c.png,1\n")
    listed = inspect_layout(str(tmp_path / "l.csv"))
    assert (listed.source, listed.size, listed.num_classes, listed.class_names, listed.side) == ("csv", 2, 4, (), 30)
    np.savez(tmp_path / "a.npz", images=np.zeros((5, 1, 12, 16), np.uint8), labels=np.array([0, 1, 1, 0, 2]))
    arrays = inspect_layout(str(tmp_path / "a.npz"))
    assert (arrays.source, arrays.size, arrays.num_classes, arrays.side, arrays.channels) == ("npz", 5, 3, 12, 1)
    assert arrays.path == str((tmp_path / "a.npz").resolve())


def test_a_saved_hugging_face_dataset_is_found_by_its_files(tmp_path):
    datasets = pytest.importorskip("datasets")
    from PIL import Image

    images = [Image.fromarray(np.zeros((6, 9), np.uint8)) for _ in range(3)]
    datasets.Dataset.from_dict({"photo": images, "y": [0, 1, 1]}, features=datasets.Features(
        {"photo": datasets.Image(), "y": datasets.ClassLabel(names=["no", "yes"])})).save_to_disk(str(tmp_path / "hf"))
    assert source_of(str(tmp_path / "hf")) == "hf"
    layout = inspect_layout(str(tmp_path / "hf"))
    assert (layout.size, layout.num_classes, layout.class_names, layout.side, layout.channels) == (3, 2, ("no", "yes"), 6, 1)
    assert (layout.image_column, layout.label_column) == ("photo", "y")


def test_what_is_no_source_is_one_line(tmp_path):
    (tmp_path / "notes.txt").write_text("x")
    for path, message in [(tmp_path / "notes.txt", "expected an image folder, a .csv"),
                          (tmp_path / "missing.csv", "missing.csv not found"), (tmp_path / "a" / "b", "not found")]:
        with pytest.raises(DatasetFileError, match=message) as raised:
            source_of(str(path))
        assert "\n" not in str(raised.value)
