"""One batched pass of a model over images: per-image errors, codes and reconstructions.

Every tool that runs a trained model over a set of images goes through ``infer``: the validation
loss during training, ``evaluate``, the latent codes of ``embed``/``plot``/the report, and scores.
It works in chunks (any number of images, on any device) and synchronises with the device once.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .data.batches import add_noise, noise_generator, to_unit
from .errors import AelabError

CHUNK_PIXELS = 1024 * 28 * 28 * 4  # values in a chunk of inference: MNIST's 1024 images keep 4096; 64x64x3 ones 261


@dataclass
class Inference:
    """Results of one pass, row ``i`` for image ``i``; a field is None when it was not asked for."""

    mse: np.ndarray | None = None  # float64 [N]: mean squared error per pixel of each image (output in [0, 1])
    bce: np.ndarray | None = None  # float64 [N]: mean binary cross-entropy per pixel (from the logits)
    codes: np.ndarray | None = None  # float32 [N, latent_dim]
    reconstructions: torch.Tensor | None = None  # float32 [N, C, H, W] in [0, 1], on the CPU
    inputs: torch.Tensor | None = None  # float32 [N, C, H, W]: what the model saw (noisy in a denoising pass), CPU
    features: np.ndarray | None = None  # float32 [N, F]: the encoder's convolutional features of each image
    feature_errors: np.ndarray | None = None  # float32 [N, F]: those features minus the reconstruction's

    def mean(self, loss: str = "mse") -> float:
        """The loss over every pixel of every image (all images have the same size)."""
        errors = self.mse if loss == "mse" else self.bce
        if errors is None:
            raise AelabError(f"this inference did not compute `{loss}`; ask infer() for it")
        return float(errors.mean()) if len(errors) else float("nan")


def chunk_size(image_shape: tuple[int, ...], batch_size: int = 1024) -> int:
    """Images in one chunk of ``infer``: ``batch_size``, fewer for big images (at most ``CHUNK_PIXELS`` values)."""
    return max(1, min(batch_size, CHUNK_PIXELS // max(1, math.prod(image_shape))))


@torch.no_grad()
def infer(model: torch.nn.Module, images: torch.Tensor, *, mse: bool = True, bce: bool = False,
          codes: bool = False, reconstructions: bool = False, inputs: bool = False, noise_factor: float = 0.0,
          seed: int = 0, batch_size: int = 1024, first: int = 0, features: bool = False) -> Inference:
    """Run ``model`` (an autoencoder with ``encoder`` and ``decoder.logits``) over uint8 images
    [N, C, H, W] (a tensor or images on disk) in chunks (``chunk_size``), in eval mode, on the
    model's device.

    With ``noise_factor`` > 0 the input is the image with seeded Gaussian noise and every error is
    measured against the clean image: the denoising error. Each chunk's noise is seeded by ``seed``
    and the chunk's place in the whole set (``first``: the row of ``images[0]`` in it, for a part
    that starts at a chunk boundary), so a set evaluated in parts (one per rank) gets the noise it
    gets whole.

    ``features``: also the encoder's convolutional features of each image (``encoder_features``) and
    their difference from the features of its reconstruction (an error measured by the encoder).
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    parts: dict[str, list[torch.Tensor]] = {"mse": [], "bce": [], "codes": [], "reconstructions": [], "inputs": [],
                                            "features": [], "feature_errors": []}
    batch_size = chunk_size(images.shape[1:], batch_size)
    try:
        for start in range(0, len(images), batch_size):
            clean = to_unit(images[start: start + batch_size], device)  # [B, C, H, W]
            if noise_factor > 0:
                generator = noise_generator(seed + (first + start) // batch_size * 1_000_003, device)
                seen = add_noise(clean, noise_factor, generator)
            else:
                seen = clean
            if inputs:
                parts["inputs"].append(seen.cpu())
            maps = model.encoder.encoder_cnn(seen)  # [B, 32, 3, 3] for MNIST
            z = model.encoder.encoder_lin(model.encoder.flatten(maps))  # [B, latent_dim]: model.encoder(seen)
            logits = model.decoder.logits(z)  # [B, C, H, W]
            pixels = clean[0].numel()
            output = torch.sigmoid(logits) if mse or reconstructions or features else None
            if mse:
                parts["mse"].append((output - clean).square().sum((1, 2, 3), dtype=torch.float64) / pixels)
            if reconstructions:
                parts["reconstructions"].append(output.float().cpu())
            if features:
                mine = _pooled(maps)
                parts["features"].append(mine.float())
                parts["feature_errors"].append((mine - encoder_features(model, output)).float())
            if bce:
                loss = F.binary_cross_entropy_with_logits(logits, clean, reduction="none")
                parts["bce"].append(loss.sum((1, 2, 3), dtype=torch.float64) / pixels)
            if codes:
                parts["codes"].append(z.float())
    finally:
        model.train(was_training)
    empty = {"mse": (0,), "bce": (0,), "codes": (0, model.config.latent_dim), "reconstructions": (0, *images.shape[1:]),
             "inputs": (0, *images.shape[1:]), "features": (0, 0), "feature_errors": (0, 0)}
    joined = {name: (torch.cat(chunks) if chunks else torch.zeros(empty[name])).cpu() for name, chunks in parts.items()}
    return Inference(
        mse=joined["mse"].double().numpy() if mse else None,
        bce=joined["bce"].double().numpy() if bce else None,
        codes=joined["codes"].numpy() if codes else None,
        reconstructions=joined["reconstructions"] if reconstructions else None,
        inputs=joined["inputs"] if inputs else None,
        features=joined["features"].numpy() if features else None,
        feature_errors=joined["feature_errors"].numpy() if features else None,
    )


MAX_FEATURES = 1024  # encoder features an image gives at most (bigger maps are average-pooled: the score keeps
# two Gaussians of this size, 8 MB each at most in RUN/anomaly.safetensors)


def encoder_features(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The encoder's last convolutional feature map of images ``x`` in [0, 1], flattened: [B, F]
    (32 x 3 x 3 = 288 values for MNIST; maps of more than ``MAX_FEATURES`` values are average-pooled
    to fewer positions)."""
    return _pooled(model.encoder.encoder_cnn(x))


def _pooled(maps: torch.Tensor) -> torch.Tensor:
    height, width = maps.shape[-2:]
    side = max(1, math.isqrt(MAX_FEATURES // maps.shape[1]))
    if height > side or width > side:
        maps = F.adaptive_avg_pool2d(maps, (min(height, side), min(width, side)))
    return maps.flatten(1)
