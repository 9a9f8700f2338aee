"""SemiSupervisedData: the same stream as M2's original class, as a Dataset of any modality."""

import pytest
import torch

from pvae.data import Dataset, ImageDataset
from pvae.data.semisupervised import UNLABELLED, SemiSupervisedData

NUM_CLASSES = 3


class SemiSupervisedDataBeforeTheMove:
    """``pvae.models.m2.SemiSupervisedData`` at commit 1d89b8d, verbatim but for docstrings:
    the stream behind the recorded M2 results."""

    def __init__(self, dataset, num_labelled, num_classes=10, labelled_repeats=1, seed=0):
        self.dataset = dataset
        self.labelled_repeats = int(labelled_repeats)
        generator = torch.Generator().manual_seed(seed)
        labels = dataset.labels
        per_class = -(-int(num_labelled) // num_classes)
        chosen = []
        for c in range(num_classes):
            members = torch.nonzero(labels == c).flatten()
            chosen.append(members[torch.randperm(len(members), generator=generator)[:per_class]])
        index = torch.cat(chosen)
        self.labelled_index = index[torch.randperm(len(index), generator=generator)][
            : int(num_labelled)
        ]
        self.labelled_set = dataset.subset(self.labelled_index)

    def batches(self, batch_size, shuffle=True, generator=None):
        unlabelled = [
            (x, torch.full_like(y, -1))
            for x, y in self.dataset.batches(batch_size, shuffle=shuffle, generator=generator)
        ]
        labelled = [
            batch
            for _ in range(self.labelled_repeats)
            for batch in self.labelled_set.batches(batch_size, shuffle=shuffle, generator=generator)
        ]
        every = max(1, len(unlabelled) // max(1, len(labelled)))
        out = []
        for i, batch in enumerate(unlabelled):
            if i % every == 0 and labelled:
                out.append(labelled.pop(0))
            out.append(batch)
        out.extend(labelled)
        return iter(out)


def labelled_images(n: int = 90, binarize="dynamic") -> ImageDataset:
    """Grey images (under dynamic binarization, batches consume the generator), labels
    0..C-1; pixel [0, 0, 0] holds the unit's index."""
    images = torch.rand(n, 1, 3, 3, generator=torch.Generator().manual_seed(11))
    images[:, 0, 0, 0] = torch.arange(n) / n
    return ImageDataset(images, torch.arange(n) % NUM_CLASSES, binarize=binarize)


def references() -> list[type]:
    classes = [SemiSupervisedDataBeforeTheMove]
    from pvae.models import m2

    old = getattr(m2, "SemiSupervisedData", None)
    if old is not None and old is not SemiSupervisedData:  # until M2 imports this module's
        classes.append(old)
    return classes


@pytest.mark.parametrize("reference", references(), ids=lambda cls: cls.__module__)
@pytest.mark.parametrize(
    "num_labelled,labelled_repeats,batch_size,shuffle",
    [(9, 1, 10, True), (12, 3, 7, True), (30, 2, 16, True), (6, 1, 20, False)],
)
def test_same_batches_as_before(reference, num_labelled, labelled_repeats, batch_size, shuffle):
    dataset = labelled_images()
    new = SemiSupervisedData(dataset, num_labelled, NUM_CLASSES, labelled_repeats, seed=4)
    old = reference(dataset, num_labelled, NUM_CLASSES, labelled_repeats, seed=4)
    assert torch.equal(new.labelled_index, old.labelled_index)
    new_generator, old_generator = (
        torch.Generator().manual_seed(2),
        torch.Generator().manual_seed(2),
    )
    for _ in range(2):
        got = list(new.batches(batch_size, shuffle=shuffle, generator=new_generator))
        expected = list(old.batches(batch_size, shuffle=shuffle, generator=old_generator))
        assert len(got) == len(expected)
        for (x, y), (x_old, y_old) in zip(got, expected, strict=True):
            assert torch.equal(x, x_old) and torch.equal(y, y_old)
    assert torch.equal(new_generator.get_state(), old_generator.get_state())


def test_protocol_and_batches_of_one_mode():
    dataset = labelled_images()
    data = SemiSupervisedData(dataset, 9, NUM_CLASSES, labelled_repeats=2)
    assert isinstance(data, Dataset) and len(data) == len(dataset)
    options = data.model_options()
    assert options["input_shape"] == (1, 3, 3)
    assert torch.equal(options["data_mean"], dataset.images.mean(0))
    batches = list(data.batches(10, generator=torch.Generator().manual_seed(0)))
    labelled = [y for _, y in batches if (y != UNLABELLED).all()]
    unlabelled = [y for _, y in batches if (y == UNLABELLED).all()]
    assert len(labelled) + len(unlabelled) == len(batches)  # never a mixed batch
    assert sum(len(y) for y in unlabelled) == len(dataset)
    assert sum(len(y) for y in labelled) == 2 * 9
    assert sorted(torch.bincount(torch.cat(labelled)).tolist()) == [6, 6, 6]  # balanced


def test_shards_partition_both_streams():
    dataset = labelled_images(binarize=None)
    data = SemiSupervisedData(dataset, 12, NUM_CLASSES)
    units, labelled = [], []
    for rank in range(3):
        generator = torch.Generator().manual_seed(0)
        for x, y in data.batches(8, generator=generator, shard=(rank, 3)):
            index = (x[:, 0, 0, 0] * len(dataset)).round().long()  # pixel [0, 0, 0]: the unit
            (labelled if (y != UNLABELLED).all() else units).append(index)
    assert sorted(torch.cat(units).tolist()) == list(range(len(dataset)))
    assert sorted(torch.cat(labelled).tolist()) == sorted(data.labelled_index.tolist())


def test_subset_and_to():
    data = SemiSupervisedData(labelled_images(), 6, NUM_CLASSES, labelled_repeats=2, seed=1)
    small = data.subset(30, seed=0)
    assert isinstance(small, SemiSupervisedData) and len(small) == 30
    assert len(small.labelled_set) == 6 and small.labelled_repeats == 2
    moved = data.to("cpu")
    assert torch.equal(moved.labelled_index, data.labelled_index) and len(moved) == len(data)


def test_bad_arguments():
    with pytest.raises(ValueError, match="num_labelled must be in 1..90"):
        SemiSupervisedData(labelled_images(), 0, NUM_CLASSES)
    with pytest.raises(ValueError, match="labelled_repeats must be >= 1"):
        SemiSupervisedData(labelled_images(), 3, NUM_CLASSES, labelled_repeats=0)
