"""The family "iwae": the importance-weighted autoencoder (Burda, Grosse and Salakhutdinov 2016).

The network, prior and likelihoods of the VAE (``aelab.models.vae``); it is trained on the K-sample
importance-weighted bound instead of the ELBO: with K = ``model.samples`` codes z_k drawn from
q(z|x) per image, -log (1/K sum_k p(x, z_k) / q(z_k|x)), a tighter bound on -log p(x) that grows
tighter with K (K = 1 is the ELBO). Per image it reports the VAE's terms and ``iw_nelbo``, that
bound (nats per image), its objective.
"""

from __future__ import annotations

import math

import torch

from ..config import ModelConfig
from .vae import VariationalAutoencoder


class ImportanceWeightedAutoencoder(VariationalAutoencoder):
    """The VAE trained on the K-sample importance-weighted bound (see the module)."""

    def __init__(self, config: ModelConfig, loss: str = "mse"):
        super().__init__(config, loss)
        self.terms = ("mse", "recon", "kl", "nelbo", "iw_nelbo")
        self.objective = "iw_nelbo"
        self.summary_terms = ("iw_nelbo", "nelbo", "recon", "kl")

    @property
    def objective_label(self) -> str:
        return f"importance-weighted bound, K = {self.config.samples} (nats per image)"

    def bound(self, x: torch.Tensor, draws: torch.Tensor, posterior=None, labels=None) -> torch.Tensor:
        """-log (1/K sum_k w_k) per image, [B], for the K codes drawn with ``draws`` [B, K, d]."""
        log_weights = self.log_weights(x, draws, posterior, labels)
        return -(torch.logsumexp(log_weights, 1) - math.log(draws.shape[1]))

    def training_loss(self, inputs: torch.Tensor, targets: torch.Tensor, draws: torch.Tensor | None = None,
                      progress: torch.Tensor | None = None, labels: torch.Tensor | None = None) -> torch.Tensor:
        """The batch's mean of the K-sample bound (``draws`` [B, K, d]; none given: the ELBO at the
        mean code, as the VAE)."""
        if draws is None:
            return super().training_loss(inputs, targets, None, progress, labels)
        mean, log_variance, _ = self.posterior(inputs, labels)
        return self.bound(targets, draws, (mean, log_variance), labels).mean()

    def _sampled_terms(self, targets, mean, log_variance, draws, terms, labels=None):
        found = super()._sampled_terms(targets, mean, log_variance, draws, terms, labels)
        if "iw_nelbo" in terms and draws is not None:
            found["iw_nelbo"] = self.bound(targets, draws, (mean, log_variance), labels).double()
        elif "iw_nelbo" in terms:
            found["iw_nelbo"] = found["nelbo"]
        return found
