"""``load_dataset(name, split)``: the named image datasets of :data:`DATASETS`."""

from __future__ import annotations

import os

import torch

# Importing the dataset modules registers them in DATASETS.
from pvae.data import mnist, omniglot  # noqa: F401
from pvae.data.download import fetch
from pvae.data.images import DATASETS, Binarize, ImageDataset, _check_binarize, binarize_static

__all__ = ["DATASETS", "available_datasets", "load_dataset"]

DEFAULT = "default"


def available_datasets() -> list[str]:
    """Names accepted by :func:`load_dataset`."""
    return sorted(DATASETS)


def load_dataset(
    name: str,
    split: str = "train",
    *,
    binarize: Binarize | str = DEFAULT,
    data_dir: str | os.PathLike | None = None,
    download: bool = True,
    size: int | None = None,
    size_seed: int | None = None,
    device: torch.device | str = "cpu",
    progress: bool = True,
) -> ImageDataset:
    """Load one split of a named dataset into memory.

    :param name: one of :func:`available_datasets` (``"mnist"``, ``"binarized_mnist"``,
        ``"omniglot"``).
    :param split: ``"train"``, ``"valid"``, ``"train+valid"`` or ``"test"``.
    :param binarize: ``"dynamic"``, ``"static"``, ``None`` or ``"default"`` (dynamic for
        training splits, static for ``valid``/``test``; see :mod:`pvae.data.images`). Static
        binarization is drawn over the whole split before ``size`` is applied, so a subset
        shows the same pixels as the full split.
    :param data_dir: folder searched first and used for downloads (see :func:`fetch`).
    :param download: allow downloading a missing file.
    :param size: keep only ``size`` images: the first ones, or a random draw when
        ``size_seed`` is given (for smoke tests).
    :param size_seed: seed of the random draw of ``size`` images.
    :param device: where the tensors live.
    :param progress: show a download progress bar (on a terminal).
    :return: an :class:`ImageDataset` with images ``(N, 1, 28, 28)`` float32 in ``[0, 1]``.
    """
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; available: {', '.join(available_datasets())}")
    spec = DATASETS[name]
    if split not in spec.splits:
        raise ValueError(
            f"unknown split {split!r} for dataset {name!r}; available: {', '.join(spec.splits)}"
        )
    if binarize == DEFAULT:
        binarize = spec.default_binarize[split]
    _check_binarize(binarize)
    if size is not None and (not isinstance(size, int) or size < 1):
        raise ValueError(f"size must be a positive integer or None, got {size!r}")

    path = fetch(spec.resource, data_dir, progress=progress, download=download)
    pixels, labels = spec.read(path, split)
    images = torch.from_numpy(pixels).unsqueeze(1).to(torch.float32)
    if not spec.binary:
        images /= 255.0
    if binarize == "static" and not spec.binary:
        images = binarize_static(images)
    dataset = ImageDataset(
        images, torch.from_numpy(labels), binarize=binarize, name=f"{name}/{split}"
    )
    if size is not None and size < len(dataset):
        dataset = dataset.subset(size, seed=size_seed)
    return dataset.to(device) if torch.device(device) != torch.device("cpu") else dataset
