import io
import zipfile

import numpy as np
import pytest
import torch
from PIL import Image

import dpdiffusion.data.celeba as celeba
from dpdiffusion.data.celeba import FILES, load_celeba, parse_attributes
from dpdiffusion.data.download import DatasetFileError
from dpdiffusion.runconfig import ConfigError
from tests.data.fakes import CELEBA_ATTRIBUTES, jpeg, write_celeba

MALE = CELEBA_ATTRIBUTES.index("Male")


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))


def expected_image(zip_path, file, resolution):
    """The documented preprocessing, by hand: the 140x140 square at (19, 39) of the 178x218 image, resized."""
    with zipfile.ZipFile(zip_path) as archive:
        image = Image.open(io.BytesIO(archive.read(f"img_align_celeba/{file}"))).convert("RGB")
    square = image.crop((19, 39, 159, 179)).resize((resolution, resolution), Image.BILINEAR)
    return np.asarray(square).transpose(2, 0, 1)


def test_splits_shapes_labels_and_the_fixed_crop(tmp_path):
    files, attributes = write_celeba(tmp_path / "data")
    data_dir = str(tmp_path / "data")
    x, y = load_celeba("train", 32, data_dir=data_dir, files=files)
    assert x.shape == (3, 3, 32, 32) and x.dtype == torch.uint8 and y.dtype == torch.int64
    assert y.tolist() == [int(v == 1) for v in attributes[:3, MALE]]
    assert np.array_equal(x[1].numpy(), expected_image(tmp_path / "data/celeba/img_align_celeba.zip", "000002.jpg", 32))
    assert len(load_celeba("valid", 32, data_dir=data_dir, files=files)[0]) == 1
    x, y = load_celeba("test", 64, label_attribute="Smiling", data_dir=data_dir, files=files)
    assert x.shape == (2, 3, 64, 64)
    assert y.tolist() == [int(v == 1) for v in attributes[4:, CELEBA_ATTRIBUTES.index("Smiling")]]
    with pytest.raises(ConfigError, match="data.label_attribute: 'Beard'"):
        load_celeba("train", 32, label_attribute="Beard", data_dir=data_dir, files=files)
    with pytest.raises(ValueError, match="splits train, valid, test"):
        load_celeba("validation", 32, data_dir=data_dir, files=files)


def test_preprocessed_images_are_cached_by_split_and_resolution(tmp_path, monkeypatch):
    files, _ = write_celeba(tmp_path / "data")
    first, _ = load_celeba("train", 32, data_dir=str(tmp_path / "data"), files=files)
    assert len(list((tmp_path / "cache/dpdiffusion/celeba/preprocessed").glob("train-32px-*.npy"))) == 1

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded again")

    monkeypatch.setattr(celeba, "_decode_all", no_decoding)
    again, _ = load_celeba("train", 32, data_dir=str(tmp_path / "data"), files=files)
    assert torch.equal(first, again)
    with pytest.raises(AssertionError, match="decoded again"):
        load_celeba("train", 64, data_dir=str(tmp_path / "data"), files=files)


def test_the_extracted_folder_is_read_when_there_is_no_zip(tmp_path):
    files, _ = write_celeba(tmp_path / "data")
    root = tmp_path / "data" / "celeba"
    from_zip, labels = load_celeba("test", 32, data_dir=str(tmp_path / "data"), files=files)
    with zipfile.ZipFile(root / "img_align_celeba.zip") as archive:
        archive.extractall(root)
    (root / "img_align_celeba.zip").unlink()
    from_folder, same_labels = load_celeba("test", 32, data_dir=str(tmp_path / "data"), files=files)
    assert torch.equal(from_zip, from_folder) and torch.equal(labels, same_labels)


@pytest.mark.parametrize("name", ["img_align_celeba.zip", "list_attr_celeba.txt", "list_eval_partition.txt"])
@pytest.mark.parametrize("damage", ["truncate", "missing"])
def test_damaged_files_are_named(tmp_path, name, damage):
    files, _ = write_celeba(tmp_path)
    path = tmp_path / "celeba" / name
    if damage == "truncate":
        path.write_bytes(path.read_bytes()[:-10])
    else:
        path.unlink()
    with pytest.raises(DatasetFileError, match=name.replace(".", r"\.")):
        load_celeba("train", 32, data_dir=str(tmp_path), files=files)


@pytest.mark.parametrize("content, message", [(b"\xff\xd8\xff\xe0 not a jpeg", "not a readable image"),
                                              (jpeg(np.random.default_rng(0), (100, 120)), "cannot crop 140x140")])
def test_a_bad_image_in_a_matching_zip_is_named(tmp_path, content, message):
    files, _ = write_celeba(tmp_path, replace={1: content})
    with pytest.raises(DatasetFileError, match=rf"img_align_celeba/000002\.jpg.*{message}"):
        load_celeba("train", 32, data_dir=str(tmp_path), files=files)


def test_attribute_file_format_errors_name_the_file_and_line():
    header = b"2\n" + " ".join(CELEBA_ATTRIBUTES).encode() + b"\n"
    row = b"000001.jpg" + b" -1" * 40 + b"\n"
    names, values = parse_attributes(header + row + row.replace(b"01.jpg", b"02.jpg"), "attr.txt")
    assert names == CELEBA_ATTRIBUTES and values["000002.jpg"].tolist() == [False] * 40
    with pytest.raises(DatasetFileError, match="attr.txt announces 2 images but lists 1"):
        parse_attributes(header + row, "attr.txt")
    with pytest.raises(DatasetFileError, match="attr.txt line 4"):
        parse_attributes(header + row + row.replace(b"-1\n", b"0\n"), "attr.txt")


def test_canonical_table():
    assert FILES["images"].file_md5 == "00d2c5bc6d35e252742224ab0c1e8fcb"
    assert FILES["partition"].name == "list_eval_partition.txt"
    assert all("0B7EVK8r0v71pblRyaVFSWGxPY0U" in url for url in FILES["attributes"].urls)
