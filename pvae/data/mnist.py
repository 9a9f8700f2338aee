"""MNIST (grey levels, LeCun et al. 1998) and binarized MNIST (Larochelle & Murray 2011).

``"mnist"``: ``mnist.npz`` (the Keras file's keys: ``x_train`` (60000, 28, 28) uint8,
``y_train``, ``x_test`` (10000, 28, 28), ``y_test``). Splits: ``train`` = the first 50000
training images, ``valid`` = the last 10000, ``train+valid`` = all 60000, ``test`` = 10000.
Default binarization: dynamic for ``train``/``train+valid``, static for ``valid``/``test``.

``"binarized_mnist"``: Larochelle's fixed binarization [2] used by the IWAE paper [3],
50000 / 10000 / 10000 (``train``, ``valid``, ``test``, ``train+valid``), no labels (``-1``);
already binary, so the default is ``"static"`` (the file's own binarization). Its ``test`` rows
come sorted by digit: shuffle or take a seeded random subset before looking at a few.

References:
    [1] Y. LeCun, L. Bottou, Y. Bengio, P. Haffner. Gradient-based learning applied to document
        recognition. Proc. IEEE 1998. http://yann.lecun.com/exdb/mnist/
    [2] H. Larochelle, I. Murray. The Neural Autoregressive Distribution Estimator. AISTATS 2011.
    [3] Y. Burda, R. Grosse, R. Salakhutdinov. Importance Weighted Autoencoders. ICLR 2016.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pvae.data.images import image_spec
from pvae.data.registry import register_dataset

_MNIST_SPLITS = {
    "train": ("train", slice(0, 50000)),
    "valid": ("train", slice(50000, 60000)),
    "train+valid": ("train", slice(0, 60000)),
    "test": ("test", slice(0, 10000)),
}


def read_mnist(path: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """uint8 images (N, 28, 28) and int64 labels of an MNIST split."""
    part, rows = _MNIST_SPLITS[split]
    with np.load(path) as arrays:
        images = arrays[f"x_{part}"][rows]
        labels = arrays[f"y_{part}"][rows].astype(np.int64)
    return images, labels


def read_binarized_mnist(path: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """0/1 uint8 images (N, 28, 28) of a binarized-MNIST split; labels all -1."""
    parts = ("train", "valid") if split == "train+valid" else (split,)
    with np.load(path) as arrays:
        packed = np.concatenate([arrays[part] for part in parts])
    images = np.unpackbits(packed, axis=1, count=784).reshape(-1, 28, 28)
    return images, np.full(images.shape[0], -1, dtype=np.int64)


MNIST = register_dataset(
    image_spec(
        name="mnist",
        resource="mnist.npz",
        splits=tuple(_MNIST_SPLITS),
        read=read_mnist,
        default_binarize={
            "train": "dynamic",
            "train+valid": "dynamic",
            "valid": "static",
            "test": "static",
        },
        description="MNIST grey levels, 50000/10000/10000, labels 0..9",
    )
)

BINARIZED_MNIST = register_dataset(
    image_spec(
        name="binarized_mnist",
        resource="binarized_mnist.npz",
        splits=("train", "valid", "train+valid", "test"),
        read=read_binarized_mnist,
        default_binarize=dict.fromkeys(("train", "valid", "train+valid", "test"), "static"),
        binary=True,
        description="Larochelle's fixed binarization of MNIST, 50000/10000/10000, no labels",
    )
)
