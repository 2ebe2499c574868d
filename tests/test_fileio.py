"""atomic_write_bytes: content, permissions from the umask, no leftovers on failure."""

import contextlib
import os
import stat
import sys
import threading

import pytest

from jaxopt_models import fileio
from jaxopt_models.fileio import atomic_write_bytes

posix_only = pytest.mark.skipif(sys.platform == "win32", reason="POSIX permission bits")


@contextlib.contextmanager
def _umask(mask: int):
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def _leftovers(directory) -> list[str]:
    return [name for name in os.listdir(directory) if name.startswith(".tmp-")]


@posix_only
@pytest.mark.parametrize(
    ("umask", "expected"),
    [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664), (0o027, 0o640)],
    ids=lambda v: f"{v:04o}",
)
def test_new_file_mode_follows_umask(tmp_path, umask, expected):
    path = tmp_path / "results.json"
    with _umask(umask):
        atomic_write_bytes(path, b"{}\n")
        with open(tmp_path / "plain.txt", "wb") as f:  # what a plain open gives
            f.write(b"x")
    assert _mode(path) == expected
    assert _mode(tmp_path / "plain.txt") == expected


@posix_only
def test_overwrite_takes_the_umask_mode_and_replaces_content(tmp_path):
    path = tmp_path / "stages.md"
    with _umask(0o077):
        atomic_write_bytes(path, b"old")
    assert _mode(path) == 0o600
    with _umask(0o022):
        atomic_write_bytes(path, b"new content")
    assert path.read_bytes() == b"new content"
    assert _mode(path) == 0o644
    assert _leftovers(tmp_path) == []


@pytest.mark.parametrize("data", [b"", b"\x00\xff" * 1000, bytearray(b"abc"), memoryview(b"xyz")])
@pytest.mark.parametrize("as_str", [True, False])
def test_writes_exact_bytes_and_creates_directories(tmp_path, data, as_str):
    path = tmp_path / "a" / "b" / "model.jom"
    atomic_write_bytes(str(path) if as_str else path, data)
    assert path.read_bytes() == bytes(data)
    assert _leftovers(path.parent) == []


def test_failed_replace_keeps_old_content_and_removes_temp(tmp_path, monkeypatch):
    path = tmp_path / "results.json"
    path.write_bytes(b"previous")

    def fail(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(fileio.os, "replace", fail)
    with pytest.raises(OSError, match="disk full"):
        atomic_write_bytes(path, b"next")
    monkeypatch.undo()
    assert path.read_bytes() == b"previous"
    assert _leftovers(tmp_path) == []


def test_retries_when_the_temporary_name_is_taken(tmp_path, monkeypatch):
    names = iter(["taken", "taken", "free"])
    monkeypatch.setattr(fileio.secrets, "token_hex", lambda n: next(names))
    (tmp_path / ".tmp-taken-out.bin").write_bytes(b"someone else's")
    atomic_write_bytes(tmp_path / "out.bin", b"mine")
    assert (tmp_path / "out.bin").read_bytes() == b"mine"
    assert (tmp_path / ".tmp-taken-out.bin").read_bytes() == b"someone else's"


def test_concurrent_writers_leave_one_complete_file(tmp_path):
    path = tmp_path / "metrics.bin"
    payloads = [bytes([i]) * 10_000 for i in range(8)]
    threads = [threading.Thread(target=atomic_write_bytes, args=(path, p)) for p in payloads]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert path.read_bytes() in payloads
    assert _leftovers(tmp_path) == []


@pytest.mark.parametrize(
    ("path", "data", "match"),
    [
        (None, b"x", "path=None"),
        (3, b"x", "path=3"),
        ("out.bin", "text", "data must be bytes.*got str"),
        ("out.bin", [1, 2], "data must be bytes.*got list"),
    ],
)
def test_bad_arguments_raise_type_error(tmp_path, monkeypatch, path, data, match):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(TypeError, match=match):
        atomic_write_bytes(path, data)
    assert os.listdir(tmp_path) == []
