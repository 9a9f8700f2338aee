"""ImageDataset: the image modality's Dataset (batches, sharding, model options, labels)."""

import pytest
import torch

from pvae.data import Dataset, ImageDataset

WORLD_SIZE = 3


def indexed_dataset(n: int, binarize=None) -> ImageDataset:
    """Image i is constant i / n, label i: a batch's images say which units it holds."""
    images = torch.arange(n, dtype=torch.float32).div(n).view(n, 1, 1, 1).expand(n, 1, 2, 2)
    return ImageDataset(images.contiguous(), torch.arange(n), binarize=binarize)


def grey_dataset(n: int = 50) -> ImageDataset:
    """Random grey levels under dynamic binarization: every batch consumes the generator."""
    images = torch.rand(n, 1, 3, 3, generator=torch.Generator().manual_seed(5))
    return ImageDataset(images, torch.arange(n), binarize="dynamic")


def batches_before_sharding(dataset, batch_size, shuffle=True, generator=None, drop_last=False):
    """``ImageDataset.batches`` as it was before sharding (commit 1d89b8d), inlined: the stream
    that trained every recorded number."""
    n = len(dataset)
    if shuffle:
        device = generator.device if generator is not None else torch.device("cpu")
        order = torch.randperm(n, generator=generator, device=device).to(dataset.images.device)
    else:
        order = None
    stop = n - n % batch_size if drop_last else n
    for start in range(0, stop, batch_size):
        if order is None:
            index = slice(start, min(start + batch_size, n))
        else:
            index = order[start : start + batch_size]
        x = dataset.images[index]
        if dataset.binarize == "dynamic":
            device = generator.device if generator is not None else x.device
            noise = torch.rand(x.shape, generator=generator, device=device, dtype=x.dtype)
            x = (noise.to(x.device) < x).to(x.dtype)
        yield x, dataset.labels[index]


def test_is_a_dataset():
    assert isinstance(indexed_dataset(4), Dataset)


@pytest.mark.parametrize("batch_size", [1, 7, 25, 100])
def test_batches_cover_every_index_once_per_epoch(batch_size):
    dataset = indexed_dataset(100)
    generator = torch.Generator().manual_seed(1)
    epochs = []
    for _ in range(2):
        batches = list(dataset.batches(batch_size, generator=generator))
        assert all(len(y) == batch_size for _, y in batches[:-1])
        for x, y in batches:
            torch.testing.assert_close(x[:, 0, 0, 0], y.float() / 100)  # images follow labels
        order = torch.cat([y for _, y in batches])
        assert sorted(order.tolist()) == list(range(100))
        epochs.append(order)
    assert not torch.equal(epochs[0], epochs[1])  # a new permutation each epoch
    assert not torch.equal(epochs[0], torch.arange(100))


def test_batches_drop_last_and_no_shuffle():
    dataset = indexed_dataset(10)
    labels = [y.tolist() for _, y in dataset.batches(4, shuffle=False)]
    assert labels == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert [len(y) for _, y in dataset.batches(4, drop_last=True)] == [4, 4]
    with pytest.raises(ValueError, match="batch_size"):
        next(dataset.batches(0))


@pytest.mark.parametrize(
    "kwargs",
    [
        {"shuffle": True},
        {"shuffle": False},
        {"shuffle": True, "drop_last": True},
        {"shuffle": True, "shard": (0, 1)},
    ],
)
def test_unsharded_stream_is_bit_identical_to_before(kwargs):
    """The same permutations and the same binarization draws, epoch after epoch."""
    dataset = grey_dataset()
    new, old = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    reference_kwargs = {key: value for key, value in kwargs.items() if key != "shard"}
    for _ in range(3):
        got = list(dataset.batches(8, generator=new, **kwargs))
        expected = list(batches_before_sharding(dataset, 8, generator=old, **reference_kwargs))
        assert len(got) == len(expected)
        for (x, y), (x_old, y_old) in zip(got, expected, strict=True):
            assert torch.equal(x, x_old) and torch.equal(y, y_old)
    assert torch.equal(new.get_state(), old.get_state())


@pytest.mark.parametrize("n,batch_size", [(100, 7), (10, 4), (2, 5)])
@pytest.mark.parametrize("binarize", [None, "dynamic"])
def test_shards_partition_every_epoch(n, batch_size, binarize):
    """Identically seeded ranks: contiguous parts of the same permutation, so disjoint shares
    whose union is one epoch, and generators still in step at the next epoch (whatever the
    share sizes)."""
    dataset = indexed_dataset(n, binarize)
    ranks = [torch.Generator().manual_seed(7) for _ in range(WORLD_SIZE)]
    for _ in range(3):
        permutation = torch.Generator()
        permutation.set_state(ranks[0].get_state())
        order = torch.randperm(n, generator=permutation)
        shares = []
        for rank, generator in enumerate(ranks):
            batches = list(
                dataset.batches(batch_size, generator=generator, shard=(rank, WORLD_SIZE))
            )
            assert all(len(y) == batch_size for _, y in batches[:-1])
            if binarize is None:
                for x, y in batches:
                    torch.testing.assert_close(x[:, 0, 0, 0], y.float() / n)
            shares.append(torch.cat([y for _, y in batches]) if batches else torch.tensor([]))
        assert [len(share) for share in shares] == [
            (r + 1) * n // WORLD_SIZE - r * n // WORLD_SIZE for r in range(WORLD_SIZE)
        ]
        assert torch.equal(torch.cat(shares).long(), order)  # disjoint, one epoch, no repeats
        states = [generator.get_state() for generator in ranks]
        assert all(torch.equal(state, states[0]) for state in states)


def test_shards_without_shuffle_are_contiguous_blocks():
    dataset = indexed_dataset(10)
    blocks = [
        [y.tolist() for _, y in dataset.batches(2, shuffle=False, shard=(rank, WORLD_SIZE))]
        for rank in range(WORLD_SIZE)
    ]
    assert blocks == [[[0, 1], [2]], [[3, 4], [5]], [[6, 7], [8, 9]]]


def test_ranks_draw_their_own_binarization_noise():
    """Sharded dynamic binarization is not the same noise replayed on every rank."""
    images = torch.full((60, 1, 4, 4), 0.5)
    dataset = ImageDataset(images, torch.arange(60), binarize="dynamic")
    first = [
        next(dataset.batches(10, generator=torch.Generator().manual_seed(0), shard=(r, 2)))[0]
        for r in range(2)
    ]
    assert not torch.equal(first[0], first[1])
    again = next(dataset.batches(10, generator=torch.Generator().manual_seed(0), shard=(1, 2)))
    assert torch.equal(again[0], first[1])  # and reproducible from the seed


@pytest.mark.parametrize("shard", [(3, 3), (-1, 2), (0, 0), [0, 1], (0.0, 1), (0, 1, 2)])
def test_bad_shard(shard):
    with pytest.raises(ValueError, match="shard must be a tuple"):
        next(indexed_dataset(10).batches(2, shard=shard))


def test_model_options():
    dataset = grey_dataset()
    options = dataset.model_options()
    assert set(options) == {"input_shape", "data_mean"}
    assert options["input_shape"] == (1, 3, 3)
    assert all(type(size) is int for size in options["input_shape"])
    assert torch.equal(options["data_mean"], dataset.images.mean(0))


def test_without_labels():
    dataset = indexed_dataset(10, "dynamic")
    hidden = dataset.without_labels()
    assert isinstance(hidden, ImageDataset) and len(hidden) == 10
    assert hidden.labels.tolist() == [-1] * 10 and hidden.labels.dtype == torch.int64
    assert hidden.images is dataset.images  # shared, not copied
    assert hidden.binarize == "dynamic" and hidden.name == dataset.name
    assert dataset.labels.tolist() == list(range(10))  # the original keeps its labels
