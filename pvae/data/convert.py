"""Conversions from upstream dataset formats to pvae's prepared ``.npz`` files (numpy only).

- Larochelle's binarized MNIST ``.amat`` text files (one image a line, 784 values ``0``/``1``)
  to ``binarized_mnist.npz`` (rows packed with ``np.packbits(axis=1)``).
- Omniglot's ``images_{background,evaluation}.zip`` (105x105 1-bit PNGs,
  ``<alphabet>/<characterNN>/<id>_<drawer>.png``) to ``omniglot28.npz`` (28x28 uint8, strokes
  bright), with a small PNG decoder (:func:`decode_png`) and a box filter (:func:`box_resize`).
"""

from __future__ import annotations

import os
import struct
import zipfile
import zlib
from collections.abc import Mapping
from pathlib import Path, PurePosixPath

import numpy as np

__all__ = [
    "amat_to_npz",
    "box_resize",
    "decode_png",
    "omniglot_zips_to_npz",
    "read_amat",
]

MNIST_PIXELS = 784


def read_amat(path: str | os.PathLike, columns: int = MNIST_PIXELS) -> np.ndarray:
    """Read a whitespace-separated ``.amat`` matrix of 0/1 values as uint8 ``(rows, columns)``.

    The binarized-MNIST files hold single-character values, which are parsed from the raw bytes
    without tokenizing (fast for the 78 MB training file); other number formats fall back to
    ``np.loadtxt``.
    """
    raw = np.fromfile(path, dtype=np.uint8)
    characters = raw[raw > ord(" ")]  # drop spaces, tabs and newlines
    nonspace = raw > ord(" ")
    token_starts = np.count_nonzero(nonspace[1:] & ~nonspace[:-1]) + bool(nonspace[:1].any())
    single_digits = np.isin(characters, np.frombuffer(b"01", dtype=np.uint8)).all()
    if single_digits and characters.size == token_starts:
        values = characters - ord("0")
    else:
        values = np.loadtxt(path, dtype=np.float64, ndmin=2)
        if not np.isin(values, (0.0, 1.0)).all():
            raise ValueError(f"{path}: expected only 0/1 values in a binarized .amat file")
        values = values.astype(np.uint8)
    if values.size % columns:
        raise ValueError(f"{path}: {values.size} values is not a whole number of {columns}-rows")
    return values.reshape(-1, columns).astype(np.uint8)


def amat_to_npz(amat_paths: Mapping[str, str | os.PathLike], out: str | os.PathLike) -> None:
    """Convert ``{"train": path, "valid": path, "test": path}`` ``.amat`` files to one ``.npz``.

    Each split is stored as uint8 ``(N, 98)``: the 784 binary pixels of a row packed with
    ``np.packbits(axis=1)``; unpack with ``np.unpackbits(a, axis=1, count=784)``.
    """
    arrays = {split: np.packbits(read_amat(path), axis=1) for split, path in amat_paths.items()}
    with open(out, "wb") as handle:
        np.savez_compressed(handle, **arrays)


# ---------------------------------------------------------------------------------------------
# PNG decoding (greyscale and palette images, which is what Omniglot uses, plus 8-bit RGB(A)).

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}


def _unfilter(data: bytes, height: int, row_bytes: int, pixel_bytes: int) -> np.ndarray:
    """Undo the per-row PNG filters (None, Sub, Up, Average, Paeth)."""
    stride = row_bytes + 1
    if len(data) < height * stride:
        raise ValueError("PNG image data is truncated")
    rows = np.frombuffer(data, dtype=np.uint8)[: height * stride].reshape(height, stride)
    out = np.zeros((height, row_bytes), dtype=np.uint8)
    previous = np.zeros(row_bytes, dtype=np.int32)
    for y in range(height):
        kind, line = rows[y, 0], rows[y, 1:].astype(np.int32)
        if kind == 0:
            current = line
        elif kind == 2:
            current = (line + previous) & 0xFF
        elif kind in (1, 3, 4):
            # Sub, Average and Paeth depend on the reconstructed byte to the left: sequential.
            current = np.zeros(row_bytes, dtype=np.int32)
            for x in range(row_bytes):
                left = current[x - pixel_bytes] if x >= pixel_bytes else 0
                up = previous[x]
                if kind == 1:
                    predictor = left
                elif kind == 3:
                    predictor = (left + up) >> 1
                else:
                    up_left = previous[x - pixel_bytes] if x >= pixel_bytes else 0
                    estimate = left + up - up_left
                    distances = (abs(estimate - left), abs(estimate - up), abs(estimate - up_left))
                    predictor = (left, up, up_left)[distances.index(min(distances))]
                current[x] = (line[x] + predictor) & 0xFF
        else:
            raise ValueError(f"unknown PNG filter type {kind}")
        out[y] = current
        previous = current
    return out


def decode_png(data: bytes) -> np.ndarray:
    """Decode a non-interlaced PNG to a uint8 ``(H, W)`` greyscale array in 0..255.

    Bit depths 1, 2, 4 and 8 are scaled to 0..255 (a 1-bit white pixel is 255); palette images
    are mapped through their palette; colour images are averaged over RGB (alpha is dropped).
    """
    if not data.startswith(_PNG_SIGNATURE):
        raise ValueError("not a PNG file (bad signature)")
    position, idat, palette, header = len(_PNG_SIGNATURE), [], None, None
    while position + 8 <= len(data):
        (length,) = struct.unpack(">I", data[position : position + 4])
        kind = data[position + 4 : position + 8]
        body = data[position + 8 : position + 8 + length]
        position += 12 + length
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"PLTE":
            palette = np.frombuffer(body, dtype=np.uint8).reshape(-1, 3)
        elif kind == b"IDAT":
            idat.append(body)
        elif kind == b"IEND":
            break
    if header is None:
        raise ValueError("PNG without IHDR chunk")
    width, height, depth, colour, _, _, interlace = header
    if interlace or colour not in _CHANNELS or depth not in (1, 2, 4, 8):
        raise ValueError(f"unsupported PNG (colour type {colour}, depth {depth}, interlace)")
    channels = _CHANNELS[colour]
    row_bytes = (width * channels * depth + 7) // 8
    pixel_bytes = max(1, channels * depth // 8)
    rows = _unfilter(zlib.decompress(b"".join(idat)), height, row_bytes, pixel_bytes)
    if depth < 8:
        bits = np.unpackbits(rows, axis=1).reshape(height, -1, depth)
        weights = 1 << np.arange(depth - 1, -1, -1, dtype=np.uint8)
        samples = (bits * weights).sum(axis=2, dtype=np.uint8)[:, : width * channels]
    else:
        samples = rows
    samples = samples.reshape(height, width, channels)
    if colour == 3:
        if palette is None:
            raise ValueError("palette PNG without PLTE chunk")
        return palette[samples[..., 0]].mean(axis=2).round().astype(np.uint8)
    if depth < 8:
        samples = samples * np.uint8(255 // ((1 << depth) - 1))
    grey = samples[..., :1] if colour in (0, 4) else samples[..., :3]
    return grey.mean(axis=2).round().astype(np.uint8)


# ---------------------------------------------------------------------------------------------
# Box-filter resizing.


def _box_weights(in_size: int, out_size: int) -> np.ndarray:
    """``(out_size, in_size)`` weights of a box filter, as Pillow's ``Image.BOX`` defines it.

    Output pixel ``i`` covers input coordinates ``[i * s, (i + 1) * s)`` with ``s = in / out``;
    every input pixel whose centre lies in that window gets the same weight.
    """
    scale = in_size / out_size
    support = max(scale, 1.0)
    centres = (np.arange(in_size) + 0.5)[None, :]
    offsets = (centres - (np.arange(out_size)[:, None] + 0.5) * scale) / support
    weights = ((offsets > -0.5) & (offsets <= 0.5)).astype(np.float64)
    return weights / weights.sum(axis=1, keepdims=True)


def box_resize(images: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize uint8 ``(..., H, W)`` images to ``size`` with a box filter, rounding to uint8.

    Computed in float64 and rounded half to even; on Omniglot this equals the prepared
    ``omniglot28.npz`` except at exact ties (about 0.05% of pixels, off by one).
    """
    rows = _box_weights(images.shape[-2], size[0])
    cols = _box_weights(images.shape[-1], size[1])
    flat = images.reshape(-1, *images.shape[-2:])
    out = np.empty((flat.shape[0], *size), dtype=np.uint8)
    for start in range(0, flat.shape[0], 1024):  # bounded float64 memory
        resized = rows @ flat[start : start + 1024].astype(np.float64) @ cols.T
        out[start : start + 1024] = np.clip(np.rint(resized), 0, 255)
    return out.reshape(*images.shape[:-2], *size)


def _read_omniglot_zip(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Images (N, 105, 105) uint8 with strokes bright, character and drawer indices.

    Characters are numbered in sorted (alphabet, character folder) order; drawers from the
    ``_NN`` suffix of the file name (``NN - 1``).
    """
    with zipfile.ZipFile(path) as archive:
        names = [name for name in archive.namelist() if name.lower().endswith(".png")]
        entries = []
        for name in names:
            parts = PurePosixPath(name).parts
            if len(parts) < 3:
                raise ValueError(f"{path}: unexpected member {name!r}")
            alphabet, character, filename = parts[-3:]
            drawer = int(PurePosixPath(filename).stem.rsplit("_", 1)[-1]) - 1
            entries.append(((alphabet, character), drawer, name))
        entries.sort()
        characters = {key: index for index, key in enumerate(sorted({e[0] for e in entries}))}
        images = np.stack([255 - decode_png(archive.read(name)) for _, _, name in entries])
    character = np.array([characters[key] for key, _, _ in entries], dtype=np.int16)
    drawer = np.array([d for _, d, _ in entries], dtype=np.int8)
    return images, character, drawer


def omniglot_zips_to_npz(
    background_zip: str | os.PathLike, evaluation_zip: str | os.PathLike, out: str | os.PathLike
) -> None:
    """Convert Omniglot's PNG zips to ``omniglot28.npz`` (see :mod:`pvae.data.omniglot`)."""
    arrays = {}
    for split, path in (("background", background_zip), ("evaluation", evaluation_zip)):
        images, character, drawer = _read_omniglot_zip(path)
        arrays[f"x_{split}"] = box_resize(images, (28, 28))
        arrays[f"character_{split}"] = character
        arrays[f"drawer_{split}"] = drawer
    with open(Path(out), "wb") as handle:
        np.savez_compressed(handle, **arrays)
