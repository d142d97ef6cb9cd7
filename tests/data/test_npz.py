import numpy as np
import pytest
import torch

from dpdiffusion.data.download import DatasetFileError
from dpdiffusion.data.npz import as_nchw, images_layout, load_npz, load_npz_split
from dpdiffusion.runconfig import ConfigError


@pytest.mark.parametrize("shape, layout", [
    ((5, 28, 28), "NHW"),
    ((5, 28, 28, 1), "NHWC"), ((5, 32, 32, 3), "NHWC"), ((5, 1, 28, 28), "NCHW"), ((5, 3, 32, 32), "NCHW"),
    ((5, 3, 3, 3), "NHWC"),  # both readings square: channels last
    ((5, 3, 32, 3), "NHWC"),  # neither square: channels last
    ((5, 3, 4, 4), "NCHW"), ((5, 4, 4, 3), "NHWC"), ((5, 1, 3, 3), "NCHW"),  # only one reading square
])
def test_layouts_follow_the_documented_rule(shape, layout):
    assert images_layout(shape) == layout


def test_every_layout_gives_the_same_images():
    rng = np.random.default_rng(0)
    nchw = rng.integers(0, 256, (4, 3, 6, 6), dtype=np.uint8)
    assert np.array_equal(as_nchw(nchw.transpose(0, 2, 3, 1)), nchw) and np.array_equal(as_nchw(nchw), nchw)
    assert np.array_equal(as_nchw(nchw[:, 0]), nchw[:, :1])


def test_an_npz_loads_as_square_images_in_the_asked_channels(tmp_path):
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (3, 6, 10, 3), dtype=np.uint8)  # 6 high, 10 wide: the centre 6x6 square
    np.savez(tmp_path / "d.npz", images=images, labels=np.array([2, 0, 1], dtype=np.int32))
    x, y = load_npz(tmp_path / "d.npz", channels=3)
    assert x.dtype == torch.uint8 and x.shape == (3, 3, 6, 6) and y.dtype == torch.int64 and y.tolist() == [2, 0, 1]
    assert np.array_equal(x.numpy(), images[:, :, 2:8].transpose(0, 3, 1, 2))
    gray, _ = load_npz(tmp_path / "d.npz", channels=1)
    assert gray.shape == (3, 1, 6, 6)


def test_the_test_split_is_its_own_file(tmp_path):
    np.savez(tmp_path / "train.npz", images=np.zeros((2, 4, 4), np.uint8), labels=np.array([0, 1]))
    np.savez(tmp_path / "test.npz", images=np.full((1, 4, 4), 7, np.uint8), labels=np.array([1]))
    x, y = load_npz_split("test", str(tmp_path / "train.npz"), str(tmp_path / "test.npz"), channels=1)
    assert x.unique().tolist() == [7] and y.tolist() == [1]
    with pytest.raises(ConfigError, match="data.test_path: not set"):
        load_npz_split("test", str(tmp_path / "train.npz"), None)
    with pytest.raises(ConfigError, match="data.path: required for npz"):
        load_npz_split("train", None, None)


@pytest.mark.parametrize("arrays, message", [
    ({"images": np.zeros((3, 4, 4), np.uint8), "labels": np.array([0, 1])}, "holds 3 images but 2 labels"),
    ({"images": np.zeros((2, 4, 4), np.uint8), "labels": np.array([0, -1])}, r"labels\[1\]: the label -1 is negative"),
    ({"images": np.zeros((2, 4, 4), np.float32), "labels": np.array([0, 1])}, "images are float32, expected uint8"),
    ({"images": np.zeros((2, 4, 4), np.uint8), "labels": np.array([0.0, 1.0])}, "labels are float64"),
    ({"images": np.zeros((2, 4, 4), np.uint8)}, "has no array 'labels'"),
    ({"images": np.zeros((2, 5, 4, 4, 4), np.uint8), "labels": np.array([0, 1])}, "expected N x H x W"),
    ({"images": np.zeros((2, 5, 4, 4), np.uint8), "labels": np.array([0, 1])}, "expected N x H x W"),
    ({"images": np.zeros((0, 4, 4), np.uint8), "labels": np.zeros(0, np.int64)}, "holds no images"),
    ({"images": np.uint8(7), "labels": np.array([0])}, r"images have shape \(\), expected N x H x W"),  # was a TypeError
    ({"images": np.zeros(4, np.uint8), "labels": np.arange(4)}, "expected N x H x W"),
])
def test_bad_arrays_are_one_line_errors(tmp_path, arrays, message):
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(DatasetFileError, match=message) as raised:
        load_npz(tmp_path / "bad.npz")
    assert "\n" not in str(raised.value)


def test_missing_unreadable_and_pickled_files_are_one_line_errors(tmp_path):
    (tmp_path / "text.npz").write_text("not a zip")
    np.savez(tmp_path / "pickled.npz", images=np.array([object()]), labels=np.array([0]))
    for name, message in [("none.npz", "none.npz not found"), ("text.npz", "not a readable .npz"),
                          ("pickled.npz", "not a readable .npz")]:
        with pytest.raises(DatasetFileError, match=message) as raised:
            load_npz(tmp_path / name)
        assert "\n" not in str(raised.value)
