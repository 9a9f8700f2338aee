"""The Stein VAE [1]: the Gaussian VAE's generative model with a sampler for an encoder,
trained by Stein variational gradient descent (:class:`~pvae.infer.stein.SteinVGD`).

Generative story, for each datum n (as :mod:`pvae.models.vae`, MLP decoder)::

    z_n ~ Normal(0, I_D)                       site "z", shape (B, D)
    x_n ~ p(x | f_theta(z_n))                  site "x", Bernoulli by default

Encoder: the sampler ``z = g_eta(x, xi)``, ``xi ~ N(0, I)`` (:class:`~pvae.infer.stein.SteinEncoder`),
without a density. Training (``training_setup``): the sampler's particles, moved by SVGD toward
``p(z | x)``, train the decoder, and the sampler follows them; ``importance_weighted=True`` is
the importance-weighted variant (Stein VIWAE) of [1]. Evaluation (``guide``): the diagonal
Gaussian fitted to ``fit_particles`` particles of each datum
(:func:`~pvae.infer.stein.fitted_gaussian_guide`), drawn independently of the importance
samples, so the importance-sampled ``log p(x)`` is a stochastic lower bound.

``pvae train --model stein_vae --dataset mnist`` trains it from the CLI (the objective comes
from the model, whatever ``--objective`` says); ``--model-option importance_weighted=true``
the Stein VIWAE.

References:
    [1] Pu, Gan, Henao, Li, Han, Carin. VAE Learning via Stein Variational Gradient Descent.
        NeurIPS 2017. arXiv:1704.05155
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import pyro
import torch

from pvae.infer.stein import SteinEncoder, SteinVGD, fitted_gaussian_guide
from pvae.models.base import option
from pvae.models.image import ImageConfig, StandardNormalPrior
from pvae.models.likelihoods import Likelihood
from pvae.models.registry import register_model
from pvae.nets import mlp, numel

__all__ = ["SteinVAE", "SteinVAEConfig"]


@dataclass(frozen=True)
class SteinVAEConfig(ImageConfig):
    """Options of :class:`SteinVAE`."""

    particles: int = option(
        10, "M, particles per datum (with importance_weighted: in all)", convert=int
    )
    step_size: float = option(0.05, "the SVGD step", convert=float)
    svgd_steps: int = option(1, "SVGD steps per training step", convert=int)
    importance_weighted: bool = option(False, "the Stein VIWAE variant of [1]")
    iw_k: int = option(2, "k, particles per importance-weighted tuple", convert=int)
    iw_proposal: str = option(
        "kde", "q of the importance weights: 'kde' (of the particles) or 'gaussian' (fitted)"
    )
    iw_control_variate: bool = option(
        True, "drop the zero-mean (Stein's identity) q part of the tuple update"
    )
    fit_particles: int = option(100, "particles the evaluation Gaussian is fitted to", convert=int)

    def validate(self) -> None:
        super().validate()
        tuples = self.particles // self.iw_k if self.importance_weighted else self.particles
        if self.iw_k < 1 or tuples < 2:
            raise ValueError(
                f"particles must leave at least 2 (tuples of) particles per datum, got "
                f"particles={self.particles}, iw_k={self.iw_k}"
            )
        if not (self.step_size > 0 and math.isfinite(self.step_size)) or self.svgd_steps < 1:
            raise ValueError("step_size must be a positive number and svgd_steps >= 1")
        if self.iw_proposal not in ("kde", "gaussian"):
            raise ValueError(f"iw_proposal must be 'kde' or 'gaussian', got {self.iw_proposal!r}")
        if self.fit_particles < 2:
            raise ValueError(f"fit_particles must be >= 2, got {self.fit_particles}")


@register_model("stein_vae", smoke={"latent_dim": 2, "hidden": [16], "particles": 4})
class SteinVAE(StandardNormalPrior):
    """The Stein VAE of [1] (module docstring): an MLP decoder and a :class:`SteinEncoder`
    of the same hidden widths.

    Shapes: ``model(x)`` and ``guide(x)`` take ``x`` ``(B, *input_shape)``; ``"z"`` is
    ``(B, latent_dim)``.
    """

    Config = SteinVAEConfig
    config: SteinVAEConfig

    def __init__(self, config: SteinVAEConfig | None = None, **options: Any) -> None:
        super().__init__(config, **options)
        config = self.config
        pixels = numel(self.input_shape)
        hidden = list(config.hidden)
        self.sampler = SteinEncoder(pixels, self.latent_dim, hidden=tuple(hidden))
        self.decoder = mlp([self.latent_dim, *reversed(hidden), pixels], config.activation)
        self.likelihood = Likelihood(config.likelihood, self.input_shape)

    def model(self, x: torch.Tensor) -> None:
        """p(x, z) = p(z) p(x | z); ``x``: ``(B, *input_shape)``."""
        self._check_input(x)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", self.prior())
            pyro.sample("x", self.likelihood(self.decode_logits(z)), obs=x)

    def guide(self, x: torch.Tensor) -> None:
        """The evaluation guide: the Gaussian fitted to the sampler's particles."""
        self._check_input(x)
        fitted_gaussian_guide(self.sampler.guide, self.config.fit_particles)(x)

    def training_setup(self, train: Any, valid: Any = None, **options: Any) -> dict[str, Any]:
        """The sampler as the trained guide and :class:`SteinVGD` as the objective; no
        validation (the sampler has no density for a validation ELBO; the run's test NLL uses
        the fitted Gaussian)."""
        config = self.config
        tuples = config.particles // config.iw_k if config.importance_weighted else None
        objective = SteinVGD(
            num_particles=tuples or config.particles,
            step_size=config.step_size,
            svgd_steps=config.svgd_steps,
            importance_weighted=config.importance_weighted,
            k=config.iw_k,
            proposal=config.iw_proposal,
            control_variate=config.iw_control_variate,
        )
        return {"guide": self.sampler.guide, "objective": objective, "valid_data": None}

    def decode_logits(self, z: torch.Tensor, x: torch.Tensor | None = None) -> torch.Tensor:
        return self.decoder(z).reshape(*z.shape[:-1], *self.input_shape)

    @torch.no_grad()
    def encode_mean(self, x: torch.Tensor) -> torch.Tensor:
        """The mean of ``fit_particles`` particles per datum, ``(B, latent_dim)``."""
        flat = self._flat(x)
        noise = torch.randn(self.config.fit_particles, x.shape[0], self.sampler.noise_dim)
        return self.sampler(flat, noise.to(flat)).mean(0)
