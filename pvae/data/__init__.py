"""Datasets: checksum-verified files and in-memory image datasets with vectorized batches.

::

    from pvae.data import load_dataset
    train = load_dataset("mnist", "train")                 # dynamic binarization
    for x, y in train.batches(100, generator=torch.Generator().manual_seed(0)):
        ...

Names are imported on first use, so ``import pvae.data`` does not import torch.
"""

import importlib
from typing import Any

_EXPORTS = {
    "load_dataset": "pvae.data.datasets",
    "available_datasets": "pvae.data.datasets",
    "DATASETS": "pvae.data.datasets",
    "ImageDataset": "pvae.data.images",
    "DatasetSpec": "pvae.data.images",
    "register_dataset": "pvae.data.images",
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
