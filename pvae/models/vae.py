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
from collections.abc import Sequence

import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
import torch
from pyro.nn import PyroModule
from torch.nn import functional as F

from pvae.models.likelihoods import Likelihood
from pvae.models.registry import register_model
from pvae.nets import ConvDecoder, ConvEncoder, GaussianMLP, mlp, numel


class ImageModel(PyroModule):
    """Shared conveniences of pvae's image models (not a model by itself).

    Subclasses define ``model(x)``, ``guide(x)``, ``decode_logits(z)``, ``prior_sample(n)`` and
    keep their constructor arguments in ``self.config`` (saved in checkpoints).
    """

    config: dict

    def _shared_options(
        self,
        input_shape: Sequence[int],
        latent_dim: int,
        hidden: Sequence[int],
        *,
        needs_hidden: bool = False,
    ) -> tuple[tuple[int, ...], int, list[int]]:
        """The constructor options every image model has, normalised (a tuple, an int, a list
        of ints) and checked; ``needs_hidden``: at least one hidden layer."""
        input_shape = tuple(int(s) for s in input_shape)
        hidden = [int(h) for h in hidden]
        if int(latent_dim) < 1:
            raise ValueError(f"latent_dim must be a positive integer, got {latent_dim}")
        if needs_hidden and not hidden:
            raise ValueError(f"{type(self).__name__} needs at least one hidden layer")
        return input_shape, int(latent_dim), hidden

    def _check_input(self, x: torch.Tensor) -> None:
        shape = tuple(self.config["input_shape"])
        if tuple(x.shape[-len(shape) :]) != shape:
            raise ValueError(
                f"{type(self).__name__} expects inputs of shape (batch, {', '.join(map(str, shape))}); "
                f"got {tuple(x.shape)}"
            )

    @torch.no_grad()
    def sample(self, num_samples: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Mean images E[x | z] for ``z`` drawn from the prior (no encoder), ``(n, *input_shape)``."""
        z = self.prior_sample(num_samples, generator)
        return self.likelihood.mean(self.decode_logits(z))

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """Mean images E[x | z = guide mean(x)]."""
        return self.likelihood.mean(self.decode_logits(self.encode_mean(x)))

    @torch.no_grad()
    def initialize_output_bias(self, data_mean: torch.Tensor) -> None:
        """Sets the decoder's output bias to logit(mean pixel), as Burda et al. do."""
        bias = self.output_bias()
        if bias is not None and self.likelihood.name == "bernoulli":
            p = data_mean.reshape(-1).clamp(1e-3, 1 - 1e-3)
            bias.copy_(torch.log(p) - torch.log1p(-p))

    def output_bias(self) -> torch.Tensor | None:
        return None


class StandardNormalPrior(ImageModel):
    """Base of image models with ``p(z) = Normal(0, I_D)``: the buffers ``prior_loc`` and
    ``prior_scale`` (they follow the model's device and dtype), ``prior()`` and
    ``prior_sample()``. Call :meth:`_register_standard_normal_prior` in ``__init__``."""

    def _register_standard_normal_prior(self, latent_dim: int) -> None:
        self.register_buffer("prior_loc", torch.zeros(latent_dim))
        self.register_buffer("prior_scale", torch.ones(latent_dim))

    def prior(self) -> dist.TorchDistribution:
        return dist.Normal(self.prior_loc, self.prior_scale).to_event(1)

    def prior_sample(
        self, num_samples: int, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        eps = torch.randn(
            num_samples, self.latent_dim, generator=generator, device=self.prior_loc.device
        )
        return self.prior_loc + self.prior_scale * eps


@register_model("vae")
class VAE(StandardNormalPrior):
    """Gaussian-latent VAE with an MLP (or small conv) encoder and decoder.

    Args:
        input_shape: shape of one datum, default ``(1, 28, 28)``.
        latent_dim: D, the number of latent dimensions.
        hidden: hidden layer sizes of the MLP encoder; the decoder mirrors them.
        activation: ``relu`` (default), ``tanh``, ``elu`` or ``softplus``.
        likelihood: ``bernoulli`` (default), ``continuous_bernoulli`` or ``gaussian``.
        architecture: ``mlp`` (default) or ``conv`` (28x28 single-channel images only).
        beta: weight of the KL term, ``> 0`` (default 1, the plain VAE; ``> 1`` is the
            beta-VAE [3]).
        free_bits: lambda, the per-dimension KL floor in nats, ``>= 0`` (default 0: off).

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
        super().__init__()
        input_shape, latent_dim, hidden = self._shared_options(input_shape, latent_dim, hidden)
        beta, free_bits = float(beta), float(free_bits)
        if not (beta > 0 and math.isfinite(beta)):
            raise ValueError(f"beta must be a positive number, got {beta}")
        if not (free_bits >= 0 and math.isfinite(free_bits)):
            raise ValueError(f"free_bits must be a non-negative number of nats, got {free_bits}")
        if architecture not in ("mlp", "conv"):
            raise ValueError(f"architecture must be 'mlp' or 'conv', got {architecture!r}")
        if architecture == "conv" and input_shape != (1, 28, 28):
            raise ValueError(
                f"architecture='conv' needs inputs of shape (1, 28, 28), got {input_shape}"
            )
        self.config = dict(
            input_shape=list(input_shape),
            latent_dim=latent_dim,
            hidden=hidden,
            activation=activation,
            likelihood=likelihood,
            architecture=architecture,
            beta=beta,
            free_bits=free_bits,
        )
        self.beta = beta
        self.free_bits = free_bits
        self.latent_dim = int(latent_dim)
        self.input_shape = input_shape
        pixels = numel(input_shape)
        if architecture == "mlp":
            self.encoder = GaussianMLP(pixels, list(hidden), latent_dim, activation)
            self.decoder = mlp([latent_dim, *reversed(list(hidden)), pixels], activation)
        else:
            self.encoder = ConvEncoder(latent_dim)
            self.decoder = ConvDecoder(latent_dim)
        self.likelihood = Likelihood(likelihood, input_shape)
        self._register_standard_normal_prior(int(latent_dim))

    # -- networks -------------------------------------------------------------------------
    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.config["architecture"] == "conv":
            return self.encoder(x)
        return self.encoder(x.reshape(*x.shape[: -len(self.input_shape)], -1))

    def encode_mean(self, x: torch.Tensor) -> torch.Tensor:
        return self.encode(x)[0]

    def decode_logits(self, z: torch.Tensor) -> torch.Tensor:
        logits = self.decoder(z)
        return logits.reshape(*z.shape[:-1], *self.input_shape)

    def output_bias(self) -> torch.Tensor | None:
        last = self.decoder[-1] if isinstance(self.decoder, torch.nn.Sequential) else None
        return last.bias if isinstance(last, torch.nn.Linear) else None

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

    # -- Pyro model and guide -------------------------------------------------------------
    def model(self, x: torch.Tensor) -> None:
        """p(x, z) = p(z) p(x | z), the latent term weighted by beta; ``x``: ``(B, *input_shape)``."""
        self._check_input(x)
        with pyro.plate("data", x.shape[0]):
            with self._kl_weight():
                z = pyro.sample("z", self.prior())
                if self.free_bits > 0:
                    pyro.factor("free_bits", self.free_bits_surrogate(x))
            pyro.sample("x", self.likelihood(self.decode_logits(z)), obs=x)

    def guide(self, x: torch.Tensor) -> None:
        """q(z | x) = Normal(mu(x), diag sigma(x)^2), its log-density weighted by beta."""
        self._check_input(x)
        loc, scale = self.encode(x)
        with pyro.plate("data", x.shape[0]), self._kl_weight():
            pyro.sample("z", dist.Normal(loc, scale).to_event(1))
