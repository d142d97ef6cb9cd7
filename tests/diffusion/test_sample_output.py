import numpy as np
import pytest
from PIL import Image

from dpdiffusion.diffusion.sample_output import check_output, class_folders, write_png_folder
from dpdiffusion.runconfig import ConfigError


def images(n, channels, seed=0):
    return np.random.default_rng(seed).integers(0, 256, size=(n, 5, 5, channels), dtype=np.uint8)


@pytest.mark.parametrize("channels", [1, 3])
def test_pngs_decode_to_the_exact_images_in_their_class_folders(tmp_path, channels):
    x, labels = images(11, channels), np.array([0, 1, 2, 1, 0, 2, 2, 1, 0, 0, 1])
    write_png_folder(tmp_path / "out", x, labels, num_classes=3, class_names=("cat", "dog", "eel"))
    for i, label in enumerate(labels):
        decoded = np.asarray(Image.open(tmp_path / "out" / ("cat", "dog", "eel")[label] / f"{i:02d}.png"))
        assert np.array_equal(decoded.reshape(x[i].shape), x[i])
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["cat", "dog", "eel"]


def test_an_unconditional_model_writes_one_folder(tmp_path):
    x = images(4, 1)
    write_png_folder(tmp_path / "out", x, np.full(4, -1), num_classes=0)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["0.png", "1.png", "2.png", "3.png"]
    assert np.array_equal(np.asarray(Image.open(tmp_path / "out" / "3.png"))[..., None], x[3])


@pytest.mark.parametrize("names", [(), ("a", "b"), ("a", "a", "b"), ("a", "../b", "c"), ("a", ".hidden", "c"),
                                   ("a", "", "c"), (None, "b", "c")])
def test_class_folders_fall_back_to_the_index_when_names_are_missing_or_unsafe(names):
    assert class_folders(3, names) == ["0", "1", "2"]
    assert class_folders(12, ())[:3] == ["00", "01", "02"]  # padded: folders sort in label order
    assert class_folders(3, ["cat", "dog", "eel"]) == ["cat", "dog", "eel"]


def test_a_failure_leaves_neither_the_folder_nor_a_temporary_one(tmp_path, monkeypatch):
    calls = []

    def save(self, path, *args, **kwargs):
        calls.append(path)
        if len(calls) == 3:
            raise OSError("disk full")
        return original(self, path, *args, **kwargs)

    original = Image.Image.save
    monkeypatch.setattr(Image.Image, "save", save)
    with pytest.raises(OSError, match="disk full"):
        write_png_folder(tmp_path / "out", images(5, 3), np.zeros(5, dtype=int), num_classes=2)
    assert list(tmp_path.iterdir()) == []


def test_output_checks(tmp_path):
    check_output(tmp_path / "a.npz", "npz")
    check_output(tmp_path / "new", "png")
    (tmp_path / "file").write_text("x")
    for out, fmt, message in [(tmp_path / "a.png", "npz", ".npz file"), (tmp_path / "a.npz", "png", "names a folder"),
                              (tmp_path / "file", "png", "not an empty folder"), (tmp_path / "a", "gif", "--format")]:
        with pytest.raises(ConfigError, match=message):
            check_output(out, fmt)
