"""An indexed view of an image dataset: batches ``(x, y, index)``, for models with a memory.

A model that keeps something per training datum (the associative compression network's code
memory, :mod:`pvae.models.acn`) needs to know which data a batch holds. :class:`IndexedDataset`
wraps an :class:`~pvae.data.images.ImageDataset` and yields ``(x, y, index)``, where ``index``
(int64, ``(B,)``) are the positions of the batch's images in the wrapped dataset.

The batches are *the wrapped dataset's own*: the view calls the same
:meth:`ImageDataset.batches <pvae.data.images.ImageDataset.batches>` on the same images with
the positions ``0..N-1`` as labels, so the order, the shards and the dynamic binarization
draws are those of the wrapped dataset for the same generator, by construction.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch

from pvae.data.images import ImageDataset

__all__ = ["IndexedDataset"]


class IndexedDataset:
    """``(x, y, index)`` batches of an :class:`~pvae.data.images.ImageDataset` (see the module
    docstring); length, ``model_options``, ``subset`` and ``to`` are the wrapped dataset's.

    :param dataset: the image dataset to index.
    :raises ValueError: ``dataset`` is not an :class:`~pvae.data.images.ImageDataset`.
    """

    def __init__(self, dataset: ImageDataset) -> None:
        if isinstance(dataset, IndexedDataset):
            dataset = dataset.dataset
        if not isinstance(dataset, ImageDataset):
            raise ValueError(
                f"IndexedDataset indexes an ImageDataset, got {type(dataset).__name__}"
            )
        self.dataset = dataset
        images = dataset.images
        # The same images (shared, not copied) labelled with their positions: its batches are
        # the wrapped dataset's batches with the positions in place of the labels.
        self._positions = ImageDataset(
            images,
            torch.arange(len(dataset), device=images.device),
            binarize=dataset.binarize,
            name=dataset.name,
        )

    def __len__(self) -> int:
        return len(self.dataset)

    def __repr__(self) -> str:
        return f"IndexedDataset({self.dataset!r})"

    @property
    def labels(self) -> torch.Tensor:
        return self.dataset.labels

    def batches(
        self,
        batch_size: int,
        *,
        shuffle: bool = True,
        generator: torch.Generator | None = None,
        shard: tuple[int, int] = (0, 1),
        drop_last: bool = False,
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """One epoch of ``(x, y, index)``: the arguments are those of
        :meth:`ImageDataset.batches <pvae.data.images.ImageDataset.batches>`."""
        labels = self.dataset.labels
        for x, index in self._positions.batches(
            batch_size, shuffle=shuffle, generator=generator, shard=shard, drop_last=drop_last
        ):
            yield x, labels[index], index

    def model_options(self) -> dict[str, Any]:
        return self.dataset.model_options()

    def subset(self, n: Any, *, seed: int | None = None) -> IndexedDataset:
        """The indexed view of ``dataset.subset(n, seed=seed)`` (indices into the subset)."""
        return IndexedDataset(self.dataset.subset(n, seed=seed))

    def to(self, device: torch.device | str) -> IndexedDataset:
        return IndexedDataset(self.dataset.to(device))
