import gzip
import hashlib

import pytest

from dpdiffusion.data.download import DatasetFileError, RemoteFile, fetch, fetch_path, verify_file


def test_either_known_checksum_accepts_the_file(tmp_path):
    path = tmp_path / "x.gz"
    with gzip.open(path, "wb") as f:
        f.write(b"content")
    content_md5 = hashlib.md5(b"content").hexdigest()
    file_md5 = hashlib.md5(path.read_bytes()).hexdigest()
    wrong = "0" * 32
    for remote in (RemoteFile("x.gz", (), content_md5=content_md5), RemoteFile("x.gz", (), file_md5=file_md5),
                   RemoteFile("x.gz", (), content_md5=wrong, file_md5=file_md5),
                   RemoteFile("x.gz", (), content_md5=content_md5, file_md5=wrong)):
        assert verify_file(path, remote) == path
    with pytest.raises(DatasetFileError, match=r"x\.gz has md5 .* and uncompressed md5 .*expected md5 0+ or"):
        verify_file(path, RemoteFile("x.gz", (), content_md5=wrong, file_md5=wrong))


def test_a_checksum_is_required():
    with pytest.raises(ValueError, match="content_md5 or file_md5"):
        RemoteFile("x", ())


def test_uncompressed_files_match_their_content_md5_as_file_md5(tmp_path):
    path = tmp_path / "list.txt"
    path.write_bytes(b"a 0\n")
    assert verify_file(path, RemoteFile("list.txt", (), content_md5=hashlib.md5(b"a 0\n").hexdigest())) == path


def test_local_copy_and_download_paths(tmp_path, monkeypatch):
    (tmp_path / "local" / "toy").mkdir(parents=True)
    source = tmp_path / "local" / "toy" / "f.bin"
    source.write_bytes(b"data")
    remote = RemoteFile("f.bin", (source.as_uri(),), file_md5=hashlib.md5(b"data").hexdigest())
    assert fetch_path("toy", remote, str(tmp_path / "local")) == source
    with pytest.raises(DatasetFileError, match="f.bin not found"):
        fetch_path("toy", remote, str(tmp_path / "empty"))
    monkeypatch.delenv("DPDIFFUSION_DATA_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert fetch("toy", remote) == b"data"
    assert (tmp_path / "cache/dpdiffusion/toy/f.bin").exists()


def test_a_failed_download_names_the_file_and_leaves_nothing(tmp_path, monkeypatch):
    page = tmp_path / "page.html"
    page.write_bytes(b"<!DOCTYPE html><html>confirm?</html>")
    monkeypatch.delenv("DPDIFFUSION_DATA_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    remote = RemoteFile("big.zip", (page.as_uri(),), file_md5="0" * 32)
    with pytest.raises(DatasetFileError, match=r"could not download big\.zip.*web page"):
        fetch_path("toy", remote)
    assert list((tmp_path / "cache/dpdiffusion/toy").iterdir()) == []
