"""The hyperspherical VAE (S-VAE).

Generative story (Davidson et al. 2018 [1]), with ``latent_dim = d`` meaning that z lies on
the unit sphere ``S^(d-1)`` embedded in ``R^d`` (d coordinates, d - 1 degrees of freedom)::

    z_n ~ Uniform(S^(d-1))                     site "z", shape (B, d), |z_n| = 1
    x_n ~ p(x | f_theta(z_n))                  site "x", shape (B, *input_shape)

Guide: ``q(z_n | x_n) = vMF(mu(x_n), kappa(x_n))`` with ``mu = g(x) / |g(x)|`` and
``kappa = softplus(.) + 1`` (so kappa >= 1, as in the authors' code). The KL between the vMF
and the uniform prior is registered (``pvae.distributions``), so pvae's ``"elbo"`` objective
uses it analytically; the vMF's ``rsample`` is reparameterized in both mu and kappa.

Architecture (authors' code): encoder 784-256-128 and decoder d-128-256-784, ReLU.

Degrees of freedom: ``S^(d-1)`` has d - 1 of them, one fewer than a Gaussian ``R^d``. The
authors' code compares a Gaussian VAE of ``z_dim`` dimensions with a vMF VAE of ``z_dim + 1``
(the sphere ``S^z_dim``), so use ``latent_dim = D + 1`` beside a D-dimensional Gaussian VAE;
``benchmarks/svae_sweep.py`` does.

References:
    [1] Davidson, Falorsi, De Cao, Kipf, Tomczak. Hyperspherical Variational Auto-Encoders.
        UAI 2018. arXiv:1804.00891
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pyro
import pyro.distributions as dist
import torch
from torch import nn
from torch.nn import functional as F

from pvae.distributions import HypersphericalUniform, VonMisesFisher
from pvae.models.base import ints, option
from pvae.models.image import ImageConfig, ImageModel
from pvae.models.likelihoods import Likelihood
from pvae.models.registry import register_model
from pvae.nets import ACTIVATIONS, mlp, numel


@dataclass(frozen=True)
class HypersphericalVAEConfig(ImageConfig):
    """Options of :class:`HypersphericalVAE`."""

    latent_dim: int = option(
        10, "d, the ambient dimension of the sphere S^(d-1) (>= 2)", convert=int
    )
    hidden: tuple[int, ...] = option(
        (256, 128), "encoder hidden sizes (the decoder mirrors them)", convert=ints
    )
    needs_hidden = True

    def validate(self) -> None:
        if self.latent_dim < 2:
            raise ValueError(
                f"latent_dim is the ambient dimension d of the sphere S^(d-1) and must be >= 2, "
                f"got {self.latent_dim}"
            )
        super().validate()


@register_model("svae", smoke={"latent_dim": 3, "hidden": [16]})
class HypersphericalVAE(ImageModel):
    """VAE with a von Mises-Fisher posterior and a uniform prior on ``S^(latent_dim - 1)``.

    Options (:class:`HypersphericalVAEConfig`): those of every image model, with
    ``latent_dim`` d the ambient dimension of the sphere (``d = 3`` is the 2-sphere, with as
    many degrees of freedom as a 2-dimensional Gaussian latent) and default hidden sizes
    ``(256, 128)``.

    Shapes: ``x`` ``(B, *input_shape)``; site ``"z"`` ``(B, d)`` on the unit sphere.
    """

    Config = HypersphericalVAEConfig
    config: HypersphericalVAEConfig

    def __init__(self, config: HypersphericalVAEConfig | None = None, **options: Any) -> None:
        super().__init__(config, **options)
        config = self.config
        hidden = list(config.hidden)
        pixels = numel(self.input_shape)
        trunk = mlp([pixels, *hidden], config.activation)
        self.encoder = nn.Sequential(trunk, ACTIVATIONS[config.activation]())
        self.encoder_direction = nn.Linear(hidden[-1], self.latent_dim)
        self.encoder_concentration = nn.Linear(hidden[-1], 1)
        self.decoder = mlp([self.latent_dim, *reversed(hidden), pixels], config.activation)
        self.likelihood = Likelihood(config.likelihood, self.input_shape)
        self.register_buffer("_anchor", torch.zeros(()))  # carries dtype and device

    def model(self, x: torch.Tensor) -> None:
        """p(x, z) = Uniform(z; S^(d-1)) p(x | z); ``x`` ``(B, *input_shape)``."""
        self._check_input(x)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", self.prior())
            pyro.sample("x", self.likelihood(self.decode_logits(z)), obs=x)

    def guide(self, x: torch.Tensor) -> None:
        """q(z | x) = vMF(mu(x), kappa(x))."""
        self._check_input(x)
        loc, kappa = self.encode(x)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", VonMisesFisher(loc, kappa))

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(mu, kappa)``: mean direction ``(..., d)`` of unit norm and concentration ``(...)``."""
        h = self.encoder(self._flat(x))
        direction = self.encoder_direction(h)
        loc = direction / torch.linalg.vector_norm(direction, dim=-1, keepdim=True).clamp_min(1e-12)
        kappa = F.softplus(self.encoder_concentration(h)).squeeze(-1) + 1.0
        return loc, kappa

    def encode_mean(self, x: torch.Tensor) -> torch.Tensor:
        """The mode mu(x) (a point on the sphere)."""
        return self.encode(x)[0]

    def decode_logits(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(z).reshape(*z.shape[:-1], *self.input_shape)

    def prior(self) -> dist.TorchDistribution:
        return HypersphericalUniform(self.latent_dim, like=self._anchor)

    def prior_sample(
        self, num_samples: int, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Uniform draws on the sphere (normalised Gaussians), ``(n, d)``."""
        g = torch.randn(
            num_samples,
            self.latent_dim,
            generator=generator,
            dtype=self._anchor.dtype,
            device=self._anchor.device,
        )
        return g / torch.linalg.vector_norm(g, dim=-1, keepdim=True)
