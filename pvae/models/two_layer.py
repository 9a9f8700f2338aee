"""The VAE with two stochastic layers of Burda et al. (2015).

Generative story (sizes of the paper's MNIST model)::

    z2_n ~ Normal(0, I_50)                                       site "z2", (B, 50)
    z1_n ~ Normal(mu(z2_n), diag sigma(z2_n)^2)   50-100-100-100  site "z1", (B, 100)
    x_n  ~ Bernoulli(f(z1_n))                     100-200-200-784 site "x"

Guide, bottom-up: ``q(z1 | x)`` (784-200-200-100), then ``q(z2 | z1)`` (100-100-100-50).
Layers use tanh; Gaussian layers output a linear mean and a positive scale.

References:
    [1] Burda, Grosse, Salakhutdinov. Importance Weighted Autoencoders. ICLR 2016.
        arXiv:1509.00519 (Table 1, two stochastic layers)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import pyro
import pyro.distributions as dist
import torch

from pvae.models.base import Model, ModelConfig, ints, option
from pvae.models.image import ImageModel
from pvae.models.likelihoods import LIKELIHOODS, Likelihood
from pvae.models.registry import register_model
from pvae.nets import ACTIVATIONS, GaussianMLP, mlp, numel


@dataclass(frozen=True)
class TwoLayerVAEConfig(ModelConfig):
    """Options of :class:`TwoLayerVAE` (no ``latent_dim``: ``latent_dims`` holds both layers;
    the command line's ``--latent-dim`` sets the top one)."""

    input_shape: tuple[int, ...] = option(
        (1, 28, 28), "shape of one datum (set by the dataset)", convert=ints
    )
    latent_dims: tuple[int, ...] = option((100, 50), "(D1, D2) of z1 and z2", convert=ints)
    hidden: tuple[int, ...] = option(
        (200, 100), "(H1, H2): widths of the x<->z1 and z1<->z2 networks", convert=ints
    )
    activation: str = option("tanh", f"one of {', '.join(ACTIVATIONS)}")
    likelihood: str = option("bernoulli", f"p(x | z1): one of {', '.join(LIKELIHOODS)}")

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> TwoLayerVAEConfig:
        options = dict(options)
        if "latent_dim" in options:  # the CLI's --latent-dim sets the top layer
            top = options.pop("latent_dim")
            options["latent_dims"] = (list(options.get("latent_dims", (100, 50)))[0], top)
        return super().from_options(options)

    def validate(self) -> None:
        if len(self.latent_dims) != 2 or min(self.latent_dims) < 1:
            raise ValueError(f"latent_dims must be two positive sizes, got {self.latent_dims}")
        if len(self.hidden) != 2 or min(self.hidden) < 1:
            raise ValueError(f"hidden must be two positive sizes, got {self.hidden}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(
                f"unknown activation {self.activation!r}; choose from {sorted(ACTIVATIONS)}"
            )


@register_model("vae2", smoke={"latent_dims": [3, 2], "hidden": [16, 8]})
class TwoLayerVAE(ImageModel):
    """Two stochastic layers ``x <- z1 <- z2``; train as a VAE or an IWAE.

    Options (:class:`TwoLayerVAEConfig`): ``latent_dims`` (D1, D2), ``hidden`` (H1, H2),
    ``activation`` (tanh, as in the paper) and ``likelihood``.
    """

    Config = TwoLayerVAEConfig
    config: TwoLayerVAEConfig

    def __init__(self, config: TwoLayerVAEConfig | None = None, **options: Any) -> None:
        Model.__init__(self, config, **options)
        config = self.config
        self.input_shape = config.input_shape
        d1, d2 = config.latent_dims
        h1, h2 = config.hidden
        self.latent_dim = d2
        activation = config.activation
        pixels = numel(self.input_shape)
        self.encoder1 = GaussianMLP(pixels, [h1, h1], d1, activation)
        self.encoder2 = GaussianMLP(d1, [h2, h2], d2, activation)
        self.decoder2 = GaussianMLP(d2, [h2, h2], d1, activation)
        self.decoder1 = mlp([d1, h1, h1, pixels], activation)
        self.likelihood = Likelihood(config.likelihood, self.input_shape)
        self.register_buffer("prior_loc", torch.zeros(d2))
        self.register_buffer("prior_scale", torch.ones(d2))

    def model(self, x: torch.Tensor) -> None:
        """p(x, z1, z2) = p(z2) p(z1 | z2) p(x | z1)."""
        self._check_input(x)
        with pyro.plate("data", x.shape[0]):
            z2 = pyro.sample("z2", dist.Normal(self.prior_loc, self.prior_scale).to_event(1))
            loc, scale = self.decoder2(z2)
            z1 = pyro.sample("z1", dist.Normal(loc, scale).to_event(1))
            pyro.sample("x", self.likelihood(self.decode_logits(z1)), obs=x)

    def guide(self, x: torch.Tensor) -> None:
        """q(z1, z2 | x) = q(z1 | x) q(z2 | z1)."""
        self._check_input(x)
        with pyro.plate("data", x.shape[0]):
            loc1, scale1 = self.encoder1(self._flat(x))
            z1 = pyro.sample("z1", dist.Normal(loc1, scale1).to_event(1))
            loc2, scale2 = self.encoder2(z1)
            pyro.sample("z2", dist.Normal(loc2, scale2).to_event(1))

    def encode_mean(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder1(self._flat(x))[0]

    def decode_logits(self, z1: torch.Tensor) -> torch.Tensor:
        return self.decoder1(z1).reshape(*z1.shape[:-1], *self.input_shape)

    def output_bias(self) -> torch.Tensor | None:
        return self.decoder1[-1].bias

    def prior_sample(
        self, num_samples: int, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """A draw of z1 from the prior p(z1) = E_{p(z2)} p(z1 | z2)."""
        eps = torch.randn(
            num_samples, self.latent_dim, generator=generator, device=self.prior_loc.device
        )
        loc, scale = self.decoder2(self.prior_loc + self.prior_scale * eps)
        noise = torch.randn(loc.shape, generator=generator, device=loc.device)
        return loc + scale * noise
