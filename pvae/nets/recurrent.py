"""LSTM sentence encoders and decoders over padded token ids (:mod:`pvae.data.text`).

Token ids follow :class:`pvae.data.text.Vocabulary`: ``<pad>`` 0, ``<bos>`` 1, ``<eos>`` 2,
``<unk>`` 3, then words. A decoder predicts ``<eos>``, ``<unk>`` and the words, never
``<pad>`` or ``<bos>``: its output layer has ``vocab_size - 2`` units, and output ``j`` is
token ``j + 2`` (:data:`OUTPUT_OFFSET`), so no probability is spent on tokens that never occur.
"""

from __future__ import annotations

import torch
from torch import nn

PAD_ID, BOS_ID, EOS_ID, UNK_ID = 0, 1, 2, 3
OUTPUT_OFFSET = 2
"""Output ``j`` of a :class:`SentenceDecoder` is token ``j + OUTPUT_OFFSET``."""

CONDITIONS = ("init", "input", "both")


def lengths_of(x: torch.Tensor) -> torch.Tensor:
    """Tokens per sentence (``<eos>`` included) of a padded batch ``(B, T)``."""
    return (x != PAD_ID).sum(-1)


class SentenceEncoder(nn.Module):
    """Embedding and a unidirectional LSTM; a sentence's features are the LSTM's output at its
    last token (``<eos>``), so padding after it changes nothing.

    ``x`` ``(B, T)`` -> ``(B, hidden_dim)``.
    """

    def __init__(self, vocab_size: int, embed_dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, embed_dim, padding_idx=PAD_ID)
        self.lstm = nn.LSTM(embed_dim, hidden_dim, batch_first=True)
        self.hidden_dim = hidden_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.lstm(self.embedding(x))
        last = (lengths_of(x) - 1).clamp_min(0)
        index = last.view(-1, 1, 1).expand(-1, 1, out.shape[-1])
        return out.gather(1, index).squeeze(1)


class SentenceDecoder(nn.Module):
    """An LSTM language model over ``<bos> x_1 .. x_{T-1}``, optionally conditioned on a
    latent ``z``: through the initial state (``h_0 = tanh(W z)``, ``c_0 = W z``, as He et al.
    2019), through every input (``[embed(x_{t-1}); z]``), or both (``condition``).

    :param vocab_size: tokens of the vocabulary (the output layer has ``vocab_size - 2``).
    :param latent_dim: size of ``z`` (0: the plain language model).
    :param word_dropout: in training mode, each input word is replaced by ``<unk>`` with this
        probability (Bowman et al. 2016); never at evaluation.
    :param inputless: every input word is ``<unk>``, in training and evaluation alike (the
        "inputless" decoder of Bowman et al. and Xu & Durrett): the decoder must read z.
    :param dropout: dropout on embeddings and LSTM outputs (training mode only).
    """

    def __init__(
        self,
        vocab_size: int,
        embed_dim: int,
        hidden_dim: int,
        latent_dim: int = 0,
        *,
        condition: str = "both",
        word_dropout: float = 0.0,
        inputless: bool = False,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if condition not in CONDITIONS:
            raise ValueError(f"condition must be one of {CONDITIONS}, got {condition!r}")
        if not 0.0 <= word_dropout <= 1.0:
            raise ValueError(f"word_dropout must be in [0, 1], got {word_dropout}")
        self.latent_dim = latent_dim
        self.condition = condition if latent_dim else "none"
        self.word_dropout = word_dropout
        self.inputless = inputless
        self.embedding = nn.Embedding(vocab_size, embed_dim, padding_idx=PAD_ID)
        feeds_z = latent_dim and condition in ("input", "both")
        self.lstm = nn.LSTM(
            embed_dim + (latent_dim if feeds_z else 0), hidden_dim, batch_first=True
        )
        self.initial = (
            nn.Linear(latent_dim, hidden_dim) if latent_dim and condition != "input" else None
        )
        self.dropout = nn.Dropout(dropout)
        self.output = nn.Linear(hidden_dim, vocab_size - OUTPUT_OFFSET)
        self.hidden_dim = hidden_dim

    def _inputs(self, x: torch.Tensor) -> torch.Tensor:
        """``<bos> x_1 .. x_{T-1}`` with word dropout / inputless ``<unk>`` words."""
        inputs = torch.cat([torch.full_like(x[:, :1], BOS_ID), x[:, :-1]], dim=1)
        drop = None
        if self.inputless:
            drop = torch.ones_like(inputs, dtype=torch.bool)
        elif self.training and self.word_dropout > 0:
            drop = torch.rand(inputs.shape, device=inputs.device) < self.word_dropout
        if drop is not None:
            words = inputs > EOS_ID  # words and <unk>, not <bos> or <pad>
            inputs = torch.where(drop & words, torch.full_like(inputs, UNK_ID), inputs)
        return inputs

    def initial_state(
        self, z: torch.Tensor | None, batch: int
    ) -> tuple[torch.Tensor, torch.Tensor] | None:
        """``(h_0, c_0)`` of shape ``(1, batch, H)`` from ``z`` ``(batch, D)``, or ``None``."""
        if self.initial is None or z is None:
            return None
        c = self.initial(z).reshape(1, batch, -1)
        return torch.tanh(c), c

    def _run(
        self,
        embedded: torch.Tensor,
        z: torch.Tensor | None,
        state: tuple[torch.Tensor, torch.Tensor] | None,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        if z is not None and self.condition in ("input", "both"):
            embedded = torch.cat([embedded, z.unsqueeze(1).expand(-1, embedded.shape[1], -1)], -1)
        out, state = self.lstm(self.dropout(embedded), state)
        return self.output(self.dropout(out)), state

    def forward(self, x: torch.Tensor, z: torch.Tensor | None = None) -> torch.Tensor:
        """Logits ``(*batch, B, T, vocab_size - 2)`` of every next token, teacher-forced on
        ``x`` ``(B, T)``; ``z`` ``(*batch, B, D)`` (e.g. ``(K, B, D)`` importance samples)
        decodes every sample of every sentence."""
        inputs = self._inputs(x)
        embedded = self.embedding(inputs)
        if z is None:
            logits, _ = self._run(embedded, None, None)
            return logits
        flat_z = z.reshape(-1, z.shape[-1])
        copies = flat_z.shape[0] // x.shape[0]
        if copies > 1:
            embedded = embedded.expand(copies, *embedded.shape).reshape(-1, *embedded.shape[1:])
        state = self.initial_state(flat_z, flat_z.shape[0])
        logits, _ = self._run(embedded, flat_z, state)
        return logits.reshape(*z.shape[:-1], *logits.shape[-2:])

    def step(
        self,
        tokens: torch.Tensor,
        z: torch.Tensor | None,
        state: tuple[torch.Tensor, torch.Tensor] | None,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """One decoding step: next-token logits ``(B, vocab_size - 2)`` after ``tokens``
        ``(B,)`` and the new state. Start with ``<bos>`` and :meth:`initial_state`."""
        if self.inputless:
            tokens = torch.where(tokens > EOS_ID, torch.full_like(tokens, UNK_ID), tokens)
        logits, state = self._run(self.embedding(tokens).unsqueeze(1), z, state)
        return logits.squeeze(1), state
