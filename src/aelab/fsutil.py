"""Atomic file writes: a crash or a full disk leaves the old file, never half a new one."""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from pathlib import Path
from typing import Callable, Iterator

from .errors import AelabError

_UMASK = os.umask(0)
os.umask(_UMASK)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path in the same folder; on success fsync it and rename it to ``path``.

    On any error the temporary file is removed and ``path`` is left as it was. A full disk
    or a folder that cannot be written becomes an AelabError naming the file.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(handle)
        os.chmod(name, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the file the usual permissions
    except OSError as error:
        raise _write_error(path, error) from None
    tmp = Path(name)
    try:
        yield tmp
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except OSError as error:
        tmp.unlink(missing_ok=True)
        raise _write_error(path, error) from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        _write_all(tmp, data)


def _write_all(path: Path, data: bytes) -> None:
    with open(path, "wb") as handle:
        handle.write(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_save(path: str | os.PathLike, write: Callable[[Path], None]) -> None:
    """Call ``write(tmp_path)`` and move the result to ``path`` atomically."""
    with atomic_path(path) as tmp:
        write(tmp)


def _fsync_dir(folder: Path) -> None:
    try:
        handle = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(handle)
    except OSError:
        pass
    finally:
        os.close(handle)


def _write_error(path: Path, error: OSError) -> AelabError:
    if error.errno == errno.ENOSPC:
        return AelabError(f"the disk is full while writing {path}; the previous copy is kept. "
                          "Free some space (or choose another `out` folder) and run again")
    if error.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return AelabError(f"cannot write {path} ({error.strerror}); choose a folder you can write to")
    return AelabError(f"cannot write {path} ({error.strerror or error}); nothing was replaced")
