"""Set datasets (pvae.data.sets): batches of sets, sharding, episodes and the registered sets."""

import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from pvae.data import Dataset, Episode, SetDataset, load_dataset
from pvae.data.sets import (
    FAMILIES,
    OMNIGLOT_VALID_CHARACTERS,
    SYNTHETIC_SEEDS,
    build_omniglot_sets,
    omniglot_valid_characters,
    synthetic_sets,
)

WORLD_SIZE = 3
BACKGROUND = 964


def indexed_sets(num_sets: int = 12, members: int = 7, set_size: int = 3, binarize=None):
    """Member m of set c is the constant (c * members + m) / (num_sets * members), label c: a
    value says which set and member it is."""
    total = num_sets * members
    values = torch.arange(total, dtype=torch.float32).div(total).view(num_sets, members, 1, 1)
    items = values.expand(num_sets, members, 1, 2).contiguous()
    return SetDataset(items, torch.arange(num_sets), set_size=set_size, binarize=binarize)


def decode(x: torch.Tensor, dataset: SetDataset) -> torch.Tensor:
    """The flat index c * M + m of each member of ``x`` ``(..., 1, 2)`` of :func:`indexed_sets`."""
    total = len(dataset) * dataset.members
    return (x[..., 0, 0] * total).round().long()


@pytest.fixture(scope="module")
def omniglot_path() -> Path:
    path = Path(os.environ.get("PVAE_DATA_DIR", ""), "omniglot28.npz")
    if not path.exists():
        pytest.fail("PVAE_DATA_DIR must point at a folder holding omniglot28.npz (../shared/data)")
    return path


@pytest.fixture(scope="module")
def omniglot_train(omniglot_path) -> SetDataset:
    """The default: dynamic binarization, which keeps the grey levels in ``items``."""
    return build_omniglot_sets(omniglot_path, "train")


def test_is_a_dataset():
    assert isinstance(indexed_sets(), Dataset)


@pytest.mark.parametrize("batch_size", [1, 5, 12, 50])
def test_a_batch_holds_set_size_distinct_members_of_each_set(batch_size):
    dataset = indexed_sets()
    generator = torch.Generator().manual_seed(1)
    batches = list(dataset.batches(batch_size, generator=generator))
    assert all(len(y) == batch_size for _, y in batches[:-1])
    for x, y in batches:
        assert x.shape == (len(y), dataset.set_size, 1, 2) and x.dtype == torch.float32
        index = decode(x, dataset)
        assert (index // dataset.members == y[:, None]).all()  # every member of its set's class
        for row in index:  # drawn without replacement
            assert len(row.unique()) == dataset.set_size
    order = torch.cat([y for _, y in batches])
    assert sorted(order.tolist()) == list(range(len(dataset)))  # every set once per epoch


def test_members_are_redrawn_every_batch():
    dataset = indexed_sets(num_sets=2, members=7, set_size=3)
    generator = torch.Generator().manual_seed(0)
    seen = set()
    for _ in range(30):
        for x, _ in dataset.batches(2, generator=generator):
            seen.update(decode(x, dataset).flatten().tolist())
    assert seen == set(range(2 * 7))


def test_unshuffled_batches_take_the_first_members_in_order():
    dataset = indexed_sets(num_sets=5, members=4, set_size=2)
    (x, y), *_ = list(dataset.batches(5, shuffle=False))
    torch.testing.assert_close(y, torch.arange(5))
    torch.testing.assert_close(decode(x, dataset), torch.arange(5)[:, None] * 4 + torch.arange(2))


def test_seeded_generator_repeats_the_epoch_exactly():
    dataset = indexed_sets(binarize="dynamic")

    def epoch(seed):
        return list(dataset.batches(5, generator=torch.Generator().manual_seed(seed)))

    first, again, other = epoch(3), epoch(3), epoch(4)
    for (x1, y1), (x2, y2) in zip(first, again, strict=True):
        assert torch.equal(x1, x2) and torch.equal(y1, y2)
    assert not all(torch.equal(x1, x2) for (x1, _), (x2, _) in zip(first, other, strict=False))


@pytest.mark.parametrize("shuffle", [True, False])
def test_shards_are_disjoint_and_cover_the_epoch(shuffle):
    dataset = indexed_sets(num_sets=14)
    shares = []
    for rank in range(WORLD_SIZE):
        generator = torch.Generator().manual_seed(7)  # every rank seeded the same
        batches = dataset.batches(4, shuffle=shuffle, generator=generator, shard=(rank, 3))
        shares.append(torch.cat([y for _, y in batches]).tolist())
    flat = [unit for share in shares for unit in share]
    assert sorted(flat) == list(range(14))  # disjoint and complete
    assert max(map(len, shares)) - min(map(len, shares)) <= 1
    with pytest.raises(ValueError, match="shard"):
        next(dataset.batches(4, shard=(3, 3)))


def test_dynamic_binarization_draws_zeros_and_ones():
    dataset = indexed_sets(binarize="dynamic")
    x, _ = next(dataset.batches(12, generator=torch.Generator().manual_seed(0)))
    assert set(x.unique().tolist()) <= {0.0, 1.0}


def test_model_options_subset_to_and_set_size():
    dataset = indexed_sets(num_sets=6, members=5, set_size=2)
    options = dataset.model_options()
    assert options["input_shape"] == (1, 2) and options["set_size"] == 2
    torch.testing.assert_close(options["data_mean"], dataset.items.mean((0, 1)))
    five = dataset.with_set_size(5)
    assert five.set_size == 5 and five.items is dataset.items and len(five) == 6
    assert next(five.batches(6))[0].shape == (6, 5, 1, 2)
    with pytest.raises(ValueError, match="set_size"):
        dataset.with_set_size(6)
    assert torch.equal(dataset.subset(3).labels, torch.arange(3))
    drawn = dataset.subset(3, seed=0)
    assert len(drawn) == 3 and drawn.set_size == 2
    assert torch.equal(drawn.items, dataset.items[drawn.labels])
    assert dataset.to("cpu").items.device.type == "cpu"


@pytest.mark.parametrize("k_way, n_shot, num_queries", [(5, 1, 1), (3, 2, 4), (12, 6, 1)])
def test_episodes(k_way, n_shot, num_queries):
    dataset = indexed_sets(num_sets=12, members=7)
    generator = torch.Generator().manual_seed(2)
    episodes = list(
        dataset.episodes(20, k_way, n_shot, num_queries=num_queries, generator=generator)
    )
    assert len(episodes) == 20
    for episode in episodes:
        assert isinstance(episode, Episode)
        support, query, labels = episode
        assert support.shape == (k_way, n_shot, 1, 2)
        assert query.shape == (k_way * num_queries, 1, 2)
        assert labels.dtype == torch.int64
        assert torch.equal(labels, torch.arange(k_way).repeat_interleave(num_queries))
        support_index, query_index = decode(support, dataset), decode(query, dataset)
        classes = support_index[:, 0] // dataset.members
        assert len(classes.unique()) == k_way  # classes drawn without replacement
        assert (support_index // dataset.members == classes[:, None]).all()
        assert torch.equal(query_index // dataset.members, classes[labels])  # query's class
        for j in range(len(query)):  # a query is never one of its own class's support members
            assert not (support[labels[j]] == query[j]).flatten(1).all(1).any()
        members = torch.cat([support_index, query_index.view(k_way, num_queries)], 1)
        assert all(len(row.unique()) == n_shot + num_queries for row in members)


def test_episodes_are_reproducible_and_reject_impossible_requests():
    dataset = indexed_sets(num_sets=4, members=3, binarize="dynamic")

    def draw(seed):
        return list(dataset.episodes(3, 2, 1, generator=torch.Generator().manual_seed(seed)))

    for first, again in zip(draw(0), draw(0), strict=True):
        assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    with pytest.raises(ValueError, match="k_way"):
        next(dataset.episodes(1, 5, 1))
    with pytest.raises(ValueError, match="n_shot"):
        next(dataset.episodes(1, 2, 2, num_queries=2))


def test_constructor_rejects_bad_input():
    items = torch.zeros(3, 4, 2)
    with pytest.raises(ValueError, match="set_size"):
        SetDataset(items, set_size=5)
    with pytest.raises(ValueError, match="labels"):
        SetDataset(items, torch.zeros(3, dtype=torch.int32), set_size=2)
    with pytest.raises(ValueError, match="items"):
        SetDataset(torch.zeros(3, 4, dtype=torch.int64), set_size=2)
    with pytest.raises(ValueError, match="binarize"):
        SetDataset(items, set_size=2, binarize="sometimes")


# -- the registered datasets -------------------------------------------------------------------
REGISTERED = [
    # name, split, options, sets, members, event, binarize
    ("omniglot_sets", "valid", {}, 100, 20, (1, 28, 28), "static"),
    ("omniglot_sets", "test", {"set_size": 3}, 659, 20, (1, 28, 28), "static"),
    ("mnist_sets", "test", {}, 10, 892, (1, 28, 28), "static"),
    ("synthetic_sets", "valid", {"num_sets": 6}, 6, 200, (1,), None),
    ("spatial_mnist", "test", {"set_size": 20}, 10000, 50, (2,), None),
]


@pytest.mark.parametrize("name, split, options, sets, members, event, binarize", REGISTERED)
def test_registered_shapes_and_dtypes(name, split, options, sets, members, event, binarize):
    dataset = load_dataset(name, split, **options)
    set_size = options.get("set_size", dataset.set_size)
    assert isinstance(dataset, SetDataset) and dataset.name == f"{name}/{split}"
    assert dataset.items.shape == (sets, members, *event)
    assert dataset.items.dtype == torch.float32 and dataset.labels.dtype == torch.int64
    assert dataset.labels.shape == (sets,) and dataset.binarize == binarize
    if binarize == "static":
        assert set(dataset.items.unique().tolist()) == {0.0, 1.0}
    x, y = next(dataset.batches(4, generator=torch.Generator().manual_seed(0)))
    assert x.shape == (4, set_size, *event) and y.shape == (4,)
    options = dataset.model_options()
    assert options["input_shape"] == event and options["set_size"] == set_size
    assert options["data_mean"].shape == event


def test_omniglot_train_rotations_are_new_classes(omniglot_train):
    train = omniglot_train
    assert train.items.shape == (4 * 864, 20, 1, 28, 28) and train.binarize == "dynamic"
    assert train.set_size == 5
    assert len(train.labels.unique()) == len(train)
    characters = train.labels % BACKGROUND
    for turns in range(4):  # each rotation holds the same 864 characters
        assert torch.equal(characters[turns * 864 : (turns + 1) * 864], characters[:864])
    held_out = set(omniglot_valid_characters().tolist())
    assert len(held_out) == OMNIGLOT_VALID_CHARACTERS
    assert held_out.isdisjoint(characters.tolist())
    by_label = {label: row for row, label in enumerate(train.labels.tolist())}
    for character in characters[:864:97].tolist():
        upright = train.items[by_label[character]]
        for turns in (1, 2, 3):
            rotated = train.items[by_label[turns * BACKGROUND + character]]
            assert torch.equal(rotated, upright.rot90(turns, dims=(-2, -1)))
            assert not torch.equal(rotated, upright)


def test_omniglot_sets_members_are_the_omniglot_images(omniglot_path):
    """Static sets show the pixels of the image dataset's static binarization; valid's
    characters are background characters and their members are drawers 1..20 in order."""
    images = load_dataset("omniglot", "test")
    sets = load_dataset("omniglot_sets", "test")
    torch.testing.assert_close(sets.items.flatten(0, 1), images.images)
    torch.testing.assert_close(sets.labels.repeat_interleave(20), images.labels)
    valid = build_omniglot_sets(omniglot_path, "valid", binarize=None)
    torch.testing.assert_close(valid.labels, omniglot_valid_characters())
    with np.load(omniglot_path) as arrays:
        first = int(valid.labels[0])
        drawings = arrays["x_background"][arrays["character_background"] == first]
    torch.testing.assert_close(valid.items[0, :, 0], torch.from_numpy(drawings).float() / 255)


def test_omniglot_episodes_never_query_their_own_support(omniglot_path):
    test = build_omniglot_sets(omniglot_path, "test", binarize=None)
    generator = torch.Generator().manual_seed(0)
    for support, query, labels in test.episodes(10, 20, 1, num_queries=2, generator=generator):
        for j in range(len(query)):
            assert not (support[labels[j]] == query[j]).flatten(1).all(1).any()


def test_mnist_sets_group_the_digits():
    images = load_dataset("mnist", "test")
    sets = load_dataset("mnist_sets", "test", set_size=4)
    assert torch.equal(sets.labels, torch.arange(10))
    for digit in (0, 5, 9):
        of_digit = images.images[images.labels == digit][:892]
        torch.testing.assert_close(sets.items[digit], of_digit)


def test_spatial_mnist_points_lie_on_the_digit():
    images = load_dataset("mnist", "test", binarize=None)
    sets = load_dataset("spatial_mnist", "test")
    assert torch.equal(sets.labels, images.labels)
    points = sets.items[:200]
    assert points.min() >= 0 and points.max() < 28
    column, row = points.floor().long().unbind(-1)
    intensity = images.images[:200, 0][torch.arange(200)[:, None], row, column]
    assert (intensity > 0).all()


def test_synthetic_sets_are_generated_from_the_split_seed():
    dataset = load_dataset("synthetic_sets", "test", num_sets=5, set_size=10)
    drawn = synthetic_sets(5, seed=SYNTHETIC_SEEDS["test"])
    assert torch.equal(dataset.items, drawn.samples) and torch.equal(dataset.labels, drawn.families)
    assert dataset.set_size == 10 and dataset.binarize is None
    assert not torch.equal(drawn.samples, synthetic_sets(5, seed=SYNTHETIC_SEEDS["valid"]).samples)


# Standardised central moments of each family (mean 0, variance 1): E|u|, E u^3, E u^4, E u^6.
# Exponential: Exp(1) - 1, central moments the derangement numbers; uniform on [-3^.5, 3^.5];
# Laplace with scale 2^-.5: E|u|^k = k! 2^(-k/2).
MOMENTS = {
    "exponential": (2 / math.e, 2.0, 9.0, 265.0),
    "gaussian": (math.sqrt(2 / math.pi), 0.0, 3.0, 15.0),
    "uniform": (math.sqrt(3) / 2, 0.0, 9 / 5, 27 / 7),
    "laplace": (1 / math.sqrt(2), 0.0, 6.0, 90.0),
}


@pytest.mark.parametrize("seed", list(SYNTHETIC_SEEDS.values()))
def test_synthetic_family_moments(seed):
    """Every set's sample mean and each family's sample variances and shape match the drawn
    parameters, within 5 standard errors of each estimator:

    - a set's mean of n samples: s.e. sqrt(v / n) (n = 200: the CLT holds for every family);
    - a set's unbiased variance s^2: s.e. v sqrt((k - (n - 3) / (n - 1)) / n), k the kurtosis;
      its distribution is too skewed for a per-set 5 s.e. test (the exponential's exceeds it
      about once in 4000 sets), so the test averages the standardised errors over a family's N
      sets (s.e. 1 / sqrt(N));
    - shape, over a family's N n standardised samples u: mean |u| (s.e. sqrt((1 - E|u|^2) / Nn))
      tells the four families apart, mean u^3 (s.e. sqrt((E u^6 - (E u^3)^2) / Nn)) the
      exponential's skew from the others'.
    """
    drawn = synthetic_sets(400, seed=seed)
    n = drawn.samples.shape[1]
    samples = drawn.samples[..., 0].double()
    means, variances = drawn.means.double(), drawn.variances.double()
    assert ((means >= -1) & (means <= 1)).all() and ((variances >= 0.5) & (variances <= 2)).all()
    mean_error = (samples.mean(1) - means).abs() / (variances / n).sqrt()
    assert mean_error.max() < 5
    for label, family in enumerate(FAMILIES):
        chosen = drawn.families == label
        count = int(chosen.sum())
        assert count > 50
        absolute, third, kurtosis, sixth = MOMENTS[family]
        variance_se = variances[chosen] * math.sqrt((kurtosis - (n - 3) / (n - 1)) / n)
        variance_error = (samples[chosen].var(1) - variances[chosen]) / variance_se
        assert variance_error.mean().abs() < 5 / math.sqrt(count), family
        u = (samples[chosen] - means[chosen, None]) / variances[chosen, None].sqrt()
        total = u.numel()
        absolute_se = math.sqrt((1 - absolute**2) / total)
        assert (u.abs().mean() - absolute).abs() < 5 * absolute_se, family
        third_se = math.sqrt((sixth - third**2) / total)
        assert (u.pow(3).mean() - third).abs() < 5 * third_se, family
        if family == "uniform":
            assert u.abs().max() <= math.sqrt(3) + 1e-5
        if family == "exponential":
            assert u.min() >= -1 - 1e-5
