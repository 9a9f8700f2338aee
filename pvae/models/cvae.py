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

from dataclasses import dataclass
from typing import Any

import pyro
import pyro.distributions as dist
import torch
from torch.nn import functional as F

from pvae.models.base import option
from pvae.models.image import ImageConfig, StandardNormalPrior
from pvae.models.likelihoods import Likelihood
from pvae.models.registry import register_model
from pvae.nets import GaussianMLP, mlp, numel


@dataclass(frozen=True)
class CVAEConfig(ImageConfig):
    """Options of :class:`CVAE`."""

    num_classes: int = option(10, "number of label values (labels are 0..C-1)", convert=int)

    def validate(self) -> None:
        super().validate()
        if self.num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {self.num_classes}")


@register_model("cvae", smoke={"latent_dim": 2, "hidden": [16]})
class CVAE(StandardNormalPrior):
    """Label-conditional VAE, ``p(x | y) = E_{N(z; 0, I)} p(x | z, y)``.

    Options (:class:`CVAEConfig`): those of every image model and ``num_classes`` C.

    Shapes: ``model(x, y)``/``guide(x, y)`` take ``x`` ``(B, *input_shape)`` and integer
    labels ``y`` ``(B,)``; site ``"z"`` is ``(B, D)``.
    """

    Config = CVAEConfig
    config: CVAEConfig

    def __init__(self, config: CVAEConfig | None = None, **options: Any) -> None:
        super().__init__(config, **options)
        config = self.config
        self.num_classes = config.num_classes
        pixels = numel(self.input_shape)
        hidden = list(config.hidden)
        self.encoder = GaussianMLP(
            pixels + self.num_classes, hidden, self.latent_dim, config.activation
        )
        self.decoder = mlp(
            [self.latent_dim + self.num_classes, *reversed(hidden), pixels], config.activation
        )
        self.likelihood = Likelihood(config.likelihood, self.input_shape)

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

    # -- labels ----------------------------------------------------------------------------
    def batch_args(self, batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """``(x, y)`` from a ``(x, y)`` batch of a pvae dataset (what ``fit`` passes the model)."""
        x, y = batch[0], batch[1]
        if y.dtype.is_floating_point or bool((y < 0).any() | (y >= self.num_classes).any()):
            raise ValueError(
                f"CVAE needs integer labels in 0..{self.num_classes - 1} in every batch"
            )
        return x, y

    def eval_args(self, batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """``(x, y)``: the bound is on ``log p(x | y)``, so evaluation needs the labels."""
        return self.batch_args(batch)

    def _reconstruct_batch(self, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        return self.reconstruct(*self.batch_args(batch))

    def _one_hot(self, y: torch.Tensor, batch_shape: torch.Size) -> torch.Tensor:
        # F.one_hot itself rejects labels outside 0..C-1; batch_args validates dataset labels.
        one_hot = F.one_hot(y.long(), self.num_classes).to(self.prior_loc.dtype)
        return one_hot.expand(*batch_shape, self.num_classes)

    # -- networks -------------------------------------------------------------------------
    def encode(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        flat = self._flat(x)
        return self.encoder(torch.cat([flat, self._one_hot(y, flat.shape[:-1])], -1))

    def decode_logits(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """Logits of ``p(x | z, y)``, ``(..., *input_shape)``; ``y`` defaults to class 0."""
        if y is None:
            y = torch.zeros(z.shape[:-1], dtype=torch.long, device=z.device)
        logits = self.decoder(torch.cat([z, self._one_hot(y, z.shape[:-1])], -1))
        return logits.reshape(*z.shape[:-1], *self.input_shape)

    def encode_mean(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        return self.encode(x, self._labels_for(x) if y is None else y)[0]

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
