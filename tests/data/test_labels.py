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



@pytest.mark.parametrize("values", [["cat", "7"], ["0", "1", "2.0"], [0, 1, None]])
def test_a_column_that_mixes_indices_and_names_is_refused_not_read_as_names(values):
    """"2.0" among indices (or a missing value) once made every label a name: three classes, silently."""
    with pytest.raises(DatasetFileError, match="the label column mixes class indices .* and class names"):
        index_labels(values, row)


def test_a_test_split_gives_labels_of_the_training_splits_kind():
    with pytest.raises(DatasetFileError, match=r"^row 0: the label 2 is a class index, but the training split's labels "
                                               r"are class names \(ant, cat\)$"):
        index_labels(["2", "0"], row, known=("ant", "cat"), indices_allowed=False)
    with pytest.raises(DatasetFileError, match="^row 0: the label 'ant' is a class name, but the training split's "
                                               "labels are class indices$"):
        index_labels(["ant"], row, known=())
    assert index_labels([1, 0], row, known=("ant", "cat"))[0].tolist() == [1, 0]  # a ClassLabel's
    assert index_labels(["1"], row, known=())[0].tolist() == [1]


def test_a_test_split_keeps_the_training_names():
    labels, names = index_labels(["dog", "ant"], row, known=("ant", "cat", "dog"))
    assert labels.tolist() == [2, 0] and names == ("ant", "cat", "dog")
    with pytest.raises(DatasetFileError, match=r"^row 1: the class 'bee' is not one of the training split's \(ant, cat\)$"):
        index_labels(["ant", "bee"], row, known=("ant", "cat"))


@pytest.mark.parametrize("values, message", [
    (["1", "-3"], "row 1: the label -3 is negative"),
    ([0, 2, -1], "row 2: the label -1 is negative"),
    (["cat", ""], "row 1: the label is empty"),
    (["1", "99999999999999999999"], "row 1: the label 99999999999999999999 is too large for a class index"),
    ([0, 2**40], "row 1: the label 1099511627776 is too large"),
])
def test_bad_labels_are_one_line_errors_naming_the_row(values, message):
    with pytest.raises(DatasetFileError, match=f"^{message}") as raised:
        index_labels(values, row)
    assert "\n" not in str(raised.value)


def test_check_labels_passes_indices_through():
    labels = np.array([0, 4, 1])
    assert check_labels(labels, row) is labels
