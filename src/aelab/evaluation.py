"""Reconstruction metrics: MSE over every pixel of every image (pixels in [0, 1]) and PSNR; and
``SplitMeans``, what the training loop measures on the validation and test splits."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from . import distributed
from .data.sets import ImageSet
from .inference import chunk_size, infer


@dataclass
class Evaluation:
    mse: float
    psnr: float
    n_images: int
    split: str = ""
    noise_factor: float = 0.0

    def to_dict(self) -> dict:
        return {"mse": self.mse, "psnr": self.psnr, "split": self.split, "n_images": self.n_images,
                "noise_factor": self.noise_factor, "input": "noisy" if self.noise_factor > 0 else "clean"}


def psnr_from_mse(mse: float) -> float:
    return math.inf if mse <= 0 else 10.0 * math.log10(1.0 / mse)


def reconstruction_loss(model: torch.nn.Module, images: torch.Tensor, loss: str = "mse", batch_size: int = 1024,
                        noise_factor: float = 0.0, seed: int = 0, labels: torch.Tensor | None = None) -> float:
    """Mean of a per-image term of ``model`` (``loss``: one of ``model.terms``, such as ``mse`` of
    the output in [0, 1] or the autoencoder's ``bce``) over uint8 images [N, C, H, W] (moved to the
    model's device). With ``noise_factor`` > 0 the input is noisy (seeded by ``seed``) and the
    target the clean image.
    """
    result = infer(model, images, terms=(loss,), noise_factor=noise_factor, seed=seed, batch_size=batch_size,
                   labels=labels)
    return result.mean(loss)


def evaluate(model: torch.nn.Module, data: ImageSet, split: str = "", noise_factor: float = 0.0,
             seed: int = 0, batch_size: int = 1024) -> Evaluation:
    """MSE and PSNR of ``model`` on an ImageSet."""
    mse = reconstruction_loss(model, data.images, "mse", batch_size, noise_factor, seed, data.labels)
    return Evaluation(mse, psnr_from_mse(mse), len(data), split, noise_factor)


class SplitMeans:
    """A model's per-image terms averaged over fixed splits (``val``, ``test``), as the training loop
    measures them after each epoch and at the end.

    The images are moved to ``device`` once (images on disk stay there, read chunk by chunk). Under
    torchrun each rank keeps only its ``distributed.share`` of every split (whole chunks of
    ``infer``, whose noise is seeded by their place) and the means are averaged across the ranks:
    the number one process gets on the whole split.
    """

    def __init__(self, splits: dict[str, ImageSet], device: torch.device, seed: int = 0):
        self.seed = seed
        self.parts = {name: self._share(split, device) for name, split in splits.items()}

    @staticmethod
    def _share(split: ImageSet, device: torch.device) -> tuple[Any, torch.Tensor, int]:
        start, stop = distributed.share(len(split), chunk_size(split.image_shape))
        part = split if (start, stop) == (0, len(split)) else split.subset(torch.arange(start, stop))
        images = part.images.to(device) if torch.is_tensor(part.images) else part.images
        return images, part.labels, start

    def __contains__(self, split: str) -> bool:
        return split in self.parts

    def mean(self, model: torch.nn.Module, split: str, term: str, noise_factor: float = 0.0) -> float:
        """The mean of ``term`` (one of ``model.terms``) per pixel on ``split``; with ``noise_factor``
        the input is noisy (seeded) and the target the clean image."""
        return self.means(model, split, (term,), noise_factor)[term]

    def means(self, model: torch.nn.Module, split: str, terms: tuple[str, ...], noise_factor: float = 0.0
              ) -> dict[str, float]:
        """The means of several ``terms`` on ``split``, measured in one pass."""
        images, labels, first = self.parts[split]
        result = infer(model, images, terms=terms, noise_factor=noise_factor, seed=self.seed, first=first,
                       labels=labels)
        if distributed.active():
            return {term: distributed.mean_across(result.terms[term]) for term in terms}
        return {term: result.mean(term) for term in terms}


PCA_VALUES = 50_000_000  # pixel values PCA is fitted on at most (a seeded sample of the training images)


def pca_sample(n_train: int, components: int, values: int) -> tuple[int, int]:
    """(the training images PCA is fitted on, the components it has) for ``n_train`` images of
    ``values`` pixel values each: at most ``PCA_VALUES`` values in all, and no more components than
    images (a folder of 10 pictures gives PCA-10 at most, whatever the code's size)."""
    count = min(n_train, max(components + 1, PCA_VALUES // values))
    return count, min(components, count, values)


def pca_fit(train_images, components: int, seed: int = 0):
    """scikit-learn's randomized PCA with ``components`` components (``pca_sample``), fitted on the
    training images (uint8 [N, C, H, W], in memory or on disk; at most ``PCA_VALUES`` pixel values of
    them, a seeded sample of whole images)."""
    import numpy as np
    from sklearn.decomposition import PCA

    values = int(np.prod(train_images.shape[1:]))
    count, components = pca_sample(len(train_images), components, values)
    rows = np.sort(np.random.default_rng(seed).choice(len(train_images), count, replace=False))
    train = train_images[torch.as_tensor(rows)].reshape(count, -1).float().div(255).numpy()
    return PCA(n_components=components, svd_solver="randomized", random_state=seed).fit(train)


def pca_rebuilt(pca, images) -> "np.ndarray":
    """``images`` (uint8 [N, C, H, W]) rebuilt by ``pca``: floats [N, C*H*W], clipped to [0, 1] as an
    autoencoder's outputs are."""
    import numpy as np

    flat = images.reshape(len(images), -1).float().div(255).numpy()
    return np.clip(pca.inverse_transform(pca.transform(flat)), 0.0, 1.0)


def pca_mse(train_images, test_images, components: int, seed: int = 0) -> float:
    """The honest baseline of an autoencoder with a code of ``components`` numbers: the test MSE of
    PCA with as many components, fitted on the training images (``pca_fit``), its reconstructions
    clipped to [0, 1]. The test images are read in chunks of about 4 million pixel values."""
    import numpy as np

    pca = pca_fit(train_images, components, seed)
    values = int(np.prod(test_images.shape[1:]))
    chunk = max(1, 4_000_000 // values)
    total, pixels = 0.0, 0
    for start in range(0, len(test_images), chunk):
        test = test_images[start: start + chunk]
        rebuilt = pca_rebuilt(pca, test)
        total += float(np.square(rebuilt - test.reshape(len(test), -1).float().div(255).numpy(), dtype=np.float64).sum())
        pixels += rebuilt.size
    return total / pixels if pixels else float("nan")


# what to try when PCA wins: the settings that most often close the gap on your own images (benchmarks/RESULTS.md)
PCA_ADVICE = "train longer (--epochs), try a larger code (--latent-dim), or give more images"


@dataclass
class Verdict:
    """How an autoencoder's reconstruction error compares with PCA's at the same code size."""

    wins: bool | None  # the autoencoder's error is lower (None: no comparison, PCA's error is 0 or unknown)
    text: str  # one sentence for a person: who wins, by how much, and what to try when PCA does


def pca_verdict(mse: float, pca: float | None, latent_dim: int, components: int | None = None) -> Verdict:
    """Whether the autoencoder's ``mse`` beats ``pca``, PCA's MSE with ``latent_dim`` components (the
    same code size; ``components`` where the training images allow fewer), by how much (the share by
    which the winner's error is lower), and what to try when it does not."""
    components = components or latent_dim
    name = f"PCA-{components}" + (f" (all the components its {components} training images allow; the code has "
                                  f"{latent_dim} numbers)" if components < latent_dim else "")
    if pca is None or not (math.isfinite(pca) and math.isfinite(mse)):
        return Verdict(None, f"no comparison with {name}")
    if pca <= 0:
        return Verdict(None, f"{name} rebuilds these images exactly (its MSE is 0): they lie in a space of "
                             f"{components} dimensions")
    if mse < pca:
        return Verdict(True, f"the autoencoder beats {name}: its error is {1 - mse / pca:.0%} lower than PCA's "
                             f"{pca:.5f}")
    return Verdict(False, f"{name} beats the autoencoder: PCA's error {pca:.5f} is {1 - pca / mse:.0%} lower; "
                          f"to do better, {PCA_ADVICE}")
