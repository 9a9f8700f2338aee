"""Sets: datasets whose unit is a set of exchangeable members, for the Neural Statistician [1].

A :class:`SetDataset` holds ``C`` sets of ``M`` members each in one tensor ``items``
``(C, M, *event)``; one unit (what the model's ``"data"`` plate ranges over) is a set, so
``len(dataset) == C``. A batch draws ``set_size`` of each set's ``M`` members without
replacement, a fresh draw every batch, so a model sees other subsets of a class every epoch
(the paper's sampling of sets from a class). :meth:`SetDataset.episodes` draws few-shot
classification episodes (``k_way`` classes, ``n_shot`` support members each, disjoint queries).

Registered datasets:

- ``"omniglot_sets"`` (``omniglot28.npz``): a character's 20 drawings at 28x28 form a set,
  ``(C, 20, 1, 28, 28)``. ``train``: the background characters except ``valid``'s 100, each
  also rotated by 90, 180 and 270 degrees as new classes, as in [1] (4 x 864 = 3456 sets);
  ``valid``: 100 background characters held out by a fixed seed (unrotated); ``test``: the
  evaluation alphabets' 659 characters. Binarization as :mod:`pvae.data.images` (``binarize=``,
  default dynamic for ``train``, static for ``valid``/``test``); ``set_size=`` (default 5).
- ``"mnist_sets"`` (``mnist.npz``): a digit's images form a set (10 sets, truncated to the
  smallest digit's count so that every set has the same ``M``), for testing a model trained on
  Omniglot 10-way as in [1]. Splits as ``"mnist"``'s; default binarization dynamic for
  ``train``/``train+valid``, static for ``valid``/``test``; ``set_size=`` (default 5).
- ``"synthetic_sets"`` (no file: generated from a seed): the first experiment of [1], sets of
  200 samples from an exponential, Gaussian, uniform or Laplace distribution (labels 0..3)
  with mean ``~ U[-1, 1]`` and variance ``~ U[0.5, 2]``, items ``(C, 200, 1)``; ``train``
  10000 sets (seed 0), ``valid`` 1000 (seed 1), ``test`` 1000 (seed 2); ``num_sets=`` draws
  fewer from the same seed (other sets, not a prefix), ``set_size=`` (default 200). See
  :func:`synthetic_sets`.
- ``"spatial_mnist"`` (``mnist.npz``): each MNIST image a set of 50 points ``(column, row)``
  drawn with replacement from its normalised intensities and dequantised with ``U[0, 1)``
  noise, as in [1]; items ``(N, 50, 2)``, labels the digits, splits as ``"mnist"``'s;
  ``set_size=`` (default 50). See :func:`spatial_points`.

References:
    [1] H. Edwards, A. Storkey. Towards a Neural Statistician. ICLR 2017.
        https://arxiv.org/abs/1606.02185
    [2] B. M. Lake, R. Salakhutdinov, J. B. Tenenbaum. Human-level concept learning through
        probabilistic program induction. Science 2015. https://github.com/brendenlake/omniglot
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

from pvae.data.images import DEFAULT, Binarize, _check_binarize, binarize_static
from pvae.data.mnist import read_mnist
from pvae.data.registry import (
    DatasetSpec,
    checked_labels,
    register_dataset,
    shard_generator,
    shard_positions,
    subset_index,
)

__all__ = [
    "FAMILIES",
    "OMNIGLOT_VALID_CHARACTERS",
    "OMNIGLOT_VALID_SEED",
    "SYNTHETIC_SEEDS",
    "Episode",
    "SetDataset",
    "SyntheticSets",
    "spatial_points",
    "synthetic_sets",
]


class Episode(NamedTuple):
    """A few-shot classification episode (see :meth:`SetDataset.episodes`).

    ``support`` ``(k_way, n_shot, *event)``: row ``j`` holds class ``j``'s support members;
    ``query`` ``(k_way * num_queries, *event)`` and ``query_labels`` ``(k_way * num_queries,)``
    int64 in ``0..k_way-1``: the support row each query belongs to.
    """

    support: torch.Tensor
    query: torch.Tensor
    query_labels: torch.Tensor


def _device_of(generator: torch.Generator | None) -> torch.device:
    return generator.device if generator is not None else torch.device("cpu")


def _positive_int(name: str, value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value


class SetDataset:
    """Sets of equally many members held in memory: the set modality's
    :class:`~pvae.data.registry.Dataset` (one unit is one set).

    :param items: float tensor ``(C, M, *event)``: ``C`` sets of ``M`` members; for
        ``binarize="static"`` these are the already binarized members.
    :param labels: int64 ``(C,)``, the class of each set (``None``: all ``-1``).
    :param set_size: members per set in a batch, ``1..M``.
    :param binarize: ``"dynamic"``, ``"static"`` or ``None``, as for images
        (:mod:`pvae.data.images`): ``"dynamic"`` draws ``Bernoulli(member)`` afresh in every
        batch and episode.
    :param name: a description such as ``"omniglot_sets/train"``.
    """

    def __init__(
        self,
        items: torch.Tensor,
        labels: torch.Tensor | None = None,
        *,
        set_size: int,
        binarize: Binarize = None,
        name: str = "",
    ) -> None:
        if items.dim() < 2 or not items.is_floating_point():
            raise ValueError(
                f"items must be a float tensor (C, M, *event), got {items.dtype} "
                f"{tuple(items.shape)}"
            )
        labels = checked_labels(labels, items.shape[0], items.device)
        _check_binarize(binarize)
        _positive_int("set_size", set_size)
        if set_size > items.shape[1]:
            raise ValueError(
                f"set_size must be at most the {items.shape[1]} members of each set, got {set_size}"
            )
        self.items = items
        self.labels = labels
        self.set_size = set_size
        self.binarize = binarize
        self.name = name

    def __len__(self) -> int:
        return self.items.shape[0]

    def __repr__(self) -> str:
        return (
            f"SetDataset({self.name!r}, sets={len(self)}, members={self.members}, "
            f"set_size={self.set_size}, event={tuple(self.event_shape)}, "
            f"binarize={self.binarize!r}, device={self.items.device})"
        )

    @property
    def members(self) -> int:
        """``M``, the members of each set."""
        return self.items.shape[1]

    @property
    def event_shape(self) -> torch.Size:
        """Shape of one member."""
        return self.items.shape[2:]

    def _binarized(self, x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        if self.binarize != "dynamic":
            return x
        noise = torch.rand(x.shape, generator=generator, device=_device_of(generator))
        return (noise.to(device=x.device, dtype=x.dtype) < x).to(x.dtype)

    def _draw_members(
        self, num_sets: int, count: int, generator: torch.Generator | None
    ) -> torch.Tensor:
        """``count`` distinct member indices ``(num_sets, count)`` of each of ``num_sets``
        sets: the first ``count`` of a uniformly random permutation of ``0..M-1`` per set."""
        keys = torch.rand(num_sets, self.members, generator=generator, device=_device_of(generator))
        return keys.argsort(dim=1)[:, :count].to(self.items.device)

    def batches(
        self,
        batch_size: int,
        *,
        shuffle: bool = True,
        generator: torch.Generator | None = None,
        shard: tuple[int, int] = (0, 1),
        drop_last: bool = False,
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield ``(x, y)`` batches covering every set once (one epoch): ``x``
        ``(B, set_size, *event)``, ``y`` ``(B,)`` the sets' labels.

        :param batch_size: sets per batch (the last one is smaller unless ``drop_last``).
        :param shuffle: visit the sets in a random order and draw each set's ``set_size``
            members without replacement, both from ``generator``; otherwise the sets in order,
            each with its first ``set_size`` members.
        :param generator: source of the order, the members and dynamic binarization (a CPU
            generator, or one on the data's device); ``None`` uses torch's global generator.
        :param shard: ``(rank, world_size)``: only this rank's contiguous share of the epoch's
            order (see :class:`~pvae.data.registry.Dataset`); ``(0, 1)``: all of it.
        :param drop_last: skip a final incomplete batch (of this rank's share).
        """
        _positive_int("batch_size", batch_size)
        positions = shard_positions(len(self), shard)
        if shuffle:
            order = torch.randperm(len(self), generator=generator, device=_device_of(generator))
            order = order.to(self.items.device)[positions]
        else:
            order = torch.arange(positions.start, positions.stop, device=self.items.device)
        draws = shard_generator(generator, shard)
        share = positions.stop - positions.start
        stop = share - share % batch_size if drop_last else share
        for start in range(0, stop, batch_size):
            index = order[start : start + batch_size]
            if shuffle:
                members = self._draw_members(len(index), self.set_size, draws)
                x = self.items[index.unsqueeze(1), members]
            else:
                x = self.items[index, : self.set_size]
            yield self._binarized(x, draws), self.labels[index]

    def episodes(
        self,
        num_episodes: int,
        k_way: int,
        n_shot: int,
        *,
        num_queries: int = 1,
        generator: torch.Generator | None = None,
    ) -> Iterator[Episode]:
        """Yield ``num_episodes`` few-shot classification episodes (:class:`Episode`).

        Each draws ``k_way`` distinct sets (classes), then ``n_shot + num_queries`` distinct
        members of each: the first ``n_shot`` are its support, the others its queries, so a
        query is never in its own class's support. Queries come grouped by class (labels
        ``0, 0, ..., 1, 1, ...``). Dynamic binarization draws from ``generator`` too.

        :raises ValueError: ``k_way`` exceeds the sets, or ``n_shot + num_queries`` the members.
        """
        _positive_int("num_episodes", num_episodes)
        _positive_int("k_way", k_way)
        _positive_int("n_shot", n_shot)
        _positive_int("num_queries", num_queries)
        if k_way > len(self):
            raise ValueError(f"k_way must be at most the {len(self)} sets, got {k_way}")
        if n_shot + num_queries > self.members:
            raise ValueError(
                f"n_shot + num_queries must be at most the {self.members} members of a set, "
                f"got {n_shot} + {num_queries}"
            )
        event = self.event_shape
        query_labels = torch.arange(k_way, device=self.items.device).repeat_interleave(num_queries)
        for _ in range(num_episodes):
            classes = torch.randperm(len(self), generator=generator, device=_device_of(generator))
            classes = classes[:k_way].to(self.items.device)
            members = self._draw_members(k_way, n_shot + num_queries, generator)
            drawn = self._binarized(self.items[classes.unsqueeze(1), members], generator)
            yield Episode(
                support=drawn[:, :n_shot],
                query=drawn[:, n_shot:].reshape(k_way * num_queries, *event),
                query_labels=query_labels,
            )

    def model_options(self) -> dict[str, Any]:
        """``input_shape`` (a member's shape), ``set_size`` and ``data_mean``, the mean member
        (under dynamic binarization the grey levels' mean: the expected binarized member)."""
        return {
            "input_shape": tuple(self.event_shape),
            "set_size": self.set_size,
            "data_mean": self.items.mean((0, 1)),
        }

    def subset(
        self, n_or_indices: int | Sequence[int] | torch.Tensor, *, seed: int | None = None
    ) -> SetDataset:
        """A dataset of the first ``n`` sets (or ``n`` drawn without replacement using
        ``seed``), or of the given indices."""
        index = subset_index(n_or_indices, len(self), seed)
        index = index.to(self.items.device)
        return self._with(self.items[index].clone(), self.labels[index].clone())

    def to(self, device: torch.device | str) -> SetDataset:
        """The same dataset with its tensors on ``device``."""
        return self._with(self.items.to(device), self.labels.to(device))

    def with_set_size(self, set_size: int) -> SetDataset:
        """The same sets (shared, not copied) batched ``set_size`` members at a time."""
        return self._with(self.items, self.labels, set_size=set_size)

    def _with(
        self, items: torch.Tensor, labels: torch.Tensor, *, set_size: int | None = None
    ) -> SetDataset:
        return SetDataset(
            items,
            labels,
            set_size=self.set_size if set_size is None else set_size,
            binarize=self.binarize,
            name=self.name,
        )


def group_by_class(
    values: torch.Tensor, classes: np.ndarray, *, members: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``values`` ``(N, *event)`` grouped by class, in their order within each class, as
    ``(C, M, *event)`` with the sorted class labels ``(C,)``; each class keeps its first
    ``members`` values (default: the smallest class's count, so every class has ``M``)."""
    labels, counts = np.unique(classes, return_counts=True)
    members = int(counts.min()) if members is None else members
    order = np.argsort(classes, kind="stable")
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    index = order[starts[:, None] + np.arange(members)]
    return values[torch.from_numpy(index)], torch.from_numpy(labels.astype(np.int64))


def _resolve_binarize(binarize: Binarize | str, default: Mapping[str, Binarize], split: str):
    binarize = default[split] if binarize == DEFAULT else binarize
    _check_binarize(binarize)
    return binarize


def _grey(pixels: np.ndarray, binarize: Binarize) -> torch.Tensor:
    """uint8 images ``(N, H, W)`` as float ``(N, 1, H, W)`` in ``[0, 1]``, statically binarized
    over the whole array (the same pixels as :mod:`pvae.data.images` gives that array)."""
    images = torch.from_numpy(pixels).unsqueeze(1).to(torch.float32) / 255.0
    return binarize_static(images) if binarize == "static" else images


# -- Omniglot ----------------------------------------------------------------------------------
OMNIGLOT_VALID_SEED = 0
OMNIGLOT_VALID_CHARACTERS = 100
ROTATIONS = (0, 1, 2, 3)  # quarter turns of the training characters, each a class of its own
_OMNIGLOT_BACKGROUND = 964
_OMNIGLOT_DEFAULT_BINARIZE = {"train": "dynamic", "valid": "static", "test": "static"}


def omniglot_valid_characters() -> torch.Tensor:
    """The 100 background characters (sorted indices) held out as ``omniglot_sets/valid``."""
    generator = torch.Generator().manual_seed(OMNIGLOT_VALID_SEED)
    chosen = torch.randperm(_OMNIGLOT_BACKGROUND, generator=generator)
    return chosen[:OMNIGLOT_VALID_CHARACTERS].sort().values


def build_omniglot_sets(
    path: Path, split: str, *, set_size: int = 5, binarize: Binarize | str = DEFAULT
) -> SetDataset:
    """One split of ``omniglot_sets`` (see the module docstring).

    Labels are character indices (``valid``: background, ``test``: evaluation characters); on
    ``train`` a set rotated by ``r`` quarter turns (counter-clockwise) has label
    ``r * 964 + character``. Static binarization is drawn over all of a part's images in the
    file's order, so a member shows the same pixels as in ``omniglot``'s ``train+valid``
    (background) or ``test`` split with ``binarize="static"``.
    """
    binarize = _resolve_binarize(binarize, _OMNIGLOT_DEFAULT_BINARIZE, split)
    part = "evaluation" if split == "test" else "background"
    with np.load(path) as arrays:
        pixels = arrays[f"x_{part}"]
        characters = arrays[f"character_{part}"].astype(np.int64)
        drawers = arrays[f"drawer_{part}"].astype(np.int64)
    images = _grey(pixels, binarize)
    # Order by (character, drawer) so that member j of every set is drawer j.
    order = np.lexsort((drawers, characters))
    items, labels = group_by_class(images[torch.from_numpy(order)], characters[order])
    if split != "test":
        held_out = torch.zeros(len(labels), dtype=torch.bool)
        held_out[omniglot_valid_characters()] = True
        keep = held_out if split == "valid" else ~held_out
        items, labels = items[keep], labels[keep]
    if split == "train":
        items = torch.cat([items.rot90(turns, dims=(-2, -1)) for turns in ROTATIONS])
        labels = torch.cat([labels + turns * _OMNIGLOT_BACKGROUND for turns in ROTATIONS])
    return SetDataset(
        items.contiguous(),
        labels,
        set_size=set_size,
        binarize=binarize,
        name=f"omniglot_sets/{split}",
    )


OMNIGLOT_SETS = register_dataset(
    DatasetSpec(
        name="omniglot_sets",
        resource="omniglot28.npz",
        splits=("train", "valid", "test"),
        build=build_omniglot_sets,
        description="Omniglot characters as sets of 20 drawings: 3456 (rotated) / 100 / 659",
    )
)


# -- MNIST digits as sets ----------------------------------------------------------------------
_MNIST_SPLITS = ("train", "valid", "train+valid", "test")
_MNIST_DEFAULT_BINARIZE = {
    "train": "dynamic",
    "train+valid": "dynamic",
    "valid": "static",
    "test": "static",
}


def build_mnist_sets(
    path: Path, split: str, *, set_size: int = 5, binarize: Binarize | str = DEFAULT
) -> SetDataset:
    """One split of ``mnist_sets``: set ``d`` holds the split's images of digit ``d`` in their
    order, truncated to the smallest digit's count (``test``: 892). Static binarization is
    the ``"mnist"`` split's own, so a member shows the same pixels as there."""
    binarize = _resolve_binarize(binarize, _MNIST_DEFAULT_BINARIZE, split)
    pixels, digits = read_mnist(path, split)
    items, labels = group_by_class(_grey(pixels, binarize), digits)
    return SetDataset(
        items, labels, set_size=set_size, binarize=binarize, name=f"mnist_sets/{split}"
    )


MNIST_SETS = register_dataset(
    DatasetSpec(
        name="mnist_sets",
        resource="mnist.npz",
        splits=_MNIST_SPLITS,
        build=build_mnist_sets,
        description="MNIST digits as 10 sets (test: 892 images each), for 10-way tests",
    )
)


# -- the synthetic experiment ------------------------------------------------------------------
FAMILIES = ("exponential", "gaussian", "uniform", "laplace")
"""The synthetic sets' distribution families, in label order."""

SYNTHETIC_SEEDS = {"train": 0, "valid": 1, "test": 2}
_SYNTHETIC_SIZES = {"train": 10000, "valid": 1000, "test": 1000}
SYNTHETIC_MEMBERS = 200


class SyntheticSets(NamedTuple):
    """Generated sets with the parameters they were drawn from: ``samples`` ``(C, M, 1)``,
    ``families`` int64 ``(C,)`` (indices into :data:`FAMILIES`), ``means`` and ``variances``
    ``(C,)``."""

    samples: torch.Tensor
    families: torch.Tensor
    means: torch.Tensor
    variances: torch.Tensor


def _standardized(family: int, shape: tuple[int, int], generator: torch.Generator):
    """Draws of ``FAMILIES[family]`` with mean 0 and variance 1, float64."""
    options = {"generator": generator, "dtype": torch.float64}
    if family == 1:
        return torch.randn(shape, **options)
    uniform = torch.rand(shape, **options)
    if family == 2:
        return (2 * uniform - 1) * math.sqrt(3)
    exponential = -torch.log1p(-uniform)  # Exp(1): mean 1, variance 1; uniform < 1
    if family == 0:
        return exponential - 1
    sign = torch.where(torch.rand(shape, **options) < 0.5, -1.0, 1.0)
    return sign * exponential / math.sqrt(2)  # Laplace(0, b) has variance 2 b^2


def synthetic_sets(
    num_sets: int, *, members: int = SYNTHETIC_MEMBERS, seed: int = 0
) -> SyntheticSets:
    """The Neural Statistician's synthetic sets [1]: each set draws a family uniformly from
    :data:`FAMILIES`, a mean ``mu ~ U[-1, 1]`` and a variance ``v ~ U[0.5, 2]``, then
    ``members`` i.i.d. samples of that family with exactly that mean and variance:
    exponential ``mu - sqrt(v) + Exp(1 / sqrt(v))``, Gaussian ``N(mu, v)``, uniform
    ``U[mu - sqrt(3 v), mu + sqrt(3 v)]``, Laplace ``(mu, sqrt(v / 2))``.

    Deterministic given ``seed`` (CPU generator, float64 arithmetic, float32 samples); the
    first ``n`` sets of a larger draw are not those of ``num_sets=n`` (use ``subset``).
    """
    _positive_int("num_sets", num_sets)
    _positive_int("members", members)
    generator = torch.Generator().manual_seed(seed)
    families = torch.randint(len(FAMILIES), (num_sets,), generator=generator)
    means = torch.rand(num_sets, generator=generator, dtype=torch.float64) * 2 - 1
    variances = torch.rand(num_sets, generator=generator, dtype=torch.float64) * 1.5 + 0.5
    standard = torch.empty(num_sets, members, dtype=torch.float64)
    for family in range(len(FAMILIES)):
        chosen = families == family
        standard[chosen] = _standardized(family, (int(chosen.sum()), members), generator)
    samples = means[:, None] + variances.sqrt()[:, None] * standard
    return SyntheticSets(
        samples.to(torch.float32).unsqueeze(-1),
        families,
        means.to(torch.float32),
        variances.to(torch.float32),
    )


def build_synthetic_sets(
    path: tuple[()],
    split: str,
    *,
    num_sets: int | None = None,
    set_size: int = SYNTHETIC_MEMBERS,
) -> SetDataset:
    """One split of ``synthetic_sets``, generated (``path`` is ``()``: no file): ``num_sets``
    sets (default: the split's 10000 / 1000 / 1000) from the split's seed
    (:data:`SYNTHETIC_SEEDS`), labels the families."""
    drawn = synthetic_sets(
        _SYNTHETIC_SIZES[split] if num_sets is None else num_sets, seed=SYNTHETIC_SEEDS[split]
    )
    return SetDataset(
        drawn.samples, drawn.families, set_size=set_size, name=f"synthetic_sets/{split}"
    )


SYNTHETIC = register_dataset(
    DatasetSpec(
        name="synthetic_sets",
        resource=(),  # no file: generated from the split's seed
        splits=tuple(SYNTHETIC_SEEDS),
        build=build_synthetic_sets,
        description="sets of 200 samples of 4 families with random mean and variance",
    )
)


# -- spatial MNIST -----------------------------------------------------------------------------
SPATIAL_POINTS = 50
SPATIAL_SEEDS = {"train+valid": 0, "test": 1}  # per part of mnist.npz, so that splits agree
_CHUNK = 10000


def spatial_points(
    pixels: np.ndarray, *, points: int = SPATIAL_POINTS, seed: int = 0
) -> torch.Tensor:
    """Each grey image ``(H, W)`` of ``pixels`` ``(N, H, W)`` as ``points`` points
    ``(column, row) + U[0, 1)^2``, pixels drawn with replacement with probability proportional
    to their intensity: float32 ``(N, points, 2)`` in ``[0, W) x [0, H)`` (row 0 at the top).
    Deterministic given ``seed``, drawn in chunks of 10000 images to bound memory."""
    _positive_int("points", points)
    count, height, width = pixels.shape
    generator = torch.Generator().manual_seed(seed)
    out = torch.empty(count, points, 2)
    for start in range(0, count, _CHUNK):
        weights = torch.from_numpy(pixels[start : start + _CHUNK]).reshape(-1, height * width)
        drawn = torch.multinomial(weights.double(), points, replacement=True, generator=generator)
        grid = torch.stack([drawn % width, drawn // width], dim=-1).to(torch.float32)
        noise = torch.rand(grid.shape, generator=generator)
        out[start : start + _CHUNK] = grid + noise
    return out


def build_spatial_mnist(path: Path, split: str, *, set_size: int = SPATIAL_POINTS) -> SetDataset:
    """One split of ``spatial_mnist`` (splits as ``"mnist"``'s). Points are drawn over all of
    a part of ``mnist.npz`` (training or test images) with that part's seed, so ``train`` and
    ``valid`` are exactly the two pieces of ``train+valid``."""
    part = "test" if split == "test" else "train+valid"
    pixels, digits = read_mnist(path, part)
    points = spatial_points(pixels, seed=SPATIAL_SEEDS[part])
    rows = {"train": slice(0, 50000), "valid": slice(50000, 60000)}.get(split, slice(None))
    return SetDataset(
        points[rows].contiguous(),
        torch.from_numpy(digits[rows]),
        set_size=set_size,
        name=f"spatial_mnist/{split}",
    )


SPATIAL_MNIST = register_dataset(
    DatasetSpec(
        name="spatial_mnist",
        resource="mnist.npz",
        splits=_MNIST_SPLITS,
        build=build_spatial_mnist,
        description="MNIST images as sets of 50 points drawn from their intensities",
    )
)
