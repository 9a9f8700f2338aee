"""The text modality's data side: the vocabulary, the reading rules, length bucketing and
sharding of :class:`~pvae.data.text.TextDataset`, and the labelled corpora's splits."""

from __future__ import annotations

import gzip
import json
import logging
import os
from pathlib import Path

import pytest
import torch

from pvae.data import load_dataset
from pvae.data.ptb import read_ptb
from pvae.data.sentences import TREC_VALID, read_labelled
from pvae.data.text import (
    BOS,
    EOS,
    PAD,
    SPECIALS,
    UNK,
    TextDataset,
    TextLoader,
    Vocabulary,
    read_lines,
)

SHARED = Path(os.environ["PVAE_DATA_DIR"])

# -- Vocabulary ----------------------------------------------------------------------------


def test_specials_come_first_with_fixed_ids():
    vocabulary = Vocabulary.build([["b", "a"]])
    assert vocabulary.tokens[:4] == SPECIALS == (PAD, BOS, EOS, UNK)
    assert [vocabulary.index[t] for t in SPECIALS] == [0, 1, 2, 3]
    assert (vocabulary.pad_id, vocabulary.bos_id, vocabulary.eos_id, vocabulary.unk_id) == (
        0,
        1,
        2,
        3,
    )


def test_words_ordered_by_count_then_alphabetically():
    sentences = [["b", "a", "c", "z"], ["a", "b", "y"], ["a", "x"], ["<unk>", "<unk>"]]
    vocabulary = Vocabulary.build(sentences)
    # a: 3, b: 2, then the words seen once in alphabetical order; the literal <unk> is the
    # special, not a word.
    assert vocabulary.tokens[4:] == ("a", "b", "c", "x", "y", "z")
    # The order of the sentences does not matter.
    assert Vocabulary.build(reversed(sentences)) == vocabulary


def test_max_size_and_min_count():
    sentences = [["a"] * 5 + ["b"] * 3 + ["c"] * 2 + ["d"]]
    assert Vocabulary.build(sentences, max_size=6).tokens == (*SPECIALS, "a", "b")
    assert Vocabulary.build(sentences, min_count=2).tokens == (*SPECIALS, "a", "b", "c")
    assert Vocabulary.build(sentences, min_count=3, max_size=100).tokens == (*SPECIALS, "a", "b")
    with pytest.raises(ValueError, match="max_size"):
        Vocabulary.build(sentences, max_size=4)
    with pytest.raises(ValueError, match="min_count"):
        Vocabulary.build(sentences, min_count=0)


def test_round_trip_through_the_token_list():
    vocabulary = Vocabulary.build([["the", "cat"], ["the", "dog"]])
    tokens = vocabulary.to_list()
    assert isinstance(tokens, list)
    again = Vocabulary(json.loads(json.dumps(tokens)))
    assert again == vocabulary and hash(again) == hash(vocabulary)
    assert again.index == vocabulary.index
    with pytest.raises(ValueError, match="special tokens"):
        Vocabulary(["the", *SPECIALS])
    with pytest.raises(ValueError, match="unique"):
        Vocabulary([*SPECIALS, "the", "the"])


def test_encode_and_decode():
    vocabulary = Vocabulary([*SPECIALS, "the", "cat"])
    assert vocabulary.encode(["the", "zebra", "cat", "<unk>"]) == [4, 3, 5, 3]  # no <eos>
    # decode drops <pad> and <bos> and stops at the first <eos>.
    assert vocabulary.decode([1, 4, 0, 5, 3, 2, 4, 4]) == ["the", "cat", UNK]
    assert vocabulary.decode(torch.tensor([4, 5, 2, 0, 0])) == ["the", "cat"]
    assert vocabulary.decode([4, 2, 5], stop_at_eos=False) == ["the", EOS, "cat"]
    assert vocabulary.decode([2, 4]) == []


# -- reading rules -------------------------------------------------------------------------

TRAIN_LINES = ["the cat sat", "the dog sat on the mat", "a <unk> sat"]
# An empty line, a whitespace-only line, an unknown word (zebra, twice), a too-long sentence.
VALID_LINES = [
    "the zebra sat",
    "",
    "   ",
    "the cat sat on the mat and the dog sat too",
    "zebra <unk>",
]


def write_lines(path: Path, lines: list[str]) -> Path:
    text = "\n".join(lines) + "\n"
    if path.suffix == ".gz":
        path.write_bytes(gzip.compress(text.encode()))
    else:
        path.write_text(text)
    return path


@pytest.mark.parametrize("suffix", [".txt.gz", ".txt"])
def test_reading_rules_count_empty_unknown_and_truncated(tmp_path, suffix, caplog):
    paths = (
        write_lines(tmp_path / f"train{suffix}", TRAIN_LINES),
        write_lines(tmp_path / f"valid{suffix}", VALID_LINES),
        write_lines(tmp_path / f"test{suffix}", ["the cat"]),
    )
    assert read_lines(paths[1]) == VALID_LINES
    loader = TextLoader("toy", read_ptb)
    with caplog.at_level(logging.INFO, logger="pvae.data.text"):
        valid = loader(paths, "valid", max_length=5)
    vocabulary = valid.vocabulary
    # The vocabulary comes from the training split only.
    assert vocabulary == Vocabulary.build(line.split() for line in TRAIN_LINES)
    assert "zebra" not in vocabulary.index and "too" not in vocabulary.index
    # "and" and "too" are unknown too, but they lie past the cut: only kept words count.
    assert valid.counts == {"empty": 2, "unknown": 2, "truncated": 1}
    assert len(valid) == 3
    assert valid.sentences() == [
        "the <unk> sat",
        "the cat sat on the",
        "<unk> <unk>",
    ]
    # The truncated sentence: its first max_length words, then <eos>.
    long = valid.tokens[1]
    assert long.tolist() == [*vocabulary.encode("the cat sat on the".split()), 2]
    assert valid.lengths.tolist() == [4, 6, 3]
    assert valid.tokens.shape == (3, 6)
    assert valid.num_tokens == 13
    assert valid.labels.tolist() == [-1, -1, -1]
    assert "skipped 2 empty lines, truncated 1 sentences" in caplog.text
    assert "mapped 2 words" in caplog.text
    # The training split read with its own vocabulary: nothing unknown, nothing counted.
    train = loader(paths, "train")
    assert train.counts == {"empty": 0, "unknown": 0, "truncated": 0}
    assert train.sentences() == ["the cat sat", "the dog sat on the mat", "a <unk> sat"]
    # A given vocabulary (e.g. a model's token list) is used as is.
    fixed = loader(paths, "test", vocabulary=[*SPECIALS, "cat"])
    assert fixed.sentences() == ["<unk> cat"] and fixed.counts["unknown"] == 1


def test_literal_special_tokens_in_the_text_become_unk():
    """A literal <pad>, <bos> or <eos> in a line is no word: encoded as <unk> and counted,
    so it can neither cut a sentence short nor leave a hole of padding inside it."""
    vocabulary = Vocabulary.build([["a", "<pad>", "b", "<eos>", "<bos>"]])
    assert vocabulary.tokens == (*SPECIALS, "a", "b")
    assert vocabulary.encode(["a", PAD, BOS, EOS, UNK, "b"]) == [4, 3, 3, 3, 3, 5]
    data = TextDataset.from_sentences([["a", PAD, "b"], ["b", EOS, "a", BOS], ["a"]], vocabulary)
    assert data.tokens.tolist() == [[4, 3, 5, 2, 0], [5, 3, 4, 3, 2], [4, 2, 0, 0, 0]]
    assert data.lengths.tolist() == [4, 5, 2]
    assert data.counts["unknown"] == 3
    x, _ = next(data.batches(2, shuffle=False))
    assert x.tolist() == [[4, 3, 5, 2, 0], [5, 3, 4, 3, 2]]  # no <eos> cut off


def test_max_length_must_be_positive(tmp_path):
    vocabulary = Vocabulary([*SPECIALS, "a"])
    with pytest.raises(ValueError, match="max_length"):
        TextDataset.from_sentences([["a"]], vocabulary, max_length=0)


def test_labelled_reader(tmp_path):
    path = write_lines(tmp_path / "labelled.gz", ["1 a good film", "0 bad", "", "1", "3 fine"])
    sentences, labels = read_labelled(path)
    assert sentences == [["a", "good", "film"], ["bad"], [], [], ["fine"]]
    assert labels[:2] == [1, 0] and labels[3:] == [1, 3]
    loader = TextLoader("toy", lambda paths, split: read_labelled(paths[0]), num_classes=4)
    data = loader((path,), "train")
    assert data.counts["empty"] == 2  # the empty line and the label without a sentence
    assert data.labels.tolist() == [1, 0, 3] and data.num_classes == 4
    assert data.model_options() == {"vocabulary": data.vocabulary.to_list(), "num_classes": 4}


@pytest.mark.parametrize("bad", ["positive a good film", "a good film", "1.5 a good film"])
def test_labelled_reader_names_file_and_line_of_a_missing_label(tmp_path, bad):
    path = write_lines(tmp_path / "labelled.txt", ["1 a good film", "0 bad", bad])
    with pytest.raises(ValueError, match=f"{path}:3: expected 'label sentence'"):
        read_labelled(path)


def test_trec_valid_is_a_fixed_tenth_of_train():
    splits = {s: load_dataset("trec", s, progress=False) for s in ("train", "valid", "train+valid")}
    train, valid, both = splits["train"], splits["valid"], splits["train+valid"]
    assert (len(train), len(valid), len(both)) == (5452 - TREC_VALID, TREC_VALID, 5452)
    # train+valid builds its vocabulary from all its questions: more words than train's.
    assert len(both.vocabulary) > len(train.vocabulary)
    assert both.counts["unknown"] == 0
    same = load_dataset("trec", "train+valid", vocabulary=train.vocabulary, progress=False)
    text = {name: split.sentences() for name, split in splits.items()}
    text["train+valid"] = same.sentences()
    # train and valid partition train+valid (questions can repeat, so compare as multisets).
    assert sorted(text["train"] + text["valid"]) == sorted(text["train+valid"])
    assert sorted(train.labels.tolist() + valid.labels.tolist()) == sorted(both.labels.tolist())
    # Fixed: the same questions every time.
    assert load_dataset("trec", "valid", progress=False).sentences() == text["valid"]
    assert valid.num_classes == 6 and set(both.labels.tolist()) == set(range(6))


def test_sst2_split_sizes():
    sizes = [len(load_dataset("sst2", s, progress=False)) for s in ("train", "valid", "test")]
    assert sizes == [6920, 872, 1821]


# -- bucketing, padding, sharding ------------------------------------------------------------


def ptb_lengths() -> torch.Tensor:
    """Tokens per sentence (words + <eos>) of PTB's validation split."""
    lines = read_lines(SHARED / "ptb" / "ptb.valid.txt.gz")
    return torch.tensor([len(line.split()) + 1 for line in lines if line.strip()])


def dataset_of_lengths(lengths: torch.Tensor, bucket: int = 50) -> TextDataset:
    """Sentence i has ``lengths[i]`` tokens, words ``4 + (i + t) % 5``, and label i, so a batch
    says which sentences it holds."""
    n, longest = len(lengths), int(lengths.max())
    tokens = torch.zeros(n, longest, dtype=torch.int64)
    for i, length in enumerate(lengths.tolist()):
        tokens[i, : length - 1] = 4 + (i + torch.arange(length - 1)) % 5
        tokens[i, length - 1] = 2
    vocabulary = Vocabulary([*SPECIALS, "a", "b", "c", "d", "e"])
    return TextDataset(tokens, vocabulary, torch.arange(n), bucket=bucket)


def check_batch(dataset: TextDataset, x: torch.Tensor, y: torch.Tensor) -> None:
    """``x`` holds sentences ``y``, padded to the longest of them, no more."""
    longest = int(dataset.lengths[y].max())
    assert x.dtype == torch.int64 and x.shape == (len(y), longest)
    assert torch.equal(x, dataset.tokens[y, :longest])
    assert torch.equal((x != 0).sum(-1), dataset.lengths[y])


def padding(dataset: TextDataset, **options) -> int:
    return sum(int((x == 0).sum()) for x, _ in dataset.batches(32, **options))


@pytest.mark.parametrize("bucket", [1, 50])
def test_shuffled_epoch_visits_every_sentence_once(bucket):
    dataset = dataset_of_lengths(ptb_lengths()[:700], bucket=bucket)
    seen = []
    for x, y in dataset.batches(32, generator=torch.Generator().manual_seed(0)):
        check_batch(dataset, x, y)
        seen.extend(y.tolist())
    assert sorted(seen) == list(range(len(dataset)))
    assert seen != list(range(len(dataset)))


def test_bucketing_cuts_padding_on_ptb_lengths():
    lengths = ptb_lengths()
    assert len(lengths) == 3370
    words = int(lengths.sum())
    bucketed = padding(dataset_of_lengths(lengths, 50), generator=torch.Generator().manual_seed(0))
    plain = padding(dataset_of_lengths(lengths, 1), generator=torch.Generator().manual_seed(0))
    # Random batches of 32 PTB sentences pad about as many tokens as they hold; pools of 50
    # batches sorted by length pad a few per cent.
    assert plain > 0.5 * words
    assert bucketed < 0.1 * words and bucketed < plain / 10


def test_buckets_hold_similar_lengths_and_batches_come_in_random_order():
    dataset = dataset_of_lengths(ptb_lengths(), bucket=50)
    batches = list(dataset.batches(32, generator=torch.Generator().manual_seed(1)))
    longest = [int(dataset.lengths[y].max()) for _, y in batches]
    shortest = [int(dataset.lengths[y].min()) for _, y in batches]
    # Not sorted overall: the order of the batches is shuffled.
    assert longest != sorted(longest) and longest != sorted(longest, reverse=True)
    assert sum(a - b for a, b in zip(longest, shortest, strict=True)) < 2 * len(batches)


def test_same_seed_same_batches_other_seed_other_batches():
    dataset = dataset_of_lengths(ptb_lengths()[:500])

    def epoch(seed):
        return [
            y.tolist()
            for _, y in dataset.batches(16, generator=torch.Generator().manual_seed(seed))
        ]

    assert epoch(3) == epoch(3)
    assert epoch(3) != epoch(4)
    # Consecutive epochs of one generator differ.
    generator = torch.Generator().manual_seed(3)
    first = [y.tolist() for _, y in dataset.batches(16, generator=generator)]
    second = [y.tolist() for _, y in dataset.batches(16, generator=generator)]
    assert first == epoch(3) and second != first


@pytest.mark.parametrize("world", [2, 3])
@pytest.mark.parametrize("shuffle", [True, False])
def test_shards_are_disjoint_and_cover_the_epoch(world, shuffle):
    dataset = dataset_of_lengths(ptb_lengths()[:301], bucket=4)
    shares = []
    for rank in range(world):
        generator = torch.Generator().manual_seed(7)  # every rank seeds alike
        share = []
        for x, y in dataset.batches(8, shuffle=shuffle, generator=generator, shard=(rank, world)):
            check_batch(dataset, x, y)
            share.extend(y.tolist())
        shares.append(share)
    everything = sorted(i for share in shares for i in share)
    assert everything == list(range(len(dataset)))
    assert max(map(len, shares)) - min(map(len, shares)) <= 1
    with pytest.raises(ValueError, match="shard"):
        next(dataset.batches(8, shard=(world, world)))


def test_unshuffled_batches_keep_the_order():
    dataset = dataset_of_lengths(ptb_lengths()[:101])
    batches = list(dataset.batches(10, shuffle=False))
    assert [len(y) for _, y in batches] == [10] * 10 + [1]
    for x, y in batches:
        check_batch(dataset, x, y)
    assert torch.cat([y for _, y in batches]).tolist() == list(range(101))
    dropped = list(dataset.batches(10, shuffle=False, drop_last=True))
    assert torch.cat([y for _, y in dropped]).tolist() == list(range(100))


def test_drop_last_keeps_only_full_batches():
    dataset = dataset_of_lengths(ptb_lengths()[:205], bucket=3)
    ys = [
        y
        for _, y in dataset.batches(10, drop_last=True, generator=torch.Generator().manual_seed(0))
    ]
    assert all(len(y) == 10 for y in ys) and len(ys) == 20
    assert len(set(torch.cat(ys).tolist())) == 200


def test_subset_and_labels_and_checks():
    dataset = dataset_of_lengths(torch.tensor([3, 9, 2, 5]))
    small = dataset.subset([0, 2])
    assert small.tokens.shape == (2, 3)  # trimmed to its own longest sentence
    assert small.labels.tolist() == [0, 2] and small.vocabulary == dataset.vocabulary
    assert dataset.without_labels().labels.tolist() == [-1] * 4
    with pytest.raises(ValueError, match="batch_size"):
        next(dataset.batches(0))
    with pytest.raises(ValueError, match="bucket"):
        TextDataset(dataset.tokens, dataset.vocabulary, bucket=0)
    with pytest.raises(ValueError, match="int64"):
        TextDataset(dataset.tokens.float(), dataset.vocabulary)
    empty_row = torch.tensor([[4, 2], [0, 0]])
    with pytest.raises(ValueError, match="<eos>"):
        TextDataset(empty_row, dataset.vocabulary)
