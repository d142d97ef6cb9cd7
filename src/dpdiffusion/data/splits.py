"""Which of the user's files a split reads: ``data.path`` for ``train``, ``data.test_path`` for ``test``."""

from __future__ import annotations

from dpdiffusion.runconfig import ConfigError


def split_file(source: str, split: str, path: str | None, test_path: str | None, layout: str, unit: str) -> str:
    """The file or folder that ``split`` of a ``source`` dataset reads, or a one-line error naming the missing key.

    ``layout`` says what ``data.path`` must be (``"a .npz file with arrays images and labels"``), ``unit`` what a
    test split is read from (``"file"``, ``"folder"``).
    """
    if path is None:
        raise ConfigError(f"data.path: required for {source} ({layout})")
    if split == "train":
        return path
    if split == "test":
        if test_path is None:
            raise ConfigError(f"data.test_path: not set, and {source} has a test split only from that {unit}")
        return test_path
    raise ValueError(f"{source} has splits train and test, not {split!r}")
