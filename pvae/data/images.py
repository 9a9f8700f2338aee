"""Images: in-memory image datasets with vectorized batching and per-batch binarization.

:class:`ImageDataset` keeps every image of a split in one tensor ``(N, 1, 28, 28)`` (MNIST's
50000 training images are 157 MB as float32) and yields batches by indexing that tensor with a
permutation: no per-item ``__getitem__`` and no ``DataLoader`` workers. It implements
:class:`pvae.data.registry.Dataset`; an image dataset registers with :func:`image_spec`.

Binarization, the standard treatments of grey-level images in the VAE literature [1, 2]:

- ``"dynamic"``: every batch draws fresh ``x ~ Bernoulli(pixel)`` from the ``torch.Generator``
  passed to :meth:`ImageDataset.batches` (a regularizer for training; reproducible from a seed).
- ``"static"``: one binarization drawn once when the split is loaded, with a fixed seed
  (:data:`STATIC_BINARIZATION_SEED`), so a test set is the same on every run and machine with
  the same torch version: the IWAE evaluation protocol [2].
- ``None``: grey levels in ``[0, 1]``.

References:
    [1] R. Salakhutdinov, I. Murray. On the Quantitative Analysis of Deep Belief Networks.
        ICML 2008. https://www.cs.toronto.edu/~rsalakhu/papers/dbn_ais.pdf
    [2] Y. Burda, R. Grosse, R. Salakhutdinov. Importance Weighted Autoencoders. ICLR 2016.
        https://arxiv.org/abs/1509.00519
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from pvae.data.registry import (
    DATASETS,
    UNLABELLED,
    DatasetSpec,
    checked_labels,
    register_dataset,
    shard_generator,
    shard_positions,
    subset_index,
)

__all__ = [
    "DATASETS",  # re-exported from pvae.data.registry, where they live
    "DEFAULT",
    "STATIC_BINARIZATION_SEED",
    "Binarize",
    "DatasetSpec",
    "ImageDataset",
    "ImageLoader",
    "image_spec",
    "register_dataset",
]

Binarize = Literal["dynamic", "static"] | None
BINARIZE_MODES = ("dynamic", "static", None)
STATIC_BINARIZATION_SEED = 0
DEFAULT = "default"  # binarize= of load_dataset: the split's default binarization


def _check_binarize(binarize: object) -> None:
    if binarize not in BINARIZE_MODES:
        raise ValueError(f"binarize must be one of {BINARIZE_MODES}, got {binarize!r}")


def binarize_static(images: torch.Tensor, seed: int = STATIC_BINARIZATION_SEED) -> torch.Tensor:
    """One Bernoulli draw per pixel from a CPU generator seeded with ``seed``."""
    generator = torch.Generator().manual_seed(seed)
    noise = torch.rand(images.shape, generator=generator)
    return (noise < images.cpu()).to(images.dtype).to(images.device)


class ImageDataset(torch.utils.data.Dataset):
    """Images held in memory, with vectorized batches: the image modality's
    :class:`~pvae.data.registry.Dataset` (one unit is one image).

    :param images: float tensor ``(N, C, H, W)`` with values in ``[0, 1]``; for
        ``binarize="static"`` these are the already binarized images.
    :param labels: int64 ``(N,)``, ``-1`` where unlabelled (``None``: all ``-1``).
    :param binarize: ``"dynamic"``, ``"static"`` or ``None`` (see the module docstring).
    :param name: a description such as ``"mnist/train"``.
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor | None = None,
        *,
        binarize: Binarize = None,
        name: str = "",
    ) -> None:
        if images.dim() != 4 or not images.is_floating_point():
            raise ValueError(
                f"images must be a float tensor (N, C, H, W), got {images.dtype} "
                f"{tuple(images.shape)}"
            )
        labels = checked_labels(labels, images.shape[0], images.device)
        _check_binarize(binarize)
        self.images = images
        self.labels = labels
        self.binarize = binarize
        self.name = name

    def __len__(self) -> int:
        return self.images.shape[0]

    def __repr__(self) -> str:
        return (
            f"ImageDataset({self.name!r}, n={len(self)}, shape={tuple(self.images.shape[1:])}, "
            f"binarize={self.binarize!r}, device={self.images.device})"
        )

    def __getitem__(self, index):
        """``(x, y)`` for an index, slice or index tensor; ``"dynamic"`` draws from torch's
        global generator here (use :meth:`batches` with a generator for reproducible runs)."""
        return self._binarized(self.images[index], None), self.labels[index]

    def _binarized(self, x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        if self.binarize != "dynamic":
            return x
        device = generator.device if generator is not None else x.device
        noise = torch.rand(x.shape, generator=generator, device=device, dtype=x.dtype)
        return (noise.to(x.device) < x).to(x.dtype)

    @property
    def shape(self) -> torch.Size:
        """Shape of one image, ``(C, H, W)``."""
        return self.images.shape[1:]

    def batches(
        self,
        batch_size: int,
        *,
        shuffle: bool = True,
        generator: torch.Generator | None = None,
        shard: tuple[int, int] = (0, 1),
        drop_last: bool = False,
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield ``(x, y)`` batches covering every image once (one epoch).

        :param batch_size: images per batch (the last one is smaller unless ``drop_last``).
        :param shuffle: visit the images in a random order drawn from ``generator``.
        :param generator: source of the permutation and of dynamic binarization (a CPU
            generator, or one on the data's device); ``None`` uses torch's global generator.
        :param shard: ``(rank, world_size)``: only this rank's contiguous share of the epoch's
            order (see :class:`~pvae.data.registry.Dataset`); ``(0, 1)``: all of it.
        :param drop_last: skip a final incomplete batch (of this rank's share).
        """
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        positions = shard_positions(len(self), shard)
        if shuffle:
            device = generator.device if generator is not None else torch.device("cpu")
            order = torch.randperm(len(self), generator=generator, device=device)
            order = order.to(self.images.device)[positions]
        else:
            order = None
        draws = shard_generator(generator, shard)
        share = positions.stop - positions.start
        stop = share - share % batch_size if drop_last else share
        for start in range(0, stop, batch_size):
            if order is None:
                first = positions.start + start
                index = slice(first, min(first + batch_size, positions.stop))
            else:
                index = order[start : start + batch_size]
            yield self._binarized(self.images[index], draws), self.labels[index]

    def model_options(self) -> dict[str, Any]:
        """``input_shape`` ``(C, H, W)`` and ``data_mean``, the mean image ``(C, H, W)`` (the
        stored images' mean: under dynamic binarization, the grey levels' mean, which is the
        expected binarized image)."""
        return {"input_shape": tuple(self.images.shape[1:]), "data_mean": self.images.mean(0)}

    def subset(
        self, n_or_indices: int | Sequence[int] | torch.Tensor, *, seed: int | None = None
    ) -> ImageDataset:
        """A dataset of the first ``n`` images (or ``n`` drawn without replacement using
        ``seed``), or of the given indices."""
        index = subset_index(n_or_indices, len(self), seed)
        index = index.to(self.images.device)
        return ImageDataset(
            self.images[index].clone(),
            self.labels[index].clone(),
            binarize=self.binarize,
            name=self.name,
        )

    def to(self, device: torch.device | str) -> ImageDataset:
        """The same dataset with its tensors on ``device``."""
        return ImageDataset(
            self.images.to(device), self.labels.to(device), binarize=self.binarize, name=self.name
        )

    def without_labels(self) -> ImageDataset:
        """The same images (shared, not copied) with every label ``-1``: e.g. validation
        data seen as unlabelled."""
        return ImageDataset(
            self.images,
            torch.full_like(self.labels, UNLABELLED),
            binarize=self.binarize,
            name=self.name,
        )


@dataclass(frozen=True)
class ImageLoader:
    """The ``build`` of an image dataset: one split of a verified file as an
    :class:`ImageDataset` with images ``(N, 1, H, W)`` float32 in ``[0, 1]``.

    ``read(path, split)`` returns uint8 images ``(N, H, W)`` in 0..255 (or 0/1 where
    ``binary``) and int64 labels ``(N,)`` (``-1`` when unlabelled). ``default_binarize`` maps
    each split to its default binarization.
    """

    name: str
    read: Callable[[Path, str], tuple[np.ndarray, np.ndarray]]
    default_binarize: Mapping[str, Binarize]
    binary: bool = False

    def __call__(
        self, path: Path, split: str, *, binarize: Binarize | str = DEFAULT
    ) -> ImageDataset:
        """:param binarize: ``"dynamic"``, ``"static"``, ``None`` or ``"default"`` (dynamic
        for training splits, static for ``valid``/``test``; see the module docstring).
        Static binarization is drawn over the whole split, so a subset of it shows the same
        pixels as the full split."""
        if binarize == DEFAULT:
            binarize = self.default_binarize[split]
        _check_binarize(binarize)
        pixels, labels = self.read(path, split)
        images = torch.from_numpy(pixels).unsqueeze(1).to(torch.float32)
        if not self.binary:
            images /= 255.0
        if binarize == "static" and not self.binary:
            images = binarize_static(images)
        return ImageDataset(
            images, torch.from_numpy(labels), binarize=binarize, name=f"{self.name}/{split}"
        )


def image_spec(
    *,
    name: str,
    resource: str,
    splits: tuple[str, ...],
    read: Callable[[Path, str], tuple[np.ndarray, np.ndarray]],
    default_binarize: Mapping[str, Binarize],
    binary: bool = False,
    description: str = "",
) -> DatasetSpec:
    """The :class:`~pvae.data.registry.DatasetSpec` of an image dataset (its ``build`` an
    :class:`ImageLoader`); pass it to :func:`~pvae.data.registry.register_dataset`.

    :raises ValueError: a split has no default binarization, or one is not a valid mode.
    """
    missing = set(splits) - set(default_binarize)
    if missing:
        raise ValueError(f"dataset {name!r}: no default binarization for {sorted(missing)}")
    for mode in default_binarize.values():
        _check_binarize(mode)
    return DatasetSpec(
        name=name,
        resource=resource,
        splits=splits,
        build=ImageLoader(name, read, dict(default_binarize), binary),
        description=description,
    )
