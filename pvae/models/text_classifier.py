"""An LSTM sentence classifier trained on labelled sentences alone: the supervised baseline of
the semi-supervised text VAE (:mod:`pvae.models.ss_text_vae`), with the same classifier.

Model, for each labelled sentence n (no latent variable)::

    y_n ~ Categorical(softmax(W h_n + b))        site "y", observed, shape (B,)
    h_n = LSTM(embed(x_n))  at <eos>             the features of :class:`SentenceClassifier`

The guide is empty. This is a *conditional* model p(y | x): it has no p(x), so its bound is the
exact log-likelihood of the labels, and the run's "test NLL" is the classification NLL
``-(1/N) sum_n log q(y_n | x_n)`` in nats per sentence (not a sentence likelihood: it cannot be
compared with the NLL of a VAE, and it has no perplexity). It cannot draw sentences.

:class:`SentenceClassifier`, :func:`accuracy` and :func:`confusion_counts` are shared with the
semi-supervised VAE, so both report the same metric on the same network.

References:
    [1] Xu, Sun, Deng, Tan. Variational Autoencoder for Semi-supervised Text Classification.
        AAAI 2017. arXiv:1603.02514 (the LSTM classifier of its SSVAE and its supervised
        baseline)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyro
import pyro.distributions as dist
import torch
from torch import nn

from pvae.data.registry import UNLABELLED
from pvae.models.base import ReportItem, option
from pvae.models.registry import register_model
from pvae.models.text import TextConfig, TextModel
from pvae.nets.recurrent import SentenceEncoder, lengths_of


class SentenceClassifier(nn.Module):
    """Logits of q(y | x): an LSTM's output at ``<eos>`` (a :class:`SentenceEncoder`), dropout,
    and a linear layer. ``x`` ``(B, T)`` -> ``(B, num_classes)``."""

    def __init__(
        self,
        vocab_size: int,
        embed_dim: int,
        hidden_dim: int,
        num_classes: int,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.encoder = SentenceEncoder(vocab_size, embed_dim, hidden_dim)
        self.dropout = nn.Dropout(dropout)
        self.output = nn.Linear(hidden_dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.output(self.dropout(self.encoder(x)))


def _labelled_batches(data: Any, batch_size: int):
    for x, y in data.batches(batch_size, shuffle=False):
        labelled = y != UNLABELLED
        if bool(labelled.any()):
            yield x[labelled], y[labelled]


@torch.no_grad()
def confusion_counts(
    classifier: nn.Module, data: Any, num_classes: int, batch_size: int = 500
) -> torch.Tensor:
    """``counts[i, j]``: labelled sentences of class i that ``classifier`` (logits) puts in
    class j, int64 ``(C, C)``; computed in eval mode (no dropout); ``ValueError`` without
    labelled data."""
    device = next(classifier.parameters()).device
    counts = torch.zeros(num_classes, num_classes, dtype=torch.int64)
    mode = classifier.training
    classifier.eval()
    try:
        for x, y in _labelled_batches(data, batch_size):
            x = x.to(device)
            x = x[:, : max(1, int(lengths_of(x).max()))]
            predicted = classifier(x).argmax(-1).cpu()
            counts += torch.bincount(
                y.cpu() * num_classes + predicted, minlength=num_classes**2
            ).reshape(num_classes, num_classes)
    finally:
        classifier.train(mode)
    if int(counts.sum()) == 0:
        raise ValueError("accuracy needs labelled data")
    return counts


def accuracy(classifier: nn.Module, data: Any, num_classes: int) -> float:
    """The share of ``data``'s labelled sentences that ``classifier`` classifies correctly."""
    counts = confusion_counts(classifier, data, num_classes)
    return float(counts.diagonal().sum()) / float(counts.sum())


def confusion_report(
    classifier: nn.Module, test: Any, num_classes: int, out: Path, title: str
) -> ReportItem:
    """The confusion matrix on ``test`` as a figure in ``out``."""
    from pvae.figures import plot_confusion_matrix

    counts = confusion_counts(classifier, test, num_classes)
    path = plot_confusion_matrix(counts, Path(out) / "confusion_matrix.png", title=title)
    return ReportItem("Confusion matrix (test)", path=path.name)


def check_labels(y: torch.Tensor, x: torch.Tensor, num_classes: int) -> None:
    """``ValueError`` unless ``y`` holds one class index in ``0..C-1`` per sentence of ``x``."""
    if y.dim() != 1 or y.shape[0] != x.shape[0] or y.dtype not in (torch.int64, torch.int32):
        raise ValueError(
            f"labels must be integers of shape ({x.shape[0]},), got {y.dtype} {tuple(y.shape)}"
        )
    if y.numel() and bool(((y < 0) | (y >= num_classes)).any()):
        raise ValueError(
            f"labels must lie in 0..{num_classes - 1}, got {int(y.min())}..{int(y.max())}"
        )


@dataclass(frozen=True)
class TextClassifierConfig(TextConfig):
    """Options of :class:`TextClassifier` (the dataset sets ``vocabulary`` and
    ``num_classes``)."""

    num_classes: int = option(2, "C, the number of classes (set by the dataset)", convert=int)

    def validate(self) -> None:
        super().validate()
        if self.num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {self.num_classes}")


SMOKE = {"embed_dim": 8, "hidden_dim": 8}


@register_model("text_classifier", smoke=SMOKE, smoke_dataset="sst2")
class TextClassifier(TextModel):
    """The LSTM classifier q(y | x) of the semi-supervised text VAE, trained on the labelled
    sentences alone (the supervised baseline).

    Options (:class:`TextClassifierConfig`): ``embed_dim``, ``hidden_dim``, ``dropout`` (on the
    features), ``num_classes``; ``max_decode_length`` is unused.

    Shapes: ``model(x, y)`` takes token ids ``(B, T)`` and labels ``(B,)``; site ``"y"`` has
    batch shape ``(B,)``. Its "NLL" is the classification NLL (module docstring).
    """

    Config = TextClassifierConfig
    config: TextClassifierConfig
    data_keys = ("vocabulary", "num_classes")
    default_eval_samples = 1  # no latent: the classification NLL is exact
    exact_likelihood = True

    def __init__(self, config: TextClassifierConfig | None = None, **options: Any) -> None:
        super().__init__(config, **options)
        config = self.config
        self.num_classes = config.num_classes
        self.classifier = SentenceClassifier(
            self.vocab_size, config.embed_dim, config.hidden_dim, self.num_classes, config.dropout
        )

    def model(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """p(y | x) = Categorical(softmax(classifier(x))), y observed."""
        self._check_input(x)
        check_labels(y, x, self.num_classes)
        x = self._trim(x)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("y", dist.Categorical(logits=self.classifier(x)), obs=y)

    def guide(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """No latent: the empty guide (the bound is log p(y | x) exactly)."""

    # -- data ---------------------------------------------------------------------------------
    def batch_args(self, batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """``(x, y)``; a batch with unlabelled sentences (label -1) is a ``ValueError``."""
        if not isinstance(batch, (tuple, list)) or len(batch) < 2:
            raise ValueError("text_classifier trains on labelled (x, y) batches")
        x, y = batch[0], batch[1]
        if bool((y == UNLABELLED).any()):
            raise ValueError(
                "text_classifier needs labelled sentences; unlabelled ones (label -1) carry "
                "nothing for it"
            )
        return x, y

    def eval_args(self, batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """``(x, y)`` ordered by length: evaluation scores log p(y | x)."""
        return self.by_length(*self.batch_args(batch))

    def eval_datum_size(self, args: tuple) -> int:
        return int(args[0].shape[-1]) * self.config.hidden_dim

    def likelihood_metrics(self, log_likelihoods: torch.Tensor, test: Any) -> dict[str, float]:
        """None: the bound is a classification likelihood, with no perplexity."""
        return {}

    # -- training and metrics -----------------------------------------------------------------
    def training_setup(
        self, train: Any, valid: Any = None, *, num_labels: int = 100, seed: int = 0, **_: Any
    ) -> dict[str, Any]:
        """``fit`` arguments: the ``num_labels`` labelled sentences that
        :class:`~pvae.data.semisupervised.SemiSupervisedData` draws with ``seed`` (class
        balanced; the semi-supervised VAE sees the same ones), validation on ``valid``'s labels
        (``valid_bound``: log q(y | x)), and the best epoch chosen by ``valid_accuracy``."""
        from pvae.data.semisupervised import SemiSupervisedData
        from pvae.infer.callbacks import ValidMetrics

        labelled = SemiSupervisedData(train, num_labels, self.num_classes, seed=seed).labelled_set
        setup: dict[str, Any] = {"train_data": labelled, "valid_data": valid}
        if valid is not None:

            def valid_accuracy() -> dict[str, float]:
                return {"valid_accuracy": self.accuracy(valid)}

            setup["callbacks"] = [ValidMetrics(valid_accuracy)]
            setup["monitor"] = "valid_accuracy"
        return setup

    def metrics(self, test: Any) -> dict[str, float]:
        """``{"test_accuracy": ...}`` on the labelled test set."""
        return {"test_accuracy": self.accuracy(test)}

    def accuracy(self, data: Any) -> float:
        """The share of ``data``'s labelled sentences classified correctly."""
        return accuracy(self.classifier, data, self.num_classes)

    @torch.no_grad()
    def classify(self, x: torch.Tensor) -> torch.Tensor:
        """The most probable class, ``(B,)`` integers (eval mode: no dropout)."""
        mode = self.classifier.training
        self.classifier.eval()
        try:
            return self.classifier(self._trim(x)).argmax(-1)
        finally:
            self.classifier.train(mode)

    def sample(self, num_samples: int, generator: torch.Generator | None = None) -> list[str]:
        """Not available: a classifier models p(y | x) and has no distribution of sentences
        (sample from ``ss_text_vae`` instead)."""
        raise NotImplementedError(
            "text_classifier models p(y | x) only and cannot draw sentences; sample from a "
            "generative model such as ss_text_vae"
        )

    def report_items(self, test: Any, out: Path, seed: int = 0) -> list[ReportItem]:
        """The test confusion matrix."""
        return [confusion_report(self.classifier, test, self.num_classes, out, "text_classifier")]
