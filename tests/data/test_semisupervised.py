"""SemiSupervisedData: the same stream as M2's original class, as a Dataset of any modality, and
its "step" schedule (a labelled minibatch in every step)."""

import pytest
import torch

from pvae.data import Dataset, ImageDataset
from pvae.data.semisupervised import (
    UNLABELLED,
    MixedStep,
    SemiSupervisedData,
    labelled_or_unlabelled,
)

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


# -- the "step" schedule ----------------------------------------------------------------------
def unit_ids(x: torch.Tensor, n: int) -> list[int]:
    """The units of a batch of :func:`labelled_images` (pixel [0, 0, 0] holds the index)."""
    return (x[:, 0, 0, 0] * n).round().long().tolist()


def test_step_schedule_pairs_every_unlabelled_batch_with_a_balanced_labelled_minibatch():
    dataset = labelled_images(binarize=None)
    data = SemiSupervisedData(dataset, 12, NUM_CLASSES, seed=3, schedule="step")
    labelled_units = set(data.labelled_index.tolist())
    steps = list(data.batches(8, generator=torch.Generator().manual_seed(1)))
    assert len(steps) == 12  # ceil(90 / 8) unlabelled batches, each one step
    seen_unlabelled, visits = [], torch.zeros(len(dataset), dtype=torch.long)
    for (x_u, y_u), (x_l, y_l), weight in steps:
        assert (y_u == UNLABELLED).all() and (y_l != UNLABELLED).all()
        seen_unlabelled += unit_ids(x_u, len(dataset))
        ids = unit_ids(x_l, len(dataset))
        assert len(ids) == 8 and set(ids) <= labelled_units  # min(batch 8, 12 labels)
        assert torch.equal(y_l, dataset.labels[ids])
        visits += torch.bincount(torch.tensor(ids), minlength=len(dataset))  # repeats count
        # ceil(12 / 8) labelled batches an epoch under "epoch", spread over 12 steps
        assert weight == pytest.approx(2 / 12)
    assert sorted(seen_unlabelled) == list(range(len(dataset)))
    # 96 labelled draws are 8 whole passes over the 12 labels: each label 8 times.
    assert visits[data.labelled_index].tolist() == [8] * 12 and int(visits.sum()) == 96


def test_step_schedule_balances_the_classes_in_every_step():
    dataset = labelled_images(binarize=None)
    data = SemiSupervisedData(
        dataset, 12, NUM_CLASSES, seed=0, schedule="step", labelled_batch_size=6
    )
    steps = list(data.batches(10, generator=torch.Generator().manual_seed(5)))
    for _, (_, y_l), _ in steps:
        assert torch.bincount(y_l, minlength=NUM_CLASSES).tolist() == [2, 2, 2]
    # The passes are permutations drawn afresh: the first two steps' labelled units differ
    # in order (a cycle, not one fixed sequence).
    firsts = [unit_ids(x, len(dataset)) for _, (x, _), _ in steps[:4]]
    assert sorted(firsts[0] + firsts[1]) == sorted(data.labelled_index.tolist())
    assert firsts[:2] != firsts[2:4]


def test_step_schedule_shards_split_every_labelled_minibatch():
    dataset = labelled_images(binarize=None)
    data = SemiSupervisedData(dataset, 12, NUM_CLASSES, seed=0, schedule="step")
    per_rank = [
        list(data.batches(4, generator=torch.Generator().manual_seed(0), shard=(rank, 2)))
        for rank in range(2)
    ]
    units = []
    for rank_steps in per_rank:
        for (x_u, _), _, weight in rank_steps:
            units += unit_ids(x_u, len(dataset))
            assert weight == pytest.approx(data.labelled_weight(8))  # the global batch
    assert sorted(units) == list(range(len(dataset)))
    for step, ((_, a), (_, b)) in enumerate(
        zip([s[1] for s in per_rank[0]], [s[1] for s in per_rank[1]], strict=False)
    ):
        # The ranks' shares of one global minibatch of 8: 4 each, one class-interleaved run.
        both = torch.cat([a, b])
        assert len(a) == len(b) == 4, step
        assert sorted(torch.bincount(both, minlength=NUM_CLASSES).tolist()) == [2, 3, 3]


def test_step_schedule_is_a_function_of_the_generator():
    data = SemiSupervisedData(labelled_images(), 9, NUM_CLASSES, schedule="step")
    runs = [list(data.batches(16, generator=torch.Generator().manual_seed(7))) for _ in range(2)]
    for (u1, l1, w1), (u2, l2, w2) in zip(*runs, strict=True):
        assert torch.equal(u1[0], u2[0]) and torch.equal(l1[0], l2[0]) and w1 == w2
    unshuffled = list(data.batches(16, shuffle=False))
    assert len(unshuffled) == 6 and all(len(x) == 9 for _, (x, _), _ in unshuffled)


def test_labelled_or_unlabelled_makes_a_mixed_step():
    data = SemiSupervisedData(labelled_images(), 6, NUM_CLASSES, schedule="step")
    step = next(data.batches(10, generator=torch.Generator().manual_seed(0)))
    (args,) = labelled_or_unlabelled(step, "M2")
    assert isinstance(args, MixedStep)
    assert torch.equal(args.unlabelled[0], step[0][0]) and len(args.unlabelled) == 1
    assert torch.equal(args.labelled[1], step[1][1]) and args.labelled_weight == step[2]
    (x_u, y_u), (x_l, y_l), weight = step
    with pytest.raises(ValueError, match="M2: a step of the 'step' schedule"):
        labelled_or_unlabelled(((x_l, y_l), (x_u, y_u), weight), "M2")


def test_step_schedule_options():
    data = SemiSupervisedData(
        labelled_images(), 6, NUM_CLASSES, schedule="step", labelled_batch_size=3
    )
    small = data.subset(30, seed=0)
    assert small.schedule == "step" and small.labelled_batch_size == 3
    assert "schedule='step'" in repr(data)
    with pytest.raises(ValueError, match="schedule must be one of epoch, step"):
        SemiSupervisedData(labelled_images(), 6, NUM_CLASSES, schedule="batch")
    with pytest.raises(ValueError, match="labelled_batch_size must be >= 1"):
        SemiSupervisedData(labelled_images(), 6, NUM_CLASSES, labelled_batch_size=0)
