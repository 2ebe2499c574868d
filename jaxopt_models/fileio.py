"""Atomic file writes shared by every subpackage (results, checkpoints' side files,
compressed models): a reader never sees a half-written file."""

import os
import secrets

# Binary mode on platforms that distinguish it; close the descriptor in child processes.
_OPEN_FLAGS = (
    os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0) | getattr(os, "O_CLOEXEC", 0)
)
_NEW_FILE_MODE = 0o666  # the kernel applies the process umask, as for open(path, "w")
_NAME_TRIES = 100


def _create_temp(directory: str, basename: str) -> tuple[int, str]:
    """Creates a new, empty temporary file next to the target; returns ``(fd, path)``."""
    for _ in range(_NAME_TRIES):
        tmp = os.path.join(directory, f".tmp-{secrets.token_hex(6)}-{basename}")
        try:
            return os.open(tmp, _OPEN_FLAGS, _NEW_FILE_MODE), tmp
        except FileExistsError:
            continue
    raise FileExistsError(
        f"could not create a temporary file for {basename!r} in {directory!r} "
        f"after {_NAME_TRIES} tries"
    )


def atomic_write_bytes(path: str | os.PathLike, data: bytes | bytearray | memoryview) -> None:
    """Writes ``data`` to ``path`` via a synced temporary file in the same directory + rename.

    The directory is created if needed. The file gets the permissions a plain
    ``open(path, "wb")`` of a new file would get: ``0o666`` less the process umask (``0o644``
    under the usual umask ``0o022``). The temporary file is created with that mode directly,
    so no umask has to be read (reading it means setting it, which races with other threads).
    On any error the temporary file is removed and ``path`` keeps its previous content (or
    stays absent).

    Args:
      path: destination file; a ``str`` or ``os.PathLike``.
      data: the bytes to write.

    Raises:
      TypeError: ``path`` is not a path or ``data`` is not bytes-like.

    Example:
      >>> atomic_write_bytes("runs/demo/results.json", b"{}\\n")
    """
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path={path!r} must be a str or os.PathLike")
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"data must be bytes, bytearray or memoryview; got {type(data).__name__}")
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = _create_temp(directory, os.path.basename(path))
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
