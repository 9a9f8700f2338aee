import dataclasses
import gzip
import hashlib
import os
import socket
from pathlib import Path

import pytest
from conftest import Route

from pvae.data import download, load_dataset
from pvae.data.download import (
    ChecksumMismatchError,
    DatasetNotFoundError,
    IncompleteDownloadError,
    Resource,
    Source,
    fetch,
)
from pvae.data.text import read_lines

SHARED = Path(os.environ["PVAE_DATA_DIR"])


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def isolated(tmp_path, monkeypatch) -> Path:
    """No PVAE_DATA_DIR, no mirror, and a fresh working directory (so ./data is empty)."""
    monkeypatch.delenv("PVAE_DATA_DIR", raising=False)
    monkeypatch.delenv("PVAE_DATA_MIRROR", raising=False)
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    return work


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*")) if folder.exists() else []


def test_mirror_download_verified_against_pvae_checksum(http_server, isolated):
    body = (SHARED / "binarized_mnist.npz").read_bytes()  # 2.3 MB
    http_server.routes["/mirror/binarized_mnist.npz"] = Route(body)
    path = fetch("binarized_mnist.npz", mirror=http_server.url + "/mirror/", progress=False)
    assert path == isolated / "data" / "binarized_mnist.npz"
    assert download.sha256_file(path) == download.RESOURCES["binarized_mnist.npz"].sha256[0]
    assert leftovers(isolated / "data") == ["binarized_mnist.npz"]  # no temporary files
    # Found locally the second time: no new request.
    assert fetch("binarized_mnist.npz", mirror=http_server.url + "/mirror/") == path
    assert http_server.requests == ["/mirror/binarized_mnist.npz"]


def test_mirror_from_environment_variable(http_server, isolated, monkeypatch):
    http_server.routes["/binarized_mnist.npz"] = Route(
        (SHARED / "binarized_mnist.npz").read_bytes()
    )
    monkeypatch.setenv("PVAE_DATA_MIRROR", http_server.url)
    target = isolated / "elsewhere"
    assert fetch("binarized_mnist.npz", target, progress=False) == target / "binarized_mnist.npz"


def test_corrupt_download_rejected_and_removed(http_server, isolated):
    http_server.routes["/mnist.npz"] = Route(b"not the mnist file")
    with pytest.raises(ChecksumMismatchError) as error:
        fetch("mnist.npz", mirror=http_server.url, progress=False)
    message = str(error.value)
    assert sha256(b"not the mnist file") in message
    assert download.RESOURCES["mnist.npz"].sha256[0] in message
    assert leftovers(isolated / "data") == []


def test_truncated_download_rejected_and_removed(http_server, isolated):
    http_server.routes["/mnist.npz"] = Route(b"x" * 1000, declared_length=100_000)
    with pytest.raises(IncompleteDownloadError, match="1000 of 100000 bytes|stopped early"):
        fetch("mnist.npz", mirror=http_server.url, progress=False)
    assert leftovers(isolated / "data") == []


def test_http_404_is_a_clear_error(http_server, isolated):
    with pytest.raises(DatasetNotFoundError) as error:
        fetch("mnist.npz", mirror=http_server.url, progress=False)
    message = str(error.value)
    assert "404" in message and f"{http_server.url}/mnist.npz" in message
    assert leftovers(isolated / "data") == []


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_offline_message_names_file_folders_url_and_remedy(isolated, monkeypatch, tmp_path):
    env_dir = tmp_path / "env-data"
    env_dir.mkdir()
    monkeypatch.setenv("PVAE_DATA_DIR", str(env_dir))
    url = f"http://127.0.0.1:{closed_port()}"
    with pytest.raises(DatasetNotFoundError) as error:
        fetch("omniglot28.npz", mirror=url, progress=False, timeout=5)
    message = str(error.value)
    assert "\n" not in message
    for expected in (
        "omniglot28.npz",
        str(env_dir),
        str(isolated / "data"),
        f"{url}/omniglot28.npz",
        "PVAE_DATA_DIR",
        "./data",
    ):
        assert expected in message
    assert isinstance(error.value, FileNotFoundError)


def test_offline_canonical_sources_named(isolated, monkeypatch):
    # The canonical URLs, pointed at a closed port so the test never leaves the machine.
    url = f"http://127.0.0.1:{closed_port()}/mnist.npz"
    resource = Resource("mnist.npz", ("0" * 64,), (Source(url, "0" * 64, "mnist.npz"),))
    with pytest.raises(DatasetNotFoundError, match="network error") as error:
        fetch(resource, progress=False, timeout=5)
    assert url in str(error.value)


def test_download_false_raises_without_network(isolated):
    with pytest.raises(DatasetNotFoundError, match="download=False"):
        fetch("mnist.npz", download=False)


def make_resource(*contents: bytes) -> Resource:
    return Resource("toy.bin", tuple(sha256(c) for c in contents), ())


def test_lookup_order_env_before_cwd(isolated, monkeypatch, tmp_path):
    resource = make_resource(b"env copy", b"cwd copy")
    env_dir = tmp_path / "env-data"
    env_dir.mkdir()
    (env_dir / "toy.bin").write_bytes(b"env copy")
    (isolated / "data").mkdir()
    (isolated / "data" / "toy.bin").write_bytes(b"cwd copy")
    monkeypatch.setenv("PVAE_DATA_DIR", str(env_dir))
    assert fetch(resource) == env_dir / "toy.bin"
    explicit = tmp_path / "explicit"
    explicit.mkdir()
    (explicit / "toy.bin").write_bytes(b"cwd copy")
    assert fetch(resource, explicit) == explicit / "toy.bin"  # an explicit folder comes first
    monkeypatch.delenv("PVAE_DATA_DIR")
    assert fetch(resource).resolve() == (isolated / "data" / "toy.bin").resolve()


def test_local_file_verified_once_then_cached(isolated, monkeypatch):
    resource = make_resource(b"good")
    (isolated / "data").mkdir()
    path = isolated / "data" / "toy.bin"
    path.write_bytes(b"good")
    fetch(resource)
    stamps = list(Path(os.environ["PVAE_CACHE_DIR"]).rglob("*.sha256ok"))
    assert len(stamps) == 1
    # A new process (empty memo) trusts the stamp: hashing must not happen again.
    monkeypatch.setattr(download, "_VERIFIED", {})
    monkeypatch.setattr(download, "sha256_file", lambda p: pytest.fail("rehashed"))
    assert fetch(resource) == path
    monkeypatch.undo()


def test_local_file_changed_after_stamp_is_rechecked(isolated, monkeypatch):
    resource = make_resource(b"good")
    (isolated / "data").mkdir()
    path = isolated / "data" / "toy.bin"
    path.write_bytes(b"good")
    fetch(resource)
    path.write_bytes(b"bad!")  # same size, new mtime
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10**9))
    with pytest.raises(ChecksumMismatchError, match=sha256(b"bad!")) as error:
        fetch(resource)
    assert "delete it" in str(error.value)


def test_canonical_sources_converted_atomically(http_server, isolated):
    parts = [b"first part\n", b"second part\n"]
    for index, part in enumerate(parts):
        http_server.routes[f"/raw{index}"] = Route(part)

    def concatenate(raw, out):
        out.write_bytes(b"".join(p.read_bytes() for p in raw))

    resource = Resource(
        "joined.txt",
        ("f" * 64,),  # the mirror's file would differ: the converted one gets a sidecar digest
        tuple(
            Source(f"{http_server.url}/raw{i}", sha256(p), f"raw{i}") for i, p in enumerate(parts)
        ),
        convert=concatenate,
    )
    path = fetch(resource, progress=False)
    assert path.read_bytes() == b"".join(parts)
    assert leftovers(isolated / "data") == ["joined.txt", "joined.txt.sha256"]
    download._VERIFIED.clear()
    assert fetch(resource) == path  # verified against the digest recorded at conversion


def test_canonical_source_with_wrong_checksum_leaves_nothing(http_server, isolated):
    http_server.routes["/raw"] = Route(b"tampered")
    resource = Resource(
        "joined.txt",
        ("f" * 64,),
        (Source(f"{http_server.url}/raw", sha256(b"original"), "raw"),),
        convert=lambda raw, out: out.write_bytes(raw[0].read_bytes()),
    )
    with pytest.raises(ChecksumMismatchError):
        fetch(resource, progress=False)
    assert leftovers(isolated / "data") == []


def test_unknown_resource_name():
    with pytest.raises(ValueError, match="mnist.npz"):
        fetch("cifar.npz")


def test_checksum_table_matches_shared_sums():
    """pvae's table agrees with the SHA256SUMS shipped next to the prepared files."""
    sums = dict(reversed(line.split()) for line in (SHARED / "SHA256SUMS").read_text().splitlines())
    for name, resource in download.RESOURCES.items():
        assert resource.sha256[0] == sums[f"./{name}"]


# -- text resources: raw upstream text, gzipped by pvae -----------------------------------------

TEXT = "ptb/ptb.valid.txt.gz"


def files_under(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def upstream_text() -> bytes:
    """The upstream text of ``TEXT``: pvae's gzipped file, unzipped."""
    return gzip.decompress((SHARED / TEXT).read_bytes())


def serve_upstream_text(http_server, monkeypatch, body: bytes) -> None:
    """Serves ``body`` as the upstream text of ``TEXT``, its Source url pointed at the local
    server (the digest stays the real one)."""
    resource = download.RESOURCES[TEXT]
    (source,) = resource.sources
    assert source.url.endswith("/ptb.valid.txt") and source.sha256 == sha256(upstream_text())
    http_server.routes["/upstream/ptb.valid.txt"] = Route(body)
    local = dataclasses.replace(source, url=f"{http_server.url}/upstream/ptb.valid.txt")
    monkeypatch.setitem(download.RESOURCES, TEXT, dataclasses.replace(resource, sources=(local,)))


def test_text_resource_downloads_raw_text_and_gzips_it(http_server, isolated, monkeypatch):
    raw = upstream_text()
    serve_upstream_text(http_server, monkeypatch, raw)
    path = fetch(TEXT, progress=False)
    assert path == isolated / "data" / "ptb" / "ptb.valid.txt.gz"
    assert gzip.decompress(path.read_bytes()) == raw
    assert read_lines(path)[:1] == [
        " consumers may want to move their telephones a little closer to the tv set "
    ]
    # No temporary files; the converted file's digest is recorded beside it.
    assert files_under(isolated / "data") == [
        "ptb/ptb.valid.txt.gz",
        "ptb/ptb.valid.txt.gz.sha256",
    ]
    assert (path.parent / "ptb.valid.txt.gz.sha256").read_text().split()[0] == sha256(
        path.read_bytes()
    )
    # Verifiable later (a new process), and found without a new request.
    download._VERIFIED.clear()
    assert fetch(TEXT, download=False) == path
    assert http_server.requests == ["/upstream/ptb.valid.txt"]
    # The gzipping is deterministic: a second download elsewhere gives the same bytes.
    elsewhere = isolated / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    again = fetch(TEXT, progress=False)
    assert again == elsewhere / "data" / TEXT and again.read_bytes() == path.read_bytes()
    assert len(http_server.requests) == 2


def test_corrupt_upstream_text_raises_and_leaves_nothing(http_server, isolated, monkeypatch):
    corrupted = upstream_text().replace(b" the ", b" a ", 1)
    serve_upstream_text(http_server, monkeypatch, corrupted)
    with pytest.raises(ChecksumMismatchError, match=sha256(corrupted)):
        fetch(TEXT, progress=False)
    assert files_under(isolated / "data") == []


def test_text_resource_from_a_mirror_by_its_subfolder(http_server, isolated):
    body = (SHARED / TEXT).read_bytes()
    http_server.routes["/mirror/ptb/ptb.valid.txt.gz"] = Route(body)
    path = fetch(TEXT, mirror=http_server.url + "/mirror", progress=False)
    assert path == isolated / "data" / "ptb" / "ptb.valid.txt.gz"
    assert download.sha256_file(path) == download.RESOURCES[TEXT].sha256[0]
    assert files_under(isolated / "data") == ["ptb/ptb.valid.txt.gz"]
    assert http_server.requests == ["/mirror/ptb/ptb.valid.txt.gz"]


def test_labelled_corpus_loads_from_a_mirror(http_server, isolated, monkeypatch):
    """End to end: load_dataset fetches SST-2's three files from $PVAE_DATA_MIRROR."""
    for part in ("train", "dev", "test"):
        name = f"text/stsa.binary.{part}.gz"
        http_server.routes[f"/{name}"] = Route((SHARED / name).read_bytes())
    monkeypatch.setenv("PVAE_DATA_MIRROR", http_server.url)
    valid = load_dataset("sst2", "valid", progress=False)
    assert len(valid) == 872 and valid.num_classes == 2
    assert files_under(isolated / "data") == [
        "text/stsa.binary.dev.gz",
        "text/stsa.binary.test.gz",
        "text/stsa.binary.train.gz",
    ]
