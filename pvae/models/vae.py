"""The Gaussian variational autoencoder.

Generative story, for each datum n (shapes for MNIST: x_n in {0,1}^{1x28x28})::

    z_n ~ Normal(0, I_D)                       site "z", shape (B, D)
    x_n ~ p(x | f_theta(z_n))                  site "x", Bernoulli by default

Guide: ``q(z_n | x_n) = Normal(mu_phi(x_n), diag sigma_phi(x_n)^2)``.

Train it with the ELBO [1] or, as the same network, with the importance-weighted bound [2]
(``pvae.infer.fit(..., objective="iwae")``).

Two standard answers to posterior collapse are options of the same model:

- ``beta`` [3] weights the KL term, ``E_q[log p(x | z)] - beta * KL(q(z | x) || p(z))``:
  ``poutine.scale(beta)`` wraps the latent site in both the model and the guide, so pvae's
  analytic-KL ELBO, its Monte Carlo ELBO and Pyro's ELBOs all weight the KL by beta.
- ``free_bits`` [4] (Eq. 15) floors the KL of every latent dimension j at lambda, with
  ``KL_j`` the minibatch average of the analytic per-dimension KL::

      L_fb = E_q[log p(x | z)] - beta * sum_j max(lambda, mean_{n in M} KL_nj)
           = ELBO_beta - beta * sum_j max(0, lambda - mean_{n in M} KL_nj)

  The second term is a ``pyro.factor("free_bits", ...)`` site in the model whose value is a
  *zero-valued surrogate* ``c - stop_grad(c)``: reported bounds, validation ELBOs and
  importance-sampled log-likelihoods stay those of the beta-VAE (evaluation is not biased by
  a batch-dependent term), while its gradient is exactly the free-bits gradient: below the
  floor it cancels the KL's gradient, so the encoder is not pushed to close those dimensions.
  The cancellation is exact with the analytic-KL ELBO (pvae's default ``"elbo"``) and holds
  in expectation with Monte Carlo KL estimates.

``log_likelihood`` scores sites without their scale, so it estimates ``log p(x)`` for any
beta.

References:
    [1] Kingma, Welling. Auto-Encoding Variational Bayes. ICLR 2014. arXiv:1312.6114
    [2] Burda, Grosse, Salakhutdinov. Importance Weighted Autoencoders. ICLR 2016.
        arXiv:1509.00519
    [3] Higgins et al. beta-VAE: Learning Basic Visual Concepts with a Constrained Variational
        Framework. ICLR 2017. https://openreview.net/forum?id=Sy2fzU9gl
    [4] Kingma, Salimans, Jozefowicz, Chen, Sutskever, Welling. Improving Variational Inference
        with Inverse Autoregressive Flow. NeurIPS 2016. arXiv:1606.04934
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Any

import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
import torch
from torch.nn import functional as F

from pvae.models.base import option
from pvae.models.image import ImageConfig, ImageModel, StandardNormalPrior
from pvae.models.likelihoods import Likelihood
from pvae.models.registry import register_model
from pvae.nets import ConvDecoder, ConvEncoder, GaussianMLP, mlp, numel
from pvae.nets.pixelcnn import check_pixelcnn_options, pixelcnn_from_config

__all__ = ["VAE", "VAEConfig", "ImageModel", "StandardNormalPrior"]


@dataclass(frozen=True)
class VAEConfig(ImageConfig):
    """Options of :class:`VAE`."""

    architecture: str = option(
        "mlp",
        "mlp, conv (28x28 single-channel images only), or pixelcnn (MLP encoder, gated PixelCNN "
        "decoder; bernoulli, (C, H, W) images)",
    )
    pixelcnn_layers: int = option(5, "gated layers of the pixelcnn decoder", convert=int)
    pixelcnn_channels: int = option(32, "feature maps of the pixelcnn decoder", convert=int)
    pixelcnn_spatial: int = option(
        0,
        "maps of the pixelcnn's location-dependent code m(z), an MLP through the first hidden "
        "size (van den Oord et al. Eq. 5); 0: a per-layer bias only",
        convert=int,
    )
    beta: float = option(1.0, "weight of the KL term (> 1: the beta-VAE)", convert=float)
    free_bits: float = option(0.0, "per-dimension KL floor in nats (0: off)", convert=float)

    def validate(self) -> None:
        super().validate()
        if not (self.beta > 0 and math.isfinite(self.beta)):
            raise ValueError(f"beta must be a positive number, got {self.beta}")
        if not (self.free_bits >= 0 and math.isfinite(self.free_bits)):
            raise ValueError(
                f"free_bits must be a non-negative number of nats, got {self.free_bits}"
            )
        if self.architecture not in ("mlp", "conv", "pixelcnn"):
            raise ValueError(
                f"architecture must be 'mlp', 'conv' or 'pixelcnn', got {self.architecture!r}"
            )
        if self.architecture == "pixelcnn":
            check_pixelcnn_options(self)
        if self.architecture == "conv" and self.input_shape != (1, 28, 28):
            raise ValueError(
                f"architecture='conv' needs inputs of shape (1, 28, 28), got {self.input_shape}"
            )


@register_model("vae", smoke={"latent_dim": 2, "hidden": [16]})
class VAE(StandardNormalPrior):
    """Gaussian-latent VAE with an MLP (or small conv) encoder and decoder, or an MLP encoder
    and a gated PixelCNN decoder (:class:`~pvae.nets.pixelcnn.PixelCNN`).

    Options (:class:`VAEConfig`): those of every image model (``input_shape``,
    ``latent_dim`` D, ``hidden`` (the decoder mirrors them), ``activation``, ``likelihood``),
    ``architecture`` (``mlp``, ``conv`` or ``pixelcnn``, with ``pixelcnn_layers``,
    ``pixelcnn_channels`` and ``pixelcnn_spatial``), ``beta`` (the KL weight [3]) and ``free_bits``
    (lambda, the per-dimension KL floor in nats [4]).

    Shapes: ``model(x)`` and ``guide(x)`` take ``x`` of shape ``(B, *input_shape)``; the
    latent site ``"z"`` has shape ``(B, latent_dim)``.
    """

    Config = VAEConfig
    config: VAEConfig

    def __init__(self, config: VAEConfig | None = None, **options: Any) -> None:
        super().__init__(config, **options)
        config = self.config
        self.beta = getattr(config, "beta", 1.0)
        self.free_bits = getattr(config, "free_bits", 0.0)
        self.architecture = getattr(config, "architecture", "mlp")
        hidden = list(config.hidden)
        if self.architecture in ("mlp", "pixelcnn"):
            pixels = numel(self.input_shape)
            self.encoder = GaussianMLP(pixels, hidden, self.latent_dim, config.activation)
        if self.architecture == "mlp":
            self.decoder = mlp([self.latent_dim, *reversed(hidden), pixels], config.activation)
        if self.architecture == "pixelcnn":
            self.decoder = pixelcnn_from_config(config, self.latent_dim, self.input_shape)
        if self.architecture == "conv":
            self.encoder = ConvEncoder(self.latent_dim)
            self.decoder = ConvDecoder(self.latent_dim)
        self.likelihood = Likelihood(config.likelihood, self.input_shape)

    # -- Pyro model and guide -------------------------------------------------------------
    def model(self, x: torch.Tensor) -> None:
        """p(x, z) = p(z) p(x | z), the latent term weighted by beta; ``x``: ``(B, *input_shape)``."""
        self._check_input(x)
        with pyro.plate("data", x.shape[0]):
            with self._kl_weight():
                z = pyro.sample("z", self.prior())
                if self.free_bits > 0:
                    pyro.factor("free_bits", self.free_bits_surrogate(x))
            pyro.sample("x", self.likelihood(self.decode_logits(z, x)), obs=x)

    def guide(self, x: torch.Tensor) -> None:
        """q(z | x) = Normal(mu(x), diag sigma(x)^2), its log-density weighted by beta."""
        self._check_input(x)
        loc, scale = self.encode(x)
        with pyro.plate("data", x.shape[0]), self._kl_weight():
            pyro.sample("z", dist.Normal(loc, scale).to_event(1))

    # -- networks -------------------------------------------------------------------------
    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.architecture == "conv":
            return self.encoder(x)
        return self.encoder(self._flat(x))

    def encode_mean(self, x: torch.Tensor) -> torch.Tensor:
        return self.encode(x)[0]

    def decode_logits(self, z: torch.Tensor, x: torch.Tensor | None = None) -> torch.Tensor:
        """Logits of ``p(x | z)``, ``(..., *input_shape)``. The pixelcnn decoder's depend on
        ``x`` (each pixel's on the pixels before it); without ``x`` it draws one image from
        ``p(x | z)`` pixel by pixel and returns the logits given that draw."""
        if self.architecture == "pixelcnn":
            return self.decoder(z, self.decoder.sample(z) if x is None else x)
        logits = self.decoder(z)
        return logits.reshape(*z.shape[:-1], *self.input_shape)

    def eval_datum_size(self, args: tuple) -> int | None:
        """The pixelcnn decoder's feature maps, so that the evaluator's chunks fit in memory."""
        if self.architecture == "pixelcnn":
            return self.decoder.elements_per_image
        return None

    def free_bits_surrogate(self, x: torch.Tensor) -> torch.Tensor:
        """``c - stop_grad(c)`` with ``c = -sum_j max(0, lambda - mean_n KL_nj)``: shape ``(B,)``.

        The value is zero; the gradient (per datum, before the data plate's N/B scaling) is the
        free-bits correction divided by B, so the B data of the plate add up to one correction.
        """
        loc, scale = self.encode(x)
        # Analytic KL(N(mu, sigma^2) || N(0, 1)) per datum and dimension, shape (B, D).
        kl = 0.5 * (loc**2 + scale**2 - 1.0) - torch.log(scale)
        correction = -F.relu(self.free_bits - kl.mean(0)).sum()
        zero_valued = correction - correction.detach()
        return zero_valued.expand(x.shape[0])

    def _kl_weight(self) -> contextlib.AbstractContextManager:
        """``poutine.scale(beta)`` around the latent site, or nothing when ``beta == 1``."""
        return poutine.scale(scale=self.beta) if self.beta != 1.0 else contextlib.nullcontext()
