"""Locks between processes: a run folder that cannot take its lock, and fsutil's ProcessLock."""

import builtins
import errno
import os

import pytest

from aelab import AelabError
from aelab.run import RunLock, lock_new_run

TAKE_RUN_LOCK = r"""
import sys
from pathlib import Path

from aelab import AelabError
from aelab.run import lock_new_run

try:
    lock_new_run(Path(sys.argv[1]), overwrite=False)
except AelabError as error:
    print(error)
    sys.exit(2)
print("locked")
"""


def test_a_read_only_run_folder_is_one_error_naming_it_and_the_fix(tmp_path):
    """In a process that file permissions apply to (as root: one without root's override of them)."""
    from conftest import run_unprivileged

    run = tmp_path / "run"
    run.mkdir()
    run.chmod(0o555)
    try:
        result = run_unprivileged(TAKE_RUN_LOCK, tmp_path, str(run), timeout=120)
    finally:
        run.chmod(0o755)
    assert result.returncode == 2, result.stdout + result.stderr
    message = result.stdout.strip()
    assert len(message.splitlines()) == 1 and "Traceback" not in result.stderr
    assert f"cannot lock the run folder {run}" in message and "make it writable" in message
    assert not (run / ".lock").exists()


def test_a_run_folder_on_a_read_only_file_system_is_the_same_error(tmp_path, monkeypatch):
    real_open = builtins.open

    def read_only_file_system(file, *args, **kwargs):
        if str(file).endswith(".lock"):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", read_only_file_system)
    with pytest.raises(AelabError, match=f"cannot lock the run folder {tmp_path / 'run'} .*Read-only file system"):
        lock_new_run(tmp_path / "run", overwrite=False)


def test_a_held_run_lock_refuses_another_with_the_holders_pid(tmp_path):
    from aelab.fsutil import ProcessLock

    with RunLock(tmp_path):
        assert (tmp_path / ".lock").read_text().strip() == str(os.getpid())
        other = ProcessLock(tmp_path / ".lock")  # (flock: another open file description is another holder)
        try:
            assert not other.try_acquire() and other.holder() == str(os.getpid())
        finally:
            other.release()
    with ProcessLock(tmp_path / ".lock") as again:
        assert again.try_acquire()
