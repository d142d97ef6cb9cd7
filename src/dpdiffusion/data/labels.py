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
_LARGEST = 2**31 - 1  # a class index beyond this is a mistake (and past 2**63 - 1 would not fit int64)


@dataclass(frozen=True)
class ClassNames:
    """The names of label indices 0, 1, ... in order, and where they came from (one of this module's sources)."""

    names: tuple[str, ...]
    source: str


def index_labels(values: Sequence[object], where: Callable[[int], str], known: Sequence[str] | None = None, *,
                 indices_allowed: bool = True) -> tuple[np.ndarray, tuple[str, ...] | None]:
    """int64 labels from a column of values, and the class names when the values are names. Whole numbers
    (ints, or text such as "3") are the indices; otherwise every value is a class name, numbered by the sorted
    names. ``known``: for a test split, the training split's names (which it may not add to), or () where the
    training split's labels are indices (a test split must then give indices too); None for a training split.
    ``indices_allowed`` False: the training split's labels are names only, so indices are refused.
    ``where(i)`` names row i in errors: a negative or too large index, an unknown name, a column that mixes
    indices and names, or a kind other than the training split's is a one-line DatasetFileError naming its row."""
    if all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in values):
        ints = [int(v) for v in values if isinstance(v, (int, np.integer))]  # all of them
        return check_labels(_indices(ints, where, indices_allowed, known), where), None
    text = [str(v).strip() for v in values]
    whole = [bool(_WHOLE.match(t)) for t in text]
    if all(whole):
        return check_labels(_indices([int(t) for t in text], where, indices_allowed, known), where), None
    if any(whole):
        first_index, first_name = whole.index(True), whole.index(False)
        raise DatasetFileError(f"{where(first_index)}: the label column mixes class indices ({text[first_index]!r}) "
                               f"and class names ({text[first_name]!r} at {where(first_name)}): give every label as "
                               "an index or every label as a name")
    empty = [row for row, name in enumerate(text) if not name]
    if empty:
        raise DatasetFileError(f"{where(empty[0])}: the label is empty")
    if known is not None and not known:
        raise DatasetFileError(f"{where(0)}: the label {text[0]!r} is a class name, but the training split's labels "
                               "are class indices")
    names = tuple(known) if known is not None else tuple(sorted(set(text)))
    index = {name: i for i, name in enumerate(names)}
    unknown = [row for row, name in enumerate(text) if name not in index]
    if unknown:
        raise DatasetFileError(f"{where(unknown[0])}: the class {text[unknown[0]]!r} is not one of the training "
                               f"split's ({', '.join(names)})")
    return np.array([index[name] for name in text], dtype=np.int64), names


def _indices(values: list[int], where: Callable[[int], str], allowed: bool, known: Sequence[str] | None) -> np.ndarray:
    if not allowed and values:
        raise DatasetFileError(f"{where(0)}: the label {values[0]} is a class index, but the training split's labels "
                               f"are class names ({', '.join(known or ())})")
    too_large = [row for row, v in enumerate(values) if v > _LARGEST]
    if too_large:
        raise DatasetFileError(f"{where(too_large[0])}: the label {values[too_large[0]]} is too large for a class index")
    return np.array(values, dtype=np.int64).reshape(-1)


def check_labels(labels: np.ndarray, where: Callable[[int], str]) -> np.ndarray:
    """Labels must be class indices >= 0: the first negative one is a one-line error naming its row."""
    negative = np.flatnonzero(labels < 0)
    if len(negative):
        row = int(negative[0])
        raise DatasetFileError(f"{where(row)}: the label {int(labels[row])} is negative; labels are class indices "
                               "0, 1, ...")
    return labels
