"""Reconstruction metrics: MSE over every pixel of every image (pixels in [0, 1]) and PSNR."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .data.sets import ImageSet
from .inference import infer


@dataclass
class Evaluation:
    mse: float
    psnr: float
    n_images: int
    split: str = ""
    noise_factor: float = 0.0

    def to_dict(self) -> dict:
        return {"mse": self.mse, "psnr": self.psnr, "split": self.split,
                "n_images": self.n_images, "noise_factor": self.noise_factor}


def psnr_from_mse(mse: float) -> float:
    return math.inf if mse <= 0 else 10.0 * math.log10(1.0 / mse)


def reconstruction_loss(model: torch.nn.Module, images: torch.Tensor, loss: str = "mse", batch_size: int = 1024,
                        noise_factor: float = 0.0, seed: int = 0) -> float:
    """Mean loss per pixel of ``model`` over uint8 images [N, C, H, W] (moved to the model's device).

    ``loss`` is ``mse`` (of the output in [0, 1]) or ``bce``. With ``noise_factor`` > 0 the input
    is noisy (seeded by ``seed``) and the target the clean image.
    """
    result = infer(model, images, mse=loss == "mse", bce=loss == "bce", noise_factor=noise_factor, seed=seed,
                   batch_size=batch_size)
    return result.mean(loss)


def evaluate(model: torch.nn.Module, data: ImageSet, split: str = "", noise_factor: float = 0.0,
             seed: int = 0, batch_size: int = 1024) -> Evaluation:
    """MSE and PSNR of ``model`` on an ImageSet."""
    mse = reconstruction_loss(model, data.images, "mse", batch_size, noise_factor, seed)
    return Evaluation(mse, psnr_from_mse(mse), len(data), split, noise_factor)
