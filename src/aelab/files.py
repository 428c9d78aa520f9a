"""Image files in, image files (or codes) out: what ``aelab reconstruct``, ``denoise`` and ``encode`` do.

Inputs are image files and folders (searched as a training folder is). Each image is prepared
exactly as the run's training images were (its channel count, size and resize method, recorded in
the run), run through the model, and an output picture is written back at the input's own size
and mode: grey stays grey, colour stays colour, an alpha channel is put back. Files that are not
usable images are skipped with their reason, as in training.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from .data import decode
from .data.folders import walk
from .data.sets import data_for_run
from .errors import AelabError
from .fsutil import atomic_save

log = logging.getLogger("aelab")
BATCH = 256


@dataclass
class Input:
    path: Path  # the file
    name: str  # its name for the outputs: relative to the folder it was found in, or the file's name


def collect(inputs: list[str | Path]) -> tuple[list[Input], list[tuple[str, str]]]:
    """The image files named by ``inputs`` (files, and folders searched recursively), and what was skipped."""
    found: list[Input] = []
    skipped: list[tuple[str, str]] = []
    for given in inputs:
        path = Path(given).expanduser()
        if path.is_dir():
            files, missed, _ = walk(path.resolve())
            found += [Input(path / f.path, f.path) for f in files]
            skipped += [(str(path / name), reason) for name, reason in missed]
        elif path.is_file() or path.is_symlink():
            found.append(Input(path, path.name))
        else:
            raise AelabError(f"{path} does not exist; give image files or folders of images")
    names = [item.name for item in found]
    if len(set(names)) < len(names):  # two inputs with one name: keep their folders apart
        found = [Input(item.path, str(item.path).lstrip("/")) for item in found]
    return found, skipped


@dataclass
class Prepared:
    images: torch.Tensor  # uint8 [B, C, H, W], as the model takes them
    inputs: list[Input]
    originals: list[tuple[int, int, str, np.ndarray | None]]  # (height, width, mode L/RGB, alpha or None)


def prepared(run, items: list[Input], skipped: list[tuple[str, str]]) -> Iterator[Prepared]:
    """Batches of the inputs prepared as the run's training images (bad files added to ``skipped``)."""
    data = data_for_run(run.config)
    channels, (height, width) = data.channels, data.size()
    for start in range(0, len(items), BATCH):
        pixels, kept, originals = [], [], []
        for item in items[start: start + BATCH]:
            try:
                image, original = decode.load_image(item.path, channels, height, width, data.resize, original=True)
            except decode.ImageError as error:
                skipped.append((str(item.path), str(error)))
                continue
            pixels.append(image)
            originals.append(original)
            kept.append(item)
        if kept:
            yield Prepared(torch.from_numpy(np.stack(pixels)), kept, originals)


def restored(output: np.ndarray, original: tuple[int, int, str, np.ndarray | None], method: str):
    """A model output uint8 [C, H, W] as a picture at the input's size and mode (the resize undone)."""
    from PIL import Image

    height, width, mode, alpha = original
    picture = Image.fromarray(output[0] if output.shape[0] == 1 else output.transpose(1, 2, 0))
    h, w = output.shape[1:]
    if method == "pad" and (height, width) != (h, w):  # cut the image out of its borders
        scale = min(w / width, h / height)
        inner = (max(1, round(width * scale)), max(1, round(height * scale)))
        left, top = (w - inner[0]) // 2, (h - inner[1]) // 2
        picture = picture.crop((left, top, left + inner[0], top + inner[1]))
    elif method == "crop" and (height, width) != (h, w):  # the centre was kept: scale back what it covers
        scale = max(w / width, h / height)
        picture = picture.resize((round(w / scale), round(h / scale)), Image.Resampling.BILINEAR)
        canvas = Image.new(picture.mode, (width, height), 0)
        canvas.paste(picture, ((width - picture.width) // 2, (height - picture.height) // 2))
        picture = canvas
    if picture.size != (width, height):
        picture = picture.resize((width, height), Image.Resampling.BILINEAR)
    picture = picture.convert(mode)
    if alpha is not None:
        picture.putalpha(Image.fromarray(alpha))
    return picture


def reconstruct_files(run, inputs: list[str | Path], out: str | Path, noise_factor: float = 0.0,
                      seed: int = 0) -> tuple[list[Path], list[tuple[str, str]]]:
    """Write the model's output for every input image as ``out/NAME.png``; with ``noise_factor`` > 0
    the input gets seeded Gaussian noise first (to show a denoising run at work on clean files).
    Returns the files written and the skipped (path, reason)."""
    from .inference import infer

    _labels_needed(run)
    items, skipped = collect(inputs)
    out = Path(out)
    stems = [str(Path(item.name).with_suffix("")) for item in items]
    clash = {stem for stem in stems if stems.count(stem) > 1}  # a.jpg and a.png: a.jpg.png and a.png.png
    written = []
    method = data_for_run(run.config).resize
    for batch in prepared(run, items, skipped):
        result = infer(run.model, batch.images, terms=(), reconstructions=True, noise_factor=noise_factor, seed=seed)
        pixels = result.reconstructions.clamp(0, 1).mul(255).round().to(torch.uint8).numpy()
        for item, output, original in zip(batch.inputs, pixels, batch.originals):
            stem = str(Path(item.name).with_suffix(""))
            target = out / (item.name + ".png" if stem in clash else stem + ".png")
            picture = restored(output, original, method)
            atomic_save(target, lambda tmp, picture=picture: picture.save(tmp, format="PNG"))
            written.append(target)
    _no_image(items, written, skipped)
    return written, skipped


def encode_files(run, inputs: list[str | Path]) -> tuple[list[str], np.ndarray, list[tuple[str, str]]]:
    """The paths and codes [N, d] of the input images, and the skipped (path, reason)."""
    from .inference import infer

    _labels_needed(run)
    items, skipped = collect(inputs)
    paths, codes = [], []
    for batch in prepared(run, items, skipped):
        codes.append(infer(run.model, batch.images, terms=(), codes=True).codes)
        paths += [str(item.path) for item in batch.inputs]
    _no_image(items, paths, skipped)
    return paths, np.concatenate(codes), skipped


def _labels_needed(run) -> None:
    """Image files come without labels, which a conditional model (cvae) needs."""
    if getattr(run.model, "conditional", False):
        raise AelabError(f"{run.path} is a conditional model (cvae): it needs each image's label, and image files "
                         "have none; use `aelab evaluate`, `embed` or `score` on labelled data, or a vae run")


def _no_image(items: list, done: list, skipped: list[tuple[str, str]]) -> None:
    if not done:
        reason = f" ({skipped[0][0]}: {skipped[0][1]})" if skipped else ""
        raise AelabError(f"no usable image among the inputs{reason}; give image files or folders of images")


def write_codes(paths: list[str], codes: np.ndarray, out: Path) -> Path:
    """codes as CSV / Parquet (path, z0 ...) or .npy (a structured array: path, z)."""
    from .latent import write_table

    out = Path(out)
    if out.suffix == ".npy":
        table = np.empty(len(paths), dtype=[("path", f"U{max(map(len, paths))}"), ("z", np.float32, codes.shape[1])])
        table["path"], table["z"] = paths, codes
        def save(tmp: Path) -> None:
            with open(tmp, "wb") as handle:
                np.save(handle, table)

        atomic_save(out, save)
        return out
    if out.suffix not in (".csv", ".parquet"):
        raise AelabError(f"--out {out} must end in .csv, .parquet or .npy")
    return write_table({"path": np.array(paths, dtype=object), **{f"z{i}": codes[:, i] for i in range(codes.shape[1])}},
                       out)
