"""The family "cvae": the conditional variational autoencoder (Sohn, Lee and Yan 2015): the VAE of
``aelab.models.vae`` whose encoder and decoder also see each image's label, as a one-hot vector
joined to the encoder's flattened features and to the code. The prior stays N(0, I), so
``decode(z, label)`` draws an image of the class asked for ("draw me a 7"). It trains on labelled
images only (``model.n_classes``, set from the data): every tool gives it the images' labels.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..config import ModelConfig
from ..errors import AelabError
from .vae import VariationalAutoencoder


class ConditionalVariationalAutoencoder(VariationalAutoencoder):
    """The VAE with the label joined to the encoder's features and to the code (see the module)."""

    part_outputs = {"encoder": ("means", "log_variances")}
    conditional = True

    def __init__(self, config: ModelConfig, loss: str = "mse"):
        if config.n_classes < 2:
            raise AelabError("the cvae family needs labelled images of 2 classes or more (class subfolders, an .npz "
                             "with labels, a named dataset); choose `model.kind` vae for unlabelled images")
        super().__init__(config, loss)
        first, decoder_first = self.encoder.encoder_lin[0], self.decoder.decoder_lin[0]
        self.encoder.encoder_lin[0] = nn.Linear(first.in_features + config.n_classes, first.out_features)
        self.decoder.decoder_lin[0] = nn.Linear(decoder_first.in_features + config.n_classes, decoder_first.out_features)

    def check_labels(self, labels: torch.Tensor | None) -> None:
        """Refuse missing labels, or labels outside the run's classes (checked once, where the
        labels are given: inside a step it would wait for the device)."""
        if labels is None:
            raise AelabError("a conditional model (cvae) needs each image's label; give labelled images (or a label "
                             "to draw, `label`)")
        if len(labels) and (int(labels.min()) < 0 or int(labels.max()) >= self.config.n_classes):
            raise AelabError(f"labels must be classes 0 to {self.config.n_classes - 1} of the run's data; the images "
                             "given have others (or none): give labelled images of the run's classes")

    def _joined(self, values: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        if labels is None:
            self.check_labels(labels)
        return torch.cat([values, F.one_hot(labels.long(), self.config.n_classes).to(values.dtype)], 1)

    part_inputs = {"encoder": ("images", "labels"), "decoder": ("codes", "labels"), "autoencoder": ("images", "labels")}

    def part(self, name: str) -> nn.Module:
        """The parts with a second input, the labels one-hot ([N, n_classes] floats): ``autoencoder``,
        ``encoder`` (-> means, log-variances) and ``decoder`` (-> pixel means)."""
        return _Conditional(self, name)


class _Conditional(nn.Module):
    """A part of a conditional model as a module of (input, one-hot labels), for export."""

    def __init__(self, model: ConditionalVariationalAutoencoder, part: str):
        super().__init__()
        self.model, self.part = model, part

    def forward(self, x: torch.Tensor, one_hot: torch.Tensor):
        model = self.model
        if self.part == "decoder":
            return torch.sigmoid(model.decoder.logits(torch.cat([x, one_hot], 1)))
        mean, log_variance = model.heads(torch.cat([model.encoder.flatten(model.encoder.encoder_cnn(x)), one_hot], 1))
        if self.part == "encoder":
            return mean, log_variance
        return torch.sigmoid(model.decoder.logits(torch.cat([mean, one_hot], 1)))
