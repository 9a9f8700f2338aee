"""The conditional VAE: a VAE of x given a label y.

Generative story (Sohn et al. 2015 [1], with the fixed prior of Doersch's tutorial [2]), for
each datum n with one-hot label ``e(y_n)`` of C classes::

    z_n ~ Normal(0, I_D)                            site "z", shape (B, D)
    x_n ~ p(x | f_theta([z_n, e(y_n)]))             site "x", shape (B, *input_shape)

Guide: ``q(z_n | x_n, y_n) = Normal(mu_phi([x_n, e(y_n)]), diag sigma_phi([x_n, e(y_n)])^2)``.

The prior is ``p(z | y) = N(0, I)``, independent of y, as in Doersch's tutorial (Sohn et al.
also consider a learned conditional prior network; we do not). The label is concatenated
to the flattened image at the encoder's input and to z at the decoder's input. The bound
is on ``log p(x | y)``, so evaluating it needs the labels (:meth:`CVAE.eval_args`).

References:
    [1] Sohn, Lee, Yan. Learning Structured Output Representation using Deep Conditional
        Generative Models. NeurIPS 2015.
    [2] Doersch. Tutorial on Variational Autoencoders. 2016. arXiv:1606.05908 (Section 4)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pyro
import pyro.distributions as dist
import torch
from torch.nn import functional as F

from pvae.models.likelihoods import Likelihood
from pvae.models.registry import register_model
from pvae.models.vae import StandardNormalPrior
from pvae.nets import GaussianMLP, mlp, numel


@register_model("cvae")
class CVAE(StandardNormalPrior):
    """Label-conditional VAE, ``p(x | y) = E_{N(z; 0, I)} p(x | z, y)``.

    Args:
        input_shape: shape of one datum, default ``(1, 28, 28)``.
        latent_dim: D.
        hidden: hidden sizes of the encoder MLP; the decoder mirrors them.
        activation, likelihood: as for :class:`~pvae.models.vae.VAE`.
        num_classes: C, the number of label values (labels are integers ``0..C-1``).

    Shapes: ``model(x, y)``/``guide(x, y)`` take ``x`` ``(B, *input_shape)`` and integer
    labels ``y`` ``(B,)``; site ``"z"`` is ``(B, D)``.
    """

    def __init__(
        self,
        input_shape: Sequence[int] = (1, 28, 28),
        latent_dim: int = 50,
        hidden: Sequence[int] = (400,),
        activation: str = "relu",
        likelihood: str = "bernoulli",
        num_classes: int = 10,
    ) -> None:
        super().__init__()
        input_shape, latent_dim, hidden = self._shared_options(input_shape, latent_dim, hidden)
        if int(num_classes) < 2:
            raise ValueError(f"num_classes must be >= 2, got {num_classes}")
        self.config = dict(
            input_shape=list(input_shape),
            latent_dim=int(latent_dim),
            hidden=[int(h) for h in hidden],
            activation=activation,
            likelihood=likelihood,
            num_classes=int(num_classes),
        )
        self.input_shape = input_shape
        self.latent_dim = int(latent_dim)
        self.num_classes = int(num_classes)
        pixels = numel(input_shape)
        hidden = list(self.config["hidden"])
        self.encoder = GaussianMLP(pixels + self.num_classes, hidden, self.latent_dim, activation)
        self.decoder = mlp(
            [self.latent_dim + self.num_classes, *reversed(hidden), pixels], activation
        )
        self.likelihood = Likelihood(likelihood, input_shape)
        self._register_standard_normal_prior(self.latent_dim)

    # -- labels ----------------------------------------------------------------------------
    def batch_args(self, batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """``(x, y)`` from a ``(x, y)`` batch of a pvae dataset (what ``fit`` passes the model)."""
        x, y = batch[0], batch[1]
        if y.dtype.is_floating_point or bool((y < 0).any() | (y >= self.num_classes).any()):
            raise ValueError(
                f"CVAE needs integer labels in 0..{self.num_classes - 1} in every batch"
            )
        return x, y

    def eval_args(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Arguments of ``log_likelihood(model.model, model.guide, *eval_args(x, y))``: the
        bound is on ``log p(x | y)``, so labels are needed."""
        return x, y

    def _one_hot(self, y: torch.Tensor, batch_shape: torch.Size) -> torch.Tensor:
        # F.one_hot itself rejects labels outside 0..C-1; batch_args validates dataset labels.
        one_hot = F.one_hot(y.long(), self.num_classes).to(self.prior_loc.dtype)
        return one_hot.expand(*batch_shape, self.num_classes)

    # -- networks -------------------------------------------------------------------------
    def encode(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        flat = x.reshape(*x.shape[: -len(self.input_shape)], -1)
        return self.encoder(torch.cat([flat, self._one_hot(y, flat.shape[:-1])], -1))

    def decode_logits(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """Logits of ``p(x | z, y)``, ``(..., *input_shape)``; ``y`` defaults to class 0."""
        if y is None:
            y = torch.zeros(z.shape[:-1], dtype=torch.long, device=z.device)
        logits = self.decoder(torch.cat([z, self._one_hot(y, z.shape[:-1])], -1))
        return logits.reshape(*z.shape[:-1], *self.input_shape)

    def encode_mean(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        return self.encode(x, self._labels_for(x) if y is None else y)[0]

    def output_bias(self) -> torch.Tensor | None:
        return self.decoder[-1].bias

    @torch.no_grad()
    def _labels_for(self, x: torch.Tensor) -> torch.Tensor:
        """The label whose reconstruction (z = guide mean) is most likely: used when a
        reconstruction is asked for without labels."""
        batch = x.shape[: -len(self.input_shape)]
        scores = []
        for c in range(self.num_classes):
            y = torch.full(batch, c, dtype=torch.long, device=x.device)
            logits = self.decode_logits(self.encode(x, y)[0], y)
            scores.append(self.likelihood(logits).log_prob(x))
        return torch.stack(scores, -1).argmax(-1)

    # -- sampling and reconstruction ----------------------------------------------------
    @torch.no_grad()
    def sample(
        self,
        num_samples: int,
        generator: torch.Generator | None = None,
        y: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Mean images of ``p(x | y)``, ``(n, *input_shape)``, without the encoder; labels
        ``y`` ``(n,)`` default to ``0, 1, ..., C-1, 0, 1, ...``."""
        if y is None:
            y = torch.arange(num_samples, device=self.prior_loc.device) % self.num_classes
        z = self.prior_sample(num_samples, generator)
        return self.likelihood.mean(self.decode_logits(z, y))

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """Mean images E[x | z = guide mean(x, y), y]; without ``y``, the label whose
        reconstruction is most likely."""
        y = self._labels_for(x) if y is None else y
        return self.likelihood.mean(self.decode_logits(self.encode(x, y)[0], y))

    # -- Pyro model and guide -------------------------------------------------------------
    def model(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """p(x, z | y) = p(z) p(x | z, y); ``x`` ``(B, *input_shape)``, ``y`` ``(B,)``."""
        self._check_input(x)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", self.prior())
            pyro.sample("x", self.likelihood(self.decode_logits(z, y)), obs=x)

    def guide(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """q(z | x, y) = Normal(mu(x, y), diag sigma(x, y)^2)."""
        self._check_input(x)
        loc, scale = self.encode(x, y)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(loc, scale).to_event(1))
