"""The vMF text VAE of Xu & Durrett (2018), "Spherical Latent Spaces for Stable Variational
Autoencoders".

The sentence VAE (:mod:`pvae.models.sentence_vae`) with z on the unit sphere ``S^(d-1)``::

    z_n ~ Uniform(S^(d-1))                                 site "z", shape (B, d), |z| = 1
    x_n ~ the LSTM decoder given z_n                       site "x"

Guide: ``q(z_n | x_n) = vMF(mu(x_n), kappa)`` with ``mu`` the normalised encoder output and a
*fixed* concentration ``kappa``. Then ``KL(vMF(mu, kappa) || Uniform)`` does not depend on mu
(:func:`pvae.distributions.von_mises_fisher` registers it in closed form): the KL term is a
constant that the optimiser cannot drive to zero, so the posterior cannot collapse; kappa
trades reconstruction against that constant (the paper's best PTB setting: kappa = 80).
``learn_kappa=True`` instead predicts ``kappa(x) = softplus(.) + 1`` per sentence (the
hyperspherical VAE's guide), which can collapse again.

References:
    [1] Xu, Durrett. Spherical Latent Spaces for Stable Variational Autoencoders. EMNLP 2018.
        arXiv:1808.10805
    [2] Davidson, Falorsi, De Cao, Kipf, Tomczak. Hyperspherical Variational Auto-Encoders.
        UAI 2018. arXiv:1804.00891
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import pyro.distributions as dist
import torch
from torch import nn
from torch.nn import functional as F

from pvae.distributions import HypersphericalUniform, VonMisesFisher
from pvae.models.base import option
from pvae.models.registry import register_model
from pvae.models.sentence_vae import SentenceVAE, SentenceVAEConfig, _flag


@dataclass(frozen=True)
class VMFTextVAEConfig(SentenceVAEConfig):
    """Options of :class:`VMFTextVAE`."""

    latent_dim: int = option(32, "d, the ambient dimension of the sphere S^(d-1)", convert=int)
    kappa: float = option(80.0, "the vMF's fixed concentration", convert=float)
    learn_kappa: bool = option(False, "predict kappa(x) instead of fixing it", convert=_flag)

    def validate(self) -> None:
        super().validate()
        if self.latent_dim < 2:
            raise ValueError(
                f"latent_dim is the sphere's ambient dimension, >= 2; got {self.latent_dim}"
            )
        if not (self.kappa > 0 and math.isfinite(self.kappa)):
            raise ValueError(f"kappa must be a positive number, got {self.kappa}")
        if self.free_bits > 0:
            raise ValueError(
                "free_bits applies to Gaussian latents; the vMF's KL is fixed by kappa"
            )


SMOKE = {"embed_dim": 8, "hidden_dim": 8, "latent_dim": 3, "max_decode_length": 8, "kappa": 5.0}


@register_model("vmf_text_vae", smoke=SMOKE, smoke_dataset="ptb")
class VMFTextVAE(SentenceVAE):
    """Sentence VAE with a vMF posterior of fixed concentration and the uniform prior on
    ``S^(latent_dim - 1)`` (Xu & Durrett 2018).

    Options (:class:`VMFTextVAEConfig`): those of :class:`~pvae.models.sentence_vae.SentenceVAE`
    (without ``free_bits``), ``kappa`` and ``learn_kappa``.
    """

    Config = VMFTextVAEConfig
    config: VMFTextVAEConfig

    def __init__(self, config: VMFTextVAEConfig | None = None, **options: Any) -> None:
        super().__init__(config, **options)

    def build_posterior_head(self) -> nn.Module:
        outputs = self.latent_dim + (1 if self.config.learn_kappa else 0)
        return nn.Linear(self.config.hidden_dim, outputs)

    def _direction_and_kappa(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.posterior_head(self.encoder(x))
        direction = out[..., : self.latent_dim]
        loc = direction / torch.linalg.vector_norm(direction, dim=-1, keepdim=True).clamp_min(1e-12)
        if self.config.learn_kappa:
            kappa = F.softplus(out[..., -1]) + 1.0
        else:
            kappa = torch.full(
                loc.shape[:-1], self.config.kappa, dtype=loc.dtype, device=loc.device
            )
        return loc, kappa

    def prior(self) -> dist.TorchDistribution:
        return HypersphericalUniform(self.latent_dim, like=self._anchor)

    def posterior(self, x: torch.Tensor) -> dist.TorchDistribution:
        return VonMisesFisher(*self._direction_and_kappa(x))

    def encode_mean(self, x: torch.Tensor) -> torch.Tensor:
        """The mode mu(x), a point on the sphere."""
        return self._direction_and_kappa(self._trim(x))[0]

    def prior_sample(
        self, num_samples: int, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        g = torch.randn(num_samples, self.latent_dim, generator=generator).to(self._anchor)
        return g / torch.linalg.vector_norm(g, dim=-1, keepdim=True)

    def interpolate(self, z1: torch.Tensor, z2: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The line between two points, projected back onto the sphere."""
        z = (1 - t) * z1 + t * z2
        return z / torch.linalg.vector_norm(z, dim=-1, keepdim=True).clamp_min(1e-12)
