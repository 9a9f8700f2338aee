"""The registry and the Dataset protocol, exercised by a toy text modality made here."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pvae.data import Dataset, DatasetSpec, load_dataset, register_dataset
from pvae.data.download import ChecksumMismatchError, Resource, sha256_file
from pvae.data.registry import DATASETS, shard_generator, shard_positions

SENTENCES = ["a cat sat", "the dog ran", "a dog sat down", "The Cat ran", "one more"]


class Sentences:
    """A toy non-image modality: sentences as padded token tensors, one unit a sentence."""

    def __init__(self, sentences: list[str], vocabulary: list[str]) -> None:
        self.sentences = sentences
        self.vocabulary = vocabulary

    def __len__(self) -> int:
        return len(self.sentences)

    def batches(self, batch_size, *, shuffle=True, generator=None, shard=(0, 1)):
        order = (
            torch.randperm(len(self), generator=generator) if shuffle else torch.arange(len(self))
        )
        share = order[shard_positions(len(self), shard)].tolist()
        for start in range(0, len(share), batch_size):
            words = [self.sentences[i].split() for i in share[start : start + batch_size]]
            tokens = torch.zeros(len(words), max(map(len, words)), dtype=torch.int64)
            for row, sentence in enumerate(words):
                tokens[row, : len(sentence)] = torch.tensor(
                    [self.vocabulary.index(word) for word in sentence]
                )
            yield tokens

    def model_options(self):
        return {"vocab_size": len(self.vocabulary)}

    def subset(self, n, *, seed=None):
        index = range(n) if seed is None else torch.randperm(len(self))[:n].tolist()
        return Sentences([self.sentences[i] for i in index], self.vocabulary)

    def to(self, device):
        return self


def read_sentences(path: Path, split: str, *, lowercase: bool = False) -> Sentences:
    lines = path.read_text().splitlines()
    lines = lines[:4] if split == "train" else lines[4:]
    if lowercase:
        lines = [line.lower() for line in lines]
    vocabulary = sorted({word for line in lines for word in line.split()})
    return Sentences(lines, vocabulary)


@pytest.fixture
def tiny_text(tmp_path):
    """The file written to tmp_path and a dataset registered on it (unregistered after)."""
    path = tmp_path / "tiny_text.txt"
    path.write_text("\n".join(SENTENCES) + "\n")
    resource = Resource("tiny_text.txt", sha256=(sha256_file(path),), sources=())
    spec = register_dataset(
        DatasetSpec(
            name="tiny_text",
            resource=resource,
            splits=("train", "test"),
            build=read_sentences,
            description="five sentences",
        )
    )
    yield spec
    del DATASETS["tiny_text"]


def test_a_new_modality_needs_only_its_dataset_class(tiny_text, tmp_path):
    from pvae.data import available_datasets

    assert "tiny_text" in available_datasets()
    train = load_dataset("tiny_text", "train", data_dir=tmp_path, download=False)
    assert type(train) is Sentences and isinstance(train, Dataset) and len(train) == 4
    assert train.model_options() == {"vocab_size": 9}  # "Cat" and "cat" differ
    lowered = load_dataset("tiny_text", "train", data_dir=tmp_path, lowercase=True)
    assert lowered.model_options() == {"vocab_size": 7}
    assert len(load_dataset("tiny_text", "train", data_dir=tmp_path, size=2)) == 2
    batches = list(train.batches(3, shuffle=False))
    assert [tokens.shape for tokens in batches] == [(3, 4), (1, 3)]


def test_modality_options_and_splits_are_checked(tiny_text, tmp_path):
    with pytest.raises(ValueError, match="takes no option binarize; its options: lowercase"):
        load_dataset("tiny_text", "train", data_dir=tmp_path, binarize=None)
    with pytest.raises(ValueError, match="unknown split 'valid'.*available: train, test"):
        load_dataset("tiny_text", "valid", data_dir=tmp_path)


def test_a_changed_file_is_refused(tiny_text, tmp_path):
    (tmp_path / "tiny_text.txt").write_text("other words\n")
    with pytest.raises(ChecksumMismatchError, match="tiny_text.txt"):
        load_dataset("tiny_text", "train", data_dir=tmp_path, download=False)


def test_names_are_unique(tiny_text):
    with pytest.raises(ValueError, match="'tiny_text' is already registered"):
        register_dataset(tiny_text)
    with pytest.raises(ValueError, match="'mnist' is already registered"):
        register_dataset(DatasetSpec("mnist", "mnist.npz", ("train",), read_sentences))


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"name": ""}, "non-empty string"),
        ({"splits": ()}, "splits must be split names"),
        ({"build": "read_sentences"}, "build must be callable"),
    ],
)
def test_bad_specs(kwargs, match):
    fields = {"name": "x", "resource": "x.npz", "splits": ("train",), "build": read_sentences}
    with pytest.raises(ValueError, match=match):
        DatasetSpec(**{**fields, **kwargs})


@pytest.mark.parametrize("num_units", [0, 1, 2, 10, 11, 100])
@pytest.mark.parametrize("world_size", [1, 2, 3, 7])
def test_shard_positions_partition(num_units, world_size):
    shares = [
        list(range(num_units))[shard_positions(num_units, (r, world_size))]
        for r in range(world_size)
    ]
    assert sum(shares, []) == list(range(num_units))
    sizes = [len(share) for share in shares]
    assert max(sizes) - min(sizes) <= 1


def test_shard_generator():
    generator = torch.Generator().manual_seed(0)
    assert shard_generator(generator, (0, 1)) is generator
    assert shard_generator(None, (0, 1)) is None
    draws = []
    for rank in range(2):
        shared = torch.Generator().manual_seed(0)
        own = shard_generator(shared, (rank, 2))
        assert own is not shared and own.device == shared.device
        draws.append(torch.rand(5, generator=own))
    assert not torch.equal(draws[0], draws[1])


def test_importing_pvae_data_does_not_import_torch():
    code = "import sys, pvae.data; pvae.data.__dir__(); sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
