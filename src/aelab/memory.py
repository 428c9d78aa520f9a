"""The memory of this process and of this machine, in bytes, and how much decoding pictures takes
(light: no PyTorch; ``aelab.footprint`` estimates a run's peak from these)."""

from __future__ import annotations

import os
import resource
import sys

GB = 2**30
DECODE_BYTES_PER_PIXEL = 16  # decoding one picture: its pixels as Pillow holds them, and the conversions made of them


def resident() -> int:
    """The bytes of memory this process holds now (its resident set)."""
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, AttributeError):  # (no /proc: the peak so far stands in)
        return peak_so_far()


def _proc_bytes(path: str, key: str) -> int | None:
    """A "KEY: N kB" line of a Linux /proc file, in bytes (None where there is none)."""
    try:
        with open(path) as lines:
            for line in lines:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return None


def peak_so_far() -> int:
    """The most resident memory this process has held (its peak so far): Linux's VmHWM, the high-water
    mark of this program's memory (``getrusage``'s ru_maxrss, the fallback, also keeps the peak of the
    process it was forked from: a test runner's, a notebook's)."""
    found = _proc_bytes("/proc/self/status", "VmHWM")
    if found is not None:
        return found
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # (Linux counts kilobytes)


def available() -> int:
    """The bytes of memory the machine can give now without swapping (Linux's MemAvailable; else
    the physical memory)."""
    found = _proc_bytes("/proc/meminfo", "MemAvailable")
    if found is not None:
        return found
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # pragma: no cover
        return 8 * GB


def size_text(n: float) -> str:
    """Bytes for a person: "48 KB", "740 MB", "1.6 GB"."""
    if n >= GB:
        return f"{n / GB:.1f} GB"
    return f"{max(1, round(n / 2**20))} MB" if n >= 2**20 else f"{max(1, round(n / 1024))} KB"


def decoding_bytes(largest_pixels: int, workers: int) -> int:
    """The memory decoding pictures adds at its peak: each worker (or this process) holds one picture
    of at most ``largest_pixels`` pixels, and what is made of it, at a time."""
    return DECODE_BYTES_PER_PIXEL * largest_pixels * max(1, workers)

