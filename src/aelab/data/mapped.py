"""Images left on disk: rows of a uint8 .npy file read when they are needed.

``MappedImages`` stands in for a uint8 tensor [N, C, H, W] where a set is larger than the memory
budget: ``len``, ``shape``, indexing by a slice, an integer, a list or an index tensor (which
returns a tensor in memory), and ``subset`` (a view of some of its rows, nothing read). A batch is
read with one positioned read per run of consecutive rows, in file order (the indices sorted), then
put back in the order asked for; so a batch is the same whether the set is on disk or in memory.
Reading goes through the file, not a memory map, so the process holds only the batches it reads
(the operating system's page cache keeps what it can and gives it back under pressure).

A set and its subsets share one open file: ``close()`` (or leaving a ``with`` block) on any of
them closes it for all of them, and reading afterwards is an error. A set that is never closed has
its file closed when the set and all its subsets are gone (``weakref.finalize``, a safety net).
"""

from __future__ import annotations

import os
import weakref
from pathlib import Path

import numpy as np
import torch

from .npyfile import npy_header


class MappedImages:
    """uint8 images [N, C, H, W]: the rows ``rows`` of the .npy file ``path``."""

    dtype = torch.uint8
    device = torch.device("cpu")

    def __init__(self, path: str | os.PathLike, rows: np.ndarray | None = None, _file: "_OpenFile | None" = None):
        self.path = Path(path)
        self._file = _file or _OpenFile(self.path)  # opened now: a cache rebuilt later does not change these rows
        self.file_shape, self.offset = self._file.shape, self._file.offset
        self.rows = np.arange(self.file_shape[0], dtype=np.int64) if rows is None else np.asarray(rows, dtype=np.int64)
        self.row_bytes = int(np.prod(self.file_shape[1:]))

    def __getstate__(self):
        return {"path": self.path, "rows": self.rows}

    def __setstate__(self, state):
        self.__init__(state["path"], state["rows"])

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def shape(self) -> torch.Size:
        return torch.Size((len(self.rows), *self.file_shape[1:]))

    def dim(self) -> int:
        return 4

    @property
    def nbytes(self) -> int:
        return len(self.rows) * self.row_bytes

    def subset(self, positions) -> "MappedImages":
        """The images at ``positions`` (a view: nothing is read)."""
        return MappedImages(self.path, self.rows[_positions(positions)], self._file)

    def __getitem__(self, key) -> torch.Tensor:
        if isinstance(key, slice):
            rows = self.rows[key]
        elif isinstance(key, (int, np.integer)):
            return self[[int(key)]][0]
        else:
            rows = self.rows[_positions(key)]
        return torch.from_numpy(self.read_rows(rows))

    def close(self) -> None:
        """Close the file (for this set and every subset of it); closing twice does nothing."""
        self._file.close()

    @property
    def closed(self) -> bool:
        return self._file.fd is None

    def __enter__(self) -> "MappedImages":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def load(self) -> torch.Tensor:
        """Every image, in memory."""
        return self[:]

    def read_rows(self, rows: np.ndarray) -> np.ndarray:
        """The file's rows ``rows`` as uint8 [len(rows), C, H, W], read in file order."""
        order = np.argsort(rows, kind="stable")
        ordered = rows[order]
        out = np.empty((len(rows), self.row_bytes), dtype=np.uint8)
        if len(rows):
            fd = self._file.descriptor()
            breaks = np.flatnonzero(np.diff(ordered) != 1) + 1  # runs of consecutive rows: one read each
            for first, last in zip(np.concatenate(([0], breaks)), np.concatenate((breaks, [len(rows)]))):
                _read_into(fd, out[first:last], self.offset + int(ordered[first]) * self.row_bytes)
        result = np.empty_like(out)
        result[order] = out  # back in the order asked for
        return result.reshape(len(rows), *self.file_shape[1:])

    def chunks(self, size: int = 4096):
        """The images in order, ``size`` at a time (tensors)."""
        for start in range(0, len(self), size):
            yield self[start: start + size]


class _OpenFile:
    """The open cache file, shared by a set and its subsets: closed by ``close()``, or (a safety net
    for sets never closed) when the last of them is gone."""

    def __init__(self, path: Path):
        self.path = path
        fd = os.open(path, os.O_RDONLY)
        try:
            with open(fd, "rb", closefd=False) as handle:  # the header of this very file (the descriptor's)
                self.shape, self.offset = npy_header(handle, path)
        except BaseException:
            os.close(fd)
            raise
        self.fd: int | None = fd
        self._finalizer = weakref.finalize(self, os.close, fd)

    def descriptor(self) -> int:
        if self.fd is None:
            raise ValueError(f"the images of {self.path} were closed; load them again")
        return self.fd

    def close(self) -> None:
        if self.fd is not None:
            self.fd = None  # (first: a closed number is never read again, whatever file gets it next)
            self._finalizer()


def _positions(key) -> np.ndarray:
    if torch.is_tensor(key):
        key = key.cpu().numpy()
    positions = np.asarray(key)
    if positions.dtype == bool:
        positions = np.flatnonzero(positions)
    return positions.astype(np.int64, copy=False)


def _read_into(fd: int, buffer: np.ndarray, offset: int) -> None:
    view = memoryview(buffer).cast("B")
    done = 0
    while done < len(view):
        if hasattr(os, "preadv"):
            got = os.preadv(fd, [view[done:]], offset + done)
        else:  # pragma: no cover (platforms without preadv)
            data = os.pread(fd, len(view) - done, offset + done)
            view[done: done + len(data)] = data
            got = len(data)
        if got == 0:
            raise OSError(f"the image cache file ends early (at byte {offset + done}); it was changed or truncated")
        done += got
