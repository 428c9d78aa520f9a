"""Choosing the device: cuda, then mps, else cpu."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch

from .errors import AelabError


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` picks cuda, then mps, else cpu; an explicit device must exist."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise AelabError(f"unknown device {name!r}; use auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise AelabError(f"`device` {name}: no CUDA GPU is available here; use `device` cpu or auto")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise AelabError(f"`device` {name}: there are only {torch.cuda.device_count()} CUDA devices; choose cuda:0 to cuda:{torch.cuda.device_count() - 1}")
    if device.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise AelabError(f"`device` {name}: MPS is not available here; use `device` cpu or auto")
    return device


@contextmanager
def plain_fp32() -> Iterator[None]:
    """Within: CUDA convolutions and matrix products in true fp32 (PyTorch lets cuDNN use TF32 by
    default, which keeps only 10 bits of mantissa). The tiny layers of this model are limited by
    launches, not arithmetic, so TF32 would buy no speed, only error."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved
