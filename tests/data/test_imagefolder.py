import pytest
import torch

from dpdiffusion.data.download import DatasetFileError
from dpdiffusion.data.imagefolder import load_image_folder, load_imagefolder_split
from dpdiffusion.runconfig import ConfigError
from tests.data.fakes import write_png


def make_folder(root):
    """Classes "cat" (2 images) and "ant" (1), of different sizes and modes, plus files that are skipped."""
    write_png(root / "cat" / "a.png", (40, 20), 200)
    write_png(root / "cat" / "b.PNG", (13, 31), 100, mode="L")
    write_png(root / "ant" / "c.png", (8, 8), 50, mode="RGBA")
    (root / "ant" / "notes.txt").write_text("not an image")
    (root / ".hidden").mkdir()
    return root


def test_classes_follow_sorted_folder_names_and_images_of_any_size_are_resized(tmp_path):
    x, y = load_image_folder(make_folder(tmp_path / "train"), resolution=16, channels=3)
    assert x.shape == (3, 3, 16, 16) and x.dtype == torch.uint8
    assert y.tolist() == [0, 1, 1]  # ant, then cat
    assert x[0].unique().tolist() == [50] and x[1].unique().tolist() == [200] and x[2].unique().tolist() == [100]
    gray, _ = load_image_folder(tmp_path / "train", resolution=4, channels=1)
    assert gray.shape == (3, 1, 4, 4)


def test_center_crop_keeps_the_middle_square(tmp_path):
    from PIL import Image

    image = Image.new("L", (30, 10), 0)
    image.paste(255, (10, 0, 20, 10))  # the middle 10x10 square is white, the sides black
    (tmp_path / "f" / "k").mkdir(parents=True)
    image.save(tmp_path / "f" / "k" / "x.png")
    x, _ = load_image_folder(tmp_path / "f", resolution=10, channels=1)
    assert x.unique().tolist() == [255]


def test_test_split_uses_the_training_class_indices(tmp_path):
    make_folder(tmp_path / "train")
    write_png(tmp_path / "test" / "cat" / "d.png", (9, 9), 7)
    x, y = load_imagefolder_split("test", str(tmp_path / "train"), str(tmp_path / "test"), 8)
    assert x.shape == (1, 3, 8, 8) and y.tolist() == [1]
    write_png(tmp_path / "test" / "bee" / "e.png", (9, 9), 7)
    with pytest.raises(DatasetFileError, match="bee is a class the training folder lacks"):
        load_imagefolder_split("test", str(tmp_path / "train"), str(tmp_path / "test"), 8)


def test_errors_are_one_line_naming_the_setting_folder_or_file(tmp_path):
    make_folder(tmp_path / "train")
    cases = [
        (lambda: load_imagefolder_split("train", None, None, 8), ConfigError, "data.path"),
        (lambda: load_imagefolder_split("train", str(tmp_path / "train"), None, None), ConfigError, "data.resolution"),
        (lambda: load_imagefolder_split("test", str(tmp_path / "train"), None, 8), ConfigError, "data.test_path"),
        (lambda: load_image_folder(tmp_path / "train", 8, channels=2), ConfigError, "data.channels"),
        (lambda: load_image_folder(tmp_path / "nowhere", 8), DatasetFileError, "nowhere not found"),
        (lambda: load_image_folder(tmp_path / "train" / "cat", 8), DatasetFileError, "cat has no class sub-folders"),
    ]
    for call, error, message in cases:
        with pytest.raises(error, match=message) as raised:
            call()
        assert "\n" not in str(raised.value)
    (tmp_path / "train" / "dog").mkdir()
    with pytest.raises(DatasetFileError, match="dog has no images"):
        load_image_folder(tmp_path / "train", 8)
    (tmp_path / "train" / "dog").rmdir()
    (tmp_path / "train" / "cat" / "z.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    with pytest.raises(DatasetFileError, match=r"z\.png is not a readable image"):
        load_image_folder(tmp_path / "train", 8)


def test_16_bit_grayscale_maps_by_a_fixed_scale_and_32_bit_is_refused(tmp_path):
    import numpy as np
    from PIL import Image

    wide = np.array([[0, 257, 65535, 32896]], dtype=np.uint16).repeat(4, axis=0)  # 4x4, 16-bit
    (tmp_path / "train" / "a").mkdir(parents=True)
    Image.fromarray(wide).save(tmp_path / "train" / "a" / "w.png")
    x, _ = load_image_folder(tmp_path / "train", resolution=4, channels=1)
    assert x[0, 0, 0].tolist() == [0, 1, 255, 128]  # v * 255 / 65535, not clipped at 255
    Image.fromarray(wide.astype(np.float32)).save(tmp_path / "train" / "a" / "f.tiff")
    with pytest.raises(DatasetFileError, match=r"f\.tiff holds 32-bit float pixels"):
        load_image_folder(tmp_path / "train", resolution=4, channels=1)
