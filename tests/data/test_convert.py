import io
import os
import struct
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest

from pvae.data.convert import (
    amat_to_npz,
    box_resize,
    decode_png,
    omniglot_zips_to_npz,
    read_amat,
)

SHARED = Path(os.environ["PVAE_DATA_DIR"])


def test_read_amat_fast_path_and_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    matrix = (rng.random((7, 784)) < 0.3).astype(np.uint8)
    path = tmp_path / "x.amat"
    path.write_text("".join(" ".join(map(str, row)) + "\n" for row in matrix))
    np.testing.assert_array_equal(read_amat(path), matrix)
    out = tmp_path / "b.npz"
    amat_to_npz({"train": path, "valid": path, "test": path}, out)
    with np.load(out) as arrays:
        assert arrays["train"].shape == (7, 98) and arrays["train"].dtype == np.uint8
        np.testing.assert_array_equal(np.unpackbits(arrays["test"], axis=1, count=784), matrix)


def test_read_amat_float_format_and_bad_values(tmp_path):
    matrix = np.eye(4, 784, dtype=np.uint8)
    path = tmp_path / "x.amat"
    np.savetxt(path, matrix.astype(float), fmt="%.18e")
    np.testing.assert_array_equal(read_amat(path), matrix)
    np.savetxt(path, matrix * 0.5)
    with pytest.raises(ValueError, match="0/1"):
        read_amat(path)


# A tiny PNG encoder for the tests: greyscale, any filter type per row, optional low bit depth.


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def _filter_row(kind: int, row: np.ndarray, previous: np.ndarray, bpp: int) -> bytes:
    row, previous = row.astype(np.int32), previous.astype(np.int32)
    left = np.concatenate([np.zeros(bpp, np.int32), row[:-bpp]])
    up_left = np.concatenate([np.zeros(bpp, np.int32), previous[:-bpp]])
    if kind == 0:
        predictor = np.zeros_like(row)
    elif kind == 1:
        predictor = left
    elif kind == 2:
        predictor = previous
    elif kind == 3:
        predictor = (left + previous) >> 1
    else:
        estimate = left + previous - up_left
        distances = np.stack(
            [abs(estimate - left), abs(estimate - previous), abs(estimate - up_left)]
        )
        predictor = np.choose(np.argmin(distances, axis=0), [left, previous, up_left])
    return bytes([kind]) + ((row - predictor) & 0xFF).astype(np.uint8).tobytes()


def encode_png(image: np.ndarray, depth: int = 8, filters=(0, 1, 2, 3, 4)) -> bytes:
    height, width = image.shape
    if depth == 8:
        rows = image.astype(np.uint8)
    else:  # image holds sample values 0..2**depth-1
        bits = (image[..., None] >> np.arange(depth - 1, -1, -1)) & 1
        rows = np.packbits(bits.reshape(height, -1).astype(np.uint8), axis=1)
    previous = np.zeros(rows.shape[1], np.uint8)
    raw = b""
    for y, row in enumerate(rows):
        raw += _filter_row(filters[y % len(filters)], row, previous, 1)
        previous = row
    header = struct.pack(">IIBBBBB", width, height, depth, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", header)
        + _chunk(b"IDAT", zlib.compress(raw))
        + _chunk(b"IEND", b"")
    )


def test_decode_png_all_filter_types_8bit():
    image = np.random.default_rng(1).integers(0, 256, size=(10, 13), dtype=np.uint8)
    np.testing.assert_array_equal(decode_png(encode_png(image)), image)


@pytest.mark.parametrize("depth", [1, 2, 4])
def test_decode_png_low_bit_depth_scaled_to_255(depth):
    levels = 2**depth
    image = np.random.default_rng(depth).integers(0, levels, size=(9, 11))
    decoded = decode_png(encode_png(image, depth=depth))
    np.testing.assert_array_equal(decoded, image * (255 // (levels - 1)))


def test_decode_png_rejects_non_png():
    with pytest.raises(ValueError, match="PNG"):
        decode_png(b"GIF89a")


def test_box_resize_block_means_and_constants():
    image = np.arange(16, dtype=np.uint8).reshape(4, 4) * 10
    expected = image.reshape(2, 2, 2, 2).mean(axis=(1, 3))
    np.testing.assert_array_equal(box_resize(image, (2, 2)), np.rint(expected))
    constant = np.full((3, 105, 105), 77, dtype=np.uint8)
    assert (box_resize(constant, (28, 28)) == 77).all()


def test_box_resize_reproduces_prepared_omniglot28():
    """The numpy filter against the prepared file, on the first 10 background characters."""
    with np.load(SHARED / "omniglot_images_background.npz") as big:
        strokes = 255 * (~big["images"][:10]).reshape(-1, 105, 105).astype(np.uint8)
    with np.load(SHARED / "omniglot28.npz") as small:
        reference = small["x_background"][:200]
    ours = box_resize(strokes, (28, 28))
    difference = np.abs(ours.astype(int) - reference)
    assert difference.max() <= 1  # rounding of exact ties (x.5) only
    assert (difference == 0).mean() > 0.999


def test_omniglot_zips_to_npz_on_synthetic_zips(tmp_path):
    rng = np.random.default_rng(2)
    made = {}
    for split in ("background", "evaluation"):
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w") as archive:
            for alphabet in ("Beta", "Alpha"):
                for character in ("character02", "character01"):
                    for drawer in (3, 1, 2):
                        ink = rng.random((105, 105)) < 0.1
                        white = (~ink).astype(np.uint8)  # 1-bit PNG: 1 = white background
                        name = f"images_{split}/{alphabet}/{character}/0001_{drawer:02d}.png"
                        archive.writestr(name, encode_png(white, depth=1, filters=(0,)))
                        made[split, alphabet, character, drawer] = ink
        (tmp_path / f"{split}.zip").write_bytes(buffer.getvalue())
    out = tmp_path / "omniglot28.npz"
    omniglot_zips_to_npz(tmp_path / "background.zip", tmp_path / "evaluation.zip", out)
    with np.load(out) as arrays:
        assert arrays["x_background"].shape == (12, 28, 28)
        assert arrays["x_background"].dtype == np.uint8
        np.testing.assert_array_equal(arrays["character_evaluation"], np.repeat(np.arange(4), 3))
        np.testing.assert_array_equal(arrays["drawer_background"], np.tile([0, 1, 2], 4))
        # Sorted order: Alpha/character01 first, drawer 1 first; strokes bright.
        first = made["background", "Alpha", "character01", 1].astype(np.uint8) * 255
        np.testing.assert_array_equal(arrays["x_background"][0], box_resize(first, (28, 28)))
