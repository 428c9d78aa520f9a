"""The family "vae": the variational autoencoder (Kingma and Welling 2014) on the tutorial's network
(or the deep one, ``model.arch``).

The encoder is the tutorial's with two heads, the mean (its last layer) and the log-variance of a
diagonal Gaussian posterior q(z|x); a code is drawn by the reparameterisation trick, z = mean +
exp(log-variance / 2) * draw, from draws the steps give it (``draw_shape``). The prior is N(0, I)
and the KL divergence to it is computed in closed form. The decoder's likelihood p(x|z):

- ``train.loss`` bce: Bernoulli, the decoder's outputs the pixels' probabilities (for binarised
  images, ``data.binarize``; on grey levels it is the usual, if not normalised, choice);
- ``train.loss`` mse: Gaussian with the decoder's outputs as means and a standard deviation per
  channel that is learned with the weights (the calibrated decoder of sigma-VAE, Rybkin et al.
  2021), so that no weight of the KL term has to be tuned by hand for a sharp reconstruction.

It minimises the negative ELBO, reconstruction + KL (nats per image), or with ``model.beta`` the
beta-VAE objective reconstruction + beta * KL (Higgins et al. 2017); ``model.kl_warmup`` raises the
KL's weight linearly from 0 over that many epochs (unless told, a run's first quarter:
``config.KL_WARMUP_SHARE``). Per image it reports ``mse`` (of the
reconstruction decoded from the mean code), ``recon`` (-log p(x|z) for one drawn z), ``kl``,
``nelbo`` and, for beta != 1, ``beta_nelbo``. ``encode`` gives the mean, ``decode`` the pixel means.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..config import ModelConfig
from ..errors import AelabError
from .base import Measured, per_image
from .nets import networks, pooled

LOG_2PI = math.log(2 * math.pi)
MIN_LOG_SCALE = -6.0  # the learned standard deviation of the Gaussian decoder stays above exp(-6) (as sigma-VAE)


def soft_floor(value: torch.Tensor, floor: float) -> torch.Tensor:
    """``value`` kept smoothly above ``floor`` (sigma-VAE's softclip): floor + softplus(value - floor)."""
    return floor + F.softplus(value - floor)


def gaussian_kl(mean: torch.Tensor, log_variance: torch.Tensor) -> torch.Tensor:
    """KL(N(mean, exp(log_variance)) || N(0, I)) per latent dimension, [B, d]."""
    return 0.5 * (mean.square() + log_variance.exp() - 1.0 - log_variance)


class PosteriorEncoder(nn.Module):
    """The encoder as one module for export: images -> (mean, log-variance) of q(z|x)."""

    def __init__(self, model: "VariationalAutoencoder"):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.model.heads(self.model.encoder.flatten(self.model.encoder.encoder_cnn(x)))


class VariationalAutoencoder(nn.Module):
    """The tutorial's encoder with two heads, its decoder, a N(0, I) prior (see the module)."""

    def __init__(self, config: ModelConfig, loss: str = "mse"):
        super().__init__()
        config.validate()
        if loss not in ("mse", "bce"):
            raise AelabError(f"`train.loss` {loss!r} is not a likelihood of the variational family; choose mse (a "
                             "Gaussian decoder whose variance is learned) or bce (a Bernoulli one)")
        self.config = config
        self.likelihood = "bernoulli" if loss == "bce" else "gaussian"
        self.encoder, self.decoder = networks(config)  # the encoder's last layer: the mean
        self.log_variance = nn.Linear(config.hidden, config.latent_dim)  # the second head
        if self.likelihood == "gaussian":
            self.log_scale = nn.Parameter(torch.zeros(config.in_channels))  # log sigma per channel, learned
        self.beta, self.kl_warmup = float(config.beta), float(config.kl_warmup or 0)  # (None outside a run: none)
        self.draw_shape = (config.samples, config.latent_dim)  # codes drawn per image (the IWAE draws several)
        self.terms = ("mse", "recon", "kl", "nelbo") + (("beta_nelbo",) if self.beta != 1.0 else ())
        self.objective = "nelbo" if self.beta == 1.0 else "beta_nelbo"
        self.summary_terms = ("nelbo", "recon", "kl")  # evaluated after training (evaluation.json), nats per image

    @classmethod
    def from_config(cls, config: ModelConfig, loss: str = "mse") -> "VariationalAutoencoder":
        return cls(config, loss)

    @property
    def objective_label(self) -> str:
        name = "negative ELBO" if self.beta == 1.0 else f"reconstruction + {self.beta:g} x KL"
        return f"{name} (nats per image)"

    # --- the distributions ---------------------------------------------------------------------
    def posterior(self, x: torch.Tensor, labels: torch.Tensor | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Mean and log-variance [B, d] of q(z|x), and the encoder's feature maps (``labels``: for a
        conditional model, which sees them too)."""
        maps = self.encoder.encoder_cnn(x)  # [B, 32, 3, 3] for MNIST
        return (*self.heads(self._joined(self.encoder.flatten(maps), labels)), maps)

    def heads(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and log-variance [B, d] from the encoder's flattened features (a conditional model's
        joined with the one-hot label), in float32 (under bf16 autocast too: sums of hundreds of nats)."""
        hidden = self.encoder.encoder_lin[:2](features)  # [B, hidden]
        return (self.encoder.encoder_lin[2](hidden).float(),
                self.log_variance(hidden).float().clamp(-30.0, 20.0))

    def logits(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """The decoder's output for codes ``z`` before the sigmoid (``labels``: for a conditional model)."""
        return self.decoder.logits(self._joined(z, labels)).float()

    def _joined(self, values: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        """What a layer that sees the label gets (a conditional model's: ``values`` and the one-hot
        label); here ``values`` alone."""
        return values

    def log_likelihood(self, x: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        """log p(x|z) per image (nats), [B], from the decoder's ``logits`` for z."""
        logits, x = logits.float(), x.float()  # (under bf16 autocast too: sums of hundreds of nats)
        if self.likelihood == "bernoulli":
            return -F.binary_cross_entropy_with_logits(logits, x, reduction="none").sum((1, 2, 3))
        log_scale = soft_floor(self.log_scale, MIN_LOG_SCALE).view(1, -1, 1, 1)
        z = (x - torch.sigmoid(logits)) * torch.exp(-log_scale)
        return -0.5 * (z.square() + 2 * log_scale + LOG_2PI).sum((1, 2, 3))

    def kl_weight(self, progress: torch.Tensor | None) -> torch.Tensor | float:
        """The KL term's weight: ``beta``, rising linearly from 0 over ``kl_warmup`` epochs."""
        if self.kl_warmup <= 0 or progress is None:
            return self.beta
        return self.beta * (progress / self.kl_warmup).clamp(max=1.0)

    def log_weights(self, x: torch.Tensor, draws: torch.Tensor,
                    posterior: tuple[torch.Tensor, torch.Tensor] | None = None,
                    labels: torch.Tensor | None = None) -> torch.Tensor:
        """log p(x, z_k) - log q(z_k|x) for the codes z_k drawn with ``draws`` [B, K, d]: [B, K]
        (their log-mean-exp is the K-sample importance-weighted bound on log p(x))."""
        mean, log_variance = posterior if posterior is not None else self.posterior(x, labels)[:2]
        batch, samples = draws.shape[:2]
        z = mean[:, None] + torch.exp(0.5 * log_variance)[:, None] * draws  # [B, K, d]
        logits = self.logits(z.flatten(0, 1), None if labels is None else labels.repeat_interleave(samples))
        log_px = self.log_likelihood(x.repeat_interleave(samples, 0), logits).view(batch, samples)
        log_pz = -0.5 * (z.square() + LOG_2PI).sum(-1)
        log_qz = -0.5 * (draws.square() + LOG_2PI + log_variance[:, None]).sum(-1)
        return log_px + log_pz - log_qz

    # --- what aelab asks of a family ---------------------------------------------------------------
    def training_loss(self, inputs: torch.Tensor, targets: torch.Tensor, draws: torch.Tensor | None = None,
                      progress: torch.Tensor | None = None, labels: torch.Tensor | None = None) -> torch.Tensor:
        """The batch's mean of reconstruction + weight x KL (nats per image), one code drawn per
        image (``draws`` [B, K, d]: the first; none given: the mean code)."""
        mean, log_variance, _ = self.posterior(inputs, labels)
        z = mean if draws is None else mean + torch.exp(0.5 * log_variance) * draws[:, 0]
        recon = -self.log_likelihood(targets, self.logits(z, labels))
        kl = gaussian_kl(mean, log_variance).sum(1)
        return (recon + self.kl_weight(progress) * kl).mean()

    def measure(self, inputs: torch.Tensor, targets: torch.Tensor, terms: tuple[str, ...] = ("mse",),
                draws: torch.Tensor | None = None, labels: torch.Tensor | None = None) -> Measured:
        """Codes (the means), reconstructions (decoded from the means), features and the per-image
        ``terms``; the sampled terms use the first of ``draws``."""
        mean, log_variance, maps = self.posterior(inputs, labels)
        output = torch.sigmoid(self.logits(mean, labels))
        found = {}
        if "mse" in terms:
            found["mse"] = per_image((output - targets).square())
        if set(terms) - {"mse"}:
            found.update(self._sampled_terms(targets, mean, log_variance, draws, terms, labels))
        return Measured(mean, output, pooled(maps), {term: found[term] for term in terms})

    def _sampled_terms(self, targets: torch.Tensor, mean: torch.Tensor, log_variance: torch.Tensor,
                       draws: torch.Tensor | None, terms: tuple[str, ...], labels: torch.Tensor | None = None
                       ) -> dict[str, torch.Tensor]:
        z = mean if draws is None else mean + torch.exp(0.5 * log_variance) * draws[:, 0]
        recon = -self.log_likelihood(targets, self.logits(z, labels)).double()
        kl = gaussian_kl(mean, log_variance).sum(1).double()
        return {"recon": recon, "kl": kl, "nelbo": recon + kl, "beta_nelbo": recon + self.beta * kl}

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return pooled(self.encoder.encoder_cnn(x))

    part_outputs = {"encoder": ("means", "log_variances")}  # (the exported encoder's two outputs, in order)
    conditional = False  # (a conditional model sees each image's label)

    def check_labels(self, labels) -> None:
        """(It needs no labels.)"""

    def part(self, name: str) -> nn.Module:
        """``autoencoder`` (images -> reconstructions from the mean code), ``encoder`` (images -> mean
        and log-variance, two outputs) or ``decoder`` (codes -> pixel means)."""
        return {"autoencoder": self, "encoder": PosteriorEncoder(self), "decoder": self.decoder}[name]

    def encode(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """The mean of q(z|x)."""
        return self.posterior(x, labels)[0]

    def decode(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """The pixel means of p(x|z), in (0, 1)."""
        return torch.sigmoid(self.logits(z, labels))

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        return self.decode(self.encode(x, labels), labels)
