"""Dataset files: a local copy (``data_dir`` or ``$DPDIFFUSION_DATA_DIR``, laid out as
``<dir>/<dataset>/<canonical file name>``) or a download from the canonical address into a cache folder,
checked against the md5 of the file's uncompressed content (archives may have been re-compressed)."""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path


class DatasetFileError(ValueError):
    """A dataset file is missing, truncated or corrupted."""


@dataclass(frozen=True)
class RemoteFile:
    name: str
    urls: tuple[str, ...]
    content_md5: str  # of the uncompressed content


def cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "dpdiffusion"


def read_content(path: Path) -> bytes:
    """The file's uncompressed bytes; a truncated or damaged archive is a DatasetFileError naming it."""
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                return f.read()
        return path.read_bytes()
    except (OSError, EOFError, gzip.BadGzipFile) as error:
        raise DatasetFileError(f"{path} is truncated or corrupted ({error})") from error


def verified_content(path: Path, expected: RemoteFile) -> bytes:
    content = read_content(path)
    digest = hashlib.md5(content).hexdigest()
    if digest != expected.content_md5:
        raise DatasetFileError(
            f"{path} has uncompressed md5 {digest}, expected {expected.content_md5}: the file is corrupted or "
            f"not the canonical {expected.name}"
        )
    return content


def fetch(dataset: str, remote: RemoteFile, data_dir: str | None = None) -> bytes:
    """The verified uncompressed content of one dataset file, from a local copy or a (cached) download."""
    local_root = data_dir or os.environ.get("DPDIFFUSION_DATA_DIR")
    if local_root:
        path = Path(local_root) / dataset / remote.name
        if not path.exists():
            raise DatasetFileError(f"{path} not found (expected the canonical {remote.name} of {dataset} there)")
        return verified_content(path, remote)
    path = cache_dir() / dataset / remote.name
    if not path.exists():
        _download(remote, path)
    return verified_content(path, remote)


def _download(remote: RemoteFile, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    errors = []
    for url in remote.urls:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=path.suffix)  # keeps ".gz"
        try:
            with urllib.request.urlopen(url, timeout=60) as response, os.fdopen(fd, "wb") as out:
                shutil.copyfileobj(response, out)
            verified_content(Path(tmp), remote)  # only a verified file takes the cached name
            os.replace(tmp, path)
            return
        except (OSError, DatasetFileError) as error:
            errors.append(f"{url}: {error}")
            Path(tmp).unlink(missing_ok=True)
    raise DatasetFileError(f"could not download {remote.name}: " + "; ".join(errors))
