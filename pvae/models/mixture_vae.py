"""A VAE with a learned mixture-of-Gaussians prior and a mixture-of-Gaussians posterior.

Generative story, with K prior components of learned weights, locations and scales::

    c_n ~ Categorical(softmax(w))                         (marginalised, not a site)
    z_n ~ sum_k pi_k Normal(m_k, diag s_k^2)              site "z", shape (B, D)
    x_n ~ p(x | f_theta(z_n))                             site "x", shape (B, *input_shape)

Guide: a mixture of J diagonal Gaussians whose weights, locations and scales the encoder
outputs::

    q(z_n | x_n) = sum_j alpha_j(x_n) Normal(mu_j(x_n), diag sigma_j(x_n)^2)

sampled with :class:`pvae.distributions.ReparameterizedMixture`, whose ``rsample`` carries
implicit reparameterization gradients [2, 3] to the weights ``alpha`` as well as to ``mu`` and
``sigma``, so the whole bound is trained by pathwise gradients. There is no closed-form KL
between mixtures: the ELBO estimates ``E_q[log p(z) - log q(z | x)]`` by Monte Carlo (pvae's
``"elbo"`` falls back to it automatically). A learned mixture prior is the MoG special case
of the VampPrior family [1].

References:
    [1] Tomczak, Welling. VAE with a VampPrior. AISTATS 2018. arXiv:1705.07120
    [2] Graves. Stochastic Backpropagation through Mixture Density Distributions. 2016.
        arXiv:1607.05690
    [3] Figurnov, Mohamed, Mnih. Implicit Reparameterization Gradients. NeurIPS 2018.
        arXiv:1805.08498
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import pyro
import pyro.distributions as dist
import torch
from torch import nn
from torch.nn import functional as F

from pvae.distributions import ReparameterizedMixture
from pvae.models.base import option
from pvae.models.image import ImageConfig, ImageModel
from pvae.models.likelihoods import Likelihood
from pvae.models.registry import register_model
from pvae.nets import ACTIVATIONS, mlp, numel


@dataclass(frozen=True)
class MixtureVAEConfig(ImageConfig):
    """Options of :class:`MixtureVAE`."""

    latent_dim: int = option(10, "latent dimensions", convert=int)
    prior_components: int = option(10, "K, components of the learned prior", convert=int)
    guide_components: int = option(
        2, "J, components of q(z | x) (1: a Gaussian guide)", convert=int
    )
    needs_hidden = True

    def validate(self) -> None:
        super().validate()
        if self.prior_components < 1 or self.guide_components < 1:
            raise ValueError(
                f"prior_components and guide_components must be >= 1, got "
                f"{self.prior_components} and {self.guide_components}"
            )


@register_model("mixture", smoke={"latent_dim": 2, "hidden": [16], "prior_components": 3})
class MixtureVAE(ImageModel):
    """Mixture-of-Gaussians prior (``prior_components`` = K) and posterior (``guide_components`` = J).

    Options (:class:`MixtureVAEConfig`): those of every image model, ``prior_components`` and
    ``guide_components``.

    Shapes: ``x`` ``(B, *input_shape)``; site ``"z"`` ``(B, D)``; the encoder's outputs are
    logits ``(B, J)``, locations and scales ``(B, J, D)``.
    """

    Config = MixtureVAEConfig
    config: MixtureVAEConfig

    def __init__(self, config: MixtureVAEConfig | None = None, **options: Any) -> None:
        super().__init__(config, **options)
        config = self.config
        d = self.latent_dim
        self.guide_components = j = config.guide_components
        k = config.prior_components
        hidden = list(config.hidden)
        pixels = numel(self.input_shape)
        trunk = mlp([pixels, *hidden], config.activation)
        self.encoder = nn.Sequential(trunk, ACTIVATIONS[config.activation]())
        self.encoder_logits = nn.Linear(hidden[-1], j)
        self.encoder_loc = nn.Linear(hidden[-1], j * d)
        self.encoder_scale = nn.Linear(hidden[-1], j * d)
        self.decoder = mlp([d, *reversed(hidden), pixels], config.activation)
        self.likelihood = Likelihood(config.likelihood, self.input_shape)
        # Prior components start spread out (a fixed draw, so builds are reproducible), unit scale.
        init = torch.Generator().manual_seed(0)
        self.prior_logits = nn.Parameter(torch.zeros(k))
        self.prior_loc = nn.Parameter(torch.randn(k, d, generator=init))
        self.prior_raw_scale = nn.Parameter(torch.full((k, d), math.log(math.e - 1)))

    # -- Pyro model and guide -------------------------------------------------------------
    def model(self, x: torch.Tensor) -> None:
        """p(x, z) = p_MoG(z) p(x | z); ``x`` ``(B, *input_shape)``."""
        self._check_input(x)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", self.prior())
            pyro.sample("x", self.likelihood(self.decode_logits(z)), obs=x)

    def guide(self, x: torch.Tensor) -> None:
        """q(z | x) = sum_j alpha_j(x) N(mu_j(x), diag sigma_j(x)^2), implicitly reparameterized."""
        self._check_input(x)
        q = self.posterior(x)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", q)

    # -- distributions ----------------------------------------------------------------------
    def prior(self) -> dist.TorchDistribution:
        """p(z) = sum_k pi_k N(m_k, diag s_k^2), event shape ``(D,)``."""
        components = dist.Normal(self.prior_loc, F.softplus(self.prior_raw_scale) + 1e-4)
        return dist.MixtureSameFamily(
            dist.Categorical(logits=self.prior_logits), components.to_event(1)
        )

    def posterior(self, x: torch.Tensor) -> ReparameterizedMixture:
        """q(z | x), batch shape ``x.shape[:-len(input_shape)]``, event shape ``(D,)``."""
        h = self.encoder(self._flat(x))
        shape = (*h.shape[:-1], self.guide_components, self.latent_dim)
        loc = self.encoder_loc(h).reshape(shape)
        scale = F.softplus(self.encoder_scale(h)).reshape(shape) + 1e-4
        return ReparameterizedMixture(
            torch.distributions.Categorical(logits=self.encoder_logits(h)),
            torch.distributions.Independent(torch.distributions.Normal(loc, scale), 1),
        )

    # -- networks -------------------------------------------------------------------------
    def encode_mean(self, x: torch.Tensor) -> torch.Tensor:
        return self.posterior(x).mean

    def decode_logits(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(z).reshape(*z.shape[:-1], *self.input_shape)

    def prior_sample(
        self, num_samples: int, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Draws from the mixture prior, ``(n, D)``: a component, then its Gaussian."""
        probs = torch.softmax(self.prior_logits, -1)
        index = torch.multinomial(probs, num_samples, replacement=True, generator=generator)
        eps = torch.randn(
            num_samples, self.latent_dim, generator=generator, device=self.prior_loc.device
        )
        scale = F.softplus(self.prior_raw_scale) + 1e-4
        return self.prior_loc[index] + scale[index] * eps
