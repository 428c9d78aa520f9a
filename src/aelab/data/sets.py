"""ImageSet: a whole dataset in memory as uint8, and the seeded splits of a source into train, val, test."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..config import DataConfig
from ..errors import AelabError
from . import sources
from .arrays import is_array_file, read_array_file
from .batches import to_unit

SPLITS = ("train", "val", "test")


@dataclass
class ImageSet:
    """Images held in memory as uint8 with their labels.

    ``indices`` are the positions of the images in the file they came from (the 60,000
    training images or the 10,000 test images), so a row of any table can be traced back.
    """

    images: torch.Tensor  # uint8 [N, C, H, W]
    labels: torch.Tensor  # int64 [N]
    indices: torch.Tensor  # int64 [N]
    class_names: tuple[str, ...]

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

    def subset(self, positions: torch.Tensor) -> "ImageSet":
        return ImageSet(self.images[positions], self.labels[positions], self.indices[positions], self.class_names)

    def floats(self, device: torch.device | str = "cpu") -> torch.Tensor:
        """All images as float32 in [0, 1] on ``device``: [N, C, H, W]."""
        return to_unit(self.images, device)

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


def load_file_set(data: DataConfig, train: bool) -> ImageSet:
    """A named dataset's 60,000 training (``train=True``) or 10,000 test images, fetched and verified first."""
    folder = sources.fetch(data.dataset, data.data_dir)
    prefix = "train" if train else "t10k"
    images = sources.read_idx(folder / f"{prefix}-images-idx3-ubyte")
    labels = sources.read_idx(folder / f"{prefix}-labels-idx1-ubyte")
    return ImageSet.from_arrays(images, labels, sources.DATASETS[data.dataset].class_names)


def split_off(full: ImageSet, fraction: float, seed: int, name: str = "val_fraction") -> tuple[ImageSet, ImageSet]:
    """A seeded random split into the rest and ``fraction`` of the images: the same fraction and
    seed always give the same two sets."""
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(full), generator=generator)
    n_part = int(round(len(full) * fraction))
    if n_part < 1 or n_part >= len(full):
        raise AelabError(f"`data.{name}` {fraction} of {len(full)} images leaves none on one side of the split; "
                         "try 0.2 (or give more images)")
    return full.subset(order[: len(full) - n_part]), full.subset(order[len(full) - n_part:])


def split_train_val(full: ImageSet, val_fraction: float, seed: int) -> tuple[ImageSet, ImageSet]:
    """The training images and the validation images (``val_fraction`` of them, seeded)."""
    return split_off(full, val_fraction, seed)


def load_splits(data: DataConfig) -> dict[str, ImageSet]:
    """All three splits. A named dataset: its training file split into train and val, its test file.
    An array file: ``data.test_fraction`` of its images for test, then ``data.val_fraction`` of the
    rest for val (both seeded by ``data.split_seed``)."""
    if is_array_file(data.dataset):
        images, labels = read_array_file(data.dataset)
        rest, test = split_off(ImageSet.from_arrays(images, labels), data.test_fraction, data.split_seed, "test_fraction")
    else:
        rest, test = load_file_set(data, train=True), load_file_set(data, train=False)
    train, val = split_train_val(rest, data.val_fraction, data.split_seed)
    return {"train": train, "val": val, "test": test}


def load_split(data: DataConfig, split: str) -> ImageSet:
    """One split: ``train``, ``val`` or ``test``."""
    if split not in SPLITS:
        raise AelabError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    if split == "test" and not is_array_file(data.dataset):
        return load_file_set(data, train=False)  # (the training file is not needed)
    return load_splits(data)[split]
