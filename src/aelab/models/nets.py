"""The networks: the tutorial's convolutional encoder and decoder, layer for layer and with its
attribute names; every family (``aelab.models.ae`` ...) builds on them.

A ``state_dict`` saved from the tutorial's own ``Encoder`` and ``Decoder`` loads into
``ConvAutoencoder.encoder`` / ``.decoder`` and gives the same outputs (within float rounding: the
transposed convolutions are computed another way on the CPU, see ``aelab.ops``), and the reverse.
Spatial sizes are computed from the input size (28 -> 14 -> 7 -> 3 for MNIST), not hard-coded.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import AelabError
from ..ops import ConvTranspose2d

WIDTH = 8  # the tutorial's first convolution width (doubled at each stage: 8, 16, 32)
HIDDEN = 128  # the tutorial's fully connected width


def last_padding(image_size: int, even_padding: bool = True) -> int:
    """The third convolution's padding along an axis: the tutorial's 0 where the size before it is
    odd (MNIST's 7), else 1. With 0 on an even size the last row would be left out by the encoder,
    and the decoder's matching output-padding row would hold its bias alone: a dead border in every
    reconstruction (seen on 64x64 images: 16 -> 7 -> 16). With 1 that row is computed.
    ``even_padding=False``: always 0, as runs saved before this rule were built (their config.json has
    no ``model.even_padding``, and they load that way)."""
    if not even_padding:
        return 0
    before = image_size
    for _ in range(2):
        before = (before - 1) // 2 + 1  # kernel 3, stride 2, padding 1
    return 0 if before % 2 else 1


def encoder_sizes(image_size: int, even_padding: bool = True) -> list[int]:
    """Size along one axis after each encoder convolution: [28, 14, 7, 3] for 28 pixels, [64, 32, 16, 8] for 64."""
    sizes = [image_size]
    for padding in (1, 1, last_padding(image_size, even_padding)):  # kernel 3, stride 2
        sizes.append((sizes[-1] + 2 * padding - 3) // 2 + 1)
    if sizes[-1] < 1:
        raise AelabError(f"images of {image_size} pixels are too small for this model; choose at least 16")
    return sizes


def _output_padding(size_in: int, size_out: int, padding: int) -> int:
    """The ConvTranspose2d output_padding (0 or 1) that maps size_in to size_out at stride 2."""
    extra = size_out - ((size_in - 1) * 2 - 2 * padding + 3)
    if extra not in (0, 1):
        raise AelabError(f"cannot decode {size_in} back to {size_out} pixels")
    return extra


def _shape(image_size: int, image_width: int | None, even_padding: bool) -> tuple[list[int], list[int]]:
    """Encoder sizes along the height and the width ([28, 14, 7, 3] each for 28x28)."""
    return encoder_sizes(image_size, even_padding), encoder_sizes(image_width or image_size, even_padding)


class Encoder(nn.Module):
    """Image [B, C, H, W] -> code [B, latent_dim]. H = ``image_size``, W = ``image_width`` (default: H)."""

    def __init__(self, latent_dim: int = 4, in_channels: int = 1, image_size: int = 28, *,
                 image_width: int | None = None, width: int = WIDTH, hidden: int = HIDDEN, even_padding: bool = True):
        super().__init__()
        heights, widths = _shape(image_size, image_width, even_padding)
        channels = (width, 2 * width, 4 * width)
        self.encoder_cnn = nn.Sequential(
            nn.Conv2d(in_channels, channels[0], 3, stride=2, padding=1),
            nn.ReLU(True),
            nn.Conv2d(channels[0], channels[1], 3, stride=2, padding=1),
            nn.BatchNorm2d(channels[1]),
            nn.ReLU(True),
            nn.Conv2d(channels[1], channels[2], 3, stride=2, padding=(last_padding(image_size, even_padding),
                                                                      last_padding(image_width or image_size, even_padding))),
            nn.ReLU(True),
        )
        self.flatten = nn.Flatten(start_dim=1)
        self.encoder_lin = nn.Sequential(
            nn.Linear(heights[-1] * widths[-1] * channels[2], hidden),
            nn.ReLU(True),
            nn.Linear(hidden, latent_dim),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.code(self.encoder_cnn(x))  # [B, latent_dim]

    def code(self, maps: torch.Tensor) -> torch.Tensor:
        """The code [B, latent_dim] of the convolutional feature maps (``encoder_cnn``'s output)."""
        x = self.flatten(maps)  # [B, 288] for MNIST's [B, 32, 3, 3]
        return self.encoder_lin(x)


class Decoder(nn.Module):
    """Code [B, latent_dim] -> image [B, C, H, W] in (0, 1); the encoder's mirror."""

    def __init__(self, latent_dim: int = 4, in_channels: int = 1, image_size: int = 28, *,
                 image_width: int | None = None, width: int = WIDTH, hidden: int = HIDDEN, even_padding: bool = True):
        super().__init__()
        heights, widths = _shape(image_size, image_width, even_padding)  # [28, 14, 7, 3] each for MNIST
        channels = (width, 2 * width, 4 * width)

        last = (last_padding(image_size, even_padding), last_padding(image_width or image_size, even_padding))

        def output_padding(stage: int, padding: tuple[int, int]) -> tuple[int, int]:
            return (_output_padding(heights[stage + 1], heights[stage], padding[0]),
                    _output_padding(widths[stage + 1], widths[stage], padding[1]))

        self.decoder_lin = nn.Sequential(
            nn.Linear(latent_dim, hidden),
            nn.ReLU(True),
            nn.Linear(hidden, heights[-1] * widths[-1] * channels[2]),
            nn.ReLU(True),
        )
        self.unflatten = nn.Unflatten(dim=1, unflattened_size=(channels[2], heights[-1], widths[-1]))
        self.decoder_conv = nn.Sequential(
            ConvTranspose2d(channels[2], channels[1], 3, stride=2, padding=last, output_padding=output_padding(2, last)),
            nn.BatchNorm2d(channels[1]),
            nn.ReLU(True),
            ConvTranspose2d(channels[1], channels[0], 3, stride=2, padding=1, output_padding=output_padding(1, (1, 1))),
            nn.BatchNorm2d(channels[0]),
            nn.ReLU(True),
            ConvTranspose2d(channels[0], in_channels, 3, stride=2, padding=1, output_padding=output_padding(0, (1, 1))),
        )

    def logits(self, z: torch.Tensor) -> torch.Tensor:
        """The output before the sigmoid (for a numerically stable BCE loss)."""
        x = self.decoder_lin(z)  # [B, 288] for MNIST
        x = self.unflatten(x)  # [B, 32, 3, 3]
        return self.decoder_conv(x)  # [B, C, 28, 28]

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.logits(z))


MAX_FEATURES = 1024  # encoder features an image gives at most (bigger maps are average-pooled: the anomaly score
# keeps two Gaussians of this size, 8 MB each at most in RUN/anomaly.safetensors)


def pooled(maps: torch.Tensor) -> torch.Tensor:
    """Feature maps [B, K, h, w] flattened to [B, F] (F <= ``MAX_FEATURES``: larger maps are
    average-pooled to fewer positions; MNIST's 32 x 3 x 3 = 288 values stay as they are)."""
    height, width = maps.shape[-2:]
    side = max(1, math.isqrt(MAX_FEATURES // maps.shape[1]))
    if height > side or width > side:
        maps = F.adaptive_avg_pool2d(maps, (min(height, side), min(width, side)))
    return maps.flatten(1)


# --- the deeper networks for the user's own images ------------------------------------------------

LARGEST_MAP = 8  # the deep encoder halves the image until its shorter side is at most this (64 -> 3 stages -> 8x8; a
# 4x4 map lost the detail PCA keeps: icons at 64x64, latent 64, test MSE 4x4 0.0109, 8x8 0.0096, PCA-64 0.0095;
# benchmarks/RESULTS.md)
MOST_CHANNELS = 256  # the widest stage


def stage_count(height: int, width: int | None = None) -> int:
    """How many stride-2 stages take an image down to a map of at most ``LARGEST_MAP``: 1 for 16
    pixels (8x8), 2 for 28 (7x7) and 32 (8x8), 3 for 64, 4 for 128 (the shorter side decides)."""
    side, stages = min(height, width or height), 0
    while side > LARGEST_MAP:
        side, stages = (side + 1) // 2, stages + 1
    return max(1, stages)


def stage_sizes(size: int, stages: int) -> list[int]:
    """Size along one axis before and after each stage: [64, 32, 16, 8, 4] for 4 stages."""
    sizes = [size]
    for _ in range(stages):
        sizes.append((sizes[-1] + 1) // 2)  # kernel 3, stride 2, padding 1
    return sizes


def stage_channels(width: int, stages: int) -> list[int]:
    """Channels of each stage: ``width`` doubled at each, at most ``MOST_CHANNELS``."""
    return [min(MOST_CHANNELS, width * 2 ** stage) for stage in range(stages)]


class Residual(nn.Module):
    """x + conv-BN-ReLU-conv-BN(x), then ReLU: a residual block of ``channels`` (He et al. 2016)."""

    def __init__(self, channels: int):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(channels, channels, 3, padding=1, bias=False), nn.BatchNorm2d(channels),
                                  nn.ReLU(True), nn.Conv2d(channels, channels, 3, padding=1, bias=False),
                                  nn.BatchNorm2d(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x + self.body(x))


class DeepEncoder(nn.Module):
    """Image [B, C, H, W] -> code [B, latent_dim], for images of any size: ``stages`` stride-2 stages
    (each a 3x3 convolution, BatchNorm, ReLU, and with ``residual`` a residual block), the first with
    ``width`` channels and each next one twice as many, then the tutorial's two linear layers.
    The attributes are the tutorial ``Encoder``'s (``encoder_cnn``, ``flatten``, ``encoder_lin``), so
    every family uses it the same way."""

    def __init__(self, latent_dim: int, in_channels: int, image_size: int, *, image_width: int | None = None,
                 width: int = 32, hidden: int = 512, stages: int = 0, residual: bool = False):
        super().__init__()
        stages = stages or stage_count(image_size, image_width)
        channels = stage_channels(width, stages)
        layers: list[nn.Module] = []
        before = in_channels
        for count in channels:
            layers += [nn.Conv2d(before, count, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(count), nn.ReLU(True)]
            layers += [Residual(count)] if residual else []
            before = count
        self.encoder_cnn = nn.Sequential(*layers)
        self.flatten = nn.Flatten(start_dim=1)
        height, breadth = stage_sizes(image_size, stages)[-1], stage_sizes(image_width or image_size, stages)[-1]
        self.encoder_lin = nn.Sequential(nn.Linear(channels[-1] * height * breadth, hidden), nn.ReLU(True),
                                         nn.Linear(hidden, latent_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.code(self.encoder_cnn(x))

    def code(self, maps: torch.Tensor) -> torch.Tensor:
        return self.encoder_lin(self.flatten(maps))


class DeepDecoder(nn.Module):
    """Code [B, latent_dim] -> image [B, C, H, W] in (0, 1): the deep encoder's mirror, each stage
    upsampling by resizing (nearest) then a 3x3 convolution, so no stage leaves the checkerboard that
    transposed convolutions do (Odena et al. 2016); the last one convolves to the image's channels. Its
    attributes are the tutorial ``Decoder``'s (``decoder_lin``, ``unflatten``, ``decoder_conv``, ``logits``)."""

    def __init__(self, latent_dim: int, in_channels: int, image_size: int, *, image_width: int | None = None,
                 width: int = 32, hidden: int = 512, stages: int = 0, residual: bool = False):
        super().__init__()
        stages = stages or stage_count(image_size, image_width)
        channels = stage_channels(width, stages)
        heights, widths = stage_sizes(image_size, stages), stage_sizes(image_width or image_size, stages)
        self.decoder_lin = nn.Sequential(nn.Linear(latent_dim, hidden), nn.ReLU(True),
                                         nn.Linear(hidden, channels[-1] * heights[-1] * widths[-1]), nn.ReLU(True))
        self.unflatten = nn.Unflatten(dim=1, unflattened_size=(channels[-1], heights[-1], widths[-1]))
        layers: list[nn.Module] = []
        for stage in reversed(range(1, stages)):
            after = channels[stage - 1]
            layers += [nn.Upsample(size=(heights[stage], widths[stage]), mode="nearest"),
                       nn.Conv2d(channels[stage], after, 3, padding=1, bias=False), nn.BatchNorm2d(after), nn.ReLU(True)]
            layers += [Residual(after)] if residual else []
        layers += [nn.Upsample(size=(heights[0], widths[0]), mode="nearest"),  # the last stage: to the image
                   nn.Conv2d(channels[0], in_channels, 3, padding=1)]
        self.decoder_conv = nn.Sequential(*layers)

    def logits(self, z: torch.Tensor) -> torch.Tensor:
        """The output before the sigmoid."""
        return self.decoder_conv(self.unflatten(self.decoder_lin(z)))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.logits(z))


def networks(config) -> tuple[nn.Module, nn.Module]:
    """The encoder and decoder a ``ModelConfig`` asks for: the tutorial's (``model.arch`` tutorial,
    the MNIST default, layer for layer), or the deep ones (deep), sized for the images."""
    common = {"image_width": config.image_width, "width": config.width, "hidden": config.hidden}
    if config.arch == "deep":
        deep = {**common, "stages": config.stages, "residual": config.residual}
        return (DeepEncoder(config.latent_dim, config.in_channels, config.image_size, **deep),
                DeepDecoder(config.latent_dim, config.in_channels, config.image_size, **deep))
    tutorial = {**common, "even_padding": config.even_padding}
    return (Encoder(config.latent_dim, config.in_channels, config.image_size, **tutorial),
            Decoder(config.latent_dim, config.in_channels, config.image_size, **tutorial))
