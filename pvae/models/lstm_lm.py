"""The LSTM language model: the baseline every text VAE is compared with.

Generative story, for each sentence n (no latent)::

    x_n,t ~ Categorical(softmax(W h_n,t)),   h_n,t = LSTM(h_n,t-1, embed(x_n,t-1))

with ``x_n,0 = <bos>`` and the sentence ending at ``<eos>``; site ``"x"`` is a
:class:`~pvae.distributions.TokenSequence` in the ``"data"`` plate. The guide is empty, so the
ELBO *is* ``log p(x)``, and ``log_likelihood`` returns the exact value for any number of
importance samples (K = 1 suffices): the report's NLL and perplexity of this model are exact,
unlike the VAEs' bounds. Trained and evaluated by the same code as the VAEs.

References:
    [1] Mikolov, Karafiat, Burget, Cernocky, Khudanpur. Recurrent neural network based
        language model. Interspeech 2010.
    [2] Zaremba, Sutskever, Vinyals. Recurrent Neural Network Regularization. 2014.
        arXiv:1409.2329
"""

from __future__ import annotations

from typing import Any

import pyro
import torch

from pvae.models.registry import register_model
from pvae.models.text import TextConfig, TextModel
from pvae.nets.recurrent import SentenceDecoder

SMOKE = {"embed_dim": 8, "hidden_dim": 8, "max_decode_length": 8}


@register_model("lstm_lm", smoke=SMOKE, smoke_dataset="ptb")
class LSTMLanguageModel(TextModel):
    """An LSTM language model over sentences (no latent variable).

    Options (:class:`~pvae.models.text.TextConfig`): ``embed_dim``, ``hidden_dim``,
    ``dropout``, ``max_decode_length``; the dataset sets ``vocabulary``.

    Shapes: ``model(x)`` takes token ids ``(B, T)``; site ``"x"`` has batch shape ``(B,)``.
    """

    Config = TextConfig
    default_eval_samples = 1  # no latent: one "sample" gives the exact log p(x)
    exact_likelihood = True

    def __init__(self, config: TextConfig | None = None, **options: Any) -> None:
        super().__init__(config, **options)
        config = self.config
        self.decoder = SentenceDecoder(
            self.vocab_size, config.embed_dim, config.hidden_dim, dropout=config.dropout
        )

    def model(self, x: torch.Tensor) -> None:
        """p(x) = prod_t p(x_t | x_<t); ``x`` int64 ``(B, T)``."""
        self._check_input(x)
        x = self._trim(x)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("x", self.likelihood(self.decoder(x), x), obs=x)

    def guide(self, x: torch.Tensor) -> None:
        """No latent: the empty guide (the ELBO is log p(x) exactly)."""
