"""Labels of the user's own data, and the names of their classes.

A label is a class index >= 0. Sources that store labels as text (a CSV's label column, a Hugging Face column of
strings) give either whole numbers, taken as the indices, or class names, numbered in sorted order as an image
folder's sub-folders are. Class names come from the data's layout -- sub-folder names, the names in a label column,
a ClassLabel feature -- never from the images, or are declared by the data owner (``data.class_names``); a
``ClassNames`` says which, for the privacy report. Declared names, where the layout names the classes, also fix
the indices (``datasets.declared_order``): the sorted numbering follows which names occur in the data.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from dpdiffusion.data.download import DatasetFileError

_LAYOUT = "the data's layout, not its content"
DECLARED = "declared by the data owner (data.class_names)"
FROM_FOLDERS = f"from the image folder's sub-folder names ({_LAYOUT})"
FROM_CSV = f"from the class names in the CSV's label column ({_LAYOUT})"
FROM_CLASS_LABEL = f"from the dataset's ClassLabel feature ({_LAYOUT})"
FROM_COLUMN = f"from the class names in the dataset's label column ({_LAYOUT})"

_WHOLE = re.compile(r"^[+-]?\d+$")


@dataclass(frozen=True)
class ClassNames:
    """The names of label indices 0, 1, ... in order, and where they came from (one of this module's sources)."""

    names: tuple[str, ...]
    source: str


def index_labels(values: Sequence[object], where: Callable[[int], str],
                 known: Sequence[str] | None = None) -> tuple[np.ndarray, tuple[str, ...] | None]:
    """int64 labels from a column of values, and the class names when the values are names. Whole numbers
    (ints, or text such as "3") are the indices; otherwise every value is a class name, numbered by the sorted
    names (``known``: the training split's names, which a test split may not add to). ``where(i)`` names row i
    in errors: a negative index or an unknown name is a one-line DatasetFileError naming its row."""
    if all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in values):
        return check_labels(np.asarray(values, dtype=np.int64).reshape(-1), where), None
    text = [str(v).strip() for v in values]
    if all(_WHOLE.match(t) for t in text):
        return check_labels(np.array([int(t) for t in text], dtype=np.int64), where), None
    empty = [row for row, name in enumerate(text) if not name]
    if empty:
        raise DatasetFileError(f"{where(empty[0])}: the label is empty")
    names = tuple(known) if known is not None else tuple(sorted(set(text)))
    index = {name: i for i, name in enumerate(names)}
    unknown = [row for row, name in enumerate(text) if name not in index]
    if unknown:
        raise DatasetFileError(f"{where(unknown[0])}: the class {text[unknown[0]]!r} is not one of the training "
                               f"split's ({', '.join(names)})")
    return np.array([index[name] for name in text], dtype=np.int64), names


def check_labels(labels: np.ndarray, where: Callable[[int], str]) -> np.ndarray:
    """Labels must be class indices >= 0: the first negative one is a one-line error naming its row."""
    negative = np.flatnonzero(labels < 0)
    if len(negative):
        row = int(negative[0])
        raise DatasetFileError(f"{where(row)}: the label {int(labels[row])} is negative; labels are class indices "
                               "0, 1, ...")
    return labels
