"""ImageSet: a set of uint8 images (in memory or on disk) with labels, and the seeded splits of a
source (a named dataset, an array file, a folder) into train, val and test."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from dataclasses import dataclass, field, replace
from typing import Iterator

import numpy as np
import torch

from ..config import DataConfig, memory_budget, source_place
from .. import distributed
from ..errors import AelabError
from ..memory import size_text
from . import sources
from .arrays import read_array_file
from .batches import to_unit
from .mapped import MappedImages

log = logging.getLogger("aelab")

SPLITS = ("train", "val", "test")
ALL = "all"  # every image of a folder or an array file, in its order (to score or encode new images)


@dataclass
class Source:
    """How a set's images were made: shared by the splits of one source."""

    kind: str  # named | array | folder
    fingerprint: str | None = None  # of the decoded images (a folder, an array file); None for a named dataset
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason): files that are not usable images
    on_disk: bool = False  # the images are read from the cache batch by batch (larger than `data.memory_limit`)
    splits: np.ndarray | None = None  # a folder with train/ test/ subfolders: each image's split
    root: Path | None = None  # a folder: where it is


@dataclass
class ImageSet:
    """Images as uint8 with their labels: in memory (a tensor), or on disk (``MappedImages``, for a
    folder larger than the memory budget); either gives tensors when indexed.

    ``indices`` are the positions of the images in what they came from (the 60,000 training images
    or the 10,000 test images of a named dataset, the array file, the folder's files in path order),
    so a row of any table can be traced back; ``paths`` are the files' paths for a folder.

    A set on disk holds its cache file open, shared with the sets split from it: ``close()`` (or a
    ``with`` block) closes it for all of them when they are no longer needed; a set in memory has
    nothing to close.
    """

    images: torch.Tensor | MappedImages  # uint8 [N, C, H, W]
    labels: torch.Tensor  # int64 [N]; -1: unlabelled
    indices: torch.Tensor  # int64 [N]
    class_names: tuple[str, ...]
    paths: np.ndarray | None = None  # str [N], relative to the folder
    source: Source | None = None

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.dim() != 4:
            raise AelabError(f"images must be a uint8 tensor [N, C, H, W], got {self.images.dtype} {tuple(self.images.shape)}")
        if not (len(self.images) == len(self.labels) == len(self.indices)):
            raise AelabError("images, labels and indices must have the same length")

    def __len__(self) -> int:
        return len(self.images)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.images.shape[1:])  # type: ignore[return-value]

    @property
    def on_disk(self) -> bool:
        return isinstance(self.images, MappedImages)

    def close(self) -> None:
        """Close the cache file of a set on disk (and of every set split from the same source); a
        set in memory is unchanged. Closing twice does nothing."""
        if self.on_disk:
            self.images.close()

    def __enter__(self) -> "ImageSet":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def subset(self, positions: torch.Tensor) -> "ImageSet":
        images = self.images.subset(positions) if self.on_disk else self.images[positions]
        paths = None if self.paths is None else self.paths[np.asarray(positions)]
        return ImageSet(images, self.labels[positions], self.indices[positions], self.class_names, paths, self.source)

    def in_memory(self) -> "ImageSet":
        """The same set with its images in memory."""
        return replace(self, images=self.images.load()) if self.on_disk else self

    def chunks(self, max_bytes: int = 16 * 2**20) -> Iterator[torch.Tensor]:
        """The uint8 images in order, about ``max_bytes`` at a time."""
        size = max(1, max_bytes // max(1, int(np.prod(self.image_shape))))
        for start in range(0, len(self), size):
            yield self.images[start: start + size]

    def hash_into(self, digest) -> None:
        """Feed the images (chunk by chunk: the same as the whole array at once) and labels to a hashlib digest."""
        for chunk in self.chunks():
            digest.update(chunk.contiguous().numpy())
        digest.update(self.labels.numpy().tobytes())

    def floats(self, device: torch.device | str = "cpu") -> torch.Tensor:
        """All images as float32 in [0, 1] on ``device``: [N, C, H, W]."""
        return to_unit(self.images[:], device)

    @classmethod
    def from_arrays(cls, images: np.ndarray | torch.Tensor, labels=None, class_names=None) -> "ImageSet":
        """Build from uint8 images [N, H, W] or [N, C, H, W] and integer labels (None: unlabelled, -1)."""
        images = torch.as_tensor(np.asarray(images))
        if images.dim() == 3:
            images = images.unsqueeze(1)
        if labels is None:
            labels = np.full(len(images), -1)  # (no class names: the range below is empty)
        labels = torch.as_tensor(np.asarray(labels), dtype=torch.int64)
        names = tuple(class_names) if class_names else tuple(str(i) for i in range(int(labels.max()) + 1 if len(labels) else 0))
        return cls(images.to(torch.uint8).contiguous(), labels, torch.arange(len(labels)), names)


FEW_TEST_IMAGES = 20  # a test split of fewer images than this gives numbers too few to trust (said, with the fix)


def few_test_images(test: ImageSet, data: DataConfig) -> str | None:
    """A note when the test split holds fewer than ``FEW_TEST_IMAGES`` images: how many, that its
    numbers are too few to trust, and the setting that holds out more; None otherwise."""
    if len(test) >= FEW_TEST_IMAGES:
        return None
    count = f"{len(test)} image{'s' if len(test) != 1 else ''}"
    if test.source is not None and test.source.splits is not None:  # a folder with test/: its own images
        fix = f"put more images in {test.source.root / 'test'}"
    else:
        fix = (f"a larger --test-fraction (data.test_fraction, now {data.test_fraction:g}; such as 0.3) holds out "
               "more, or give more images")
    return f"the test split holds {count}: too few to trust its numbers (aim for {FEW_TEST_IMAGES} or more); {fix}"


def close_sets(*sets: ImageSet | dict[str, ImageSet] | None) -> None:
    """Close image sets (or dicts of them, as ``load_splits`` gives; None is passed over) that are
    no longer needed: the cache files of sets on disk are closed."""
    for item in sets:
        for part in (item.values() if isinstance(item, dict) else (item,)):
            if part is not None:
                part.close()


def load_file_set(data: DataConfig, train: bool) -> ImageSet:
    """A named dataset's 60,000 training (``train=True``) or 10,000 test images, fetched and verified first."""
    folder = sources.fetch(data.dataset, data.data_dir)
    prefix = "train" if train else "t10k"
    images = sources.read_idx(folder / f"{prefix}-images-idx3-ubyte")
    labels = sources.read_idx(folder / f"{prefix}-labels-idx1-ubyte")
    full = ImageSet.from_arrays(images, labels, sources.DATASETS[data.dataset].class_names)
    full = _conformed(full, data)
    full.source = Source("named")
    return full


def part_size(total: int, fraction: float) -> int:
    """The images ``split_off`` takes for ``fraction`` of ``total``."""
    return int(round(total * fraction))


def split_sizes(files: int, data: DataConfig, counts: dict[str, int] | None = None) -> tuple[int, int]:
    """(training images, test images) the splits of ``files`` images will hold, known before they are
    read: a folder's train/ and test/ (``counts`` of train, val, test), less the validation share
    where it has no val/; else the fractions of ``data`` (as ``load_splits`` splits; ``data.classes``
    not applied: at most these)."""
    if counts:
        return counts["train"] - (0 if counts["val"] else part_size(counts["train"], data.val_fraction)), counts["test"]
    test = part_size(files, data.test_fraction)
    return files - test - part_size(files - test, data.val_fraction), test


def split_off(full: ImageSet, fraction: float, seed: int, name: str = "val_fraction",
              sort: bool = False) -> tuple[ImageSet, ImageSet]:
    """A seeded random split into the rest and ``fraction`` of the images: the same fraction and
    seed always give the same two sets (with ``sort``, each in its original order)."""
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(full), generator=generator)
    n_part = part_size(len(full), fraction)
    if n_part < 1 or n_part >= len(full):
        raise AelabError(f"`data.{name}` {fraction} of {len(full)} images leaves none on one side of the split; "
                         "try 0.2 (or give more images)")
    rest, part = order[: len(full) - n_part], order[len(full) - n_part:]
    if sort:
        rest, part = rest.sort().values, part.sort().values
    return full.subset(rest), full.subset(part)


def split_train_val(full: ImageSet, val_fraction: float, seed: int, sort: bool = False) -> tuple[ImageSet, ImageSet]:
    """The training images and the validation images (``val_fraction`` of them, seeded)."""
    return split_off(full, val_fraction, seed, sort=sort)


def load_splits(data: DataConfig, training: bool = False) -> dict[str, ImageSet]:
    """All three splits (``training``: for training, with a dynamically binarised run's training
    images left grey; see ``binarized``).

    - A named dataset: its training file split into train and val, its test file.
    - An array file: ``data.test_fraction`` of its images for test, then ``data.val_fraction`` of
      the rest for val (both seeded by ``data.split_seed``).
    - A folder: its train/ val/ test/ subfolders where it has them (val, if missing, split off
      train); otherwise seeded fractions as for an array file, each split in path order. Read from
      the folder's cache: in memory, or batch by batch from disk when the cache is larger than
      ``data.memory_limit``.

    ``data.channels`` and ``data.image_size`` (with ``data.resize``) convert every source's images.
    """
    kind = data.kind()
    if kind == "folder":
        parts = _folder_splits(data)
        try:
            return _binarized_splits(_only_classes(parts, data), data, training)
        except BaseException:
            close_sets(parts)
            raise
    if kind == "array":
        rest, test = split_off(_array_set(data), data.test_fraction, data.split_seed, "test_fraction")
    else:
        rest, test = load_file_set(data, train=True), load_file_set(data, train=False)
    train, val = split_train_val(rest, data.val_fraction, data.split_seed)
    return _binarized_splits(_only_classes({"train": train, "val": val, "test": test}, data), data, training)


def _binarized_splits(splits: dict[str, ImageSet], data: DataConfig, training: bool) -> dict[str, ImageSet]:
    return {name: binarized(part, data, name, training) for name, part in splits.items()}


def class_labels(names: list[str], class_names: tuple[str, ...], what: str = "`data.classes`") -> list[int]:
    """Labels of classes given by name or by number ("3", "cat"); an AelabError names any unknown one."""
    labels = []
    for name in names:
        if name in class_names:
            labels.append(class_names.index(name))
        elif name.lstrip("-").isdigit() and 0 <= int(name) < len(class_names):
            labels.append(int(name))
        else:
            known = ", ".join(class_names) if class_names else "none: the images are unlabelled"
            raise AelabError(f"{what} names {name!r}, which is not a class of these images (classes: {known}); "
                             "choose among those")
    return sorted(set(labels))


BINARIZE_SEED = 91_2016  # the seed of every split drawn once (with data.split_seed), whatever the run's seed


def binarized(part: ImageSet, data: DataConfig, split: str, training: bool = False) -> ImageSet:
    """``part`` (the split ``split``) with its pixels 0 or 255 as ``data.binarize`` says: threshold,
    pixel > 127 (x > 0.5); static and dynamic, one Bernoulli draw of each pixel (its grey level the
    probability), seeded by ``data.split_seed`` and the split's name; but for ``training`` a dynamic
    run's training images stay grey (training draws them anew every epoch); None: as it is."""
    mode = data.binarize
    if mode is None or (mode == "dynamic" and split == "train" and training):
        return part
    if part.on_disk:
        raise AelabError(f"`data.binarize` {mode} needs the images in memory, and these are read from disk; raise "
                         "`data.memory_limit`, or leave `data.binarize` out")
    if mode == "threshold":
        pixels = (part.images > 127).to(torch.uint8) * 255
    else:
        seed = BINARIZE_SEED + data.split_seed * 1_000_003 + sum(map(ord, split))
        generator = torch.Generator().manual_seed(seed)
        chunks = [(torch.rand(chunk.shape, generator=generator) * 255 < chunk).to(torch.uint8) * 255
                  for chunk in part.images.split(8192)]
        pixels = torch.cat(chunks) if chunks else part.images
    return replace(part, images=pixels)


def _only_classes(splits: dict[str, ImageSet], data: DataConfig) -> dict[str, ImageSet]:
    """With ``data.classes``: train and validation keep those classes only (one-class training);
    the test split keeps every image, to be scored."""
    if not data.classes:
        return splits
    keep = torch.tensor(class_labels(data.class_list(), splits["train"].class_names))
    out = dict(splits)
    for name in ("train", "val"):
        part = splits[name]
        out[name] = part.subset(torch.isin(part.labels, keep).nonzero().flatten())
        if len(out[name]) == 0:
            raise AelabError(f"the {name} split holds no image of `data.classes` {data.classes}; choose classes "
                             "that the data have")
    return out


def load_split(data: DataConfig, split: str) -> ImageSet:
    """One split: ``train``, ``val`` or ``test``; or ``all``: every image of a folder or an array file."""
    if split == ALL:
        if data.kind() == "named":
            raise AelabError(f"`split` all means every image of a folder or a file; {data.dataset} comes as train and "
                             "test files: choose train, val or test")
        if data.kind() == "folder":
            found = _folder_set(data)
            if found.source.on_disk:
                return binarized(found, data, ALL)
            with found:
                return binarized(found.in_memory(), data, ALL)
        return binarized(_array_set(data), data, ALL)
    if split not in SPLITS:
        raise AelabError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)} or {ALL}")
    if split == "test" and data.kind() == "named":
        return binarized(load_file_set(data, train=False), data, "test")  # (the training file is not needed)
    return load_splits(data)[split]


def _array_set(data: DataConfig) -> ImageSet:
    images, labels = read_array_file(data.dataset)
    full = _conformed(ImageSet.from_arrays(images, labels), data)
    full.source = Source("array", fingerprint=_fingerprint(full))
    return full


def _folder_set(data: DataConfig) -> ImageSet:
    """Every image of a folder, on disk (its cache), with its split folder in ``source.splits``."""
    from .folders import load_folder

    found = load_folder(data.dataset, sources.resolve_data_dir(data.data_dir), data.channels, data.size(), data.resize)
    # the limit is the machine's: under torchrun its processes share it (each of them holds the training set)
    processes = distributed.local_size()
    budget = memory_budget(data.memory_limit) // processes
    on_disk = found.images.nbytes > budget
    if on_disk:
        each = f" for each of the {processes} processes on this machine" if processes > 1 else ""
        log.info("the images (%s) are larger than the memory limit (%s%s): read from the cache on disk batch by batch",
                 size_text(found.images.nbytes), size_text(budget), each)
    source = Source("folder", found.fingerprint, found.skipped, on_disk, found.splits, found.root)
    return ImageSet(found.images, torch.as_tensor(found.labels), torch.arange(len(found.labels)), found.class_names,
                    found.paths, source)


def _folder_splits(data: DataConfig) -> dict[str, ImageSet]:
    full = _folder_set(data)
    try:
        parts = _split_folder_set(full, data)
        if full.source.on_disk:
            return parts
        parts = {name: part.in_memory() for name, part in parts.items()}
    except BaseException:
        full.close()
        raise
    full.close()  # (in memory now: the cache file is no longer needed)
    return parts


def _split_folder_set(full: ImageSet, data: DataConfig) -> dict[str, ImageSet]:
    found = full.source
    if found.splits is not None:
        parts = {name: full.subset(torch.as_tensor(np.flatnonzero(found.splits == name))) for name in SPLITS}
        if len(parts["val"]) == 0:
            parts["train"], parts["val"] = split_train_val(parts["train"], data.val_fraction, data.split_seed, sort=True)
        for name in ("train", "test"):
            if len(parts[name]) == 0:
                raise AelabError(f"{found.root / name} holds no usable image; put images in it (or use a folder "
                                 "without train/ and test/ subfolders, split by `data.test_fraction`)")
    else:
        rest, test = split_off(full, data.test_fraction, data.split_seed, "test_fraction", sort=True)
        train, val = split_train_val(rest, data.val_fraction, data.split_seed, sort=True)
        parts = {"train": train, "val": val, "test": test}
    return parts


def _conformed(full: ImageSet, data: DataConfig) -> ImageSet:
    """A set in memory with the channel count and size ``data`` asks for (converted as a folder's files are)."""
    channels, size = data.channels, data.size()
    c, h, w = full.image_shape
    if (channels in (None, c)) and (size in (None, (h, w))):
        return full
    from PIL import Image

    from .decode import conform

    channels, (height, width) = channels or c, size or (h, w)
    log.info("converting %d images of %dx%dx%d to %dx%dx%d (%s)", len(full), c, h, w, channels, height, width,
             data.resize)
    pixels = full.images.numpy()
    out = np.stack([conform(Image.fromarray(image[0] if c == 1 else image.transpose(1, 2, 0)), channels, height,
                            width, data.resize) for image in pixels])
    return replace(full, images=torch.from_numpy(out))


def _fingerprint(full: ImageSet) -> str:
    digest = hashlib.blake2b(digest_size=12)
    full.hash_into(digest)
    return digest.hexdigest()


def data_for_run(config, dataset: str | None = None, data_dir: str | None = None,
                 memory_limit: str | None = None) -> DataConfig:
    """A run's data settings (``config`` a RunConfig) with ``dataset`` (another copy of its data, or
    new images), ``data_dir`` and ``memory_limit`` replaced where given. Images are prepared as the
    training images were: the run's channel count and size (from its model, for runs that did not
    record them), so they fit the model."""
    model = config.model
    changes = {"channels": config.data.channels or model.in_channels,
               "image_size": config.data.image_size or f"{model.image_size}x{model.image_width or model.image_size}"}
    for name, value in (("dataset", dataset), ("data_dir", data_dir), ("memory_limit", memory_limit)):
        if value:
            changes[name] = value
    data = replace(config.data, **changes)
    data.validate()
    return data


def load_run_split(config, data: DataConfig, split: str) -> ImageSet:
    """One split of ``data`` (from ``data_for_run``) for a run with RunConfig ``config``."""
    return load_run_splits(config, data, (split,))[split]


def load_run_splits(config, data: DataConfig, names: tuple[str, ...] = SPLITS) -> dict[str, ImageSet]:
    """The splits ``names`` of ``data`` (from ``data_for_run``) for a run with RunConfig ``config``;
    says whether the images are the ones the run was trained on when its source is another."""
    parts = {names[0]: load_split(data, names[0])} if len(names) == 1 else load_splits(data)
    part = parts[names[0]]
    trained, now = config.data.fingerprint, part.source.fingerprint if part.source is not None else None
    if source_place(data.dataset) != source_place(config.data.dataset) and trained and now:
        if trained == now:
            log.info("%s holds the images the run was trained on (fingerprint %s)", data.dataset, now)
        else:
            log.warning("%s holds other images than the run was trained on (fingerprint %s, not %s); its splits "
                        "are made the same way", data.dataset, now, trained)
    return {name: parts[name] for name in names}
