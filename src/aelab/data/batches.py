"""From uint8 images to the float batches the model sees: the one place that converts pixels.

``to_unit`` turns uint8 images into floats in [0, 1]; ``add_noise`` makes a denoising input;
``Batches`` slices training batches by index from a device-resident uint8 tensor (no per-sample
Python), or reads them from a cache on disk ahead of the step, in an order that depends on
(seed, epoch) only: the same batches either way.
"""

from __future__ import annotations

import functools
import itertools
import math
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Iterator

import torch

from .mapped import MappedImages


def to_unit(images: torch.Tensor, device: torch.device | str | None = None) -> torch.Tensor:
    """uint8 images [N, C, H, W] -> float32 in [0, 1] (on ``device``, default: where they are)."""
    return images.to(device if device is not None else images.device).float().div_(255)


def noise_generator(seed: int, device: torch.device | str) -> torch.Generator:
    """The generator of a denoising run's input noise (seeded, on the images' device)."""
    return torch.Generator(device=device).manual_seed(seed)


def add_noise(images: torch.Tensor, noise_factor: float, generator: torch.Generator | None = None,
              rows: tuple[int, int] | None = None) -> torch.Tensor:
    """Gaussian noise times ``noise_factor`` added to images in [0, 1], clipped back to [0, 1].

    ``rows`` (first, batch): ``images`` are rows first, first + 1, ... of a batch of ``batch``
    images; the whole batch's noise is drawn (the generator moves on as for the whole batch) and
    those rows of it added, so a rank's slice gets the noise the whole batch would give it.
    """
    first, batch = rows if rows is not None else (0, len(images))
    noise = torch.randn((batch, *images.shape[1:]), generator=generator, device=images.device, dtype=images.dtype)
    return (images + noise_factor * noise[first: first + len(images)]).clamp_(0.0, 1.0)


def binarize_draw(images: torch.Tensor, generator: torch.Generator, rows: tuple[int, int] | None = None) -> torch.Tensor:
    """Images in [0, 1] as one Bernoulli draw of each pixel (its grey level the probability): 0 or 1.
    ``rows`` (first, batch) as for ``add_noise``: the whole batch's draws are made, those rows used."""
    first, batch = rows if rows is not None else (0, len(images))
    uniform = torch.rand((batch, *images.shape[1:]), generator=generator, device=images.device, dtype=images.dtype)
    return (uniform[first: first + len(images)] < images).to(images.dtype)


def augment_draw(images: torch.Tensor, generator: torch.Generator, names: list[str],
                 rows: tuple[int, int] | None = None) -> torch.Tensor:
    """Images [B, C, H, W] in [0, 1] changed as ``names`` say: "flip", half of them mirrored left to
    right; "shift", each moved by a whole number of pixels, up to 1/16 of its size each way (edges
    reflected); "turn", each turned by a whole number of quarter turns (half turns for pictures that
    are not square); "colour", the three channels of each colour picture put in one of their six
    orders (grey pictures as they are). Every change maps pixels to pixels (nothing is interpolated).
    ``rows`` (first, batch) as for ``add_noise``: the whole batch's draws are made, those rows used."""
    import torch.nn.functional as F

    first, batch = rows if rows is not None else (0, len(images))
    height, width = images.shape[-2:]
    device = images.device

    def drawn(values: torch.Tensor) -> torch.Tensor:  # (the rows of the whole batch's draws)
        return values[first: first + len(images)]

    flips = drawn(torch.rand(batch, generator=generator, device=device)) < 0.5
    most = (max(1, height // 16), max(1, width // 16))
    moves = drawn(torch.stack([torch.randint(-m, m + 1, (batch,), generator=generator, device=device) for m in most], 1))
    moves = moves.to(images.dtype)
    theta = torch.zeros(len(images), 2, 3, device=device, dtype=images.dtype)
    theta[:, 0, 0] = torch.where(flips, -1.0, 1.0) if "flip" in names else 1.0
    theta[:, 1, 1] = 1.0
    if "turn" in names:  # (drawn only when asked: runs saved before draw what they drew)
        step = 1 if height == width else 2  # (a quarter turn of a picture that is not square would stretch it)
        angle = drawn(torch.randint(0, 4 // step, (batch,), generator=generator, device=device)) * step * (math.pi / 2)
        cos, sin = torch.cos(angle).round().to(images.dtype), torch.sin(angle).round().to(images.dtype)
        turn = torch.stack([torch.stack([cos, -sin], 1), torch.stack([sin, cos], 1)], 1)  # [B, 2, 2]
        theta[:, :, :2] = turn @ theta[:, :, :2]
    if "shift" in names:
        theta[:, 0, 2], theta[:, 1, 2] = 2 * moves[:, 1] / width, 2 * moves[:, 0] / height
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    changed = F.grid_sample(images, grid, mode="nearest", padding_mode="reflection", align_corners=False)
    if "colour" in names:
        orders = drawn(torch.randint(0, len(CHANNEL_ORDERS), (batch,), generator=generator, device=device))
        if images.shape[1] == 3:
            index = channel_orders(device)[orders][:, :, None, None].expand_as(changed)
            changed = changed.gather(1, index)
    return changed


CHANNEL_ORDERS = list(itertools.permutations(range(3)))  # the six orders of a colour picture's channels


@functools.lru_cache(maxsize=None)
def channel_orders(device: torch.device) -> torch.Tensor:
    """``CHANNEL_ORDERS`` as a tensor on ``device`` (made once per device)."""
    return torch.tensor(CHANNEL_ORDERS, device=device)


def latent_draws(shape: tuple[int, ...] | None, batch: int, generator: torch.Generator | None,
                 device: torch.device | str, rows: tuple[int, int] | None = None) -> torch.Tensor | None:
    """Standard normal draws a model takes per image (``model.draw_shape``: a variational model's
    reparameterisation noise), for a batch of ``batch`` images: [batch, *shape], or with ``rows``
    (first, last) those rows of the whole batch's draws (the generator moves on as for the whole
    batch, so a shard or a rank gets the draws the whole batch would give it). None for a model
    that draws nothing."""
    if shape is None:
        return None
    draws = torch.randn((batch, *shape), generator=generator, device=device)
    return draws if rows is None else draws[rows[0]: rows[1]]


def epoch_order(n: int, seed: int, epoch: int, shuffle: bool) -> torch.Tensor:
    """The order of the ``n`` training images in ``epoch``: a function of (seed, epoch) only,

    so a resumed run sees exactly the order the uninterrupted run would have seen.
    """
    if not shuffle:
        return torch.arange(n)
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=generator)


class Batches:
    """Float batches in [0, 1] made from uint8 images: a tensor moved to ``device`` once, or images
    on disk (``MappedImages``), each batch read on a thread while the step before it trains.

    ``part`` (k, n): this process trains the k-th of n slices of every batch (a rank under
    torchrun); ``indices`` still gives the whole batch (the same on every rank), ``gather`` and the
    read-ahead only this slice's images.
    """

    def __init__(self, images: torch.Tensor | MappedImages, batch_size: int, device: torch.device | str,
                 part: tuple[int, int] = (0, 1), labels: torch.Tensor | None = None):
        self.resident = torch.is_tensor(images)
        self.images = images.to(device) if self.resident else images  # uint8 [N, C, H, W]
        self.labels = labels.to(device) if labels is not None else None  # int64 [N]: for a conditional model
        self.batch_size = batch_size
        self.device = torch.device(device)
        self.part = part
        self._ahead: tuple[torch.Tensor, Future] | None = None

    def rows(self, n: int) -> tuple[int, int]:
        """(first, last): this process's slice of a batch of ``n`` images."""
        k, parts = self.part
        return n * k // parts, n * (k + 1) // parts

    def __len__(self) -> int:
        return -(-len(self.images) // self.batch_size)

    def indices(self, seed: int, epoch: int, shuffle: bool, start: int = 0) -> Iterator[torch.Tensor]:
        """The image indices of each batch of ``epoch`` (on the device), from batch number ``start`` on."""
        order = epoch_order(len(self.images), seed, epoch, shuffle)
        if self.resident:
            order = order.to(self.device)
        batches = [order[first: first + self.batch_size]
                   for first in range(start * self.batch_size, len(order), self.batch_size)]
        if self.resident:
            yield from batches
            return
        def read(index: torch.Tensor) -> torch.Tensor:
            first, last = self.rows(len(index))
            return self.images[index[first:last]]

        with ThreadPoolExecutor(1, thread_name_prefix="aelab-read-ahead") as reader:
            coming = reader.submit(read, batches[0]) if batches else None
            for number, index in enumerate(batches):
                self._ahead = (index, coming)
                coming = reader.submit(read, batches[number + 1]) if number + 1 < len(batches) else None
                yield index
            self._ahead = None

    def gather(self, index: torch.Tensor) -> torch.Tensor:
        """The images of this process's slice of the batch ``index`` (all of it outside torchrun) as
        floats in [0, 1], [B, C, H, W]."""
        if self._ahead is not None and self._ahead[0] is index:
            return to_unit(self._ahead[1].result(), self.device)
        first, last = self.rows(len(index))
        if self.resident:
            return to_unit(self.images[index[first:last]])
        return to_unit(self.images[index[first:last].cpu()], self.device)

    def gather_labels(self, index: torch.Tensor) -> torch.Tensor | None:
        """The labels of this process's slice of the batch ``index`` (None without labels)."""
        if self.labels is None:
            return None
        first, last = self.rows(len(index))
        return self.labels[index[first:last].to(self.labels.device)]

    def epoch(self, seed: int, epoch: int, shuffle: bool, start: int = 0) -> Iterator[torch.Tensor]:
        """The batches of ``epoch``, from batch number ``start`` on (to resume mid-epoch)."""
        for index in self.indices(seed, epoch, shuffle, start):
            yield self.gather(index)
