"""One image file -> uint8 pixels [C, H, W] of a chosen size and channel count (Pillow and numpy only).

This module is what the decoding worker processes import, so it stays light: no torch.

- Modes: greyscale, RGB, palette (with or without transparency), greyscale with alpha, RGBA, CMYK,
  YCbCr, 1-bit, 16- and 32-bit integer (scaled to 8 bits by their top byte) and float images are
  converted, not refused. An alpha channel is composited on a black background (as the array files).
- A GIF or multi-page TIFF gives its first frame.
- Channels: 1 (Pillow's ITU-R 601-2 luma for colour images) or 3 (grey images repeated).
- Size: ``stretch`` resizes to exactly H x W; ``crop`` scales to cover H x W and cuts the centre;
  ``pad`` scales to fit inside H x W and pads with black. Pillow's antialiased bilinear filter.
- A decompression bomb (more pixels than Pillow's limit) is an error, like a broken file; the
  caller lists it and goes on.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image

from .npyfile import ImageFileWriter

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
COLOUR_MODES = {"RGB", "RGBA", "RGBX", "RGBa", "CMYK", "YCbCr", "LAB", "HSV"}
WIDE_MODES = {"I", "I;16", "I;16B", "I;16L", "I;16N"}


class ImageError(Exception):
    """A file that cannot be used as an image; the message is the reason listed in data-skipped.csv."""


def _open(path: str | os.PathLike) -> Image.Image:
    """Open ``path`` (header only), turning every way a file can be bad into an ImageError."""
    try:
        if os.path.getsize(path) == 0:
            raise ImageError("empty file (0 bytes)")
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            return Image.open(path)
    except ImageError:
        raise
    except Image.DecompressionBombError as error:
        raise ImageError(f"decompression bomb: {error}") from None
    except Image.DecompressionBombWarning as error:
        raise ImageError(f"decompression bomb: {error}") from None
    except Image.UnidentifiedImageError:
        raise ImageError("not an image Pillow can read") from None
    except OSError as error:
        raise ImageError(f"unreadable: {error.strerror or error}") from None
    except Exception as error:  # Pillow raises SyntaxError, ValueError, struct.error ... on broken headers
        raise ImageError(f"broken image header: {type(error).__name__}: {error}") from None


def is_colour(image: Image.Image) -> bool:
    """Whether the image has colour: a colour mode, or a palette with a colour entry."""
    if image.mode in COLOUR_MODES:
        return True
    if image.mode in ("P", "PA"):
        palette = image.getpalette() or []
        rgb = np.asarray(palette[: len(palette) // 3 * 3], dtype=np.int16).reshape(-1, 3)
        return bool(len(rgb) and (rgb != rgb[:, :1]).any())
    return False


def read_header(path: str | os.PathLike) -> tuple[int, int, bool]:
    """(height, width, has colour) of an image file, from its header; ImageError if it is not usable."""
    image = _open(path)
    with image:
        width, height = image.size
        try:
            colour = is_colour(image)
        except Exception as error:
            raise ImageError(f"broken palette: {error}") from None
    if width < 1 or height < 1:
        raise ImageError(f"image of size {width}x{height}")
    return height, width, colour


def _eight_bit(image: Image.Image) -> Image.Image:
    """The image in mode L, LA, RGB or RGBA (8 bits a channel), whatever mode it came in."""
    mode = image.mode
    if mode in ("L", "LA", "RGB", "RGBA"):
        return image
    if mode in WIDE_MODES:  # 16-bit (and 32-bit integer) greyscale: the top 8 of 16 bits
        pixels = np.asarray(image).astype(np.int64)
        return Image.fromarray((np.clip(pixels, 0, 65535) >> 8).astype(np.uint8), "L")
    if mode == "F":  # floats: [0, 1] scaled to 255, else taken as 8-bit values
        pixels = np.asarray(image, dtype=np.float64)
        pixels = np.nan_to_num(pixels)
        if pixels.size and pixels.max() <= 1.0:
            pixels = pixels * 255.0
        return Image.fromarray(np.clip(np.round(pixels), 0, 255).astype(np.uint8), "L")
    if mode in ("P", "PA"):
        return image.convert("RGBA")
    if mode in ("La",):
        return image.convert("LA")
    if mode in ("RGBa",):
        return image.convert("RGBA")
    if mode == "1":
        return image.convert("L")
    return image.convert("RGB")  # CMYK, YCbCr, LAB, HSV, RGBX, ...


def _composited(image: Image.Image) -> Image.Image:
    """Alpha composited on black: L or RGB."""
    if image.mode not in ("LA", "RGBA"):
        return image
    pixels = np.asarray(image).astype(np.uint16)
    colour, alpha = pixels[..., :-1], pixels[..., -1:]
    out = ((colour * alpha + 127) // 255).astype(np.uint8)
    return Image.fromarray(out[..., 0] if image.mode == "LA" else out, "L" if image.mode == "LA" else "RGB")


def _resized(image: Image.Image, height: int, width: int, method: str) -> Image.Image:
    w, h = image.size
    if (h, w) == (height, width):
        return image
    if method == "stretch":
        return image.resize((width, height), Image.Resampling.BILINEAR)
    scale = max(width / w, height / h) if method == "crop" else min(width / w, height / h)
    new = (max(1, round(w * scale)), max(1, round(h * scale)))
    scaled = image.resize(new, Image.Resampling.BILINEAR)
    if method == "crop":
        left, top = (new[0] - width) // 2, (new[1] - height) // 2
        return scaled.crop((left, top, left + width, top + height))
    canvas = Image.new(scaled.mode, (width, height), 0)
    canvas.paste(scaled, ((width - new[0]) // 2, (height - new[1]) // 2))
    return canvas


def conform(image: Image.Image, channels: int, height: int, width: int, method: str) -> np.ndarray:
    """A Pillow image as uint8 [channels, height, width]."""
    image = _composited(_eight_bit(image))
    if channels == 1 and image.mode != "L":
        image = image.convert("L")
    elif channels == 3 and image.mode != "RGB":
        image = image.convert("RGB")
    pixels = np.asarray(_resized(image, height, width, method), dtype=np.uint8)
    return pixels[None] if pixels.ndim == 2 else pixels.transpose(2, 0, 1)


def load_image(path: str | os.PathLike, channels: int, height: int, width: int, method: str,
               original: bool = False):
    """Decode an image file into uint8 [channels, height, width]; ImageError (with the reason) if it
    cannot be. With ``original``: also ``describe`` of the file's image, from the same reading."""
    image = _open(path)
    try:
        with image, warnings.catch_warnings():
            warnings.simplefilter("ignore")  # (EXIF and palette warnings of otherwise good files)
            image.load()
            pixels = conform(image, channels, height, width, method)
            return (pixels, describe(image)) if original else pixels
    except ImageError:
        raise
    except OSError as error:
        reason = str(error)
        raise ImageError(f"truncated or corrupt: {reason}" if "truncated" in reason or "broken" in reason
                         else f"cannot decode: {reason}") from None
    except MemoryError:
        raise ImageError("too large to decode in memory") from None
    except Exception as error:
        raise ImageError(f"cannot decode: {type(error).__name__}: {error}") from None


def describe(image: Image.Image) -> tuple[int, int, str, np.ndarray | None]:
    """(height, width, "RGB" or "L", its alpha channel or None) of an image: how to write an output
    back in the input's own form."""
    has_alpha = "A" in image.getbands() or "transparency" in image.info
    alpha = np.asarray(image.convert("RGBA"))[..., 3] if has_alpha else None
    return image.height, image.width, "RGB" if is_colour(image) else "L", alpha


def row_hash(pixels: np.ndarray) -> str:
    """A short hash of one decoded image (the cache's fingerprint is made of these)."""
    return hashlib.blake2b(np.ascontiguousarray(pixels).tobytes(), digest_size=8).hexdigest()


# --- the work of one worker process -----------------------------------------------------------------

def headers_job(root: str, paths: list[str]) -> list[tuple[int, int, bool] | str]:
    """(height, width, colour), or the reason it cannot be used, for each of ``paths`` under ``root``."""
    out: list[tuple[int, int, bool] | str] = []
    for relative in paths:
        try:
            out.append(read_header(Path(root, relative)))
        except ImageError as error:
            out.append(str(error))
    return out


def decode_job(root: str, cache: str, jobs: list[tuple[int, str]], channels: int, height: int, width: int,
               method: str) -> list[str]:
    """Decode each (row, path) of ``jobs`` into that row of the cache file ``cache`` (an .npy of uint8
    [N, C, H, W]); return, per job, the row's hash or ``"!" + reason`` when the file could not be used."""
    out = []
    with ImageFileWriter(cache) as images:
        for row, relative in jobs:
            try:
                pixels = load_image(Path(root, relative), channels, height, width, method)
            except ImageError as error:
                out.append("!" + str(error))
                continue
            images.write_rows([row], pixels[None])
            out.append(row_hash(pixels))
    return out
