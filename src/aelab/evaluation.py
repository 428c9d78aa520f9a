"""Reconstruction metrics: MSE over every pixel of every image (pixels in [0, 1]) and PSNR."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .data.sets import ImageSet


def add_noise(images: torch.Tensor, noise_factor: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Gaussian noise times ``noise_factor`` added to images in [0, 1], clipped back to [0, 1]."""
    noise = torch.randn(images.shape, generator=generator, device=images.device, dtype=images.dtype)
    return (images + noise_factor * noise).clamp_(0.0, 1.0)


def noise_generator(seed: int, device: torch.device) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(seed)


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


@torch.no_grad()
def reconstruction_loss(model: torch.nn.Module, images: torch.Tensor, loss: str = "mse", batch_size: int = 1024,
                        noise_factor: float = 0.0, seed: int = 0) -> float:
    """Mean loss per pixel of ``model`` over uint8 images [N, C, H, W] (moved to the model's device).

    ``loss`` is ``mse`` (of the output in [0, 1]) or ``bce``. With ``noise_factor`` > 0 the input
    is noisy (seeded by ``seed``) and the target the clean image.
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    generator = noise_generator(seed, device) if noise_factor > 0 else None
    total = torch.zeros((), dtype=torch.float64, device=device)
    for start in range(0, len(images), batch_size):
        clean = images[start: start + batch_size].to(device).float().div_(255)  # [B, C, H, W]
        noisy = add_noise(clean, noise_factor, generator) if generator is not None else clean
        if loss == "bce":
            logits = model.decoder.logits(model.encoder(noisy))
            total += F.binary_cross_entropy_with_logits(logits, clean, reduction="sum").double()
        else:
            total += (model(noisy) - clean).square().sum(dtype=torch.float64)
    model.train(was_training)
    return float(total) / images.numel()


def evaluate(model: torch.nn.Module, data: ImageSet, split: str = "", noise_factor: float = 0.0,
             seed: int = 0, batch_size: int = 1024) -> Evaluation:
    """MSE and PSNR of ``model`` on an ImageSet."""
    mse = reconstruction_loss(model, data.images, "mse", batch_size, noise_factor, seed)
    return Evaluation(mse, psnr_from_mse(mse), len(data), split, noise_factor)
