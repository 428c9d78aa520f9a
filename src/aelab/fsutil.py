"""Atomic file writes (a crash or a full disk leaves the old file, never half a new one), and the
lock that lets one process at a time build or fetch something (a cache, a dataset, a run)."""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Callable, Iterator

from .errors import AelabError

try:
    import fcntl
except ImportError:  # pragma: no cover (Windows: nothing is locked)
    fcntl = None

log = logging.getLogger("aelab")

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


# --- one process at a time: an OS lock on a file that holds its holder's process id ----------------

class ProcessLock:
    """An OS lock (``flock``) on the file ``path``, which holds the holder's process id.

    The operating system releases it when the holder ends in any way (closing the file releases it
    too), so a crash never leaves a stale lock; the file itself stays (removing it would race).
    Where the OS has no ``fcntl`` (Windows) nothing is locked. ``open`` raises OSError when the
    file cannot be made (a read-only folder); the callers turn that into their own message.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._handle = None

    def open(self) -> "ProcessLock":
        if self._handle is None:
            self._handle = open(self.path, "a+")  # (kept open while locked: the lock lives on this descriptor)
        return self

    def try_acquire(self) -> bool:
        """Take the lock if no other process holds it; say whether it was taken."""
        if fcntl is None:
            return True
        self.open()
        try:
            fcntl.flock(self._handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            if error.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                return False
            raise
        self._mark()
        return True

    def acquire(self, doing: str) -> "ProcessLock":
        """Take the lock, waiting for the process that holds it; the wait is logged (logger ``aelab``,
        INFO) with that process's id and ``doing`` (what it does: "building the image cache in DIR")."""
        if self.try_acquire():
            return self
        holder = self.holder()
        who = f"process {holder}" if holder else "another process"
        log.info("waiting for %s, which is %s ...", who, doing)
        fcntl.flock(self._handle, fcntl.LOCK_EX)
        self._mark()
        return self

    def holder(self) -> str:
        """The process id written in the lock file ("" if none yet): the holder writes it just after
        taking the lock, so an empty file is read again for a moment."""
        self.open()
        for _ in range(20):
            self._handle.seek(0)
            text = self._handle.read().strip()
            if text:
                return text
            time.sleep(0.01)
        return ""

    def _mark(self) -> None:
        self._handle.seek(0)
        self._handle.truncate()
        self._handle.write(f"{os.getpid()}\n")  # ("a+" writes at the end: here the start of the emptied file)
        self._handle.flush()

    def release(self) -> None:
        if self._handle is not None:
            self._handle.close()  # closing the descriptor releases the lock
            self._handle = None

    def __enter__(self) -> "ProcessLock":
        return self

    def __exit__(self, *exc) -> None:
        self.release()


@contextlib.contextmanager
def locked(path: str | os.PathLike, doing: str, fix: str) -> Iterator[None]:
    """Hold the lock ``path`` (a ``ProcessLock``) for the block, waiting (logged, with the holder's
    process id and ``doing``) while another process holds it. A lock file that cannot be made is an
    AelabError naming it, with ``fix``."""
    lock = ProcessLock(path)
    try:
        lock.open()
    except OSError as error:
        raise AelabError(f"cannot make the lock file {path} ({error.strerror or error}); {fix}") from None
    with lock:
        try:
            lock.acquire(doing)
        except OSError as error:  # (a file system without locks: ENOLCK on some NFS mounts)
            raise AelabError(f"cannot lock {path} ({error.strerror or error}); {fix}") from None
        yield
