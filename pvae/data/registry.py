"""What a dataset provides, and the registry of named datasets of every modality.

A modality (images, text, sets, graphs) is one module that defines a dataset class
implementing :class:`Dataset` and registers its named datasets::

    register_dataset(
        DatasetSpec(
            name="tiny_text",
            resource=Resource("tiny_text.txt", sha256=(digest,), sources=()),
            splits=("train", "test"),
            build=read_sentences,       # build(path, split, **options) -> a Dataset
        )
    )
    train = load_dataset("tiny_text", "train")  # whatever read_sentences returns

:func:`load_dataset` finds and verifies the file(s) (:func:`pvae.data.download.fetch`), calls
the modality's ``build`` with the split and any modality options (``binarize=`` for images),
then takes ``size`` units and moves the result to ``device`` through the protocol. Nothing in
this module knows what an image is.

Labelled datasets follow one convention (used by :mod:`pvae.data.semisupervised`): a ``labels``
attribute, int64 ``(N,)``, with :data:`UNLABELLED` (``-1``) where a unit has no label, and
batches ``(x, y)``.
"""

from __future__ import annotations

import importlib
import inspect
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch

from pvae.data.download import Resource, fetch

__all__ = [
    "DATASETS",
    "UNLABELLED",
    "Dataset",
    "DatasetSpec",
    "available_datasets",
    "load_dataset",
    "register_dataset",
    "shard_generator",
    "subset_index",
    "checked_labels",
    "shard_positions",
]

UNLABELLED = -1
"""The label of a unit without one."""

# Modules that register pvae's own datasets; imported on first use of the registry, so that
# importing a modality module never has to import the others.
_BUILTIN_MODULES = (
    "pvae.data.mnist",
    "pvae.data.omniglot",
    "pvae.data.sets",
    "pvae.data.ptb",
    "pvae.data.sentences",
    "pvae.data.planetoid",
)


@runtime_checkable
class Dataset(Protocol):
    """What every dataset provides, whatever its modality.

    A dataset is a collection of *independent units*: the things the model's ``"data"`` plate
    ranges over and a minibatch subsamples (images, sentences, sets; a single graph is one
    unit). Training scales a batch by ``len(dataset) / batch size`` through that plate.

    - ``len(dataset)``: the number of units.
    - ``batches(batch_size, *, shuffle=True, generator=None, shard=(0, 1))``: one epoch of
      batches, each what the model's ``batch_args`` takes (``(x, y)`` for labelled images).
      ``generator`` is the source of all randomness of the epoch (the order and per-batch draws
      such as dynamic binarization); ``None`` uses torch's global generator. ``shard=(rank,
      world_size)`` yields only this process's share of the epoch: every rank draws the same
      permutation from its identically seeded generator and keeps its own contiguous part
      (:func:`shard_positions`), so the ranks' shares are disjoint and together are one epoch.
      A sharded epoch draws the same amount from ``generator`` on every rank, so the ranks stay
      in step over epochs; per-unit draws of a share come from :func:`shard_generator`.
      ``shard=(0, 1)`` is the whole epoch. Shares differ by at most one unit, so ranks may see
      different numbers of batches (one more, a smaller last one).
    - ``model_options()``: what a model needs to know about the data, as keyword arguments
      (images: ``input_shape`` ``(C, H, W)`` and ``data_mean``, the mean image; text:
      ``vocab_size``, ...).
    - ``subset(n, *, seed=None)``: a dataset of the first ``n`` units, or ``n`` drawn without
      replacement with ``seed``.
    - ``to(device)``: the same dataset with its tensors on ``device``.

    The protocol is runtime-checkable: ``isinstance(d, Dataset)`` checks the methods exist.
    """

    def __len__(self) -> int: ...

    def batches(
        self,
        batch_size: int,
        *,
        shuffle: bool = True,
        generator: torch.Generator | None = None,
        shard: tuple[int, int] = (0, 1),
    ) -> Iterator[Any]: ...

    def model_options(self) -> dict[str, Any]: ...

    def subset(self, n: int, *, seed: int | None = None) -> Dataset: ...

    def to(self, device: torch.device | str) -> Dataset: ...


def checked_labels(labels: torch.Tensor | None, num_units: int, device: Any) -> torch.Tensor:
    """A labelled dataset's ``labels``: int64 ``(num_units,)``, all :data:`UNLABELLED` when
    ``None``; ``ValueError`` otherwise."""
    if labels is None:
        return torch.full((num_units,), UNLABELLED, dtype=torch.int64, device=device)
    if labels.shape != (num_units,) or labels.dtype != torch.int64:
        raise ValueError(
            f"labels must be int64 of shape ({num_units},), got {labels.dtype} "
            f"{tuple(labels.shape)}"
        )
    return labels


def subset_index(
    n_or_indices: int | Sequence[int] | torch.Tensor, num_units: int, seed: int | None = None
) -> torch.Tensor:
    """The units a ``subset`` keeps: the first ``n`` (or ``n`` drawn without replacement with
    ``seed``), or the given indices; a one-dimensional int64 tensor."""
    if isinstance(n_or_indices, int):
        if not 0 < n_or_indices <= num_units:
            raise ValueError(f"subset size must be in 1..{num_units}, got {n_or_indices}")
        if seed is None:
            return torch.arange(n_or_indices)
        generator = torch.Generator().manual_seed(seed)
        return torch.randperm(num_units, generator=generator)[:n_or_indices]
    index = torch.as_tensor(n_or_indices, dtype=torch.int64)
    if index.dim() != 1:
        raise ValueError("subset indices must be one-dimensional")
    return index


def shard_positions(num_units: int, shard: tuple[int, int]) -> slice:
    """The positions of an epoch's order that rank ``rank`` of ``world_size`` visits.

    Contiguous and balanced: rank ``r`` gets ``[r N / W, (r + 1) N / W)`` (floored), so the
    shares are disjoint, cover ``0..N-1`` and differ in size by at most one.

    :raises ValueError: ``shard`` is not ``(rank, world_size)`` with ``0 <= rank < world_size``.
    """
    if (
        not isinstance(shard, tuple)
        or len(shard) != 2
        or not all(isinstance(value, int) for value in shard)
        or not 0 <= shard[0] < shard[1]
    ):
        raise ValueError(
            f"shard must be a tuple (rank, world_size) of integers with "
            f"0 <= rank < world_size, got {shard!r}"
        )
    rank, world_size = shard
    return slice(rank * num_units // world_size, (rank + 1) * num_units // world_size)


def shard_generator(
    generator: torch.Generator | None, shard: tuple[int, int]
) -> torch.Generator | None:
    """The generator of a share's own random draws (e.g. dynamic binarization).

    Unsharded (``world_size`` 1) it is ``generator`` itself, so an unsharded epoch is exactly
    the stream of a single process. Sharded, every rank draws one seed from ``generator`` (the
    same draw everywhere, so the ranks' generators stay in step whatever the size of their
    shares) and returns a new generator on the same device seeded with ``seed + rank``: the
    ranks' draws are then independent rather than the same numbers applied to other units.
    Call it after drawing the epoch's permutation.
    """
    rank, world_size = shard
    if world_size == 1:
        return generator
    device = generator.device if generator is not None else torch.device("cpu")
    seed = int(torch.randint(2**62, (1,), generator=generator, device=device))
    return torch.Generator(device=device).manual_seed(seed + rank)


@dataclass(frozen=True)
class DatasetSpec:
    """How to load one named dataset.

    :param name: the name :func:`load_dataset` accepts.
    :param resource: the dataset's file: a name in :data:`pvae.data.download.RESOURCES` or a
        :class:`~pvae.data.download.Resource`; or a tuple of them for a dataset of several files.
    :param splits: the split names ``build`` accepts, in the order error messages list them.
    :param build: ``build(path, split, **options) -> Dataset``: the dataset of one split from
        the verified file (a :class:`~pathlib.Path`; a tuple of paths when ``resource`` is a
        tuple). Its keyword options are the modality's options of :func:`load_dataset` (for
        images, see :class:`pvae.data.images.ImageLoader`).
    :param description: one line for listings.
    """

    name: str
    resource: str | Resource | tuple[str | Resource, ...]
    splits: tuple[str, ...]
    build: Callable[..., Dataset]
    description: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"a dataset name must be a non-empty string, got {self.name!r}")
        if not self.splits or not all(isinstance(split, str) for split in self.splits):
            raise ValueError(
                f"dataset {self.name!r}: splits must be split names, got {self.splits!r}"
            )
        if not callable(self.build):
            raise ValueError(f"dataset {self.name!r}: build must be callable, got {self.build!r}")


DATASETS: dict[str, DatasetSpec] = {}
"""Registered datasets by name. pvae's own register when :func:`available_datasets`,
:func:`load_dataset` or :func:`register_dataset` is first called (or on importing
:mod:`pvae.data.datasets`); list them with :func:`available_datasets`."""


def _import_builtin() -> None:
    for module in _BUILTIN_MODULES:
        importlib.import_module(module)


def register_dataset(spec: DatasetSpec) -> DatasetSpec:
    """Add a dataset to :data:`DATASETS` under ``spec.name``; returns ``spec``.

    :raises ValueError: the name is taken (pvae's own datasets included).
    """
    _import_builtin()
    if spec.name in DATASETS:
        raise ValueError(f"dataset {spec.name!r} is already registered")
    DATASETS[spec.name] = spec
    return spec


def available_datasets() -> list[str]:
    """Names accepted by :func:`load_dataset`."""
    _import_builtin()
    return sorted(DATASETS)


def load_dataset(
    name: str,
    split: str,
    *,
    data_dir: str | os.PathLike | None = None,
    download: bool = True,
    size: int | None = None,
    size_seed: int | None = None,
    device: torch.device | str = "cpu",
    progress: bool = True,
    **modality_options: Any,
) -> Dataset:
    """Load one split of a named dataset into memory.

    :param name: one of :func:`available_datasets` (``"mnist"``, ``"binarized_mnist"``,
        ``"omniglot"``, and any registered modality's datasets).
    :param split: one of the dataset's splits (pvae's image datasets: ``"train"``,
        ``"valid"``, ``"train+valid"``, ``"test"``).
    :param data_dir: folder searched first and used for downloads (see :func:`fetch`).
    :param download: allow downloading a missing file.
    :param size: keep only ``size`` units (:meth:`Dataset.subset`): the first ones, or a random
        draw when ``size_seed`` is given (for smoke tests).
    :param size_seed: seed of the random draw of ``size`` units.
    :param device: where the tensors live.
    :param progress: show a download progress bar (on a terminal).
    :param modality_options: passed to the dataset's ``build``; for images ``binarize=``
        ``"dynamic"``, ``"static"``, ``None`` or ``"default"`` (see :mod:`pvae.data.images`).
    :return: the modality's dataset (an :class:`~pvae.data.images.ImageDataset` for the image
        datasets).
    """
    _import_builtin()
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; available: {', '.join(available_datasets())}")
    spec = DATASETS[name]
    if split not in spec.splits:
        raise ValueError(
            f"unknown split {split!r} for dataset {name!r}; available: {', '.join(spec.splits)}"
        )
    if size is not None and (not isinstance(size, int) or size < 1):
        raise ValueError(f"size must be a positive integer or None, got {size!r}")
    _check_options(spec, modality_options)

    if isinstance(spec.resource, tuple):
        path: Path | tuple[Path, ...] = tuple(
            fetch(resource, data_dir, progress=progress, download=download)
            for resource in spec.resource
        )
    else:
        path = fetch(spec.resource, data_dir, progress=progress, download=download)
    dataset = spec.build(path, split, **modality_options)
    if size is not None and size < len(dataset):
        dataset = dataset.subset(size, seed=size_seed)
    return dataset.to(device) if torch.device(device) != torch.device("cpu") else dataset


def _check_options(spec: DatasetSpec, options: dict[str, Any]) -> None:
    """Reject options the dataset's ``build`` does not take, before any download."""
    try:
        parameters = list(inspect.signature(spec.build).parameters.values())[2:]
    except (TypeError, ValueError):  # a callable without a signature checks its own options
        return
    if any(parameter.kind == parameter.VAR_KEYWORD for parameter in parameters):
        return
    accepted = [
        parameter.name
        for parameter in parameters
        if parameter.kind in (parameter.KEYWORD_ONLY, parameter.POSITIONAL_OR_KEYWORD)
    ]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise ValueError(
            f"dataset {spec.name!r} takes no option {', '.join(unknown)}; "
            f"its options: {', '.join(accepted) or 'none'}"
        )
