"""The semi-supervised sequential VAE (SSVAE) of Xu, Sun, Deng and Tan (2017): M2 for sentences.

Generative story, for each sentence n, C classes::

    y_n ~ Categorical(1/C, ..., 1/C)                       site "y", observed when labelled
    z_n ~ Normal(0, I_D)                                   site "z", shape (B, D)
    x_n,t ~ Categorical(softmax(W h_n,t))                  site "x", a TokenSequence
    h_n,t = LSTM(h_n,t-1, [embed(x_n,t-1); e(y_n)]),  h_n,0 = tanh(W_0 z_n)   ("label")
    h_n,t = LSTM(h_n,t-1, [embed(x_n,t-1); z_n; e(y_n)]),  h_n,0 = tanh(W_0 [z_n; e(y_n)])
                                                                                ("both")

``e(y)`` is the one-hot label. The label enters the decoder at *every* step: with a plain LSTM
decoder that sees ``y`` only through its initial state, the paper finds the decoder unable to
tell the classes apart and the unlabelled data useless [1]. ``decoder_condition`` picks the
paper's two structures: the label at every step and z through the initial state (``label``),
or both at every step (``both``).

Guide: the classifier ``q(y | x)`` (an LSTM read to ``<eos>`` and a linear layer, the
:class:`~pvae.models.text_classifier.SentenceClassifier` that ``text_classifier`` trains
alone) and ``q(z | x, y) = Normal(mu, diag sigma^2)`` from a second LSTM's features and
``e(y)``.

Labelled and unlabelled batches are two programs, as in :mod:`pvae.models.m2`: ``model(x, y)``
observes y and adds the classification loss ``alpha * log q(y | x)`` (site ``"y_aux"``);
``model(x)`` leaves y latent, and the option ``unlabelled`` says how its term is estimated:

- ``enumerate``: y summed out exactly (``TraceEnum_ELBO``, all C classes in parallel: C decoder
  passes per sentence);
- ``sample_ema``: ``label_samples`` draws of y from the classifier, a score-function gradient
  for the classifier with Pyro's decaying-average baseline (``TraceGraph_ELBO`` with
  ``infer={"baseline": ...}``; :class:`~pvae.infer.baselines.ScoreFunctionELBO`);
- ``sample_vimco``: ``label_samples`` (>= 2) draws, each with the mean ELBO of the others as
  its baseline (:class:`~pvae.infer.baselines.LeaveOneOutELBO`).

The sampled estimators cost ``label_samples`` decoder passes instead of C: the paper's reason to
sample [1]. Train with :meth:`SSTextVAE.training_setup` (``pvae train --model ss_text_vae
--num-labels N``): N class-balanced labelled sentences drawn by the seed among the unlabelled
rest, the best epoch chosen by validation accuracy.

``kl_weight`` multiplies the z terms (the KL) in training only (validation and evaluation score
the plain bound); 0 drops them (Felhi et al. [2] report that removing the KL term keeps the
accuracy). Pyro's ``poutine.scale`` refuses 0, so weight 0 is a ``poutine.mask(False)`` of the
z sites: z is still drawn from q(z | x, y) and decoded, its log-densities are not scored.

References:
    [1] Xu, Sun, Deng, Tan. Variational Autoencoder for Semi-supervised Text Classification.
        AAAI 2017. arXiv:1603.02514
    [2] Felhi, Le Roux, Seddah. Challenging the Semi-Supervised VAE Framework for Text
        Classification. Workshop on Insights from Negative Results in NLP, 2021.
        arXiv:2109.12969
    [3] Kingma, Rezende, Mohamed, Welling. Semi-Supervised Learning with Deep Generative
        Models. NeurIPS 2014. arXiv:1406.5298
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
import torch
from torch import nn
from torch.nn import functional as F

from pvae.data.semisupervised import labelled_or_unlabelled
from pvae.models.base import ReportItem, option
from pvae.models.registry import register_model
from pvae.models.text import TextConfig, TextModel
from pvae.models.text_classifier import (
    SentenceClassifier,
    accuracy,
    check_labels,
    confusion_report,
)
from pvae.nets.mlp import GaussianHead
from pvae.nets.recurrent import SentenceDecoder, SentenceEncoder

DECODER_CONDITIONS = ("label", "both")
UNLABELLED_ESTIMATORS = ("enumerate", "sample_ema", "sample_vimco")


class LabelledSentenceDecoder(SentenceDecoder):
    """A :class:`~pvae.nets.recurrent.SentenceDecoder` whose conditioning vector is
    ``[z; e(y)]`` (``latent_dim + num_classes``), with the two structures of [1]:

    - ``"label"``: ``e(y)`` joins every input, z sets the initial state only;
    - ``"both"``: ``[z; e(y)]`` joins every input and sets the initial state.

    ``forward(x, latent)``, ``initial_state`` and ``step`` take the concatenation ``latent``
    ``(..., latent_dim + num_classes)``, so the decoding functions of
    :mod:`pvae.models.decoding` work unchanged.
    """

    def __init__(
        self,
        vocab_size: int,
        embed_dim: int,
        hidden_dim: int,
        latent_dim: int,
        num_classes: int,
        *,
        structure: str = "label",
        word_dropout: float = 0.0,
        dropout: float = 0.0,
    ) -> None:
        if structure not in DECODER_CONDITIONS:
            raise ValueError(f"structure must be one of {DECODER_CONDITIONS}, got {structure!r}")
        super().__init__(
            vocab_size,
            embed_dim,
            hidden_dim,
            latent_dim + num_classes,
            condition="both",
            word_dropout=word_dropout,
            dropout=dropout,
        )
        self.structure = structure
        self.z_dim = latent_dim
        if structure == "label":
            self.lstm = nn.LSTM(embed_dim + num_classes, hidden_dim, batch_first=True)
            self.initial = nn.Linear(latent_dim, hidden_dim)

    def initial_state(
        self, z: torch.Tensor | None, batch: int
    ) -> tuple[torch.Tensor, torch.Tensor] | None:
        if z is not None and self.structure == "label":
            z = z[..., : self.z_dim]
        return super().initial_state(z, batch)

    def _run(
        self,
        embedded: torch.Tensor,
        z: torch.Tensor | None,
        state: tuple[torch.Tensor, torch.Tensor] | None,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        if z is not None and self.structure == "label":
            z = z[..., self.z_dim :]
        return super()._run(embedded, z, state)


def _concat(z: torch.Tensor, one_hot: torch.Tensor) -> torch.Tensor:
    """``[z; one_hot]`` along the last dim, broadcasting the leading (batch) dims."""
    batch = torch.broadcast_shapes(z.shape[:-1], one_hot.shape[:-1])
    return torch.cat([z.expand(*batch, z.shape[-1]), one_hot.expand(*batch, one_hot.shape[-1])], -1)


@dataclass(frozen=True)
class SSTextVAEConfig(TextConfig):
    """Options of :class:`SSTextVAE` (the dataset sets ``vocabulary`` and ``num_classes``)."""

    latent_dim: int = option(32, "dimensions of z", convert=int)
    num_classes: int = option(2, "C, the number of classes (set by the dataset)", convert=int)
    decoder_condition: str = option(
        "label",
        "label: y at every decoder step, z in the initial state; both: y and z at every step",
    )
    unlabelled: str = option(
        "enumerate",
        "the unlabelled term: enumerate (y summed out), sample_ema or sample_vimco (y sampled)",
    )
    label_samples: int = option(
        2, "draws of y per unlabelled sentence for the sampled estimators", convert=int
    )
    baseline_decay: float = option(
        0.9, "decay of sample_ema's moving-average baseline", convert=float
    )
    alpha: float = option(
        300.0, "weight of the classification loss on labelled batches", convert=float
    )
    kl_weight: float = option(
        1.0, "weight of the z terms (KL) in training; 0 drops them", convert=float
    )
    word_dropout: float = option(
        0.0, "probability of a decoder input word becoming <unk> (training)", convert=float
    )

    def validate(self) -> None:
        super().validate()
        if self.latent_dim < 1:
            raise ValueError(f"latent_dim must be a positive integer, got {self.latent_dim}")
        if self.num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {self.num_classes}")
        if self.decoder_condition not in DECODER_CONDITIONS:
            raise ValueError(
                f"decoder_condition must be one of {', '.join(DECODER_CONDITIONS)}, "
                f"got {self.decoder_condition!r}"
            )
        if self.unlabelled not in UNLABELLED_ESTIMATORS:
            raise ValueError(
                f"unlabelled must be one of {', '.join(UNLABELLED_ESTIMATORS)}, "
                f"got {self.unlabelled!r}"
            )
        if self.label_samples < 1:
            raise ValueError(f"label_samples must be >= 1, got {self.label_samples}")
        if self.unlabelled == "sample_vimco" and self.label_samples < 2:
            raise ValueError(
                "unlabelled=sample_vimco needs label_samples >= 2 (the baseline of a draw is "
                f"the mean of the others), got {self.label_samples}"
            )
        if not 0.0 <= self.baseline_decay < 1.0:
            raise ValueError(f"baseline_decay must be in [0, 1), got {self.baseline_decay}")
        if not (self.alpha >= 0 and math.isfinite(self.alpha)):
            raise ValueError(f"alpha must be a number >= 0, got {self.alpha}")
        if not (self.kl_weight >= 0 and math.isfinite(self.kl_weight)):
            raise ValueError(f"kl_weight must be a number >= 0, got {self.kl_weight}")
        if not 0.0 <= self.word_dropout <= 1.0:
            raise ValueError(f"word_dropout must be in [0, 1], got {self.word_dropout}")


SMOKE = {"embed_dim": 8, "hidden_dim": 8, "latent_dim": 2, "max_decode_length": 8}


@register_model("ss_text_vae", smoke=SMOKE, smoke_dataset="sst2")
class SSTextVAE(TextModel):
    """Semi-supervised sequential VAE (Xu et al. 2017): LSTM classifier q(y | x), Gaussian
    q(z | x, y), LSTM decoder p(x | y, z) with the label at every step.

    Options (:class:`SSTextVAEConfig`): those of every text model (``embed_dim``,
    ``hidden_dim``, ``dropout``, ``max_decode_length``), ``latent_dim``, ``num_classes``,
    ``decoder_condition`` (``label`` | ``both``), ``unlabelled`` (``enumerate`` |
    ``sample_ema`` | ``sample_vimco``), ``label_samples``, ``baseline_decay``, ``alpha``
    (default 300, as :class:`~pvae.models.m2.M2`), ``kl_weight``, ``word_dropout``.

    Shapes: ``x`` int64 ``(B, T)``; labels ``y`` ``(B,)``; site ``"z"`` ``(B, D)``, ``(C, B, D)``
    when y is enumerated and ``(K, B, D)`` with K draws of y.
    """

    Config = SSTextVAEConfig
    config: SSTextVAEConfig
    data_keys = ("vocabulary", "num_classes")

    def __init__(self, config: SSTextVAEConfig | None = None, **options: Any) -> None:
        super().__init__(config, **options)
        config = self.config
        self.num_classes = c = config.num_classes
        self.latent_dim = config.latent_dim
        self.classifier = SentenceClassifier(
            self.vocab_size, config.embed_dim, config.hidden_dim, c, config.dropout
        )
        self.encoder = SentenceEncoder(self.vocab_size, config.embed_dim, config.hidden_dim)
        self.posterior_head = GaussianHead(config.hidden_dim + c, config.latent_dim)
        self.decoder = LabelledSentenceDecoder(
            self.vocab_size,
            config.embed_dim,
            config.hidden_dim,
            config.latent_dim,
            c,
            structure=config.decoder_condition,
            word_dropout=config.word_dropout,
            dropout=config.dropout,
        )
        self.register_buffer("prior_loc", torch.zeros(config.latent_dim))
        self.register_buffer("prior_scale", torch.ones(config.latent_dim))
        self.register_buffer("label_logits", torch.zeros(c))  # uniform p(y)

    # -- Pyro model and guide -------------------------------------------------------------------
    def model(self, x: torch.Tensor, y: torch.Tensor | None = None) -> None:
        """p(y) p(z) prod_t p(x_t | x_<t, y, z); ``y=None``: an unlabelled batch."""
        self._check_input(x)
        if y is not None:
            check_labels(y, x, self.num_classes)
        x = self._trim(x)
        with pyro.plate("data", x.shape[0]):
            label = pyro.sample("y", dist.Categorical(logits=self.label_logits), obs=y)
            with self._kl_weight():
                z = pyro.sample("z", dist.Normal(self.prior_loc, self.prior_scale).to_event(1))
            logits = self.decoder(x, _concat(z, self._one_hot(label)))
            pyro.sample("x", self.likelihood(logits, x), obs=x)
            if y is not None and self.config.alpha > 0:
                # The classification loss of labelled data (Kingma et al. Eq. 9, [3]).
                with poutine.scale(scale=self.config.alpha):
                    pyro.sample("y_aux", dist.Categorical(logits=self.classifier(x)), obs=y)

    def guide(self, x: torch.Tensor, y: torch.Tensor | None = None) -> None:
        """q(y | x) q(z | x, y); y enumerated or sampled (option ``unlabelled``) when not given."""
        self._check_input(x)
        if y is not None:
            check_labels(y, x, self.num_classes)
        x = self._trim(x)
        with pyro.plate("data", x.shape[0]):
            if y is None:
                y = pyro.sample(
                    "y", dist.Categorical(logits=self.classifier(x)), infer=self._label_infer()
                )
            loc, scale = self.posterior(x, y)
            with self._kl_weight():
                pyro.sample("z", dist.Normal(loc, scale).to_event(1))

    def _label_infer(self) -> dict[str, Any]:
        if self.config.unlabelled == "enumerate":
            return {"enumerate": "parallel"}
        if self.config.unlabelled == "sample_ema":
            return {
                "baseline": {
                    "use_decaying_avg_baseline": True,
                    "baseline_beta": self.config.baseline_decay,
                }
            }
        return {}

    def _kl_weight(self) -> contextlib.AbstractContextManager:
        weight = self.config.kl_weight
        if weight == 1.0 or not self.training:
            return contextlib.nullcontext()
        if weight == 0.0:
            return poutine.mask(mask=False)
        return poutine.scale(scale=weight)

    def unlabelled_objective(self) -> pyro.infer.ELBO:
        """The Pyro ELBO of unlabelled batches that the option ``unlabelled`` names."""
        from pvae.infer.baselines import LeaveOneOutELBO, ScoreFunctionELBO

        k = self.config.label_samples
        if self.config.unlabelled == "enumerate":
            return pyro.infer.TraceEnum_ELBO(max_plate_nesting=1)
        if self.config.unlabelled == "sample_ema":
            return ScoreFunctionELBO(num_particles=k, max_plate_nesting=1)
        return LeaveOneOutELBO(num_particles=k, max_plate_nesting=1)

    def objective(self) -> pyro.infer.ELBO:
        """The training objective: :meth:`unlabelled_objective` on unlabelled batches,
        ``Trace_ELBO`` on labelled ones (:class:`~pvae.infer.semisupervised.SemiSupervisedELBO`)."""
        from pvae.infer.semisupervised import SemiSupervisedELBO

        objective = SemiSupervisedELBO()
        objective.unlabelled = self.unlabelled_objective()
        return objective

    # -- networks -------------------------------------------------------------------------------
    def _one_hot(self, y: torch.Tensor) -> torch.Tensor:
        return F.one_hot(y.long(), self.num_classes).to(self.prior_loc.dtype)

    def posterior(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(loc, scale)`` of q(z | x, y), broadcast over y's leading dims."""
        return self.posterior_head(_concat(self.encoder(x), self._one_hot(y)))

    def classifier_logits(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of q(y | x), ``(B, C)``."""
        return self.classifier(self._trim(x))

    @torch.no_grad()
    def classify(self, x: torch.Tensor) -> torch.Tensor:
        """The most probable class under q(y | x), ``(B,)`` (eval mode: no dropout)."""
        mode = self.classifier.training
        self.classifier.eval()
        try:
            return self.classifier_logits(x).argmax(-1)
        finally:
            self.classifier.train(mode)

    def encode_mean(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """The mean of q(z | x, y), ``y`` the classifier's guess when not given."""
        x = self._trim(x)
        return self.posterior(x, self.classify(x) if y is None else y)[0]

    def prior_sample(
        self, num_samples: int, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        eps = torch.randn(num_samples, self.latent_dim, generator=generator)
        return self.prior_loc + self.prior_scale * eps.to(self.prior_loc)

    # -- data, training and metrics ---------------------------------------------------------------
    def batch_args(self, batch: Any) -> tuple[torch.Tensor, ...]:
        """``(x, y)`` for an all-labelled batch, ``(x,)`` for an all-unlabelled one (-1)."""
        return labelled_or_unlabelled(batch, "ss_text_vae")

    def eval_args(self, batch: Any) -> tuple[torch.Tensor]:
        """``(x,)`` ordered by length: evaluation bounds log p(x), y summed out (sampled)."""
        x = batch[0] if isinstance(batch, (tuple, list)) else batch
        return self.by_length(x)

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
        """``fit`` arguments: ``num_labels`` labelled sentences (class balanced, drawn with
        ``seed``) among the unlabelled rest (:class:`SemiSupervisedData` with ``schedule``
        ``labelled_schedule``, as :meth:`pvae.models.m2.M2.training_setup`) and
        :meth:`objective` (as a :class:`SemiSupervisedObjective`). With a labelled ``valid``
        set every epoch records ``valid_bound``
        (on its sentences without labels) and ``valid_accuracy``, which picks the best
        checkpoint, as :meth:`pvae.models.m2.M2.training_setup`."""
        from pvae.infer.semisupervised import (
            SemiSupervisedObjective,
            semisupervised_training_setup,
        )

        return semisupervised_training_setup(
            self,
            train,
            valid,
            SemiSupervisedObjective(self.objective()),
            num_labels=num_labels,
            seed=seed,
            labelled_schedule=labelled_schedule,
        )

    def metrics(self, test: Any) -> dict[str, float]:
        """``{"test_accuracy": ...}`` of q(y | x) on the labelled test set."""
        return {"test_accuracy": self.accuracy(test)}

    def accuracy(self, data: Any) -> float:
        """The share of ``data``'s labelled sentences that q(y | x) classifies correctly."""
        return accuracy(self.classifier, data, self.num_classes)

    # -- sentences ------------------------------------------------------------------------------
    def decode_labelled(
        self, z: torch.Tensor, y: torch.Tensor, method: str = "greedy"
    ) -> list[str]:
        """Sentences decoded from codes ``z`` ``(B, D)`` with labels ``y`` ``(B,)``."""
        return self.decode(_concat(z, self._one_hot(y)), method=method)

    @torch.no_grad()
    def sample(self, num_samples: int, generator: torch.Generator | None = None) -> list[str]:
        """``num_samples`` sentences decoded greedily from prior draws of z, with the labels
        ``0, 1, ..., C-1, 0, ...``."""
        z = self.prior_sample(num_samples, generator)
        y = torch.arange(num_samples, device=z.device) % self.num_classes
        return self.decode_labelled(z, y)

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor, method: str = "greedy") -> list[str]:
        """Decoded from the mean of q(z | x, y) with y the classifier's guess."""
        x = self._trim(x)
        y = self.classify(x)
        return self.decode_labelled(self.posterior(x, y)[0], y, method=method)

    def report_items(self, test: Any, out: Path, seed: int = 0) -> list[ReportItem]:
        """The test confusion matrix; sentences for every label from the same prior z;
        reconstructions."""
        items = [confusion_report(self.classifier, test, self.num_classes, out, "q(y | x)")]
        generator = torch.Generator().manual_seed(seed)
        z = self.prior_sample(4, generator)
        rows = []
        for i in range(z.shape[0]):
            same = z[i : i + 1].expand(self.num_classes, -1)
            labels = torch.arange(self.num_classes, device=z.device)
            sentences = self.decode_labelled(same, labels)
            rows.append(
                f"- z number {i + 1}\n"
                + "\n".join(f"  - y = {c}: {s}" for c, s in enumerate(sentences))
            )
        items.append(
            ReportItem("Sentences for each label from the same z (greedy)", text="\n".join(rows))
        )
        x, _ = next(iter(test.batches(5, shuffle=False)))
        x = x.to(self._anchor.device)
        originals = [" ".join(self.vocabulary.decode(row.tolist())) for row in x.cpu()]
        recon = self.reconstruct(x)
        items.append(
            ReportItem(
                "Reconstructions (greedy, z the guide's mean, y the classifier's guess)",
                text="\n".join(
                    f"- {original}\n  - {decoded}"
                    for original, decoded in zip(originals, recon, strict=True)
                ),
            )
        )
        return items
