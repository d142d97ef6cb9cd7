import numpy as np
import pytest
from PIL import Image

from dpdiffusion.data.download import DatasetFileError
from dpdiffusion.data.images import center_crop, crop_offsets, read_images, to_channels


def test_channel_conversion_is_pils_own():
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (5, 3, 4, 6), dtype=np.uint8)
    gray = to_channels(rgb, 1)
    reference = np.stack([np.asarray(Image.fromarray(image.transpose(1, 2, 0)).convert("L")) for image in rgb])
    assert gray.shape == (5, 1, 4, 6) and np.array_equal(gray[:, 0], reference)
    one = rgb[:, :1]
    assert np.array_equal(to_channels(one, 3), np.concatenate([one] * 3, axis=1))
    assert to_channels(rgb, 3) is rgb


@pytest.mark.parametrize("width, height", [(30, 10), (7, 12), (9, 9), (12, 7)])
def test_crop_offsets_are_those_of_the_centre_crop(width, height):
    image = Image.fromarray(np.arange(width * height, dtype=np.int32).reshape(height, width).astype(np.uint8))
    side = min(width, height)
    left, top = crop_offsets(width, height, side)
    assert np.array_equal(np.asarray(center_crop(image)), np.asarray(image)[top:top + side, left:left + side])


def test_files_bytes_and_decoded_images_go_through_one_pipeline(tmp_path):
    pixels = np.full((6, 10, 3), 90, dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "a.png")
    encoded = (tmp_path / "a.png").read_bytes()
    images = read_images([(tmp_path / "a.png", "a"), (encoded, "b"), (Image.fromarray(pixels), "c")], 4, 1, "t")
    assert images.shape == (3, 1, 4, 4) and np.array_equal(images[0], images[1]) and np.array_equal(images[0], images[2])
    with pytest.raises(DatasetFileError, match="^broken is not a readable image"):
        read_images([(b"not an image", "broken")], 4, 1, "t")
