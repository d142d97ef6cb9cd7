import numpy as np
import pytest
import torch

from dpdiffusion.data.cifar10 import ARCHIVE, load_cifar10, parse_batch
from dpdiffusion.data.download import DatasetFileError
from tests.data.fakes import write_cifar

TRAIN = [f"data_batch_{i}.bin" for i in range(1, 6)]


def test_archive_in_the_canonical_format_round_trips(tmp_path):
    batches, archive = write_cifar(tmp_path)
    x, y = load_cifar10("train", data_dir=str(tmp_path), archive=archive, records_per_batch=20)
    assert x.shape == (100, 3, 32, 32) and x.dtype == torch.uint8 and y.dtype == torch.int64
    assert np.array_equal(x.numpy(), np.concatenate([batches[n][1] for n in TRAIN]))
    assert np.array_equal(y.numpy(), np.concatenate([batches[n][2] for n in TRAIN]))
    content = batches["test_batch.bin"][0]  # record 3, green plane, row 5, column 7, by the documented layout
    x, y = load_cifar10("test", data_dir=str(tmp_path), archive=archive, records_per_batch=20)
    assert x.shape == (20, 3, 32, 32) and x[3, 1, 5, 7] == content[3 * 3073 + 1 + 1024 + 5 * 32 + 7]
    assert y[3] == content[3 * 3073]


def test_the_extracted_folder_is_read_when_there_is_no_archive(tmp_path):
    batches, archive = write_cifar(tmp_path / "source")
    folder = tmp_path / "local" / "cifar10" / "cifar-10-batches-bin"
    folder.mkdir(parents=True)
    for name, (content, _, _) in batches.items():
        (folder / name).write_bytes(content)
    x, y = load_cifar10("test", data_dir=str(tmp_path / "local"), archive=archive, records_per_batch=20)
    assert np.array_equal(x.numpy(), batches["test_batch.bin"][1])
    (folder / "test_batch.bin").write_bytes(batches["test_batch.bin"][0][:-100])
    with pytest.raises(DatasetFileError, match=r"test_batch\.bin holds 61360 bytes, expected 20 records of 3073"):
        load_cifar10("test", data_dir=str(tmp_path / "local"), archive=archive, records_per_batch=20)
    (folder / "data_batch_2.bin").unlink()
    with pytest.raises(DatasetFileError, match=r"data_batch_2\.bin not found"):
        load_cifar10("train", data_dir=str(tmp_path / "local"), archive=archive, records_per_batch=20)


@pytest.mark.parametrize("damage", ["flip", "truncate", "missing"])
def test_a_damaged_archive_is_named(tmp_path, damage):
    _, archive = write_cifar(tmp_path)
    path = tmp_path / "cifar10" / "cifar-10-binary.tar.gz"
    raw = path.read_bytes()
    if damage == "flip":
        path.write_bytes(raw[:-30] + bytes([raw[-30] ^ 1]) + raw[-29:])
    elif damage == "truncate":
        path.write_bytes(raw[: len(raw) // 2])
    else:
        path.unlink()
    with pytest.raises(DatasetFileError, match=r"cifar-10-binary\.tar\.gz"):
        load_cifar10("train", data_dir=str(tmp_path), archive=archive, records_per_batch=20)


def test_a_short_member_of_a_matching_archive_names_the_member(tmp_path):
    batches, _ = write_cifar(tmp_path / "a")
    _, archive = write_cifar(tmp_path, damaged={"data_batch_3.bin": batches["data_batch_3.bin"][0][:3073 * 19]})
    with pytest.raises(DatasetFileError, match=r"member cifar-10-batches-bin/data_batch_3\.bin.*expected 20 records"):
        load_cifar10("train", data_dir=str(tmp_path), archive=archive, records_per_batch=20)


def test_labels_must_be_classes_and_the_canonical_table():
    with pytest.raises(DatasetFileError, match="label byte 10"):
        parse_batch(bytes([10]) + bytes(3072), "b.bin", records=1)
    assert ARCHIVE.file_md5 == "c32a1d4ab5d03f1284b67883e8d87530"
    assert ARCHIVE.urls == ("https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz",)
    with pytest.raises(ValueError, match="valid"):
        load_cifar10("valid")
