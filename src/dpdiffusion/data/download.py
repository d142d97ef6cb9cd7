"""Dataset files: a local copy (``data_dir`` or ``$DPDIFFUSION_DATA_DIR``, laid out as
``<dir>/<dataset>/<canonical file name>``) or a download from the canonical address into a cache folder,
checked against a published md5: of the file's uncompressed content (archives may have been re-compressed)
or of the file as published."""

from __future__ import annotations

import gzip
import hashlib
import os
import tempfile
import urllib.request
import zlib
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

_CHUNK = 1 << 20


class DatasetFileError(ValueError):
    """A dataset file is missing, truncated or corrupted."""


@dataclass(frozen=True)
class RemoteFile:
    """A canonical dataset file and its addresses. It is accepted when it matches either known checksum:
    ``content_md5``, of the uncompressed content (a ``.gz`` re-compressed elsewhere still matches), or
    ``file_md5``, of the file as published (what torchvision lists for the ``.gz`` files). At least one is given."""

    name: str
    urls: tuple[str, ...]
    content_md5: str | None = None
    file_md5: str | None = None

    def __post_init__(self) -> None:
        if self.content_md5 is None and self.file_md5 is None:
            raise ValueError(f"{self.name}: give content_md5 or file_md5")


def cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "dpdiffusion"


def local_root(data_dir: str | None) -> Path | None:
    """The folder of local copies: ``data_dir``, else ``$DPDIFFUSION_DATA_DIR``, else None (download)."""
    root = data_dir or os.environ.get("DPDIFFUSION_DATA_DIR")
    return Path(root) if root else None


def read_content(path: Path) -> bytes:
    """The file's uncompressed bytes; a truncated or damaged archive is a DatasetFileError naming it."""
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                return f.read()
        return path.read_bytes()
    except (OSError, EOFError, zlib.error) as error:
        raise DatasetFileError(f"{path} is truncated or corrupted ({error})") from error


def _md5(path: Path, uncompressed: bool) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    try:
        with (gzip.open(path, "rb") if uncompressed else path.open("rb")) as f:
            while chunk := f.read(_CHUNK):
                digest.update(chunk)
    except (OSError, EOFError, zlib.error) as error:
        raise DatasetFileError(f"{path} is truncated or corrupted ({error})") from error
    return digest.hexdigest()


def verify_file(path: Path, expected: RemoteFile) -> Path:
    """``path`` if it matches one of ``expected``'s checksums (read in chunks: archives may be large)."""
    found = []
    if expected.file_md5 is not None or path.suffix != ".gz":  # without compression, content = file
        digest = _md5(path, uncompressed=False)
        if digest in (expected.file_md5, expected.content_md5):
            return path
        found.append(f"md5 {digest}")
    if expected.content_md5 is not None and path.suffix == ".gz":
        digest = _md5(path, uncompressed=True)
        if digest == expected.content_md5:
            return path
        found.append(f"uncompressed md5 {digest}")
    wanted = [f"md5 {expected.file_md5}"] * (expected.file_md5 is not None)
    wanted += [f"uncompressed md5 {expected.content_md5}"] * (expected.content_md5 is not None)
    raise DatasetFileError(
        f"{path} has {' and '.join(found)}, expected {' or '.join(wanted)}: the file is corrupted, truncated or "
        f"not the canonical {expected.name}"
    )


def verified_content(path: Path, expected: RemoteFile) -> bytes:
    return read_content(verify_file(path, expected))


def fetch_path(dataset: str, remote: RemoteFile, data_dir: str | None = None) -> Path:
    """The verified path of one dataset file: a local copy or a (cached) download."""
    root = local_root(data_dir)
    if root is not None:
        path = root / dataset / remote.name
        if not path.exists():
            raise DatasetFileError(f"{path} not found (expected the canonical {remote.name} of {dataset} there)")
        return verify_file(path, remote)
    path = cache_dir() / dataset / remote.name
    if not path.exists():
        _download(remote, path)
    return verify_file(path, remote)


def fetch(dataset: str, remote: RemoteFile, data_dir: str | None = None) -> bytes:
    """The verified uncompressed content of one dataset file, from a local copy or a (cached) download."""
    return read_content(fetch_path(dataset, remote, data_dir))


def _download(remote: RemoteFile, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    errors = []
    for url in remote.urls:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=path.suffix)  # keeps ".gz"
        try:
            with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=60) as response:
                size = int(response.headers.get("Content-Length") or 0) or None  # file:// and some servers: none
                progress = tqdm(total=size, unit="B", unit_scale=True, desc=remote.name, disable=None)
                with progress:
                    while chunk := response.read(_CHUNK):
                        out.write(chunk)
                        progress.update(len(chunk))
            verify_file(Path(tmp), remote)  # only a verified file takes the cached name
            os.replace(tmp, path)
            return
        except (OSError, DatasetFileError) as error:
            errors.append(f"{url}: {error}{_web_page_hint(Path(tmp))}")
            Path(tmp).unlink(missing_ok=True)
    raise DatasetFileError(
        f"could not download {remote.name} ({'; '.join(errors)}); put a copy at <data_dir>/<dataset>/{remote.name} "
        f"and pass data_dir (or set DPDIFFUSION_DATA_DIR)"
    )


def _web_page_hint(path: Path) -> str:
    """Google Drive answers a web page instead of a large file when it wants a confirmation or its quota is spent."""
    try:
        with path.open("rb") as f:
            start = f.read(512).lstrip().lower()
    except OSError:
        return ""
    return " (the server answered a web page, not the file)" if start.startswith((b"<!doctype html", b"<html")) else ""
