"""What every model family gives the rest of aelab: ``Measured``, the per-image results of one
batch, and ``per_image``, the mean of a per-pixel term over each image.

A family's model (an ``nn.Module``; ``aelab.models.registry`` lists the families) has:

- ``config``: its ``ModelConfig``; ``encode(x)`` -> codes [B, d], ``decode(z)`` -> images [B, C, H, W]
  in [0, 1], ``model(x)``: the reconstruction;
- ``terms``: the per-image terms it reports (every family reports ``"mse"``, the reconstruction's
  mean squared error per pixel), and ``objective``: the one training minimises, which the loop
  reports as the validation loss (``objective_label`` says what it is, for a plot's axis);
- ``summary_terms``: the terms evaluated after training besides the MSE (evaluation.json);
- ``draw_shape``: the shape of the standard normal draws it takes per image (a variational
  model's reparameterisation noise), or None; the steps draw them for a whole batch from the run's
  own generator, so shards and ranks get the rows a whole batch would give them;
- ``training_loss(inputs, targets, draws, progress)``: the scalar a training step minimises for a
  batch (the steps, eager, sharded, CUDA graph and DDP, call it and nothing else); ``progress``
  is the epochs done so far (a 0-d tensor: what a KL warm-up follows);
- ``measure(inputs, targets, terms, draws)``: a ``Measured`` of a batch (``aelab.infer`` calls it,
  with seeded draws);
- ``features(x)``: the encoder's features of images [B, F] (the anomaly scores use them);
- ``part(name)``: ``"autoencoder"``, ``"encoder"`` or ``"decoder"`` as a module of one input and
  one output (``aelab.export`` writes it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import torch
from torch import nn

if TYPE_CHECKING:
    from ..config import ModelConfig


@dataclass
class Measured:
    """One batch through a model: row ``i`` for image ``i``."""

    codes: torch.Tensor  # [B, d]: the code of each input
    reconstructions: torch.Tensor  # [B, C, H, W] in [0, 1]: what the model makes of each input
    features: torch.Tensor  # [B, F]: the encoder's features of each input
    terms: dict[str, torch.Tensor]  # name -> float64 [B]: the per-image terms asked for


def per_image(values: torch.Tensor) -> torch.Tensor:
    """The mean over each image of per-pixel ``values`` [B, C, H, W], in float64: [B]."""
    return values.sum((1, 2, 3), dtype=torch.float64) / values[0].numel()


class Family(Protocol):
    """What a family's model gives the rest of aelab (it is also an ``nn.Module``); see the module's
    docstring. ``aelab.models.ae.ConvAutoencoder`` is one."""

    config: "ModelConfig"
    terms: tuple[str, ...]
    objective: str
    objective_label: str
    summary_terms: tuple[str, ...]
    draw_shape: tuple[int, ...] | None

    def training_loss(self, inputs: torch.Tensor, targets: torch.Tensor, draws: torch.Tensor | None = None,
                      progress: torch.Tensor | None = None) -> torch.Tensor: ...

    def measure(self, inputs: torch.Tensor, targets: torch.Tensor, terms: tuple[str, ...] = ("mse",),
                draws: torch.Tensor | None = None) -> Measured: ...

    def features(self, x: torch.Tensor) -> torch.Tensor: ...

    def part(self, name: str) -> nn.Module: ...

    def encode(self, x: torch.Tensor) -> torch.Tensor: ...

    def decode(self, z: torch.Tensor) -> torch.Tensor: ...
