"""The beta-VAE, with optional free bits.

Generative story and guide are the VAE's (:class:`pvae.models.vae.VAE`); only the objective
changes. For a minibatch M of size B out of N data, with D latent dimensions::

    z_n ~ Normal(0, I_D)                  site "z", shape (B, D), log-density scaled by beta
    x_n ~ p(x | f_theta(z_n))             site "x", shape (B, *input_shape)
    q(z_n | x_n) = Normal(mu(x_n), diag sigma(x_n)^2)   site "z", scaled by beta

so the ELBO becomes ``E_q[log p(x | z)] - beta * KL(q(z | x) || p(z))`` [1] (beta > 1 trades
reconstruction for a more factorised code). ``poutine.scale(beta)`` wraps the latent site in
both the model and the guide, so the analytic-KL ELBO, the Monte Carlo ELBO and Pyro's ELBOs
all weight the KL term by beta.

Free bits (Kingma et al. 2016 [2], Eq. 15) replace the KL of every latent dimension j by
``max(lambda, KL_j)``, with ``KL_j`` the minibatch average of the analytic per-dimension KL::

    L_fb = E_q[log p(x | z)] - beta * sum_j max(lambda, mean_{n in M} KL(q(z_nj | x_n) || p(z_j)))
         = ELBO_beta - beta * sum_j max(0, lambda - mean_{n in M} KL_nj)

The second term is added by a ``pyro.factor("free_bits", ...)`` site in the model as a
*zero-valued surrogate* ``c - stop_grad(c)``: its value is 0 (so reported bounds, validation
ELBOs and importance-sampled log-likelihoods stay those of the beta-VAE, and evaluation is not
biased by a batch-dependent term) while its gradient is exactly the free-bits gradient: for
dimensions below the floor it cancels the KL's gradient, so the encoder is not pushed to close
them. The cancellation is exact with the analytic-KL ELBO (pvae's default ``"elbo"``) and holds
in expectation with Monte Carlo KL estimates.

References:
    [1] Higgins et al. beta-VAE: Learning Basic Visual Concepts with a Constrained Variational
        Framework. ICLR 2017. https://openreview.net/forum?id=Sy2fzU9gl
    [2] Kingma, Salimans, Jozefowicz, Chen, Sutskever, Welling. Improving Variational Inference
        with Inverse Autoregressive Flow. NeurIPS 2016. arXiv:1606.04934
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import pyro
import pyro.poutine as poutine
import torch
from torch.nn import functional as F

from pvae.models.registry import register_model
from pvae.models.vae import VAE


@register_model("beta_vae")
class BetaVAE(VAE):
    """A :class:`~pvae.models.vae.VAE` trained with a KL weight ``beta`` and free bits.

    Args:
        input_shape, latent_dim, hidden, activation, likelihood, architecture: as for
            :class:`~pvae.models.vae.VAE`.
        beta: weight of the KL term, ``> 0`` (1 is the plain VAE).
        free_bits: lambda, the per-dimension KL floor in nats, ``>= 0`` (0 disables it).

    Shapes: ``model(x)`` and ``guide(x)`` take ``x`` of shape ``(B, *input_shape)``; the
    latent site ``"z"`` has shape ``(B, latent_dim)``.
    """

    def __init__(
        self,
        input_shape: Sequence[int] = (1, 28, 28),
        latent_dim: int = 50,
        hidden: Sequence[int] = (400,),
        activation: str = "relu",
        likelihood: str = "bernoulli",
        architecture: str = "mlp",
        beta: float = 1.0,
        free_bits: float = 0.0,
    ) -> None:
        super().__init__(input_shape, latent_dim, hidden, activation, likelihood, architecture)
        beta, free_bits = float(beta), float(free_bits)
        if not (beta > 0 and math.isfinite(beta)):
            raise ValueError(f"beta must be a positive number, got {beta}")
        if not (free_bits >= 0 and math.isfinite(free_bits)):
            raise ValueError(f"free_bits must be a non-negative number of nats, got {free_bits}")
        self.config.update(beta=beta, free_bits=free_bits)
        self.beta = beta
        self.free_bits = free_bits

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

    def model(self, x: torch.Tensor) -> None:
        """p(x, z) = p(z) p(x | z), the latent term weighted by beta; ``x``: ``(B, *input_shape)``."""
        self._check_input(x)
        with pyro.plate("data", x.shape[0]):
            with poutine.scale(scale=self.beta):
                z = pyro.sample("z", self.prior())
                if self.free_bits > 0:
                    pyro.factor("free_bits", self.free_bits_surrogate(x))
            pyro.sample("x", self.likelihood(self.decode_logits(z)), obs=x)

    def guide(self, x: torch.Tensor) -> None:
        """q(z | x) = Normal(mu(x), diag sigma(x)^2), its log-density weighted by beta."""
        self._check_input(x)
        loc, scale = self.encode(x)
        with pyro.plate("data", x.shape[0]), poutine.scale(scale=self.beta):
            pyro.sample("z", pyro.distributions.Normal(loc, scale).to_event(1))
