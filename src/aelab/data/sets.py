"""ImageSet: a whole dataset in memory as uint8, and the seeded train/validation split."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..config import DataConfig
from ..errors import AelabError
from . import sources
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
    def from_arrays(cls, images: np.ndarray | torch.Tensor, labels, class_names=None) -> "ImageSet":
        """Build from uint8 images [N, H, W] or [N, C, H, W] and integer labels."""
        images = torch.as_tensor(np.asarray(images))
        if images.dim() == 3:
            images = images.unsqueeze(1)
        labels = torch.as_tensor(np.asarray(labels), dtype=torch.int64)
        names = tuple(class_names) if class_names else tuple(str(i) for i in range(int(labels.max()) + 1 if len(labels) else 0))
        return cls(images.to(torch.uint8).contiguous(), labels, torch.arange(len(labels)), names)


def load_file_set(data: DataConfig, train: bool) -> ImageSet:
    """The 60,000 training (``train=True``) or 10,000 test images, fetched and verified first."""
    folder = sources.fetch(data.dataset, data.data_dir)
    prefix = "train" if train else "t10k"
    images = sources.read_idx(folder / f"{prefix}-images-idx3-ubyte")
    labels = sources.read_idx(folder / f"{prefix}-labels-idx1-ubyte")
    return ImageSet.from_arrays(images, labels, sources.DATASETS[data.dataset].class_names)


def split_train_val(full: ImageSet, val_fraction: float, seed: int) -> tuple[ImageSet, ImageSet]:
    """A seeded random split: the same fraction and seed always give the same two sets."""
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(full), generator=generator)
    n_val = int(round(len(full) * val_fraction))
    if n_val < 1 or n_val >= len(full):
        raise AelabError(f"`data.val_fraction` {val_fraction} leaves no images for training or validation; try 0.2")
    return full.subset(order[: len(full) - n_val]), full.subset(order[len(full) - n_val:])


def load_split(data: DataConfig, split: str) -> ImageSet:
    """One split: ``train`` or ``val`` (from the training file) or ``test``."""
    if split not in SPLITS:
        raise AelabError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    if split == "test":
        return load_file_set(data, train=False)
    train, val = split_train_val(load_file_set(data, train=True), data.val_fraction, data.split_seed)
    return train if split == "train" else val


def load_splits(data: DataConfig) -> dict[str, ImageSet]:
    """All three splits, reading each file once."""
    train, val = split_train_val(load_file_set(data, train=True), data.val_fraction, data.split_seed)
    return {"train": train, "val": val, "test": load_file_set(data, train=False)}
