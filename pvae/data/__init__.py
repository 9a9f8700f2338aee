"""Datasets of every modality: a registry, checksum-verified files, in-memory datasets.

::

    from pvae.data import load_dataset
    train = load_dataset("mnist", "train")                 # dynamic binarization
    train.model_options()                                  # input_shape, data_mean
    for x, y in train.batches(100, generator=torch.Generator().manual_seed(0)):
        ...

What every dataset provides is :class:`pvae.data.registry.Dataset`; a modality registers its
datasets with :func:`register_dataset` (images: :mod:`pvae.data.images`). Semi-supervised
streams of any labelled dataset: :mod:`pvae.data.semisupervised`.

Names are imported on first use, so ``import pvae.data`` does not import torch.
"""

import importlib
from typing import Any

_EXPORTS = {
    "Dataset": "pvae.data.registry",
    "DatasetSpec": "pvae.data.registry",
    "register_dataset": "pvae.data.registry",
    "load_dataset": "pvae.data.registry",
    "available_datasets": "pvae.data.registry",
    "DATASETS": "pvae.data.datasets",  # imports pvae's own datasets, so the dict is complete
    "UNLABELLED": "pvae.data.registry",
    "ImageDataset": "pvae.data.images",
    "ImageLoader": "pvae.data.images",
    "image_spec": "pvae.data.images",
    "IndexedDataset": "pvae.data.indexed",
    "SetDataset": "pvae.data.sets",
    "Episode": "pvae.data.sets",
    "SemiSupervisedData": "pvae.data.semisupervised",
    "fetch": "pvae.data.download",
    "RESOURCES": "pvae.data.download",
    "Resource": "pvae.data.download",
    "Source": "pvae.data.download",
    "DatasetNotFoundError": "pvae.data.download",
    "DataIntegrityError": "pvae.data.download",
    "ChecksumMismatchError": "pvae.data.download",
    "IncompleteDownloadError": "pvae.data.download",
}


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'pvae.data' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])


__all__ = list(_EXPORTS)
