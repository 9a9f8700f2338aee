"""Kingma et al.'s M2: the semi-supervised VAE with a discrete class latent.

Generative story (Kingma, Rezende, Mohamed, Welling 2014 [1]), C classes::

    y_n ~ Categorical(1/C, ..., 1/C)          site "y", shape (B,), observed when labelled
    z_n ~ Normal(0, I_D)                      site "z", shape (B, D)
    x_n ~ p(x | f_theta([z_n, e(y_n)]))       site "x", shape (B, *input_shape)

Guide: ``q(y | x) = Categorical(pi_phi(x))`` (the classifier; site "y" only when unlabelled,
enumerated over the C classes in parallel by ``TraceEnum_ELBO``) and
``q(z | x, y) = Normal(mu_phi([x, e(y)]), diag sigma_phi([x, e(y)])^2)``.

The labelled/unlabelled split is by batch: ``model(x, y)`` is a labelled batch (y observed,
integers ``(B,)``), ``model(x)`` (``y=None``) an unlabelled one (y summed out exactly by
enumeration in training, sampled from q(y | x) by plain importance sampling). A dataset's
batches mark unlabelled data with label ``-1``; :meth:`M2.batch_args` maps an all-``-1`` batch
to ``(x,)`` and an all-labelled one to ``(x, y)``, and
:class:`pvae.data.semisupervised.SemiSupervisedData` builds such
batches from a labelled subset and the unlabelled rest. One labelled/unlabelled mode per batch
keeps the "data" plate one plate and avoids ``obs_mask``'s split sites.

Labelled batches add the classification loss of [1] (Eq. 9) as in Pyro's SS-VAE tutorial [2]:
an observed site ``"y_aux" ~ q(y | x)`` scaled by ``alpha``, so the training bound of a labelled
batch is ``ELBO(x, y) + alpha * log q(y | x)`` (with pvae's minibatch scaling N/B applied to it
like to every site in the data plate). Train with
:func:`pvae.infer.semisupervised.fit_semisupervised`, i.e. ``fit(m.model, m.guide, data,
objective=SemiSupervisedObjective())`` (y summed out exactly on unlabelled batches; with the
``"step"`` schedule of ``SemiSupervisedData`` every step also scores a labelled minibatch). ``fit``
validates with that same objective; :meth:`M2.training_setup` adds the validation accuracy
of q(y | x) and selects the best epoch by it.

References:
    [1] Kingma, Rezende, Mohamed, Welling. Semi-Supervised Learning with Deep Generative Models.
        NeurIPS 2014. arXiv:1406.5298
    [2] Pyro's SS-VAE tutorial, https://pyro.ai/examples/ss-vae.html
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
import torch
from torch.nn import functional as F

from pvae.data.semisupervised import UNLABELLED, labelled_or_unlabelled
from pvae.models.base import ints, option
from pvae.models.image import ImageConfig, StandardNormalPrior
from pvae.models.likelihoods import Likelihood
from pvae.models.registry import register_model
from pvae.nets import ACTIVATIONS, GaussianMLP, mlp, numel


def _concat(features: torch.Tensor, one_hot: torch.Tensor) -> torch.Tensor:
    """``[features, one_hot]`` along the last dim, broadcasting the leading (batch) dims."""
    batch = torch.broadcast_shapes(features.shape[:-1], one_hot.shape[:-1])
    return torch.cat(
        [
            features.expand(*batch, features.shape[-1]),
            one_hot.expand(*batch, one_hot.shape[-1]),
        ],
        -1,
    )


@dataclass(frozen=True)
class M2Config(ImageConfig):
    """Options of :class:`M2` (defaults: Pyro's SS-VAE example, alpha measured here)."""

    hidden: tuple[int, ...] = option(
        (500,),
        "hidden sizes of the classifier, the z-encoder and (mirrored) the decoder",
        convert=ints,
    )
    activation: str = option("softplus", f"one of {', '.join(ACTIVATIONS)}")
    num_classes: int = option(10, "C, the number of classes", convert=int)
    alpha: float = option(
        300.0, "weight of the classification loss on labelled batches", convert=float
    )

    def validate(self) -> None:
        super().validate()
        if self.num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {self.num_classes}")
        if not self.alpha >= 0:
            raise ValueError(f"alpha must be >= 0, got {self.alpha}")


@register_model("m2", smoke={"latent_dim": 2, "hidden": [16]})
class M2(StandardNormalPrior):
    """Semi-supervised VAE (M2) with a classifier ``q(y | x)`` and ``q(z | x, y)``.

    Options (:class:`M2Config`): those of every image model (``latent_dim`` 50, ``hidden``
    ``(500,)`` and ``softplus`` by default, as Pyro's tutorial), ``num_classes`` C and
    ``alpha``, the weight of the classification loss on labelled batches (default 300).
    Pyro's example uses 46, which matches Kingma et al.'s ``0.1 N`` when one labelled batch in
    ~500 carries the term; on MNIST with 100 labels (``benchmarks/m2_accuracy.py``, all 50,000
    images, 25 epochs) 300 reached a best validation accuracy of 0.747 against 0.686 for 46,
    and lost less of it with further training.

    Shapes: ``x`` ``(B, *input_shape)``; labels ``y`` ``(B,)`` integers; site ``"z"`` ``(B, D)``
    (``(C, B, D)`` when y is enumerated).
    """

    Config = M2Config
    config: M2Config

    def __init__(self, config: M2Config | None = None, **options: Any) -> None:
        super().__init__(config, **options)
        config = self.config
        self.num_classes = c = config.num_classes
        self.alpha = config.alpha
        hidden = list(config.hidden)
        pixels = numel(self.input_shape)
        self.classifier = mlp([pixels, *hidden, c], config.activation)
        self.encoder = GaussianMLP(pixels + c, hidden, self.latent_dim, config.activation)
        self.decoder = mlp([self.latent_dim + c, *reversed(hidden), pixels], config.activation)
        self.likelihood = Likelihood(config.likelihood, self.input_shape)
        self.register_buffer("label_logits", torch.zeros(c))  # uniform p(y)

    # -- Pyro model and guide -------------------------------------------------------------
    def model(self, x: torch.Tensor, y: torch.Tensor | None = None) -> None:
        """p(x, y, z) = p(y) p(z) p(x | y, z); ``y=None``: an unlabelled batch."""
        self._check_input(x)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", self.prior())
            label = pyro.sample("y", dist.Categorical(logits=self.label_logits), obs=y)
            pyro.sample("x", self.likelihood(self.decode_logits(z, label)), obs=x)
            if y is not None and self.alpha > 0:
                # The classification loss of labelled data (Kingma et al. Eq. 9).
                with poutine.scale(scale=self.alpha):
                    pyro.sample("y_aux", dist.Categorical(logits=self.classifier_logits(x)), obs=y)

    def guide(self, x: torch.Tensor, y: torch.Tensor | None = None) -> None:
        """q(y | x) q(z | x, y); y enumerated (``TraceEnum_ELBO``) when unlabelled."""
        self._check_input(x)
        with pyro.plate("data", x.shape[0]):
            if y is None:
                y = pyro.sample(
                    "y",
                    dist.Categorical(logits=self.classifier_logits(x)),
                    infer={"enumerate": "parallel"},
                )
            loc, scale = self.encode(x, y)
            pyro.sample("z", dist.Normal(loc, scale).to_event(1))

    # -- labels ---------------------------------------------------------------------------
    def batch_args(self, batch: Any) -> tuple[torch.Tensor, ...]:
        """``(x, y)`` for an all-labelled batch, ``(x,)`` for an all-unlabelled one (labels -1)."""
        return labelled_or_unlabelled(batch, "M2")

    def eval_args(self, batch: Any) -> tuple[torch.Tensor]:
        """``(x,)``: evaluation bounds log p(x), with y summed out (or sampled)."""
        return (batch[0],) if isinstance(batch, (tuple, list)) else (batch,)

    def _one_hot(self, y: torch.Tensor) -> torch.Tensor:
        return F.one_hot(y.long(), self.num_classes).to(self.prior_loc.dtype)

    # -- networks -------------------------------------------------------------------------
    def classifier_logits(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of q(y | x), ``(B, C)``."""
        return self.classifier(self._flat(x))

    def training_setup(
        self,
        train: Any,
        valid: Any = None,
        *,
        num_labels: int = 100,
        seed: int = 0,
        labelled_schedule: str = "epoch",
        **_: Any,
    ) -> dict[str, Any]:
        """``fit`` arguments for a run of M2: ``num_labels`` labelled images (balanced, drawn
        with ``seed``) among the unlabelled rest (:class:`SemiSupervisedData`, whose
        ``schedule`` is ``labelled_schedule``: ``"epoch"``, the labelled set as its own batches
        once an epoch, or ``"step"``, a labelled minibatch in every step at the weight that
        keeps the epoch's objective) and :class:`SemiSupervisedObjective`.

        With a labelled ``valid`` set, every epoch records ``valid_bound`` (the bound on
        log p(x), y summed out, on its images without labels) and ``valid_accuracy`` of
        q(y | x), and the best checkpoint and early stopping follow ``valid_accuracy``: model
        selection on labelled validation data, as in Pyro's SS-VAE example (which reports the
        test accuracy at the best validation accuracy). Pass ``valid=None`` for a run that sees
        no labels beyond its ``num_labels``.
        """
        from pvae.infer.semisupervised import (
            SemiSupervisedObjective,
            semisupervised_training_setup,
        )

        return semisupervised_training_setup(
            self,
            train,
            valid,
            SemiSupervisedObjective(),
            num_labels=num_labels,
            seed=seed,
            labelled_schedule=labelled_schedule,
        )

    def metrics(self, test: Any) -> dict[str, float]:
        """``{"test_accuracy": ...}`` of q(y | x) on the labelled test set."""
        return {"test_accuracy": self.accuracy(test)}

    @torch.no_grad()
    def accuracy(self, data: Any, batch_size: int = 10000) -> float:
        """The share of ``data``'s labelled items that q(y | x) classifies correctly."""
        device = self.prior_loc.device
        correct, total = 0, 0
        for x, y in data.batches(batch_size, shuffle=False):
            x, y = x.to(device), y.to(device)
            labelled = y != UNLABELLED
            correct += int((self.classify(x[labelled]) == y[labelled]).sum())
            total += int(labelled.sum())
        if total == 0:
            raise ValueError("accuracy needs labelled data")
        return correct / total

    @torch.no_grad()
    def classify(self, x: torch.Tensor) -> torch.Tensor:
        """The most probable class under q(y | x), ``(B,)`` integers."""
        return self.classifier_logits(x).argmax(-1)

    def encode(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.encoder(_concat(self._flat(x), self._one_hot(y)))

    def encode_mean(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        return self.encode(x, self.classify(x) if y is None else y)[0]

    def decode_logits(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """Logits of p(x | z, y), ``(..., *input_shape)``; ``y`` defaults to class 0."""
        if y is None:
            y = torch.zeros(z.shape[:-1], dtype=torch.long, device=z.device)
        logits = self.decoder(_concat(z, self._one_hot(y)))
        return logits.reshape(*logits.shape[:-1], *self.input_shape)

    @torch.no_grad()
    def sample(
        self,
        num_samples: int,
        generator: torch.Generator | None = None,
        y: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Mean images of p(x | y), without the encoder; ``y`` defaults to ``0, 1, ..., C-1, 0, ...``."""
        if y is None:
            y = torch.arange(num_samples, device=self.prior_loc.device) % self.num_classes
        z = self.prior_sample(num_samples, generator)
        return self.likelihood.mean(self.decode_logits(z, y))

    def _reconstruct_batch(self, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        return self.reconstruct(batch[0])

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """E[x | z = guide mean(x, y), y], with ``y`` the classifier's guess when not given."""
        y = self.classify(x) if y is None else y
        return self.likelihood.mean(self.decode_logits(self.encode(x, y)[0], y))
