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
to ``(x,)`` and an all-labelled one to ``(x, y)``, and :class:`SemiSupervisedData` builds such
batches from a labelled subset and the unlabelled rest. One labelled/unlabelled mode per batch
keeps the "data" plate one plate and avoids ``obs_mask``'s split sites.

Labelled batches add the classification loss of [1] (Eq. 9) as in Pyro's SS-VAE tutorial [2]:
an observed site ``"y_aux" ~ q(y | x)`` scaled by ``alpha``, so the training bound of a labelled
batch is ``ELBO(x, y) + alpha * log q(y | x)`` (with pvae's minibatch scaling N/B applied to it
like to every site in the data plate). Train with :func:`fit_m2`, i.e. ``fit(m.model, m.guide, data, objective=SemiSupervisedELBO())``
(``TraceEnum_ELBO(max_plate_nesting=1)`` on unlabelled batches, ``Trace_ELBO`` on labelled
ones; ``TraceEnum_ELBO`` alone works too but warns on labelled batches). ``fit`` validates with
that same objective; :meth:`M2.training_setup` adds the validation accuracy of q(y | x) and
selects the best epoch by it.

References:
    [1] Kingma, Rezende, Mohamed, Welling. Semi-Supervised Learning with Deep Generative Models.
        NeurIPS 2014. arXiv:1406.5298
    [2] Pyro's SS-VAE tutorial, https://pyro.ai/examples/ss-vae.html
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
import torch
from torch.nn import functional as F

from pvae.models.likelihoods import Likelihood
from pvae.models.registry import register_model
from pvae.models.vae import StandardNormalPrior
from pvae.nets import GaussianMLP, mlp, numel

UNLABELLED = -1


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


@register_model("m2")
class M2(StandardNormalPrior):
    """Semi-supervised VAE (M2) with a classifier ``q(y | x)`` and ``q(z | x, y)``.

    Args:
        input_shape: shape of one datum, default ``(1, 28, 28)``.
        latent_dim: D, default 50 (Pyro's tutorial).
        hidden: hidden sizes of the classifier, the z-encoder and (mirrored) the decoder,
            default ``(500,)``.
        activation: default ``softplus`` (Pyro's tutorial).
        likelihood: as for :class:`~pvae.models.vae.VAE`.
        num_classes: C.
        alpha: weight of the classification loss on labelled batches, default 300. Pyro's
            example uses 46, which matches Kingma et al.'s ``0.1 N`` when one labelled batch
            in ~500 carries the term; on MNIST with 100 labels (``benchmarks/m2_accuracy.py``,
            all 50,000 images, 25 epochs) 300 reached a best validation accuracy of 0.747
            against 0.686 for 46, and lost less of it with further training.

    Shapes: ``x`` ``(B, *input_shape)``; labels ``y`` ``(B,)`` integers; site ``"z"`` ``(B, D)``
    (``(C, B, D)`` when y is enumerated).
    """

    def __init__(
        self,
        input_shape: Sequence[int] = (1, 28, 28),
        latent_dim: int = 50,
        hidden: Sequence[int] = (500,),
        activation: str = "softplus",
        likelihood: str = "bernoulli",
        num_classes: int = 10,
        alpha: float = 300.0,
    ) -> None:
        super().__init__()
        input_shape, latent_dim, hidden = self._shared_options(input_shape, latent_dim, hidden)
        if int(num_classes) < 2:
            raise ValueError(f"num_classes must be >= 2, got {num_classes}")
        if not float(alpha) >= 0:
            raise ValueError(f"alpha must be >= 0, got {alpha}")
        self.config = dict(
            input_shape=list(input_shape),
            latent_dim=int(latent_dim),
            hidden=hidden,
            activation=activation,
            likelihood=likelihood,
            num_classes=int(num_classes),
            alpha=float(alpha),
        )
        self.input_shape = input_shape
        self.latent_dim = int(latent_dim)
        self.num_classes = c = int(num_classes)
        self.alpha = float(alpha)
        pixels = numel(input_shape)
        self.classifier = mlp([pixels, *hidden, c], activation)
        self.encoder = GaussianMLP(pixels + c, hidden, self.latent_dim, activation)
        self.decoder = mlp([self.latent_dim + c, *reversed(hidden), pixels], activation)
        self.likelihood = Likelihood(likelihood, input_shape)
        self._register_standard_normal_prior(self.latent_dim)
        self.register_buffer("label_logits", torch.zeros(c))  # uniform p(y)

    # -- labels ---------------------------------------------------------------------------
    def batch_args(self, batch: Any) -> tuple[torch.Tensor, ...]:
        """``(x, y)`` for an all-labelled batch, ``(x,)`` for an all-unlabelled one (labels -1)."""
        if not isinstance(batch, (tuple, list)):
            return (batch,)
        x, y = batch[0], batch[1]
        unlabelled = y == UNLABELLED
        if bool(unlabelled.all()):
            return (x,)
        if bool(unlabelled.any()):
            raise ValueError(
                "M2 batches must be all labelled or all unlabelled (-1); build them with "
                "pvae.models.m2.SemiSupervisedData"
            )
        return x, y

    def eval_args(self, x: torch.Tensor, y: torch.Tensor | None = None) -> tuple[torch.Tensor]:
        """``log_likelihood`` arguments: ``(x,)``, the bound on log p(x) with y summed out."""
        return (x,)

    def _one_hot(self, y: torch.Tensor) -> torch.Tensor:
        return F.one_hot(y.long(), self.num_classes).to(self.prior_loc.dtype)

    def _flat(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(*x.shape[: -len(self.input_shape)], -1)

    # -- networks -------------------------------------------------------------------------
    def classifier_logits(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of q(y | x), ``(B, C)``."""
        return self.classifier(self._flat(x))

    def training_setup(
        self, train: Any, *, valid: Any = None, num_labels: int = 100, seed: int = 0
    ) -> dict:
        """``fit`` arguments for ``pvae train --model m2``: ``num_labels`` labelled images
        (balanced, drawn with ``seed``) among the unlabelled rest and :class:`SemiSupervisedELBO`.

        With a labelled ``valid`` set, every epoch records ``valid_bound`` (the bound on
        log p(x), y summed out, on its images without labels) and ``valid_accuracy`` of
        q(y | x), and the best checkpoint and early stopping follow ``valid_accuracy``: model
        selection on labelled validation data, as in Pyro's SS-VAE example (which reports the
        test accuracy at the best validation accuracy). Pass ``valid=None`` for a run that sees
        no labels beyond its ``num_labels``.
        """
        from pvae.data.images import ImageDataset

        setup: dict[str, Any] = dict(
            train_data=SemiSupervisedData(train, num_labels, self.num_classes, seed=seed),
            objective=SemiSupervisedELBO(),
            valid_data=None,
        )
        if valid is not None:
            x_valid, y_valid = next(iter(valid.batches(len(valid), shuffle=False)))
            setup["valid_data"] = ImageDataset(
                valid.images,
                torch.full_like(valid.labels, UNLABELLED),
                binarize=valid.binarize,
                name=valid.name,
            )

            def valid_accuracy() -> dict[str, float]:
                x, y = x_valid.to(self.prior_loc.device), y_valid.to(self.prior_loc.device)
                return {"valid_accuracy": float((self.classify(x) == y).float().mean())}

            setup["valid_metrics"] = valid_accuracy
            setup["monitor"] = "valid_accuracy"
        return setup

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

    def output_bias(self) -> torch.Tensor | None:
        return self.decoder[-1].bias

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

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """E[x | z = guide mean(x, y), y], with ``y`` the classifier's guess when not given."""
        y = self.classify(x) if y is None else y
        return self.likelihood.mean(self.decode_logits(self.encode(x, y)[0], y))

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


class SemiSupervisedData:
    """A dataset seen by ``fit`` as alternating labelled and unlabelled batches.

    ``num_labelled`` images (balanced over classes, drawn with ``seed``) keep their labels; every
    image (labelled ones included, as in [1]) also appears in the unlabelled stream with label
    ``-1``. An epoch is one pass over the unlabelled stream with the labelled set visited
    ``labelled_repeats`` times, its batches spread evenly among the unlabelled ones.
    ``len()`` is the number of images, so ``fit`` scales every batch by N / B.

    Args:
        dataset: a pvae ``ImageDataset`` (``.images``, ``.labels``, ``.batches``).
        num_labelled: how many labelled images (a multiple of the number of classes keeps
            the classes balanced).
        num_classes: C.
        labelled_repeats: labelled passes per epoch.
        seed: seed of the labelled draw.
    """

    def __init__(
        self,
        dataset: Any,
        num_labelled: int,
        num_classes: int = 10,
        labelled_repeats: int = 1,
        seed: int = 0,
    ) -> None:
        if not 1 <= int(num_labelled) <= len(dataset):
            raise ValueError(f"num_labelled must be in 1..{len(dataset)}, got {num_labelled}")
        if int(labelled_repeats) < 1:
            raise ValueError(f"labelled_repeats must be >= 1, got {labelled_repeats}")
        self.dataset = dataset
        self.labelled_repeats = int(labelled_repeats)
        generator = torch.Generator().manual_seed(seed)
        labels = dataset.labels
        per_class = -(-int(num_labelled) // num_classes)
        chosen = []
        for c in range(num_classes):
            members = torch.nonzero(labels == c).flatten()
            chosen.append(members[torch.randperm(len(members), generator=generator)[:per_class]])
        index = torch.cat(chosen)
        self.labelled_index = index[torch.randperm(len(index), generator=generator)][
            : int(num_labelled)
        ]
        self.labelled_set = dataset.subset(self.labelled_index)

    def __len__(self) -> int:
        return len(self.dataset)

    def batches(
        self, batch_size: int, shuffle: bool = True, generator: torch.Generator | None = None
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        unlabelled = [
            (x, torch.full_like(y, UNLABELLED))
            for x, y in self.dataset.batches(batch_size, shuffle=shuffle, generator=generator)
        ]
        labelled = [
            batch
            for _ in range(self.labelled_repeats)
            for batch in self.labelled_set.batches(batch_size, shuffle=shuffle, generator=generator)
        ]
        # Spread the labelled batches evenly through the epoch.
        every = max(1, len(unlabelled) // max(1, len(labelled)))
        out: list[tuple[torch.Tensor, torch.Tensor]] = []
        for i, batch in enumerate(unlabelled):
            if i % every == 0 and labelled:
                out.append(labelled.pop(0))
            out.append(batch)
        out.extend(labelled)
        return iter(out)


class SemiSupervisedELBO(pyro.infer.ELBO):
    """M2's objective as one Pyro ``ELBO``: ``TraceEnum_ELBO`` (y summed out exactly) on
    unlabelled batches, ``Trace_ELBO`` on labelled ones (nothing to enumerate there; calling
    ``TraceEnum_ELBO`` on them would only warn). Pass it as ``fit(..., objective=...)``."""

    def __init__(self, num_particles: int = 1) -> None:
        super().__init__(num_particles=num_particles, max_plate_nesting=1)
        self.unlabelled = pyro.infer.TraceEnum_ELBO(
            num_particles=num_particles, max_plate_nesting=1
        )
        self.labelled = pyro.infer.Trace_ELBO(num_particles=num_particles, max_plate_nesting=1)

    def _pick(self, args: tuple, kwargs: dict) -> pyro.infer.ELBO:
        y = args[1] if len(args) > 1 else kwargs.get("y")
        return self.unlabelled if y is None else self.labelled

    def differentiable_loss(self, model, guide, *args, **kwargs) -> torch.Tensor:
        return self._pick(args, kwargs).differentiable_loss(model, guide, *args, **kwargs)

    def loss(self, model, guide, *args, **kwargs) -> float:
        return self._pick(args, kwargs).loss(model, guide, *args, **kwargs)

    def loss_and_grads(self, model, guide, *args, **kwargs) -> float:
        return self._pick(args, kwargs).loss_and_grads(model, guide, *args, **kwargs)

    def _get_trace(self, model, guide, args, kwargs):  # pragma: no cover - never called
        return self._pick(args, kwargs)._get_trace(model, guide, args, kwargs)


def fit_m2(model: M2, data: Any, **fit_kwargs: Any) -> Any:
    """``pvae.infer.train.fit`` with :class:`SemiSupervisedELBO` (y summed out exactly on
    unlabelled batches). ``data`` is usually a :class:`SemiSupervisedData`; returns ``fit``'s
    ``FitResult``."""
    from pvae.infer.train import fit

    return fit(model.model, model.guide, data, objective=SemiSupervisedELBO(), **fit_kwargs)
