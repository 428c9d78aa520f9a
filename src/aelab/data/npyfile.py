"""uint8 [N, C, H, W] .npy files read and written through their descriptors (no memory maps): the
header of one, and a writer of rows. No torch here: the decoding worker processes import it."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np


def npy_header(handle, path: Path) -> tuple[tuple[int, ...], int]:
    """(shape, offset of the data) of the .npy file open as ``handle``; ValueError unless it holds
    a uint8 [N, C, H, W] array in C order."""
    version = np.lib.format.read_magic(handle)
    if version == (1, 0):
        shape, fortran_order, dtype = np.lib.format.read_array_header_1_0(handle)
    elif version == (2, 0):
        shape, fortran_order, dtype = np.lib.format.read_array_header_2_0(handle)
    else:  # (3.0 is only written for structured dtypes with non-latin-1 names)
        raise ValueError(f"{path} is a .npy file of version {version[0]}.{version[1]}, not a uint8 [N, C, H, W] array")
    if dtype != np.uint8 or len(shape) != 4 or fortran_order:
        raise ValueError(f"{path} is not a uint8 [N, C, H, W] array in C order")
    return tuple(int(n) for n in shape), handle.tell()


class ImageFileWriter:
    """Writes rows of a uint8 [N, C, H, W] .npy file through its descriptor (positioned writes, no
    memory map; the rows reach the disk, fsync, when the writer is closed). ``shape`` given: the file
    is made (its header, then N rows of zeros); without it, an existing file is written into. Use it
    as a context manager: the file is closed when the block ends, error or not."""

    def __init__(self, path: str | os.PathLike, shape: tuple[int, int, int, int] | None = None):
        self.path = Path(path)
        if shape is not None:
            with open(self.path, "wb") as handle:
                header = {"descr": np.lib.format.dtype_to_descr(np.dtype(np.uint8)), "fortran_order": False,
                          "shape": tuple(int(n) for n in shape)}
                np.lib.format.write_array_header_1_0(handle, header)
                handle.truncate(handle.tell() + int(np.prod(shape)))
        self.fd = os.open(self.path, os.O_RDWR)
        try:
            with open(self.fd, "rb", closefd=False) as handle:
                self.shape, self.offset = npy_header(handle, self.path)
        except BaseException:
            os.close(self.fd)
            raise
        self.row_bytes = int(np.prod(self.shape[1:]))

    def write_rows(self, rows, pixels: np.ndarray) -> None:
        """Write ``pixels`` (uint8 [len(rows), C, H, W]) into the file's rows ``rows``."""
        pixels = np.ascontiguousarray(pixels, dtype=np.uint8).reshape(-1, self.row_bytes)
        for row, values in zip(np.asarray(rows, dtype=np.int64).reshape(-1), pixels):
            if not 0 <= row < self.shape[0]:
                raise IndexError(f"row {row} is outside {self.path} ({self.shape[0]} rows)")
            view, offset = memoryview(values), self.offset + int(row) * self.row_bytes
            while len(view):
                done = os.pwrite(self.fd, view, offset)
                view, offset = view[done:], offset + done

    def close(self) -> None:
        if self.fd is not None:
            fd, self.fd = self.fd, None
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

    def __enter__(self) -> "ImageFileWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
