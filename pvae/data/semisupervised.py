"""The semi-supervised data stream: a few labelled units among unlabelled ones, of any modality.

:class:`SemiSupervisedData` wraps a labelled dataset. A model such as M2 [1] treats a labelled
batch (``y`` observed) and an unlabelled one (label :data:`UNLABELLED`, ``-1``; ``y`` a latent
summed out) as two different programs, and one mode per program keeps its ``"data"`` plate one
plate. Two labelled-data schedules (:data:`SCHEDULES`):

- ``"epoch"``: every batch is all labelled or all unlabelled; the labelled set is visited
  ``labelled_repeats`` times an epoch, its batches spread among the unlabelled ones. With 100
  labels and batch 200 that is one supervised step per epoch.
- ``"step"``: every step is a :class:`MixedStep`, an unlabelled batch and a labelled minibatch
  drawn from class-interleaved passes over the labelled set (cycled: as many passes as the
  epoch's steps need), as in Kingma et al.'s code [2], which puts labelled and unlabelled
  data in every minibatch. The labelled program's weight ``w`` keeps the objective of an
  epoch unchanged in expectation (see :meth:`SemiSupervisedData.labelled_weight`).

The wrapped dataset must be a :class:`~pvae.data.registry.Dataset` that is *labelled*:

- ``labels``: an int64 tensor ``(N,)`` of class indices, ``-1`` where a unit is unlabelled;
- ``batches(...)`` yields ``(x, y)`` pairs, ``y`` the batch's labels;
- ``subset(indices)`` also accepts a 1-D tensor of unit indices.

References:
    [1] Kingma, Rezende, Mohamed, Welling. Semi-Supervised Learning with Deep Generative Models.
        NeurIPS 2014. arXiv:1406.5298
    [2] Kingma's code, https://github.com/dpkingma/nips14-ssl (``learn_yz_x_ss.py``: each of
        ``n_minibatches`` minibatches holds ``n_labeled / n_minibatches`` labelled and
        ``n_unlabeled / n_minibatches`` unlabelled units)
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch

from pvae.data.registry import UNLABELLED, shard_generator, shard_positions

__all__ = [
    "SCHEDULES",
    "UNLABELLED",
    "MixedStep",
    "SemiSupervisedData",
    "labelled_or_unlabelled",
]

#: The labelled-data schedules of :class:`SemiSupervisedData`.
SCHEDULES = ("epoch", "step")


@dataclass(frozen=True)
class MixedStep:
    """The model arguments of one step of the ``"step"`` schedule: two programs, scored
    together by :class:`pvae.infer.semisupervised.SemiSupervisedObjective` as
    ``loss(unlabelled) + labelled_weight * loss(labelled)``, each with its own ``"data"``
    plate (scaled by N / its size, as every minibatch)."""

    unlabelled: tuple[torch.Tensor, ...]  # (x,)
    labelled: tuple[torch.Tensor, ...]  # (x, y)
    labelled_weight: float


class SemiSupervisedData:
    """A dataset seen by ``fit`` as labelled and unlabelled batches under a schedule.

    ``num_labelled`` units (balanced over classes, drawn with ``seed``) keep their labels; every
    unit (labelled ones included, as in [1]) also appears in the unlabelled stream with label
    ``-1``. An epoch is one pass over the unlabelled stream. ``len()`` is the number of units,
    so ``fit`` scales every program's ``"data"`` plate by N / its size. It is itself a
    :class:`~pvae.data.registry.Dataset`.

    - ``schedule="epoch"``: the labelled set is visited ``labelled_repeats`` times an epoch in
      batches of ``batch_size``, spread evenly among the unlabelled batches; each batch is all
      labelled or all unlabelled.
    - ``schedule="step"``: every step is ``((x_u, y_u), (x_l, y_l), w)``, which a model's
      ``batch_args`` (:func:`labelled_or_unlabelled`) turns into a :class:`MixedStep`: the
      unlabelled batch and ``labelled_batch_size`` labelled units (default
      ``min(batch_size, num_labelled)``), taken in turn from passes over the labelled set, each
      pass a fresh permutation that interleaves the classes (so any C consecutive units of
      balanced labels hold one of each class). ``w`` is :meth:`labelled_weight`.

    Args:
        dataset: a labelled dataset (see the module docstring), e.g. an ``ImageDataset``.
        num_labelled: how many labelled units (a multiple of the number of classes keeps
            the classes balanced).
        num_classes: C.
        labelled_repeats: labelled passes per epoch of the ``"epoch"`` schedule (and the
            per-epoch weight of the labelled data under ``"step"``).
        seed: seed of the labelled draw.
        schedule: ``"epoch"`` or ``"step"`` (:data:`SCHEDULES`).
        labelled_batch_size: labelled units per step under ``"step"`` (a multiple of C keeps
            every step class-balanced).
    """

    def __init__(
        self,
        dataset: Any,
        num_labelled: int,
        num_classes: int = 10,
        labelled_repeats: int = 1,
        seed: int = 0,
        *,
        schedule: str = "epoch",
        labelled_batch_size: int | None = None,
    ) -> None:
        if not 1 <= int(num_labelled) <= len(dataset):
            raise ValueError(f"num_labelled must be in 1..{len(dataset)}, got {num_labelled}")
        if int(labelled_repeats) < 1:
            raise ValueError(f"labelled_repeats must be >= 1, got {labelled_repeats}")
        if schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {', '.join(SCHEDULES)}, got {schedule!r}")
        if labelled_batch_size is not None and int(labelled_batch_size) < 1:
            raise ValueError(f"labelled_batch_size must be >= 1, got {labelled_batch_size}")
        self.dataset = dataset
        self.num_labelled = int(num_labelled)
        self.num_classes = num_classes
        self.labelled_repeats = int(labelled_repeats)
        self.seed = seed
        self.schedule = schedule
        self.labelled_batch_size = None if labelled_batch_size is None else int(labelled_batch_size)
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
            f"num_classes={self.num_classes}, labelled_repeats={self.labelled_repeats}, "
            f"schedule={self.schedule!r})"
        )

    def labelled_weight(self, batch_size: int) -> float:
        """``w`` of the ``"step"`` schedule at the (global) ``batch_size`` B: the
        ``"epoch"`` schedule's labelled batches per epoch over the steps of an epoch,
        ``w = R ceil(L / B) / ceil(N / B)``.

        Why: a labelled program of ``b`` units is scaled by N / b, so its expectation over a
        uniform draw of its units is ``N E_l[f]`` (``f``: the labelled ELBO plus
        ``alpha log q(y | x)`` of one unit, ``E_l`` the mean over the labelled set). The
        ``"epoch"`` schedule sums ``R ceil(L / B)`` such programs an epoch, the ``"step"``
        schedule ``ceil(N / B)`` of them weighted by ``w``: the same ``R ceil(L / B) N E_l[f]``.
        The unlabelled stream is the same in both. So the objective summed over an epoch's steps
        has the same expectation (exactly the same when the epoch's labelled draws are whole
        passes, ``ceil(N / B) b`` a multiple of L). Only ``alpha`` would not do: the labelled
        ELBO would then weigh ``ceil(N / B) / ceil(L / B)`` times more.
        """
        steps = math.ceil(len(self.dataset) / batch_size)
        return self.labelled_repeats * math.ceil(self.num_labelled / batch_size) / steps

    def batches(
        self,
        batch_size: int,
        *,
        shuffle: bool = True,
        generator: torch.Generator | None = None,
        shard: tuple[int, int] = (0, 1),
    ) -> Iterator[tuple[Any, ...]]:
        """One epoch of batches under the schedule (see the class docstring).

        The unlabelled stream is the wrapped dataset's epoch, then the labelled passes draw
        their orders from the same ``generator``. With ``shard=(rank, world_size)`` both
        streams are sharded: each rank sees its share of the labelled units too (under
        ``"step"``, its share of every step's labelled minibatch; ``batch_size`` is then the
        rank's, the global batch ``batch_size * world_size``).
        """
        unlabelled = [
            (x, torch.full_like(y, UNLABELLED))
            for x, y in self.dataset.batches(
                batch_size, shuffle=shuffle, generator=generator, shard=shard
            )
        ]
        if self.schedule == "step":
            return iter(self._mixed_steps(unlabelled, batch_size, shuffle, generator, shard))
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

    def _mixed_steps(
        self,
        unlabelled: list[tuple[torch.Tensor, torch.Tensor]],
        batch_size: int,
        shuffle: bool,
        generator: torch.Generator | None,
        shard: tuple[int, int],
    ) -> list[tuple[Any, ...]]:
        """The ``"step"`` schedule: each unlabelled batch with the next labelled minibatch."""
        global_batch = batch_size * shard[1]
        size = self.labelled_batch_size or min(global_batch, self.num_labelled)
        weight = self.labelled_weight(global_batch)
        passes = math.ceil(len(unlabelled) * size / self.num_labelled)
        stream = torch.cat([self._interleaved_pass(shuffle, generator) for _ in range(passes)])
        draws = shard_generator(generator, shard)
        positions = shard_positions(size, shard)
        out = []
        for i, batch in enumerate(unlabelled):
            chunk = stream[i * size : (i + 1) * size][positions]
            (labelled,) = self.labelled_set.subset(chunk).batches(
                len(chunk), shuffle=False, generator=draws
            )
            out.append((batch, labelled, weight))
        return out

    def _interleaved_pass(self, shuffle: bool, generator: torch.Generator | None) -> torch.Tensor:
        """Positions in the labelled set, each once: shuffled within each class, then the
        classes in turn (in a random order each round), so the classes stay balanced along
        the pass."""
        labels = self.labelled_set.labels.cpu()
        device = generator.device if generator is not None else torch.device("cpu")

        def permutation(n: int) -> torch.Tensor:
            if not shuffle:
                return torch.arange(n)
            return torch.randperm(n, generator=generator, device=device).cpu()

        classes = permutation(self.num_classes)
        key = torch.empty(len(labels), dtype=torch.long)
        for turn, c in enumerate(classes.tolist()):
            members = torch.nonzero(labels == c).flatten()
            order = members[permutation(len(members))]
            key[order] = torch.arange(len(order)) * self.num_classes + turn
        return torch.argsort(key)

    def model_options(self) -> dict[str, Any]:
        """The wrapped dataset's."""
        return self.dataset.model_options()

    def subset(self, n: int, *, seed: int | None = None) -> SemiSupervisedData:
        """The same stream (``num_labelled``, classes, repeats, seed, schedule) over ``n``
        units of the wrapped dataset (``dataset.subset(n, seed=seed)``)."""
        return SemiSupervisedData(
            self.dataset.subset(n, seed=seed),
            self.num_labelled,
            self.num_classes,
            self.labelled_repeats,
            self.seed,
            schedule=self.schedule,
            labelled_batch_size=self.labelled_batch_size,
        )

    def to(self, device: torch.device | str) -> SemiSupervisedData:
        """The same stream with the wrapped data on ``device``."""
        moved = copy.copy(self)
        moved.dataset = self.dataset.to(device)
        moved.labelled_set = self.labelled_set.to(device)
        return moved


def labelled_or_unlabelled(batch: Any, owner: str) -> tuple[Any, ...]:
    """A semi-supervised model's arguments for one batch: ``(x, y)`` when every unit is
    labelled, ``(x,)`` when none is (labels :data:`UNLABELLED`), ``(MixedStep(...),)`` for a
    step of the ``"step"`` schedule (``((x_u, y_u), (x_l, y_l), w)``); ``ValueError`` naming
    ``owner`` for a mixed batch (:class:`SemiSupervisedData` never makes one)."""
    if not isinstance(batch, (tuple, list)):
        return (batch,)
    if len(batch) == 3 and isinstance(batch[0], (tuple, list)):
        unlabelled = labelled_or_unlabelled(batch[0], owner)
        labelled = labelled_or_unlabelled(batch[1], owner)
        if len(unlabelled) != 1 or len(labelled) != 2:
            raise ValueError(
                f"{owner}: a step of the 'step' schedule is ((x, -1 labels), (x, labels), "
                "weight); build it with pvae.data.semisupervised.SemiSupervisedData"
            )
        return (MixedStep(unlabelled, labelled, float(batch[2])),)
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
