"""The VAE with an inverse autoregressive flow (IAF) posterior.

Generative story: the VAE's (:class:`pvae.models.vae.VAE`)::

    z_n ~ Normal(0, I_D)                       site "z", shape (B, D)
    x_n ~ p(x | f_theta(z_n))                  site "x", shape (B, *input_shape)

Guide (Kingma et al. 2016 [1]): an encoder gives features ``h(x)`` (the context, width
``hidden[-1]``), a diagonal Gaussian ``eps_0 ~ N(mu(h), diag sigma(h)^2)``, then T affine
autoregressive steps, each conditioned on h::

    eps_t = s_t(eps_{t-1}, h) * eps_{t-1} + m_t(eps_{t-1}, h),   t = 1..T,   z = eps_T
    log q(z | x) = log N(eps_0; mu, sigma^2) - sum_t sum_d log s_td

``m_t, s_t`` are MADE networks (``pyro.nn.ConditionalAutoRegressiveNN``, hidden sizes
``flow_hidden``, a random variable order per step) inside
``pyro.distributions.transforms.ConditionalAffineAutoregressive`` (``stable=True`` by default:
Kingma et al.'s sigmoid gating ``s = sigmoid(.)``, ``eps_t = s * eps + (1 - s) * m``). Sampling
runs the flow forward in one pass; ``log_prob`` of a value the guide sampled is exact, read
from the transforms' cache of the forward pass (no inversion). Values not produced by the
guide (e.g. conditioned ones) are inverted, D sequential passes per step.

References:
    [1] Kingma, Salimans, Jozefowicz, Chen, Sutskever, Welling. Improving Variational Inference
        with Inverse Autoregressive Flow. NeurIPS 2016. arXiv:1606.04934
    [2] Germain, Gregor, Murray, Larochelle. MADE: Masked Autoencoder for Distribution
        Estimation. ICML 2015. arXiv:1502.03509
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pyro
import pyro.distributions as dist
import torch
from pyro.distributions.transforms import ConditionalAffineAutoregressive
from pyro.nn import ConditionalAutoRegressiveNN
from torch import nn

from pvae.models.base import flag, ints, option
from pvae.models.image import ImageConfig
from pvae.models.registry import register_model
from pvae.models.vae import VAE


@dataclass(frozen=True)
class IAFVAEConfig(ImageConfig):
    """Options of :class:`IAFVAE`: the VAE's, without ``architecture``, ``beta`` and
    ``free_bits`` (the IAF guide is not Gaussian, so the analytic per-dimension KL they rely
    on does not apply)."""

    num_flows: int = option(2, "T, the number of IAF steps (0: the plain VAE guide)", convert=int)
    flow_hidden: tuple[int, ...] | None = option(
        None, "hidden sizes of each step's MADE (default 2 x max(32, 2 latent_dim))", convert=ints
    )
    stable: bool = option(True, "sigmoid-gated update of Kingma et al.", convert=flag)
    needs_hidden = True

    def validate(self) -> None:
        if not self.hidden:
            raise ValueError("IAFVAE needs at least one hidden layer (its output is the context)")
        super().validate()
        if self.num_flows < 0:
            raise ValueError(f"num_flows must be >= 0, got {self.num_flows}")
        if self.latent_dim < 2 and self.num_flows > 0:
            raise ValueError("an autoregressive flow needs latent_dim >= 2")
        if self.flow_hidden is None:
            object.__setattr__(self, "flow_hidden", (max(32, 2 * self.latent_dim),) * 2)


@register_model("iaf", smoke={"latent_dim": 2, "hidden": [16], "num_flows": 1, "flow_hidden": [8]})
class IAFVAE(VAE):
    """VAE whose guide is a diagonal Gaussian followed by ``num_flows`` context-dependent IAF steps.

    Options (:class:`IAFVAEConfig`): those of every image model (MLP encoder only: its last
    hidden layer is the context h(x) fed to every flow step), ``num_flows`` T,
    ``flow_hidden`` (each step's MADE) and ``stable`` (the sigmoid-gated update of [1]
    instead of ``s * eps + m``).

    Shapes: ``x`` ``(B, *input_shape)``; site ``"z"`` ``(B, D)`` (``(K, B, D)`` with K
    importance samples); context ``(B, hidden[-1])``.
    """

    Config = IAFVAEConfig
    config: IAFVAEConfig

    def __init__(self, config: IAFVAEConfig | None = None, **options: Any) -> None:
        super().__init__(config, **options)
        config = self.config
        context_dim = int(config.hidden[-1])
        self.flows = nn.ModuleList(
            ConditionalAffineAutoregressive(
                ConditionalAutoRegressiveNN(self.latent_dim, context_dim, list(config.flow_hidden)),
                stable=config.stable,
            )
            for _ in range(config.num_flows)
        )

    def guide(self, x: torch.Tensor) -> None:
        """q(z | x): Gaussian base, then ``num_flows`` IAF steps conditioned on h(x)."""
        self._check_input(x)
        q = self.posterior(x)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", q)

    def posterior(self, x: torch.Tensor) -> dist.TorchDistribution:
        """q(z | x) as a ``TransformedDistribution``, batch shape ``x.shape[:-len(input_shape)]``."""
        flat = self._flat(x)
        context = self.encoder.trunk(flat)
        loc, scale = self.encoder.head(context)
        base = dist.Normal(loc, scale).to_event(1)
        if not len(self.flows):
            return base
        return dist.TransformedDistribution(base, [f.condition(context) for f in self.flows])

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(loc, scale)`` of the base Gaussian (before the flow), ``(..., D)`` each."""
        return self.encoder(self._flat(x))

    def encode_mean(self, x: torch.Tensor) -> torch.Tensor:
        """The flow's image of the base Gaussian's mean (a representative point of q(z | x))."""
        flat = self._flat(x)
        context = self.encoder.trunk(flat)
        z = self.encoder.head(context)[0]
        for flow in self.flows:
            z = flow.condition(context)(z)
        return z
