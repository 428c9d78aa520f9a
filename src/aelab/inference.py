"""One batched pass of a model over images: per-image errors, codes and reconstructions.

Every tool that runs a trained model over a set of images goes through ``infer``: the validation
loss during training, ``evaluate``, the latent codes of ``embed``/``plot``/the report, and scores.
It works in chunks (any number of images, on any device) and synchronises with the device once.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch

from .data.batches import add_noise, latent_draws, noise_generator, to_unit
from .errors import AelabError

CHUNK_PIXELS = 1024 * 28 * 28 * 4  # values in a chunk of inference: MNIST's 1024 images keep 4096; 64x64x3 ones 261


@dataclass
class Inference:
    """Results of one pass, row ``i`` for image ``i``; a field is None when it was not asked for."""

    terms: dict[str, np.ndarray] = field(default_factory=dict)  # name -> float64 [N]: the per-image terms asked for
    codes: np.ndarray | None = None  # float32 [N, latent_dim]
    reconstructions: torch.Tensor | None = None  # float32 [N, C, H, W] in [0, 1], on the CPU
    inputs: torch.Tensor | None = None  # float32 [N, C, H, W]: what the model saw (noisy in a denoising pass), CPU
    features: np.ndarray | None = None  # float32 [N, F]: the encoder's features of each image (model.features)
    feature_errors: np.ndarray | None = None  # float32 [N, F]: those features minus the reconstruction's

    @property
    def mse(self) -> np.ndarray | None:
        """The mean squared error per pixel of each image (output in [0, 1]), if it was asked for."""
        return self.terms.get("mse")

    def mean(self, term: str = "mse") -> float:
        """A per-image term's mean over every pixel of every image (all images have the same size)."""
        if term not in self.terms:
            raise AelabError(f"this inference did not compute `{term}`; ask infer() for it")
        errors = self.terms[term]
        return float(errors.mean()) if len(errors) else float("nan")


def chunk_size(image_shape: tuple[int, ...], batch_size: int = 1024) -> int:
    """Images in one chunk of ``infer``: ``batch_size``, fewer for big images (at most ``CHUNK_PIXELS`` values)."""
    return max(1, min(batch_size, CHUNK_PIXELS // max(1, math.prod(image_shape))))


@torch.no_grad()
def infer(model: torch.nn.Module, images: torch.Tensor, *, terms: Sequence[str] = ("mse",), codes: bool = False,
          reconstructions: bool = False, inputs: bool = False, features: bool = False, noise_factor: float = 0.0,
          seed: int = 0, batch_size: int = 1024, first: int = 0, labels: torch.Tensor | None = None) -> Inference:
    """Run ``model`` (of any family: ``aelab.models.base``) over uint8 images [N, C, H, W] (a tensor
    or images on disk) in chunks (``chunk_size``), in eval mode, on the model's device.

    ``terms``: the per-image terms to compute, among the model's ``terms`` (every model has "mse";
    the autoencoder "bce" too). With ``noise_factor`` > 0 the input is the image with seeded
    Gaussian noise and every term is measured against the clean image: the denoising error. Each
    chunk's noise, and the draws of a model that draws (``model.draw_shape``: a variational model's
    sampled codes), are seeded by ``seed`` and the chunk's place in the whole set (``first``: the row
    of ``images[0]`` in it, for a part that starts at a chunk boundary), so a set evaluated in parts
    (one per rank) gets the numbers it gets whole.

    ``features``: also the encoder's features of each image (``model.features``) and their
    difference from the features of its reconstruction (an error measured by the encoder).
    ``labels`` [N]: the images' labels, which a conditional model (``model.conditional``) needs.
    """
    terms = tuple(dict.fromkeys([terms] if isinstance(terms, str) else terms))  # ("mse",) for "mse"; each once
    unknown = [term for term in terms if term not in model.terms]
    if unknown:
        raise AelabError(f"this model reports {', '.join(model.terms)} per image, not {', '.join(unknown)}; "
                         "ask for one of those")
    if model.conditional:
        model.check_labels(labels)  # (once, here: not inside the chunks)
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    parts: dict[str, list[torch.Tensor]] = {"codes": [], "reconstructions": [], "inputs": [], "features": [],
                                            "feature_errors": [], **{term: [] for term in terms}}
    batch_size = chunk_size(images.shape[1:], batch_size)
    try:
        for start in range(0, len(images), batch_size):
            clean = to_unit(images[start: start + batch_size], device)  # [B, C, H, W]
            if noise_factor > 0:
                generator = noise_generator(seed + (first + start) // batch_size * 1_000_003, device)  # (as the draws)
                seen = add_noise(clean, noise_factor, generator)
            else:
                seen = clean
            if inputs:
                parts["inputs"].append(seen.cpu())
            chunk = (first + start) // batch_size  # (the chunk's place in the whole set seeds its draws)
            draws = latent_draws(model.draw_shape, len(clean), noise_generator(seed + chunk * 1_000_003 + 17, device),
                                 device) if model.draw_shape is not None else None
            given = None if labels is None else torch.as_tensor(labels[start: start + batch_size]).to(device)
            measured = model.measure(seen, clean, terms, draws, given)
            for term in terms:
                parts[term].append(measured.terms[term])
            if reconstructions:
                parts["reconstructions"].append(measured.reconstructions.float().cpu())
            if features:
                parts["features"].append(measured.features.float())
                parts["feature_errors"].append((measured.features - model.features(measured.reconstructions)).float())
            if codes:
                parts["codes"].append(measured.codes.float())
    finally:
        model.train(was_training)
    empty = {"codes": (0, model.config.latent_dim), "reconstructions": (0, *images.shape[1:]),
             "inputs": (0, *images.shape[1:]), "features": (0, 0), "feature_errors": (0, 0)}
    joined = {name: (torch.cat(chunks) if chunks else torch.zeros(empty.get(name, (0,)))).cpu()
              for name, chunks in parts.items()}
    return Inference(
        terms={term: joined[term].double().numpy() for term in terms},
        codes=joined["codes"].numpy() if codes else None,
        reconstructions=joined["reconstructions"] if reconstructions else None,
        inputs=joined["inputs"] if inputs else None,
        features=joined["features"].numpy() if features else None,
        feature_errors=joined["feature_errors"].numpy() if features else None,
    )
