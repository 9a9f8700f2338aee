"""Text: a vocabulary, in-memory sentence datasets, and length-bucketed batches.

One unit is one sentence. A sentence is stored as its token ids followed by ``<eos>``; a batch
is ``(x, y)`` with ``x`` int64 ``(B, T)``, padded with ``<pad>`` (id 0) to the longest
sentence *of the batch*, and ``y`` the labels (``-1`` where unlabelled). A sentence's length
(its words plus ``<eos>``, the tokens a language model predicts) is ``(x != 0).sum(-1)``;
decoders feed ``<bos>`` followed by ``x[:, :-1]``.

Bucketing: a shuffled epoch draws one permutation, cuts it into pools of ``bucket`` batches,
sorts each pool by length and cuts it into batches, then shuffles the order of the batches
(all from the epoch's generator). Batches hold sentences of similar lengths, so padding costs
little, while every epoch still visits the data in a new random grouping. An unshuffled epoch
keeps the dataset's order. Padding never changes a loss: every model masks it.

Reading rules for bad input (counted in :attr:`TextDataset.counts` and logged at INFO on the
``pvae.data.text`` logger):

- an empty (or whitespace-only) line is skipped (``"empty"``);
- a word outside the vocabulary becomes ``<unk>`` (``"unknown"`` counts them), and so does a
  literal ``<pad>``, ``<bos>`` or ``<eos>`` in the text (a literal ``<unk>`` is ``<unk>``);
- a sentence of more than ``max_length`` words is cut to its first ``max_length`` words,
  then ``<eos>`` (``"truncated"``).

The :class:`Vocabulary` is built from the training split only (``max_size``, ``min_count``);
the other splits are read with it. A model keeps it in its config, so the run folder's
``config.json`` and every checkpoint hold the exact token list, and evaluation reads test
text with that list (``Model.data_options``), never with a rebuilt one.
"""

from __future__ import annotations

import gzip
import logging
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from pvae.data.registry import (
    UNLABELLED,
    DatasetSpec,
    checked_labels,
    shard_positions,
    subset_index,
)

__all__ = [
    "BOS",
    "EOS",
    "PAD",
    "SPECIALS",
    "UNK",
    "TextDataset",
    "TextLoader",
    "Vocabulary",
    "read_lines",
    "text_spec",
]

logger = logging.getLogger(__name__)

PAD, BOS, EOS, UNK = "<pad>", "<bos>", "<eos>", "<unk>"
SPECIALS = (PAD, BOS, EOS, UNK)
"""The special tokens, with ids 0, 1, 2, 3 in every :class:`Vocabulary`."""


class Vocabulary:
    """Tokens and their ids: the :data:`SPECIALS` first (``<pad>`` = 0, ``<bos>`` = 1,
    ``<eos>`` = 2, ``<unk>`` = 3), then words by decreasing count (ties alphabetical), so
    that the same training text always gives the same ids.

    :param tokens: the full token list (as saved by :meth:`to_list`), specials first.
    """

    def __init__(self, tokens: Sequence[str]) -> None:
        tokens = tuple(tokens)
        if tokens[: len(SPECIALS)] != SPECIALS:
            raise ValueError(f"a vocabulary must start with the special tokens {SPECIALS}")
        if len(set(tokens)) != len(tokens):
            raise ValueError("a vocabulary's tokens must be unique")
        self.tokens = tokens
        self.index = {token: i for i, token in enumerate(tokens)}

    pad_id, bos_id, eos_id, unk_id = 0, 1, 2, 3

    @classmethod
    def build(
        cls,
        sentences: Iterable[Sequence[str]],
        *,
        max_size: int | None = None,
        min_count: int = 1,
    ) -> Vocabulary:
        """The vocabulary of ``sentences`` (lists of words): words seen at least ``min_count``
        times, the ``max_size`` most frequent (counting the specials) when given."""
        if min_count < 1:
            raise ValueError(f"min_count must be >= 1, got {min_count}")
        if max_size is not None and max_size <= len(SPECIALS):
            raise ValueError(f"max_size must exceed the {len(SPECIALS)} special tokens")
        counts = Counter(word for sentence in sentences for word in sentence)
        for special in SPECIALS:
            counts.pop(special, None)
        words = sorted(
            (word for word, count in counts.items() if count >= min_count),
            key=lambda word: (-counts[word], word),
        )
        if max_size is not None:
            words = words[: max_size - len(SPECIALS)]
        return cls((*SPECIALS, *words))

    def __len__(self) -> int:
        return len(self.tokens)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Vocabulary) and self.tokens == other.tokens

    def __hash__(self) -> int:
        return hash(self.tokens)

    def __repr__(self) -> str:
        return f"Vocabulary({len(self)} tokens)"

    def encode(self, words: Sequence[str]) -> list[int]:
        """Ids of ``words`` (``<unk>`` for words outside the vocabulary, and for a literal
        ``<pad>``, ``<bos>`` or ``<eos>`` in the text, which would corrupt the sentence);
        no ``<eos>``."""
        ids = (self.index.get(word, self.unk_id) for word in words)
        return [i if i >= self.unk_id else self.unk_id for i in ids]

    def decode(self, ids: Iterable[int], *, stop_at_eos: bool = True) -> list[str]:
        """Words of ``ids``, without ``<pad>`` and ``<bos>``; up to the first ``<eos>``."""
        words = []
        for i in ids:
            i = int(i)
            if i == self.eos_id and stop_at_eos:
                break
            if i in (self.pad_id, self.bos_id):
                continue
            words.append(self.tokens[i])
        return words

    def to_list(self) -> list[str]:
        """The token list, ``Vocabulary(v.to_list()) == v`` (JSON-ready)."""
        return list(self.tokens)


def read_lines(path: Path, encoding: str = "utf-8") -> list[str]:
    """The lines of a text file (gzip-compressed when it ends in ``.gz``)."""
    opener = gzip.open if Path(path).suffix == ".gz" else open
    with opener(path, "rt", encoding=encoding) as handle:
        return handle.read().splitlines()


class TextDataset:
    """Sentences held in memory as one padded id tensor: the text modality's
    :class:`~pvae.data.registry.Dataset`.

    :param tokens: int64 ``(N, T)``: each row a sentence's ids, then ``<eos>``, then ``<pad>``.
    :param vocabulary: the :class:`Vocabulary` the ids refer to.
    :param labels: int64 ``(N,)`` (``-1`` where unlabelled; ``None``: all ``-1``).
    :param bucket: batches per length-sorted pool of a shuffled epoch (1: no bucketing).
    :param num_classes: how many classes the labels range over (labelled corpora).
    :param counts: what reading skipped, truncated or mapped to ``<unk>``.
    """

    def __init__(
        self,
        tokens: torch.Tensor,
        vocabulary: Vocabulary,
        labels: torch.Tensor | None = None,
        *,
        bucket: int = 50,
        num_classes: int | None = None,
        counts: dict[str, int] | None = None,
        name: str = "",
    ) -> None:
        if tokens.dim() != 2 or tokens.dtype != torch.int64:
            raise ValueError(
                f"tokens must be int64 of shape (N, T), got {tokens.dtype} {tuple(tokens.shape)}"
            )
        if not isinstance(bucket, int) or bucket < 1:
            raise ValueError(f"bucket must be a positive integer, got {bucket!r}")
        self.tokens = tokens
        self.lengths = (tokens != Vocabulary.pad_id).sum(-1)
        if tokens.shape[0] and int(self.lengths.min()) < 1:
            raise ValueError("every sentence needs at least its <eos> token")
        self.vocabulary = vocabulary
        self.labels = checked_labels(labels, tokens.shape[0], tokens.device)
        self.bucket = bucket
        self.num_classes = num_classes
        self.counts = dict(counts or {})
        self.name = name

    def __len__(self) -> int:
        return self.tokens.shape[0]

    def __repr__(self) -> str:
        return (
            f"TextDataset({self.name!r}, n={len(self)}, vocabulary={len(self.vocabulary)}, "
            f"max_length={self.tokens.shape[1]}, device={self.tokens.device})"
        )

    @property
    def num_tokens(self) -> int:
        """Predicted tokens in all (words plus one ``<eos>`` per sentence): the denominator
        of perplexity."""
        return int(self.lengths.sum())

    def _batch(self, index: torch.Tensor | slice) -> tuple[torch.Tensor, torch.Tensor]:
        longest = int(self.lengths[index].max())
        return self.tokens[index, :longest], self.labels[index]

    def batches(
        self,
        batch_size: int,
        *,
        shuffle: bool = True,
        generator: torch.Generator | None = None,
        shard: tuple[int, int] = (0, 1),
        drop_last: bool = False,
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """One epoch of ``(x, y)`` batches, each padded to its own longest sentence; shuffled
        epochs are length-bucketed (see the module docstring), sharded ones keep only this
        rank's share of the epoch's permutation (:func:`~pvae.data.registry.shard_positions`)."""
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        positions = shard_positions(len(self), shard)
        if not shuffle:
            share = positions.stop - positions.start
            stop = share - share % batch_size if drop_last else share
            for start in range(0, stop, batch_size):
                first = positions.start + start
                yield self._batch(slice(first, min(first + batch_size, positions.stop)))
            return
        device = generator.device if generator is not None else torch.device("cpu")
        order = torch.randperm(len(self), generator=generator, device=device).cpu()[positions]
        lengths = self.lengths.cpu()
        pool = batch_size * self.bucket
        groups: list[torch.Tensor] = []
        for start in range(0, len(order), pool):
            part = order[start : start + pool]
            if self.bucket > 1:
                part = part[torch.argsort(lengths[part], stable=True)]
            groups.extend(part.split(batch_size))
        if drop_last:
            groups = [group for group in groups if len(group) == batch_size]
        # The order of the batches is drawn like the permutation: the same on every rank.
        batch_order = torch.randperm(len(groups), generator=generator, device=device).tolist()
        for i in batch_order:
            yield self._batch(groups[i].to(self.tokens.device))

    def model_options(self) -> dict[str, Any]:
        """``vocabulary`` (the token list) and, for labelled corpora, ``num_classes``."""
        options: dict[str, Any] = {"vocabulary": self.vocabulary.to_list()}
        if self.num_classes is not None:
            options["num_classes"] = self.num_classes
        return options

    def _like(self, tokens: torch.Tensor, labels: torch.Tensor) -> TextDataset:
        longest = int((tokens != Vocabulary.pad_id).sum(-1).max()) if len(tokens) else 1
        return TextDataset(
            tokens[:, :longest].clone(),
            self.vocabulary,
            labels.clone(),
            bucket=self.bucket,
            num_classes=self.num_classes,
            counts=self.counts,
            name=self.name,
        )

    def subset(
        self, n_or_indices: int | Sequence[int] | torch.Tensor, *, seed: int | None = None
    ) -> TextDataset:
        """The first ``n`` sentences (``n`` drawn without replacement with ``seed``), or the
        given indices."""
        index = subset_index(n_or_indices, len(self), seed).to(self.tokens.device)
        return self._like(self.tokens[index], self.labels[index])

    def to(self, device: torch.device | str) -> TextDataset:
        return TextDataset(
            self.tokens.to(device),
            self.vocabulary,
            self.labels.to(device),
            bucket=self.bucket,
            num_classes=self.num_classes,
            counts=self.counts,
            name=self.name,
        )

    def without_labels(self) -> TextDataset:
        """The same sentences with every label ``-1``."""
        return TextDataset(
            self.tokens,
            self.vocabulary,
            torch.full_like(self.labels, UNLABELLED),
            bucket=self.bucket,
            num_classes=self.num_classes,
            counts=self.counts,
            name=self.name,
        )

    def sentences(self, n: int | None = None) -> list[str]:
        """The first ``n`` sentences as text (``<unk>`` where a word was unknown)."""
        rows = self.tokens if n is None else self.tokens[:n]
        return [" ".join(self.vocabulary.decode(row.tolist())) for row in rows]

    @classmethod
    def from_sentences(
        cls,
        sentences: Sequence[Sequence[str]],
        vocabulary: Vocabulary,
        labels: Sequence[int] | None = None,
        *,
        max_length: int | None = None,
        bucket: int = 50,
        num_classes: int | None = None,
        name: str = "",
        skipped_empty: int = 0,
    ) -> TextDataset:
        """Encodes word lists with ``vocabulary`` under the reading rules of the module
        docstring (empty sentences must already be removed and counted in ``skipped_empty``)."""
        if max_length is not None and max_length < 1:
            raise ValueError(f"max_length must be a positive number of words, got {max_length}")
        counts = {"empty": skipped_empty, "unknown": 0, "truncated": 0}
        rows = []
        for words in sentences:
            if max_length is not None and len(words) > max_length:
                words = words[:max_length]
                counts["truncated"] += 1
            ids = vocabulary.encode(words)
            counts["unknown"] += sum(
                1 for i, w in zip(ids, words, strict=True) if i == Vocabulary.unk_id and w != UNK
            )
            rows.append([*ids, Vocabulary.eos_id])
        longest = max((len(row) for row in rows), default=1)
        tokens = torch.full((len(rows), longest), Vocabulary.pad_id, dtype=torch.int64)
        for i, row in enumerate(rows):
            tokens[i, : len(row)] = torch.tensor(row)
        label_tensor = None if labels is None else torch.tensor(list(labels), dtype=torch.int64)
        dataset = cls(
            tokens,
            vocabulary,
            label_tensor,
            bucket=bucket,
            num_classes=num_classes,
            counts=counts,
            name=name,
        )
        if any(counts.values()):
            logger.info(
                "%s: skipped %d empty lines, truncated %d sentences to %s words, "
                "mapped %d words outside the vocabulary to <unk>",
                name or "text",
                counts["empty"],
                counts["truncated"],
                max_length,
                counts["unknown"],
            )
        return dataset


#: ``read(paths, split) -> (sentences, labels)``: word lists and labels (``None``: unlabelled)
Reader = Callable[[Any, str], tuple[list[list[str]], list[int] | None]]


def _non_empty(
    sentences: list[list[str]], labels: list[int] | None
) -> tuple[list[list[str]], list[int] | None, int]:
    keep = [i for i, words in enumerate(sentences) if words]
    skipped = len(sentences) - len(keep)
    return (
        [sentences[i] for i in keep],
        None if labels is None else [labels[i] for i in keep],
        skipped,
    )


@dataclass(frozen=True)
class TextLoader:
    """The ``build`` of a text dataset: one split as a :class:`TextDataset`, read with the
    training split's vocabulary.

    ``read(path, split)`` returns the split's sentences (word lists, empty ones included: they
    are skipped and counted here) and labels (``None`` for unlabelled corpora).
    """

    name: str
    read: Reader
    train_split: str = "train"
    num_classes: int | None = None

    def __call__(
        self,
        path: Any,
        split: str,
        *,
        vocabulary: Vocabulary | Sequence[str] | None = None,
        max_vocab: int | None = None,
        min_count: int = 1,
        max_length: int | None = None,
        bucket: int = 50,
    ) -> TextDataset:
        """:param vocabulary: the vocabulary (or token list) to read with; ``None`` builds it
            from the training split (``train``, or ``split`` itself when it extends it, like
            ``train+valid``) with ``max_vocab`` and ``min_count``.
        :param max_length: cut longer sentences to this many words (counted).
        :param bucket: batches per length-sorted pool of a shuffled epoch."""
        if vocabulary is None:
            # A training split that contains the train split (TREC's "train+valid") is its
            # own vocabulary's source; every other split reads with the train split's.
            source = split if split.startswith(self.train_split) else self.train_split
            train, _ = self.read(path, source)
            vocabulary = Vocabulary.build(train, max_size=max_vocab, min_count=min_count)
        elif not isinstance(vocabulary, Vocabulary):
            vocabulary = Vocabulary(vocabulary)
        sentences, labels = self.read(path, split)
        sentences, labels, skipped = _non_empty(sentences, labels)
        return TextDataset.from_sentences(
            sentences,
            vocabulary,
            labels,
            max_length=max_length,
            bucket=bucket,
            num_classes=self.num_classes,
            name=f"{self.name}/{split}",
            skipped_empty=skipped,
        )


def text_spec(
    *,
    name: str,
    resource: Any,
    splits: tuple[str, ...],
    read: Reader,
    num_classes: int | None = None,
    description: str = "",
) -> DatasetSpec:
    """The :class:`~pvae.data.registry.DatasetSpec` of a text corpus (its ``build`` a
    :class:`TextLoader`); pass it to :func:`~pvae.data.registry.register_dataset`."""
    return DatasetSpec(
        name=name,
        resource=resource,
        splits=splits,
        build=TextLoader(name, read, num_classes=num_classes),
        description=description,
    )
