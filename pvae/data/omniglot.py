"""Omniglot (Lake et al. 2015 [1]) at 28x28, from ``omniglot28.npz``.

The 105x105 drawings box-filtered to 28x28 grey levels (strokes bright). Splits follow the
dataset's own background/evaluation division (different alphabets):

- ``train``: background alphabets, drawers 1-19 of each of the 964 characters: 18316 images;
- ``valid``: background alphabets, drawer 20 of each character: 964 images;
- ``train+valid``: all background images: 19280;
- ``test``: the evaluation alphabets (659 characters x 20 drawers): 13180 images.

Labels are character indices (0..963 for background, 0..658 for evaluation: the two ranges name
different characters). Default binarization: dynamic for training splits, static for ``valid``
and ``test``. Note: this is *not* the split of the IWAE paper's ``chardata.mat`` [2]
(24345 / 8070 images), so numbers are not comparable with results reported on that file.

References:
    [1] B. M. Lake, R. Salakhutdinov, J. B. Tenenbaum. Human-level concept learning through
        probabilistic program induction. Science 2015. https://github.com/brendenlake/omniglot
    [2] Y. Burda, R. Grosse, R. Salakhutdinov. Importance Weighted Autoencoders. ICLR 2016.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pvae.data.images import image_spec
from pvae.data.registry import register_dataset

VALIDATION_DRAWER = 19  # zero-based: the 20th drawer of each background character


def read_omniglot(path: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """uint8 images (N, 28, 28) and int64 character labels of an Omniglot split."""
    part = "evaluation" if split == "test" else "background"
    with np.load(path) as arrays:
        images = arrays[f"x_{part}"]
        labels = arrays[f"character_{part}"].astype(np.int64)
        drawers = arrays[f"drawer_{part}"]
    if split in ("train", "valid"):
        keep = (drawers == VALIDATION_DRAWER) == (split == "valid")
        images, labels = images[keep], labels[keep]
    return images, labels


OMNIGLOT = register_dataset(
    image_spec(
        name="omniglot",
        resource="omniglot28.npz",
        splits=("train", "valid", "train+valid", "test"),
        read=read_omniglot,
        default_binarize={
            "train": "dynamic",
            "train+valid": "dynamic",
            "valid": "static",
            "test": "static",
        },
        description="Omniglot 28x28, background (train 18316 / valid 964) and evaluation (13180)",
    )
)
