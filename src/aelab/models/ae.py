"""The family "ae": the convolutional autoencoder (the tutorial's network, or the deeper one that
``model.arch`` deep chooses), minimising the reconstruction's mean squared error (``train.loss`` mse)
or binary cross-entropy (bce)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..config import LOSSES, ModelConfig
from ..errors import AelabError
from .base import Measured, per_image
from .nets import HIDDEN, WIDTH, networks, pooled


def ssim_loss(output: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per image, 0.84 (1 - SSIM) + 0.16 L1 (the mix of Zhao et al. 2017, with SSIM in place of its
    MS-SSIM, which needs images of 160 pixels or more): [B]. SSIM (pytorch-msssim: an 11x11 Gaussian
    window) rewards the local structure a picture's edges and textures make; the L1 part keeps the
    colours and brightness, which SSIM alone lets drift."""
    from pytorch_msssim import ssim

    structure = ssim(output.float(), targets.float(), data_range=1.0, size_average=False)  # [B]
    return 0.84 * (1 - structure) + 0.16 * (output - targets).abs().float().mean((1, 2, 3))


class ConvAutoencoder(nn.Module):
    """Encoder and decoder together: ``model(x)`` reconstructs, ``encode``/``decode`` go halfway.
    It minimises ``loss`` (``train.loss``): the mean squared error of the reconstruction, the binary
    cross-entropy of its logits, or ``ssim_loss``; it reports each per image (``terms``)."""

    terms = LOSSES  # ("mse", "bce", "ssim")
    draw_shape = None  # it draws no random numbers
    conditional = False  # it does not see the images' labels
    summary_terms = ()  # its evaluation after training is the MSE alone

    def __init__(self, latent_dim: int = 4, in_channels: int = 1, image_size: int = 28, *,
                 image_width: int | None = None, width: int = WIDTH, hidden: int = HIDDEN, even_padding: bool = True,
                 loss: str = "mse", arch: str = "tutorial", stages: int = 0, residual: bool = False):
        super().__init__()
        self.config = ModelConfig(latent_dim=latent_dim, in_channels=in_channels, image_size=image_size,
                                  image_width=image_width, width=width, hidden=hidden, even_padding=even_padding,
                                  arch=arch, stages=stages, residual=residual)
        self.config.validate()
        if loss not in LOSSES:
            raise AelabError(f"unknown `train.loss` {loss!r}; choose one of {', '.join(LOSSES)}")
        self.objective = loss
        self.encoder, self.decoder = networks(self.config)  # (the tutorial's, or the deep ones: model.arch)

    @classmethod
    def from_config(cls, config: ModelConfig, loss: str = "mse") -> "ConvAutoencoder":
        return cls(config.latent_dim, config.in_channels, config.image_size, image_width=config.image_width,
                   width=config.width, hidden=config.hidden, even_padding=config.even_padding, loss=loss,
                   arch=config.arch, stages=config.stages, residual=config.residual)

    @property
    def objective_label(self) -> str:
        """What the objective is, for a plot's axis."""
        return {"mse": "MSE per pixel", "bce": "binary cross-entropy per pixel",
                "ssim": "0.84 (1 - SSIM) + 0.16 L1"}.get(self.objective, self.objective)

    def training_loss(self, inputs: torch.Tensor, targets: torch.Tensor, draws: torch.Tensor | None = None,
                      progress: torch.Tensor | None = None, labels: torch.Tensor | None = None) -> torch.Tensor:
        """The objective of a batch: the mean over every pixel of MSE between the reconstruction of
        ``inputs`` and ``targets`` (the clean images), or of BCE from the decoder's logits. (It
        draws nothing, does not change during training and sees no label: ``draws``, ``progress`` and
        ``labels`` are unused.)"""
        if self.objective == "bce":
            return F.binary_cross_entropy_with_logits(self.decoder.logits(self.encoder(inputs)), targets)
        if self.objective == "ssim":
            return ssim_loss(self(inputs), targets).mean()
        return F.mse_loss(self(inputs), targets)

    def measure(self, inputs: torch.Tensor, targets: torch.Tensor, terms: tuple[str, ...] = ("mse",),
                draws: torch.Tensor | None = None, labels: torch.Tensor | None = None) -> Measured:
        """Codes, reconstructions, encoder features and the per-image ``terms`` (mse: of the
        reconstruction in [0, 1]; bce: from the logits) of ``inputs`` against ``targets``."""
        maps = self.encoder.encoder_cnn(inputs)  # [B, 32, 3, 3] for MNIST
        codes = self.encoder.code(maps)  # [B, latent_dim]
        logits = self.decoder.logits(codes)  # [B, C, H, W]
        output = torch.sigmoid(logits)
        found = {}
        if "mse" in terms:
            found["mse"] = per_image((output - targets).square())
        if "bce" in terms:
            found["bce"] = per_image(F.binary_cross_entropy_with_logits(logits, targets, reduction="none"))
        if "ssim" in terms:
            found["ssim"] = ssim_loss(output, targets).double()
        return Measured(codes, output, pooled(maps), found)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The encoder's last convolutional feature map of images ``x`` in [0, 1], flattened: [B, F]
        (``nets.pooled``: 288 values for MNIST)."""
        return pooled(self.encoder.encoder_cnn(x))

    def part(self, name: str) -> nn.Module:
        """``autoencoder`` (images -> reconstructions), ``encoder`` (images -> codes) or ``decoder``
        (codes -> images), as one module."""
        return {"autoencoder": self, "encoder": self.encoder, "decoder": self.decoder}[name]

    def check_labels(self, labels) -> None:
        """(It needs no labels.)"""

    def encode(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        return self.encoder(x)

    def decode(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        return self.decoder(z)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(x))
