"""Where ``dpdiffusion sample`` puts its images: one ``.npz`` file (``images`` uint8 [N, H, W, C], ``labels`` int64
[N]) with a grid beside it, or a folder of PNG files, ``OUT/<class>/<index>.png`` (``OUT/<index>.png`` for an
unconditional model), which image-folder tools read as a labelled dataset. Either appears whole or not at all: the
file is renamed into place, the folder is written beside ``OUT`` and renamed when complete."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from dpdiffusion.runconfig import ConfigError

FORMATS = ("npz", "png")


def check_output(out: Path, fmt: str) -> None:
    """Before any sampling: ``npz`` needs a ``.npz`` file name; ``png`` a folder that is new or empty (nothing is
    ever overwritten)."""
    if fmt not in FORMATS:
        raise ConfigError(f"--format: expected one of {', '.join(FORMATS)}, got {fmt!r}")
    if fmt == "npz":
        if out.suffix != ".npz":
            raise ConfigError(f"--out must name a .npz file, got {out} (or give --format png and a folder)")
        return
    if out.suffix == ".npz":
        raise ConfigError(f"--format png: --out names a folder of PNG files, got {out}")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(f"--out {out} exists and is not an empty folder: give a new folder (nothing is overwritten)")


def class_folders(num_classes: int, class_names: Sequence[str] = ()) -> list[str]:
    """The folder of each class: its name when the run records one usable name per class (distinct, no path
    separators, not hidden), else its index, zero-padded so that the folders sort in label order."""
    names = list(class_names)
    usable = (len(names) == num_classes and len(set(names)) == num_classes and all(isinstance(n, str) for n in names)
              and all(n.strip() and not n.startswith(".") and not set(n) & {"/", "\\", "\0"} for n in names))
    if usable:
        return names
    width = len(str(max(num_classes - 1, 0)))
    return [f"{c:0{width}d}" for c in range(num_classes)]


def write_npz(out: Path, images: np.ndarray, labels: np.ndarray) -> None:
    from dpdiffusion.diffusion.generate import save_grid

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.stem}.tmp.npz")
    np.savez_compressed(tmp, images=images, labels=labels)
    tmp.replace(out)
    save_grid(images, out.with_suffix(".png"))


def write_png_folder(out: Path, images: np.ndarray, labels: np.ndarray, *, num_classes: int,
                     class_names: Sequence[str] = ()) -> None:
    """Image i as ``out/<class folder>/<i>.png`` (``out/<i>.png`` when ``num_classes`` is 0), lossless: the PNGs
    decode to exactly ``images``. Written into a temporary folder beside ``out``, renamed to ``out`` when whole."""
    from PIL import Image

    check_output(out, "png")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp"))
    try:
        folders = class_folders(num_classes, class_names) if num_classes else []
        width = len(str(max(len(images) - 1, 0)))
        for i, (image, label) in enumerate(zip(images, labels, strict=True)):
            where = tmp / folders[int(label)] if num_classes else tmp
            where.mkdir(exist_ok=True)
            Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(where / f"{i:0{width}d}.png")
        if out.is_dir():
            out.rmdir()  # empty, as checked
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
