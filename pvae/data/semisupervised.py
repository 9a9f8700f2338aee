"""The semi-supervised data stream: a few labelled units among unlabelled ones, of any modality.

:class:`SemiSupervisedData` wraps a labelled dataset and yields batches that are either all
labelled or all unlabelled (label :data:`UNLABELLED`, ``-1``): a model such as M2 [1] treats a
labelled batch (``y`` observed) and an unlabelled one (``y`` a latent summed out) as two
different programs, and one mode per batch keeps its ``"data"`` plate one plate.

The wrapped dataset must be a :class:`~pvae.data.registry.Dataset` that is *labelled*:

- ``labels``: an int64 tensor ``(N,)`` of class indices, ``-1`` where a unit is unlabelled;
- ``batches(...)`` yields ``(x, y)`` pairs, ``y`` the batch's labels;
- ``subset(indices)`` also accepts a 1-D tensor of unit indices.

References:
    [1] Kingma, Rezende, Mohamed, Welling. Semi-Supervised Learning with Deep Generative Models.
        NeurIPS 2014. arXiv:1406.5298
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

import torch

from pvae.data.registry import UNLABELLED

__all__ = ["UNLABELLED", "SemiSupervisedData", "labelled_or_unlabelled"]


class SemiSupervisedData:
    """A dataset seen by ``fit`` as alternating labelled and unlabelled batches.

    ``num_labelled`` units (balanced over classes, drawn with ``seed``) keep their labels; every
    unit (labelled ones included, as in [1]) also appears in the unlabelled stream with label
    ``-1``. An epoch is one pass over the unlabelled stream with the labelled set visited
    ``labelled_repeats`` times, its batches spread evenly among the unlabelled ones. Each batch
    is all labelled or all unlabelled. ``len()`` is the number of units, so ``fit`` scales every
    batch by N / B. It is itself a :class:`~pvae.data.registry.Dataset`.

    Args:
        dataset: a labelled dataset (see the module docstring), e.g. an ``ImageDataset``.
        num_labelled: how many labelled units (a multiple of the number of classes keeps
            the classes balanced).
        num_classes: C.
        labelled_repeats: labelled passes per epoch.
        seed: seed of the labelled draw.
    """

    def __init__(
        self,
        dataset: Any,
        num_labelled: int,
        num_classes: int = 10,
        labelled_repeats: int = 1,
        seed: int = 0,
    ) -> None:
        if not 1 <= int(num_labelled) <= len(dataset):
            raise ValueError(f"num_labelled must be in 1..{len(dataset)}, got {num_labelled}")
        if int(labelled_repeats) < 1:
            raise ValueError(f"labelled_repeats must be >= 1, got {labelled_repeats}")
        self.dataset = dataset
        self.num_labelled = int(num_labelled)
        self.num_classes = num_classes
        self.labelled_repeats = int(labelled_repeats)
        self.seed = seed
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

    def __len__(self) -> int:
        return len(self.dataset)

    def __repr__(self) -> str:
        return (
            f"SemiSupervisedData({self.dataset!r}, num_labelled={self.num_labelled}, "
            f"num_classes={self.num_classes}, labelled_repeats={self.labelled_repeats})"
        )

    def batches(
        self,
        batch_size: int,
        *,
        shuffle: bool = True,
        generator: torch.Generator | None = None,
        shard: tuple[int, int] = (0, 1),
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """One epoch of ``(x, y)`` batches, each all labelled or all ``-1``.

        The unlabelled stream is the wrapped dataset's epoch, then the labelled passes draw
        their orders from the same ``generator``. With ``shard=(rank, world_size)`` both
        streams are sharded (each rank sees its share of the labelled units too).
        """
        unlabelled = [
            (x, torch.full_like(y, UNLABELLED))
            for x, y in self.dataset.batches(
                batch_size, shuffle=shuffle, generator=generator, shard=shard
            )
        ]
        labelled = [
            batch
            for _ in range(self.labelled_repeats)
            for batch in self.labelled_set.batches(
                batch_size, shuffle=shuffle, generator=generator, shard=shard
            )
        ]
        # Spread the labelled batches evenly through the epoch.
        every = max(1, len(unlabelled) // max(1, len(labelled)))
        out: list[tuple[torch.Tensor, torch.Tensor]] = []
        for i, batch in enumerate(unlabelled):
            if i % every == 0 and labelled:
                out.append(labelled.pop(0))
            out.append(batch)
        out.extend(labelled)
        return iter(out)

    def model_options(self) -> dict[str, Any]:
        """The wrapped dataset's."""
        return self.dataset.model_options()

    def subset(self, n: int, *, seed: int | None = None) -> SemiSupervisedData:
        """The same stream (``num_labelled``, classes, repeats, seed) over ``n`` units of the
        wrapped dataset (``dataset.subset(n, seed=seed)``)."""
        return SemiSupervisedData(
            self.dataset.subset(n, seed=seed),
            self.num_labelled,
            self.num_classes,
            self.labelled_repeats,
            self.seed,
        )

    def to(self, device: torch.device | str) -> SemiSupervisedData:
        """The same stream with the wrapped data on ``device``."""
        moved = copy.copy(self)
        moved.dataset = self.dataset.to(device)
        moved.labelled_set = self.labelled_set.to(device)
        return moved


def labelled_or_unlabelled(batch: Any, owner: str) -> tuple[torch.Tensor, ...]:
    """A semi-supervised model's arguments for one batch: ``(x, y)`` when every unit is
    labelled, ``(x,)`` when none is (labels :data:`UNLABELLED`); ``ValueError`` naming
    ``owner`` for a mixed batch (:class:`SemiSupervisedData` never makes one)."""
    if not isinstance(batch, (tuple, list)):
        return (batch,)
    x, y = batch[0], batch[1]
    unlabelled = y == UNLABELLED
    if bool(unlabelled.all()):
        return (x,)
    if bool(unlabelled.any()):
        raise ValueError(
            f"{owner} batches must be all labelled or all unlabelled (-1); build them with "
            "pvae.data.semisupervised.SemiSupervisedData"
        )
    return x, y
