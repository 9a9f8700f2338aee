import math

import pytest
import torch

from pvae.data import DATASETS, Dataset, ImageDataset, available_datasets, load_dataset

SPLIT_SIZES = [
    ("mnist", "train", 50000),
    ("mnist", "valid", 10000),
    ("mnist", "train+valid", 60000),
    ("mnist", "test", 10000),
    ("binarized_mnist", "train", 50000),
    ("binarized_mnist", "valid", 10000),
    ("binarized_mnist", "test", 10000),
    ("omniglot", "train", 18316),
    ("omniglot", "valid", 964),
    ("omniglot", "train+valid", 19280),
    ("omniglot", "test", 13180),
]
LABEL_RANGES = {"mnist": (0, 9), "binarized_mnist": (-1, -1), "omniglot": (0, 963)}


def test_registry():
    assert {"binarized_mnist", "mnist", "omniglot", "omniglot_sets"} <= set(available_datasets())
    assert available_datasets() == sorted(available_datasets())
    assert set(DATASETS) == set(available_datasets())


@pytest.mark.parametrize("name", ["mnist", "binarized_mnist", "omniglot"])
def test_image_datasets_implement_the_protocol(name):
    dataset = load_dataset(name, "valid", size=20)
    assert isinstance(dataset, ImageDataset) and isinstance(dataset, Dataset)
    options = dataset.model_options()
    assert options["input_shape"] == (1, 28, 28)
    torch.testing.assert_close(options["data_mean"], dataset.images.mean(0))


def test_old_import_paths():
    """Code written against the image-only data package keeps working."""
    from pvae.data import DatasetSpec, datasets, images, register_dataset, registry

    assert images.DatasetSpec is DatasetSpec is registry.DatasetSpec
    assert images.register_dataset is register_dataset is registry.register_dataset
    assert datasets.load_dataset is load_dataset is registry.load_dataset
    assert datasets.DATASETS is images.DATASETS is DATASETS is registry.DATASETS
    assert datasets.available_datasets is available_datasets


@pytest.mark.parametrize("name,split,size", SPLIT_SIZES)
def test_shapes_dtypes_ranges(name, split, size):
    dataset = load_dataset(name, split, binarize=None)
    assert len(dataset) == size
    assert dataset.images.shape == (size, 1, 28, 28) and dataset.images.dtype == torch.float32
    assert dataset.labels.shape == (size,) and dataset.labels.dtype == torch.int64
    assert 0.0 <= dataset.images.min() and dataset.images.max() == 1.0
    low, high = LABEL_RANGES[name]
    assert dataset.labels.min() >= low and dataset.labels.max() <= high
    if name == "mnist":
        assert set(dataset.labels.unique().tolist()) == set(range(10))


def test_default_binarization_per_split():
    assert load_dataset("mnist", "train", size=10).binarize == "dynamic"
    assert load_dataset("mnist", "test", size=10).binarize == "static"
    assert load_dataset("binarized_mnist", "train", size=10).binarize == "static"
    assert load_dataset("omniglot", "valid", size=10).binarize == "static"


def test_static_binarization_fixed_and_unbiased():
    first = load_dataset("mnist", "test")
    second = load_dataset("mnist", "test")
    torch.testing.assert_close(first.images, second.images, rtol=0, atol=0)
    assert set(first.images.unique().tolist()) == {0.0, 1.0}
    # Batches of a static dataset are the stored binarization, not a new draw.
    x, _ = next(first.batches(100, shuffle=False))
    torch.testing.assert_close(x, first.images[:100], rtol=0, atol=0)
    # A subset shows the same pixels as the full split.
    torch.testing.assert_close(load_dataset("mnist", "test", size=50).images, first.images[:50])
    grey = load_dataset("mnist", "test", binarize=None).images
    # Mean of independent Bernoulli(p) pixels: standard error sqrt(sum p(1-p)) / count.
    standard_error = math.sqrt((grey * (1 - grey)).sum().item()) / grey.numel()
    assert abs(first.images.mean().item() - grey.mean().item()) < 5 * standard_error


def test_dynamic_binarization_resampled_per_batch_with_right_mean():
    dataset = load_dataset("mnist", "train", size=2000)
    assert dataset.binarize == "dynamic"
    generator = torch.Generator().manual_seed(0)
    first = next(dataset.batches(1000, shuffle=False, generator=generator))[0]
    second = next(dataset.batches(1000, shuffle=False, generator=generator))[0]
    assert set(first.unique().tolist()) == {0.0, 1.0}
    assert not torch.equal(first, second)  # same images, a new draw
    grey = dataset.images[:1000]
    standard_error = math.sqrt((grey * (1 - grey)).sum().item()) / grey.numel()
    for draw in (first, second):
        assert abs(draw.mean().item() - grey.mean().item()) < 5 * standard_error
    # Reproducible from the seed.
    again = next(dataset.batches(1000, shuffle=False, generator=torch.Generator().manual_seed(0)))
    torch.testing.assert_close(again[0], first, rtol=0, atol=0)


def test_getitem_subset_and_to():
    dataset = load_dataset("omniglot", "test", size=30, size_seed=3)
    assert len(dataset) == 30
    x, y = dataset[0]
    assert x.shape == (1, 28, 28) and y.dtype == torch.int64
    assert dataset.subset(5).labels.tolist() == dataset.labels[:5].tolist()
    picked = dataset.subset([2, 4])
    torch.testing.assert_close(picked.images, dataset.images[[2, 4]])
    random = dataset.subset(10, seed=0)
    assert len(random) == 10 and torch.equal(random.images, dataset.subset(10, seed=0).images)
    moved = dataset.to("cpu")
    assert moved.binarize == dataset.binarize and len(moved) == 30
    first_n = load_dataset("binarized_mnist", "test", size=30)
    assert not torch.equal(
        first_n.images, load_dataset("binarized_mnist", "test", size=30, size_seed=3).images
    )


def test_works_with_torch_dataloader():
    dataset = load_dataset("mnist", "valid", size=8)
    x, y = next(iter(torch.utils.data.DataLoader(dataset, batch_size=4)))
    assert x.shape == (4, 1, 28, 28) and y.shape == (4,)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (
            {"name": "cifar10"},
            "available: binarized_mnist, citeseer, cora, mnist, mnist_sets, omniglot",
        ),
        ({"name": "mnist", "split": "validation"}, "available: train, valid"),
        ({"name": "mnist", "binarize": "stochastic"}, "binarize must be one of"),
        ({"name": "mnist", "size": 0}, "size must be a positive integer"),
        ({"name": "mnist", "vocabulary": 10}, "takes no option vocabulary; its options: binarize"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        load_dataset(**{"split": "train", **kwargs})


def test_missing_data_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.delenv("PVAE_DATA_DIR")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match="PVAE_DATA_DIR"):
        load_dataset("mnist", "test", download=False)
