"""In-memory image datasets with vectorized batching and per-batch binarization.

:class:`ImageDataset` keeps every image of a split in one tensor ``(N, 1, 28, 28)`` (MNIST's
50000 training images are 157 MB as float32) and yields batches by indexing that tensor with a
permutation: no per-item ``__getitem__`` and no ``DataLoader`` workers.

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
from typing import Literal

import numpy as np
import torch

__all__ = [
    "DATASETS",
    "STATIC_BINARIZATION_SEED",
    "Binarize",
    "DatasetSpec",
    "ImageDataset",
    "register_dataset",
]

Binarize = Literal["dynamic", "static"] | None
BINARIZE_MODES = ("dynamic", "static", None)
STATIC_BINARIZATION_SEED = 0


def _check_binarize(binarize: object) -> None:
    if binarize not in BINARIZE_MODES:
        raise ValueError(f"binarize must be one of {BINARIZE_MODES}, got {binarize!r}")


def binarize_static(images: torch.Tensor, seed: int = STATIC_BINARIZATION_SEED) -> torch.Tensor:
    """One Bernoulli draw per pixel from a CPU generator seeded with ``seed``."""
    generator = torch.Generator().manual_seed(seed)
    noise = torch.rand(images.shape, generator=generator)
    return (noise < images.cpu()).to(images.dtype).to(images.device)


class ImageDataset(torch.utils.data.Dataset):
    """Images held in memory, with vectorized batches.

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
        if labels is None:
            labels = torch.full((images.shape[0],), -1, dtype=torch.int64, device=images.device)
        if labels.shape != images.shape[:1] or labels.dtype != torch.int64:
            raise ValueError(
                f"labels must be int64 of shape ({images.shape[0]},), got {labels.dtype} "
                f"{tuple(labels.shape)}"
            )
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
        drop_last: bool = False,
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield ``(x, y)`` batches covering every image once (one epoch).

        :param batch_size: images per batch (the last one is smaller unless ``drop_last``).
        :param shuffle: visit the images in a random order drawn from ``generator``.
        :param generator: source of the permutation and of dynamic binarization (a CPU
            generator, or one on the data's device); ``None`` uses torch's global generator.
        :param drop_last: skip a final incomplete batch.
        """
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        n = len(self)
        if shuffle:
            device = generator.device if generator is not None else torch.device("cpu")
            order = torch.randperm(n, generator=generator, device=device).to(self.images.device)
        else:
            order = None
        stop = n - n % batch_size if drop_last else n
        for start in range(0, stop, batch_size):
            if order is None:
                index = slice(start, min(start + batch_size, n))
            else:
                index = order[start : start + batch_size]
            yield self._binarized(self.images[index], generator), self.labels[index]

    def subset(
        self, n_or_indices: int | Sequence[int] | torch.Tensor, *, seed: int | None = None
    ) -> ImageDataset:
        """A dataset of the first ``n`` images (or ``n`` drawn without replacement using
        ``seed``), or of the given indices."""
        if isinstance(n_or_indices, int):
            if not 0 < n_or_indices <= len(self):
                raise ValueError(f"subset size must be in 1..{len(self)}, got {n_or_indices}")
            if seed is None:
                index = torch.arange(n_or_indices)
            else:
                generator = torch.Generator().manual_seed(seed)
                index = torch.randperm(len(self), generator=generator)[:n_or_indices]
        else:
            index = torch.as_tensor(n_or_indices, dtype=torch.int64)
            if index.dim() != 1:
                raise ValueError("subset indices must be one-dimensional")
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


@dataclass(frozen=True)
class DatasetSpec:
    """How to load one named dataset.

    ``read(path, split)`` takes the verified file of ``resource`` and returns uint8 images
    ``(N, H, W)`` in 0..255 (or 0/1 where ``binary``) and int64 labels ``(N,)`` (``-1`` when
    unlabelled). ``default_binarize`` maps each split to its default binarization.
    """

    name: str
    resource: str
    splits: tuple[str, ...]
    read: Callable[[Path, str], tuple[np.ndarray, np.ndarray]]
    default_binarize: Mapping[str, Binarize]
    binary: bool = False
    description: str = ""


DATASETS: dict[str, DatasetSpec] = {}


def register_dataset(spec: DatasetSpec) -> DatasetSpec:
    """Add a dataset to :data:`DATASETS` under ``spec.name``."""
    if spec.name in DATASETS:
        raise ValueError(f"dataset {spec.name!r} is already registered")
    missing = set(spec.splits) - set(spec.default_binarize)
    if missing:
        raise ValueError(f"dataset {spec.name!r}: no default binarization for {sorted(missing)}")
    DATASETS[spec.name] = spec
    return spec
