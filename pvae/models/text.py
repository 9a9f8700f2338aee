"""What pvae's sentence models share: the config, input checks, evaluation hooks, decoding and
the text report.

A text model's data are padded token ids ``x`` ``(B, T)`` (:mod:`pvae.data.text`); its
likelihood is a :class:`~pvae.distributions.TokenSequence` in the ``"data"`` plate, so
``log_likelihood``, AIS and the diagnostics treat a sentence like an image. The vocabulary
(the dataset's ``model_options()``) is part of the config: saved in ``config.json`` and every
checkpoint, and used to read the test split at evaluation (:meth:`TextModel.data_options`).

Perplexity (:meth:`TextModel.likelihood_metrics`) is ``exp(-sum_n log p(x_n) / sum_n T_n)``,
with ``T_n`` the sentence's words plus its ``<eos>``, as the PTB literature counts. For the
latent-variable models ``log p(x_n)`` is an importance-sampled estimate, a stochastic lower
bound (so their perplexity is an upper bound in expectation); for the language model it is
exact.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from pvae.data.text import SPECIALS, Vocabulary
from pvae.distributions import TokenSequence
from pvae.models.base import Model, ModelConfig, ReportItem, option
from pvae.models.decoding import decode
from pvae.nets.recurrent import OUTPUT_OFFSET, PAD_ID, SentenceDecoder, lengths_of

DECODING = ("greedy", "sample", "beam")


def _tokens(values: Any) -> tuple[str, ...]:
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
        raise ValueError("expected the vocabulary's token list")
    return tuple(str(v) for v in values)


@dataclass(frozen=True)
class TextConfig(ModelConfig):
    """The options every sentence model has."""

    vocabulary: tuple[str, ...] = option(
        SPECIALS, "the token list (set by the dataset)", convert=_tokens
    )
    embed_dim: int = option(256, "word embedding size", convert=int)
    hidden_dim: int = option(256, "LSTM units", convert=int)
    dropout: float = option(0.0, "dropout on embeddings and LSTM outputs", convert=float)
    max_decode_length: int = option(40, "longest decoded sentence (tokens)", convert=int)

    def validate(self) -> None:
        if self.vocabulary[: len(SPECIALS)] != SPECIALS:
            raise ValueError(f"the vocabulary must start with {', '.join(SPECIALS)}")
        for name in ("embed_dim", "hidden_dim", "max_decode_length"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")


class TextModel(Model):
    """Base of pvae's sentence models (not a model by itself).

    Subclasses build ``self.decoder`` (a :class:`~pvae.nets.recurrent.SentenceDecoder`) and
    define ``model(x)``, ``guide(x)`` and ``prior_sample(n, generator)`` (``None`` for a model
    without a latent); latent models also ``encode_mean(x)``.
    """

    Config = TextConfig
    config: TextConfig
    data_keys = ("vocabulary",)
    #: how :meth:`sample` decodes draws from the prior
    sample_method = "greedy"
    #: K of the test NLL by default: 500 importance samples, as Li et al. (2019) and the PTB
    #: literature after them
    default_eval_samples = 500

    def __init__(self, config: TextConfig | None = None, **options: Any) -> None:
        super().__init__(config, **options)
        self.vocabulary = Vocabulary(self.config.vocabulary)
        self.vocab_size = len(self.vocabulary)
        if self.vocab_size <= len(SPECIALS):
            raise ValueError("the vocabulary has no words: train on a text dataset")
        self.register_buffer("_anchor", torch.zeros(()))  # carries dtype and device

    # -- data ---------------------------------------------------------------------------------
    def _check_input(self, x: torch.Tensor) -> None:
        """``ValueError`` unless ``x`` is int64 ``(B, T)`` of ids in the vocabulary with at
        least one token per sentence."""
        if x.dim() != 2 or x.dtype != torch.int64:
            raise ValueError(
                f"{type(self).__name__} expects token ids, int64 (batch, length); got "
                f"{x.dtype} {tuple(x.shape)}"
            )
        smallest, largest = torch.aminmax(x) if x.numel() else (x.new_zeros(()),) * 2
        first = x[:, 0] if x.shape[1] else x.new_zeros(x.shape[0])
        if bool((smallest < 0) | (largest >= self.vocab_size) | (first == PAD_ID).any()):
            raise ValueError(
                f"token ids must lie in 0..{self.vocab_size - 1} (this model's vocabulary) "
                f"and every sentence needs a token; got ids {int(smallest)}..{int(largest)}"
                + (" and an empty sentence" if bool((first == PAD_ID).any()) else "")
            )

    def likelihood(self, logits: torch.Tensor, x: torch.Tensor) -> TokenSequence:
        """The masked token likelihood of ``x`` given teacher-forced ``logits``."""
        return TokenSequence(logits, x != PAD_ID, offset=OUTPUT_OFFSET)

    def data_options(self) -> dict[str, Any]:
        return {"vocabulary": self.vocabulary}

    def eval_args(self, batch: Any) -> tuple:
        """The sentences ordered by length, so the evaluator's consecutive batches pad little
        (an order-free mean; per-datum values come back in this order)."""
        return self.by_length(*self.batch_args(batch))

    @staticmethod
    def by_length(x: torch.Tensor, *others: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """``x`` and ``others`` (labels) reordered by the sentences' lengths (stable)."""
        order = torch.argsort(lengths_of(x), stable=True)
        return (x[order], *(other[order] for other in others))

    def eval_datum_size(self, args: tuple) -> int:
        return int(args[0].shape[-1]) * self.vocab_size

    def _trim(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` without columns that are padding in every row."""
        longest = int(lengths_of(x).max()) if x.numel() else 1
        return x[:, : max(longest, 1)]

    def likelihood_metrics(self, log_likelihoods: torch.Tensor, test: Any) -> dict[str, float]:
        """``perplexity`` = exp(total NLL / predicted tokens) and ``nll_per_token``."""
        tokens = getattr(test, "num_tokens", None)
        if not tokens:
            return {}
        per_token = -float(log_likelihoods.double().sum()) / tokens
        return {"nll_per_token": per_token, "perplexity": float(torch.tensor(per_token).exp())}

    # -- decoding -----------------------------------------------------------------------------
    def prior_sample(
        self, num_samples: int, generator: torch.Generator | None = None
    ) -> torch.Tensor | None:
        return None

    def decode(
        self,
        z: torch.Tensor | None = None,
        *,
        method: str = "greedy",
        batch: int | None = None,
        temperature: float = 1.0,
        beam_size: int = 5,
        generator: torch.Generator | None = None,
    ) -> list[str]:
        """Sentences decoded from latent codes ``z`` ``(B, D)`` (or ``batch`` of them from a
        model without a latent) with ``method`` ``greedy``, ``sample`` or ``beam``."""
        decoder: SentenceDecoder = self.decoder
        mode = decoder.training
        decoder.eval()
        try:
            ids = decode(
                decoder,
                z,
                method=method,
                batch=batch,
                max_length=self.config.max_decode_length,
                temperature=temperature,
                beam_size=beam_size,
                generator=generator,
            )
        finally:
            decoder.train(mode)
        return [" ".join(self.vocabulary.decode(row.tolist())) for row in ids.cpu()]

    @torch.no_grad()
    def sample(self, num_samples: int, generator: torch.Generator | None = None) -> list[str]:
        """``num_samples`` sentences: prior draws decoded greedily (the language model, which
        has no latent, samples its words at temperature 1)."""
        z = self.prior_sample(num_samples, generator)
        if z is None:
            return self.decode(
                method="sample", batch=num_samples, generator=generator or torch.Generator()
            )
        return self.decode(z, method=self.sample_method)

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor, method: str = "greedy") -> list[str]:
        """The sentences decoded from the guide's mean code of ``x``."""
        return self.decode(self.encode_mean(x), method=method)

    @torch.no_grad()
    def homotopy(self, x1: torch.Tensor, x2: torch.Tensor, steps: int = 5) -> list[str]:
        """Greedy decodings along the line between the mean codes of two sentences (Bowman et
        al. 2016, Sec. 5.2); ``x1``, ``x2`` ``(T,)`` or ``(1, T)``."""
        z1 = self.encode_mean(x1.reshape(1, -1))
        z2 = self.encode_mean(x2.reshape(1, -1))
        t = torch.linspace(0, 1, steps, device=z1.device).unsqueeze(-1)
        return self.decode(self.interpolate(z1, z2, t))

    def interpolate(self, z1: torch.Tensor, z2: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Points between two codes (a line; the sphere's models project onto it)."""
        return (1 - t) * z1 + t * z2

    def report_items(self, test: Any, out: Path, seed: int = 0) -> list[ReportItem]:
        """Sentences from the prior, reconstructions and a homotopy, as text."""
        device = self._anchor.device
        generator = torch.Generator().manual_seed(seed)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            samples = self.sample(10, generator=generator)
        items = [ReportItem("Sentences from the prior", text=_bullets(samples))]
        if self.prior_sample(1, torch.Generator().manual_seed(seed)) is None:
            return items
        x, _ = next(iter(test.batches(5, shuffle=False)))
        x = x.to(device)
        originals = [" ".join(self.vocabulary.decode(row.tolist())) for row in x.cpu()]
        recon = self.reconstruct(x)
        pairs = "\n".join(
            f"- {original}\n  - greedy: {decoded}"
            for original, decoded in zip(originals, recon, strict=True)
        )
        items.append(ReportItem("Reconstructions (greedy, from the guide's mean)", text=pairs))
        if len(test) >= 2:
            path = self.homotopy(x[0], x[1] if len(x) > 1 else x[0], steps=7)
            items.append(
                ReportItem(
                    "Homotopy between two test sentences (greedy)",
                    text=f"from: {originals[0]}\n\n{_bullets(path)}\n\nto: {originals[1]}",
                )
            )
        return items


def _bullets(lines: list[str]) -> str:
    return "\n".join(f"- {line}" for line in lines)
