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

from collections.abc import Sequence

import pyro
import pyro.distributions as dist
import torch

from pvae.models.likelihoods import Likelihood
from pvae.models.registry import register_model
from pvae.models.vae import ImageModel
from pvae.nets import GaussianMLP, mlp, numel


@register_model("vae2")
class TwoLayerVAE(ImageModel):
    """Two stochastic layers ``x <- z1 <- z2``; train as a VAE or an IWAE.

    Args:
        input_shape: shape of one datum, default ``(1, 28, 28)``.
        latent_dims: ``(D1, D2)``, default ``(100, 50)``.
        hidden: ``(H1, H2)``: widths of the x<->z1 and z1<->z2 networks (two layers each),
            default ``(200, 100)``.
        activation: default ``tanh`` as in the paper.
        likelihood: ``bernoulli`` (default), ``continuous_bernoulli`` or ``gaussian``.
    """

    def __init__(
        self,
        input_shape: Sequence[int] = (1, 28, 28),
        latent_dims: Sequence[int] = (100, 50),
        hidden: Sequence[int] = (200, 100),
        activation: str = "tanh",
        likelihood: str = "bernoulli",
        latent_dim: int | None = None,
    ) -> None:
        super().__init__()
        input_shape = tuple(int(s) for s in input_shape)
        d1, d2 = (int(d) for d in latent_dims)
        if latent_dim is not None:  # the CLI's --latent-dim sets the top layer
            d2 = int(latent_dim)
        h1, h2 = (int(h) for h in hidden)
        self.config = dict(
            input_shape=list(input_shape),
            latent_dims=[d1, d2],
            hidden=[h1, h2],
            activation=activation,
            likelihood=likelihood,
        )
        self.input_shape = input_shape
        self.latent_dim = d2
        pixels = numel(input_shape)
        self.encoder1 = GaussianMLP(pixels, [h1, h1], d1, activation)
        self.encoder2 = GaussianMLP(d1, [h2, h2], d2, activation)
        self.decoder2 = GaussianMLP(d2, [h2, h2], d1, activation)
        self.decoder1 = mlp([d1, h1, h1, pixels], activation)
        self.likelihood = Likelihood(likelihood, input_shape)
        self.register_buffer("prior_loc", torch.zeros(d2))
        self.register_buffer("prior_scale", torch.ones(d2))

    def encode_mean(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder1(x.reshape(*x.shape[: -len(self.input_shape)], -1))[0]

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
            loc1, scale1 = self.encoder1(x.reshape(*x.shape[: -len(self.input_shape)], -1))
            z1 = pyro.sample("z1", dist.Normal(loc1, scale1).to_event(1))
            loc2, scale2 = self.encoder2(z1)
            pyro.sample("z2", dist.Normal(loc2, scale2).to_event(1))
