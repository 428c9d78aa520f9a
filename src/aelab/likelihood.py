"""Measures of a variational model (the families with a posterior: vae, iwae) as papers report them:
the importance-sampled negative log-likelihood (Burda et al. 2016), active units, and the KL
divergence per latent dimension.

Every function works in chunks on uint8 images [N, C, H, W] (in memory or on disk), in eval mode,
on the model's device, with seeded draws: the same numbers for the same seed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from .data.batches import noise_generator, to_unit
from .errors import AelabError
from .inference import chunk_size

ACTIVE = 0.01  # a latent dimension is active when the variance over the images of its posterior mean exceeds this


def is_variational(model: torch.nn.Module) -> bool:
    """Whether ``model`` has a posterior q(z|x) and importance weights (the vae and iwae families)."""
    return hasattr(model, "posterior") and hasattr(model, "log_weights")


def _check(model: torch.nn.Module) -> None:
    if not is_variational(model):
        raise AelabError("this measure needs a variational model (a posterior q(z|x)): train with `model.kind` vae, "
                         "iwae or cvae")


@dataclass
class Posterior:
    """What a model's posterior says of a set of images."""

    active_units: int  # dimensions whose posterior mean varies over the images (variance > ACTIVE)
    mean_variance: np.ndarray  # float64 [d]: the variance over the images of each dimension's posterior mean
    kl_per_dimension: np.ndarray  # float64 [d]: KL(q(z_u|x) || N(0, 1)) averaged over the images (nats)


@torch.no_grad()
def posterior_summary(model: torch.nn.Module, images, batch_size: int = 1024,
                      labels: torch.Tensor | None = None) -> Posterior:
    """Active units (Burda et al. 2016: Var_x E_q[z_u] > 0.01) and the KL per latent dimension."""
    from .models.vae import gaussian_kl

    _check(model)
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    means, kls = [], []
    try:
        step = chunk_size(images.shape[1:], batch_size)
        for start in range(0, len(images), step):
            x = to_unit(images[start: start + step], device)
            mean, log_variance, _ = model.posterior(x, _rows(labels, start, len(x), device))
            means.append(mean.double().cpu())
            kls.append(gaussian_kl(mean, log_variance).double().sum(0).cpu())
    finally:
        model.train(was_training)
    if not means:
        raise AelabError("no images to measure; give a split that has some")
    mean = torch.cat(means)
    variance = mean.var(0, unbiased=False).numpy() if len(mean) > 1 else np.zeros(mean.shape[1])
    return Posterior(int((variance > ACTIVE).sum()), variance, (torch.stack(kls).sum(0) / len(mean)).numpy())


@torch.no_grad()
def importance_nll(model: torch.nn.Module, images, samples: int = 5000, seed: int = 0, codes_per_pass: int = 8192,
                   progress: Callable[[int, int], None] | None = None,
                   labels: torch.Tensor | None = None) -> np.ndarray:
    """-log p(x) of each image (nats, float64 [N]) estimated with ``samples`` codes drawn from q(z|x):
    -log (1/K sum_k p(x, z_k) / q(z_k|x)), the importance-weighted bound with K = ``samples``, which
    tends to -log p(x) as K grows (K = 5000 in Burda et al. 2016). Works on at most
    ``codes_per_pass`` codes at a time, so any K runs in bounded memory; ``progress(done, total)``
    is told the images done."""
    _check(model)
    if samples < 1:
        raise AelabError(f"`nll_samples` must be at least 1, got {samples}; try 5000")
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    group = max(1, min(chunk_size(images.shape[1:]), codes_per_pass // samples))  # images per pass
    per_pass = max(1, codes_per_pass // group)  # codes per image per pass
    found = []
    try:
        for start in range(0, len(images), group):
            x = to_unit(images[start: start + group], device)
            given = _rows(labels, start, len(x), device)
            mean, log_variance = model.posterior(x, given)[:2]
            generator = noise_generator(seed * 1_000_003 + start + 29, device)
            total = torch.full((len(x),), -math.inf, dtype=torch.float64, device=device)
            for first in range(0, samples, per_pass):
                k = min(per_pass, samples - first)
                draws = torch.randn((len(x), k, mean.shape[1]), generator=generator, device=device)
                total = torch.logaddexp(total, torch.logsumexp(model.log_weights(x, draws, (mean, log_variance), given),
                                                               1).double())
            found.append((-(total - math.log(samples))).cpu())
            if progress is not None:
                progress(min(len(images), start + group), len(images))
    finally:
        model.train(was_training)
    return torch.cat(found).numpy() if found else np.zeros(0)


def _rows(labels: torch.Tensor | None, start: int, n: int, device: torch.device) -> torch.Tensor | None:
    return None if labels is None else torch.as_tensor(labels[start: start + n]).to(device)


def bits_per_dimension(nats: float, image_shape: tuple[int, ...]) -> float:
    """Nats per image as bits per dimension (per pixel and channel)."""
    return nats / (math.prod(image_shape) * math.log(2))


def measures(model: torch.nn.Module, images, nll_samples: int = 0, seed: int = 0,
             progress: Callable[[int, int], None] | None = None, labels: torch.Tensor | None = None) -> dict:
    """What ``aelab evaluate`` reports of a variational model on uint8 ``images``: its summary terms
    (``model.summary_terms``: the negative ELBO and its parts, nats per image, one seeded code per
    image), active units, the KL per dimension, and with ``nll_samples`` K the importance-sampled
    negative log-likelihood (nats; and bits per dimension for a Bernoulli decoder)."""
    from .inference import infer

    terms = model.summary_terms
    result = infer(model, images, terms=terms, seed=seed, labels=labels)
    found = {term: result.mean(term) for term in terms}
    posterior = posterior_summary(model, images, labels=labels)
    found.update(active_units=posterior.active_units, latent_dim=len(posterior.kl_per_dimension),
                 kl_per_dimension=[round(float(value), 4) for value in posterior.kl_per_dimension])
    if nll_samples:
        nll = float(importance_nll(model, images, nll_samples, seed, progress=progress, labels=labels).mean())
        found.update(nll=nll, nll_samples=nll_samples)
        if getattr(model, "likelihood", None) == "bernoulli":  # (binary pixels; a density on continuous ones has none)
            found["bits_per_dim"] = bits_per_dimension(nll, tuple(images.shape[1:]))
    return found
