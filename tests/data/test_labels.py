import numpy as np
import pytest

from dpdiffusion.data.download import DatasetFileError
from dpdiffusion.data.labels import check_labels, index_labels


def row(i):
    return f"row {i}"


def test_whole_numbers_are_indices_and_names_are_numbered_in_sorted_order():
    labels, names = index_labels(["2", " 0", "+1"], row)
    assert labels.tolist() == [2, 0, 1] and names is None
    labels, names = index_labels([3, np.int64(1)], row)
    assert labels.tolist() == [3, 1] and names is None
    labels, names = index_labels(["dog", "cat", "dog", "ant"], row)
    assert names == ("ant", "cat", "dog") and labels.tolist() == [2, 1, 2, 0]
    labels, names = index_labels(["cat", "7"], row)  # not all whole numbers: every value is a name
    assert names == ("7", "cat") and labels.tolist() == [1, 0]


def test_a_test_split_keeps_the_training_names():
    labels, names = index_labels(["dog", "ant"], row, known=("ant", "cat", "dog"))
    assert labels.tolist() == [2, 0] and names == ("ant", "cat", "dog")
    with pytest.raises(DatasetFileError, match=r"^row 1: the class 'bee' is not one of the training split's \(ant, cat\)$"):
        index_labels(["ant", "bee"], row, known=("ant", "cat"))


@pytest.mark.parametrize("values, message", [
    (["1", "-3"], "row 1: the label -3 is negative"),
    ([0, 2, -1], "row 2: the label -1 is negative"),
    (["cat", ""], "row 1: the label is empty"),
])
def test_bad_labels_are_one_line_errors_naming_the_row(values, message):
    with pytest.raises(DatasetFileError, match=f"^{message}") as raised:
        index_labels(values, row)
    assert "\n" not in str(raised.value)


def test_check_labels_passes_indices_through():
    labels = np.array([0, 4, 1])
    assert check_labels(labels, row) is labels
