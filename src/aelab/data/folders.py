"""A folder of image files as a uint8 cache: found recursively, decoded once, kept up to date.

The folder is searched recursively for the files Pillow reads (``decode.IMAGE_SUFFIXES``; names
starting with a dot are passed over). A class subfolder gives its images a label (torchvision
``ImageFolder``'s convention: the classes are the subfolders' names, sorted); images directly in
the folder are unlabelled. A folder with ``train/`` and ``test/`` (and optionally ``val/``)
subfolders gives those splits, each with its own class subfolders.

The first use reads every header (sizes and colour: they decide the default channel count and
size), then decodes every image, in parallel over the cores, into one .npy file of uint8
[N, C, H, W] under the data folder (``DATA_DIR/folders/NAME-HASH/``), beside a manifest of each
file's path, size and modification time. Later uses only list the folder: unchanged files keep
their rows, new or changed ones are decoded, removed ones drop out. The user's files are only
ever read. A file that cannot be used is skipped with its reason, never silently.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import stat
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from .. import memory
from ..config import LARGEST_DEFAULT_SIDE, default_image_size
from ..errors import AelabError
from ..fsutil import atomic_path, atomic_write_text, locked
from . import decode
from .mapped import MappedImages
from .npyfile import ImageFileWriter

log = logging.getLogger("aelab")

SPLIT_FOLDERS = ("train", "val", "test")
FORMAT = 1
PARALLEL_FROM = 256  # fewer files than this are decoded in this process (starting workers costs more)
DECODING_SAID = 64 * 2**20  # the memory decoding takes is said from this much (big pictures)


@dataclass
class FileInfo:
    path: str  # relative to the root, with "/"
    size: int
    mtime_ns: int


@dataclass
class FolderData:
    """What the cache holds for one folder and one preprocessing (channels, size, resize)."""

    root: Path
    images: MappedImages  # the usable images, in path order (an open file: ``close()`` when done)
    paths: np.ndarray  # str [N]: relative to the root
    labels: np.ndarray  # int64 [N]; -1 unlabelled
    splits: np.ndarray | None  # str [N] ("train", "val", "test") when the folder has split subfolders
    class_names: tuple[str, ...]
    skipped: list[tuple[str, str]]  # (path, reason)
    fingerprint: str

    @property
    def channels(self) -> int:
        return self.images.shape[1]

    @property
    def height(self) -> int:
        return self.images.shape[2]

    @property
    def width(self) -> int:
        return self.images.shape[3]


def cache_dir(root: Path, data_dir: Path) -> Path:
    digest = hashlib.blake2b(str(root).encode(), digest_size=6).hexdigest()
    name = "".join(c if c.isalnum() or c in "-_" else "_" for c in root.name)[:40] or "root"
    return data_dir / "folders" / f"{name}-{digest}"


@dataclass
class Survey:
    """What a folder's headers say, before anything is decoded: its usable files, and the channel
    count and size its images are made (the ones asked for, or chosen from them)."""

    root: Path
    where: Path  # its cache folder
    good: list[FileInfo]  # the files with a readable header, in path order
    skipped: list[tuple[str, str]]  # (path, reason)
    split_layout: bool  # train/ test/ (val/) subfolders
    channels: int
    size: tuple[int, int]
    largest: int  # the most pixels of a picture

    def split_counts(self) -> dict[str, int]:
        """The usable files in each of train/, val/ and test/ (a folder laid out so; else {})."""
        if not self.split_layout:
            return {}
        first = Counter(f.path.split("/")[0] for f in self.good)
        return {name: first.get(name, 0) for name in SPLIT_FOLDERS}


def survey(root: str | os.PathLike, data_dir: Path, channels: int | None = None, size: tuple[int, int] | None = None,
           resize: str = "stretch") -> Survey:
    """The folder's files and the channel count and size its images are made (from their headers,
    kept in the cache: later surveys read only the folder's listing), each choice said once."""
    root, where = _cache_of(root, data_dir)
    with locked(where / ".lock", f"building the image cache in {where}", "choose a writable `data.data_dir`"):
        return _survey(root, where, channels, size, resize)


def _cache_of(root: str | os.PathLike, data_dir: Path) -> tuple[Path, Path]:
    """The folder ``root`` (resolved; refused when it is none) and its cache folder, made if missing."""
    given = root
    root = Path(root).expanduser().resolve()
    if not root.is_dir():
        what = "is a file, not a folder" if root.exists() else "is neither a named dataset nor an existing folder or file"
        raise AelabError(f"`data.dataset` {str(given)!r} {what}; give a folder of images, a .npy / .npz file, "
                         "or mnist / fashion-mnist")
    where = cache_dir(root, Path(data_dir))
    try:
        where.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise AelabError(f"cannot create the image cache in {where} ({error.strerror}); choose a writable "
                         "`data.data_dir`") from None
    return root, where


def _survey(root: Path, where: Path, channels: int | None, size: tuple[int, int] | None, resize: str) -> Survey:
    """``survey``, its cache's lock held."""
    files, skipped, split_layout = walk(root)
    headers = _headers(root, where, files)
    good = [f for f in files if not isinstance(headers[f.path], str)]
    skipped += [(f.path, headers[f.path]) for f in files if isinstance(headers[f.path], str)]
    if not good:
        if not files:
            raise AelabError(f"{root} holds no image files ({', '.join(decode.IMAGE_SUFFIXES)}, searched in "
                             "subfolders too); give a folder of images")
        first = sorted(skipped)[0]
        found = "1 image file and it is not readable" if len(files) == 1 else \
            f"{len(files)} image files and none is readable"
        which = "" if len(files) == 1 else "the first: "
        raise AelabError(f"{root} holds {found} ({which}{first[0]}: {first[1]}); give a folder of images Pillow can "
                         "read")
    colour = sum(bool(headers[f.path][2]) for f in good)
    if channels is None:
        channels = 3 if colour else 1
        if 0 < colour < len(good):
            _note(root, f"{len(good) - colour} of {len(good)} images are grey and the others have colour: every "
                        "image gets 3 channels, the grey ones repeated (1 channel: every image grey)")
    elif channels == 1 and colour:
        _note(root, f"{colour} of {len(good)} images have colour; they are converted to grey (the run's 1 channel)")
    elif channels == 3 and colour < len(good):
        _note(root, f"{len(good) - colour} of {len(good)} images are grey; they are repeated to 3 channels (the "
                    "run's 3)")
    if size is None:
        reference, count = Counter(tuple(headers[f.path][:2]) for f in good).most_common(1)[0]
        size = default_image_size(reference)
        why = "the most common size" + (f", that of {count} of them" if count < len(good) / 2 else "")
        if size != tuple(reference):
            _note(root, f"the pictures are mostly {reference[0]}x{reference[1]} (height x width), more than the "
                        f"{LARGEST_DEFAULT_SIDE} pixels a side the default network is sized for: they are made "
                        f"{size[0]}x{size[1]} (set --image-size, data.image_size, for more detail, at a cost in "
                        "memory and time: the memory it needs is said before training)")
    else:
        reference, why = size, "the run's size"
    odd = sum(tuple(headers[f.path][:2]) != tuple(reference) for f in good)
    if odd:
        _note(root, f"{odd} of {len(good)} images are not {reference[0]}x{reference[1]} (height x width; {why}); they "
                    f"are resized ({resize}) to {size[0]}x{size[1]}")
    largest = max(headers[f.path][0] * headers[f.path][1] for f in good)
    return Survey(root, where, good, skipped, split_layout, channels, tuple(size), largest)


def load_folder(root: str | os.PathLike, data_dir: Path, channels: int | None = None,
                size: tuple[int, int] | None = None, resize: str = "stretch") -> FolderData:
    """The folder's images through the cache (built or brought up to date first)."""
    root, where = _cache_of(root, data_dir)
    with locked(where / ".lock", f"building the image cache in {where}", "choose a writable `data.data_dir`"):
        found = _survey(root, where, channels, size, resize)
        good, skipped, split_layout, channels, size = (found.good, list(found.skipped), found.split_layout,
                                                       found.channels, found.size)
        images_path, rows = _decoded(root, where, good, channels, size, resize, found.largest)
        whole = MappedImages(images_path)  # opened under the lock: these rows, whatever happens later
    usable = [(position, entry) for position, entry in enumerate(rows) if not entry[3].startswith("!")]
    skipped += [(entry[0], entry[3][1:]) for entry in rows if entry[3].startswith("!")]
    if not usable:
        whole.close()
        raise AelabError(f"{root}: none of its {len(rows)} image files could be decoded (see the reasons above); "
                         "give a folder of images")
    paths = np.array([entry[0] for _, entry in usable], dtype=object)
    parts = [path.split("/") for path in paths]
    if split_layout:
        splits = np.array([p[0] for p in parts], dtype=object)
        classes = [p[1] if len(p) > 2 else "" for p in parts]
    else:
        splits, classes = None, [p[0] if len(p) > 1 else "" for p in parts]
    class_names = tuple(sorted(set(classes) - {""}))
    number = {name: i for i, name in enumerate(class_names)}
    labels = np.array([number.get(name, -1) for name in classes], dtype=np.int64)
    digest = hashlib.blake2b(f"{channels}x{size[0]}x{size[1]}".encode(), digest_size=12)
    for _, entry in usable:
        digest.update(f"\n{entry[0]}\t{entry[3]}".encode())
    if skipped:
        first = sorted(skipped)[0]
        log.warning("%d files skipped, not usable images (such as %s: %s); training lists each with its reason in "
                    "RUN/data-skipped.csv", len(skipped), first[0], first[1])
    mapped = whole.subset(np.array([position for position, _ in usable], dtype=np.int64))
    return FolderData(root, mapped, paths, labels, splits, class_names, sorted(skipped), digest.hexdigest())


_said: set[tuple[str, str]] = set()  # (folder, note): each note about a folder is said once a process


def _note(root: Path, text: str) -> None:
    """Say ``text``, a note about how the folder ``root``'s images are prepared, once a process (a
    command that reads two splits of a folder reads it twice)."""
    if (str(root), text) not in _said:
        _said.add((str(root), text))
        log.info("%s", text)


# --- finding the files --------------------------------------------------------------------------

def walk(root: Path) -> tuple[list[FileInfo], list[tuple[str, str]], bool]:
    """The image files under ``root`` (sorted by path), what could not be searched, and whether the
    folder is laid out as train/ test/ (val/) subfolders."""
    top = {entry.name for entry in _scandir(root) if _is_dir(entry)}
    split_layout = {"train", "test"} <= top
    starts = [name for name in SPLIT_FOLDERS if name in top] if split_layout else [""]
    files: list[FileInfo] = []
    skipped: list[tuple[str, str]] = []
    seen: set[tuple[int, int]] = set()
    stack = list(reversed(starts))
    while stack:
        relative = stack.pop()
        folder = root / relative
        try:
            info = folder.stat()
            if (info.st_dev, info.st_ino) in seen:  # a link back to a folder already searched
                skipped.append((relative, "folder link loop (already searched)"))
                continue
            seen.add((info.st_dev, info.st_ino))
            entries = sorted(os.scandir(folder), key=lambda entry: entry.name)
        except OSError as error:
            skipped.append((relative or ".", f"unreadable folder: {error.strerror or error}"))
            continue
        for entry in entries:
            if entry.name.startswith("."):
                continue
            path = f"{relative}/{entry.name}" if relative else entry.name
            if _is_dir(entry):
                stack.append(path)
                continue
            if os.path.splitext(entry.name)[1].lower() not in decode.IMAGE_SUFFIXES:
                continue
            try:
                info = entry.stat()  # follows links: a link loop or a dangling link fails here
            except OSError as error:
                reason = "symlink loop" if error.errno == errno.ELOOP else f"unreadable: {error.strerror or error}"
                skipped.append((path, reason))
                continue
            if not stat.S_ISREG(info.st_mode):
                skipped.append((path, "not a regular file"))
                continue
            files.append(FileInfo(path, info.st_size, info.st_mtime_ns))
    files.sort(key=lambda f: f.path)
    return files, skipped, split_layout


def _scandir(folder: Path) -> list[os.DirEntry]:
    try:
        return list(os.scandir(folder))
    except OSError as error:
        raise AelabError(f"cannot read the folder {folder} ({error.strerror}); check its permissions") from None


def _is_dir(entry: os.DirEntry) -> bool:
    try:
        return entry.is_dir()
    except OSError:
        return False


# --- headers: size and colour of each file, remembered by (path, size, mtime) -----------------------

def _headers(root: Path, where: Path, files: list[FileInfo]) -> dict[str, list | str]:
    """(height, width, colour) or the reason it is unusable, for each file."""
    index_path = where / "headers.json"
    try:
        known = json.loads(index_path.read_text())
        known = known["files"] if known.get("format") == FORMAT else {}
    except (OSError, ValueError, KeyError, AttributeError):
        known = {}
    out: dict[str, list | str] = {}
    todo = []
    for f in files:
        entry = known.get(f.path)
        if entry is not None and entry[:2] == [f.size, f.mtime_ns]:
            out[f.path] = entry[2] if len(entry) == 3 else entry[2:]
        else:
            todo.append(f.path)
    if todo:
        found = _parallel(decode.headers_job, [(str(root), chunk) for chunk in _chunks(todo)], len(todo),
                          "reading image headers", lambda args: len(args[1]))
        for path, result in zip(todo, found):
            out[path] = result if isinstance(result, str) else list(result)
    if todo or len(known) != len(files):
        index = {f.path: [f.size, f.mtime_ns, out[f.path]] if isinstance(out[f.path], str)
                 else [f.size, f.mtime_ns, *out[f.path]] for f in files}
        atomic_write_text(index_path, json.dumps({"format": FORMAT, "files": index}))
    return out


# --- the decoded images -------------------------------------------------------------------------

def _decoded(root: Path, where: Path, good: list[FileInfo], channels: int, size: tuple[int, int],
             resize: str, largest: int = 0) -> tuple[Path, list[list]]:
    """The .npy of the decoded images (one row per file of ``good``, in order) and its manifest rows
    [path, size, mtime_ns, hash or "!reason"], reusing the rows of files that did not change
    (``largest``: the most pixels of a picture among them, for the memory decoding takes).

    A new .npy gets a new name and the manifest (written last, atomically) names it, so a crash at
    any point leaves the old cache whole; a process still reading the old file keeps reading it.
    """
    name = f"images-{channels}x{size[0]}x{size[1]}-{resize}"
    manifest_path = where / f"{name}.json"
    old_rows: list[list] = []
    old_file: Path | None = None
    try:
        manifest = json.loads(manifest_path.read_text())
        if manifest.get("format") == FORMAT and (where / manifest["file"]).is_file():
            old_rows, old_file = manifest["rows"], where / manifest["file"]
    except (OSError, ValueError, KeyError, AttributeError, TypeError):
        pass
    for stale in where.glob(f"{name}-*.npy"):  # left by a build that did not finish
        if stale != old_file:
            stale.unlink(missing_ok=True)
    wanted = [[f.path, f.size, f.mtime_ns] for f in good]
    if old_file is not None and [row[:3] for row in old_rows] == wanted:
        return old_file, old_rows  # nothing changed
    old = {row[0]: (position, row) for position, row in enumerate(old_rows)}
    rows, reuse, todo = [], [], []
    for position, entry in enumerate(wanted):
        before = old.get(entry[0])
        if before is not None and before[1][:3] == entry:
            rows.append(before[1])
            reuse.append((position, before[0]))
        else:
            rows.append(entry + [""])
            todo.append((position, entry[0]))
    what = f"{len(todo)} new or changed images" if old_rows else f"{len(todo)} images"
    chunks = _chunks(todo)
    workers = _workers(len(chunks), len(todo), memory.decoding_bytes(largest, 1))
    held = memory.decoding_bytes(largest, workers)
    log.info("decoding %s of %s into the cache %s (once; later runs reuse it%s)", what, root, where,
             f"; about {memory.size_text(held)} of memory while decoding" if held > DECODING_SAID else "")
    images_path = where / f"{name}-{os.urandom(4).hex()}.npy"
    with atomic_path(images_path) as tmp:
        with ImageFileWriter(tmp, shape=(len(rows), channels, *size)) as out:  # (closed before the workers write)
            if reuse:
                with MappedImages(old_file) as previous:
                    for start in range(0, len(reuse), 4096):
                        part = np.array(reuse[start: start + 4096], dtype=np.int64)
                        out.write_rows(part[:, 0], previous.read_rows(part[:, 1]))
        if todo:
            job_args = [(str(root), str(tmp), chunk, channels, size[0], size[1], resize) for chunk in chunks]
            results = _parallel(decode.decode_job, job_args, len(todo), "decoding images", lambda args: len(args[2]),
                                workers)
            for (position, _), result in zip(todo, results):
                rows[position][3] = result
    atomic_write_text(manifest_path, json.dumps({"format": FORMAT, "file": images_path.name, "rows": rows}))
    if old_file is not None:
        old_file.unlink(missing_ok=True)
    return images_path, rows


def _chunks(items: list, parts_per_worker: int = 8) -> list[list]:
    workers = os.cpu_count() or 1
    size = max(16, min(1024, -(-len(items) // (workers * parts_per_worker))))
    return [items[i: i + size] for i in range(0, len(items), size)]


def _workers(jobs: int, files: int, each: int = 0) -> int:
    """How many processes work through ``jobs`` jobs of ``files`` files in all: this one alone under
    ``PARALLEL_FROM`` files, else one a core, but no more than the machine's available memory holds
    when each takes ``each`` bytes (decoding big pictures)."""
    if files < PARALLEL_FROM:
        return 1
    held = memory.available() // each if each else jobs
    return max(1, min(os.cpu_count() or 1, jobs, held))


def _parallel(function: Callable, jobs: list[tuple], total: int, what: str, count: Callable,
              workers: int | None = None) -> list:
    """``function(*job)`` for each job (each returns a list), over ``workers`` processes (default:
    ``_workers``), with a progress bar; the results joined in job order."""
    from tqdm.auto import tqdm

    workers = workers or _workers(len(jobs), total)
    quiet = not log.isEnabledFor(logging.INFO)
    with tqdm(total=total, desc=what, unit="img", disable=True if quiet else None, leave=False) as bar:
        if workers < 2:
            results = []
            for job in jobs:
                results.append(function(*job))
                bar.update(count(job))
        else:
            with ProcessPoolExecutor(workers) as pool:
                futures = [pool.submit(function, *job) for job in jobs]
                results = []
                for job, future in zip(jobs, futures):
                    results.append(future.result())
                    bar.update(count(job))
    return [item for part in results for item in part]
