"""Images from a numpy file: ``.npy`` (the images) or ``.npz`` (``images`` and optional ``labels``).

Accepted layouts: [N, H, W], [N, H, W, C] or [N, C, H, W] with C = 1, 3 or 4 (an alpha channel is
composited on black); uint8, or floats in [0, 1]. Anything else is an error that says how to fix it.
The file is read with ``allow_pickle=False``: nothing in it is unpickled.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import AelabError

FIX = "save uint8 [N, H, W(, C)] or floats in [0, 1] with numpy.save, or numpy.savez(path, images=..., labels=...)"


def read_array_file(path: str | Path) -> tuple[np.ndarray, np.ndarray | None]:
    """uint8 images [N, C, H, W] and integer labels [N] (None when the file has none)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise AelabError(f"{path} does not exist; give a .npy or .npz file of images (or mnist, fashion-mnist)")
    try:
        loaded = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as error:
        raise AelabError(f"{path} cannot be read as a numpy array file ({str(error).splitlines()[0][:120]}); {FIX}") from None
    if isinstance(loaded, np.lib.npyio.NpzFile):
        with loaded:
            if "images" not in loaded.files:
                raise AelabError(f"{path} holds {loaded.files}, no `images` array; {FIX}")
            images, labels = loaded["images"], loaded["labels"] if "labels" in loaded.files else None
    else:
        images, labels = loaded, None
    images = to_uint8_nchw(images, path)
    return images, _check_labels(labels, len(images), path)


def to_uint8_nchw(images: np.ndarray, source: Path | str = "images") -> np.ndarray:
    """[N, H, W], [N, H, W, C] or [N, C, H, W] (C = 1, 3, 4), uint8 or floats in [0, 1] -> uint8 [N, C, H, W]."""
    if images.ndim == 3:
        images = images[:, None]
    elif images.ndim == 4 and images.shape[1] not in (1, 3, 4) and images.shape[3] in (1, 3, 4):
        images = images.transpose(0, 3, 1, 2)  # [N, H, W, C] -> [N, C, H, W]
    elif images.ndim != 4 or images.shape[1] not in (1, 3, 4):
        raise AelabError(f"{source}: images of shape {images.shape} are not [N, H, W], [N, H, W, C] or [N, C, H, W] "
                         f"with 1, 3 or 4 channels; {FIX}")
    if len(images) == 0:
        raise AelabError(f"{source} holds no image; {FIX}")
    if images.dtype == np.uint8:
        pixels = images
    elif np.issubdtype(images.dtype, np.floating):
        low, high = float(np.nanmin(images)), float(np.nanmax(images))
        if not (np.isfinite(images).all() and low >= 0.0 and high <= 1.0):
            raise AelabError(f"{source}: float images must lie in [0, 1], these lie in [{low:g}, {high:g}]; "
                             "divide them by their maximum (255 for 8-bit images) first")
        pixels = np.round(images * 255.0).astype(np.uint8)
    else:
        raise AelabError(f"{source}: images of type {images.dtype} are neither uint8 nor floats in [0, 1]; "
                         "convert them (for 16-bit images: (images >> 8).astype(numpy.uint8))")
    if pixels.shape[1] == 4:  # RGBA: composited on black
        rgb, alpha = pixels[:, :3].astype(np.uint16), pixels[:, 3:].astype(np.uint16)
        pixels = ((rgb * alpha + 127) // 255).astype(np.uint8)
    return np.ascontiguousarray(pixels)


def _check_labels(labels: np.ndarray | None, n: int, source: Path) -> np.ndarray | None:
    if labels is None:
        return None
    labels = np.asarray(labels)
    if labels.shape != (n,) or not np.issubdtype(labels.dtype, np.integer) or (n and labels.min() < 0):
        raise AelabError(f"{source}: `labels` must be {n} integers of 0 or more (one per image), got {labels.dtype} "
                         f"{labels.shape}; save them with numpy.savez(path, images=..., labels=...)")
    return labels.astype(np.int64)
