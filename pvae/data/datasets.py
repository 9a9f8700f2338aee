"""pvae's own datasets (:mod:`pvae.data.mnist`, :mod:`pvae.data.omniglot`), registered on import.

:func:`load_dataset`, :func:`available_datasets` and :data:`DATASETS` live in
:mod:`pvae.data.registry`; this module re-exports them for code that imports them from here.
"""

from __future__ import annotations

# Importing the dataset modules registers them in DATASETS.
from pvae.data import mnist, omniglot  # noqa: F401
from pvae.data.registry import DATASETS, available_datasets, load_dataset

__all__ = ["DATASETS", "available_datasets", "load_dataset"]
