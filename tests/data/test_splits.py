"""Which file a split of a user's dataset reads, and the one-line errors when a key is missing."""

import pytest

from dpdiffusion.data.splits import split_file
from dpdiffusion.runconfig import ConfigError


def test_train_reads_the_path_and_test_the_test_path():
    assert split_file("npz", "train", "a.npz", "b.npz", "a .npz file", "file") == "a.npz"
    assert split_file("npz", "test", "a.npz", "b.npz", "a .npz file", "file") == "b.npz"
    assert split_file("npz", "train", "a.npz", None, "a .npz file", "file") == "a.npz"  # no test file needed


@pytest.mark.parametrize("split", ["train", "test"])
def test_a_missing_path_names_the_key_and_the_layout(split):
    with pytest.raises(ConfigError, match=r"^data\.path: required for csv \(a CSV file of path,label rows\)$"):
        split_file("csv", split, None, "t.csv", "a CSV file of path,label rows", "file")


def test_a_missing_test_path_names_the_key_and_what_a_test_split_is_read_from():
    with pytest.raises(ConfigError, match=r"^data\.test_path: not set, and imagefolder has a test split only from "
                                          r"that folder$"):
        split_file("imagefolder", "test", "train/", None, "a folder", "folder")


def test_an_unknown_split_is_a_programming_error_not_a_config_error():
    with pytest.raises(ValueError, match="splits train and test, not 'val'"):
        split_file("npz", "val", "a.npz", "b.npz", "a .npz file", "file")
