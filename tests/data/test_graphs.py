"""Graph datasets: the Planetoid reader (numpy only), Kipf & Welling's link-prediction split
(no held-out edge leaks into the training graph), the dataset protocol for one graph, and
the checksum-verified download of the Planetoid files."""

from __future__ import annotations

import dataclasses
import os
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import Route

from pvae.data import download, load_dataset
from pvae.data.download import ChecksumMismatchError, Source, fetch
from pvae.data.graphs import GraphDataset, link_split, undirected_edges
from pvae.data.planetoid import PLANETOID_PARTS, read_planetoid
from pvae.data.registry import Dataset

SHARED = Path(os.environ["PVAE_DATA_DIR"])


def planetoid_paths(name: str) -> tuple[Path, ...]:
    return tuple(SHARED / "planetoid" / f"ind.{name}.{part}" for part in PLANETOID_PARTS)


def codes(pairs, num_nodes: int) -> set[int]:
    pairs = np.asarray(pairs).reshape(-1, 2)
    return set((pairs.min(1) * num_nodes + pairs.max(1)).tolist())


@pytest.mark.parametrize(
    "name, nodes, features, edges, classes, unlabelled",
    [("cora", 2708, 1433, 5278, 7, 0), ("citeseer", 3327, 3703, 4552, 6, 15)],
)
def test_planetoid_graphs_as_kipf_loads_them(name, nodes, features, edges, classes, unlabelled):
    read_planetoid.cache_clear()
    graph = read_planetoid(planetoid_paths(name))
    assert graph.features.shape == (nodes, features)
    assert set(np.unique(graph.features)) <= {0.0, 1.0}
    assert graph.edges.shape == (edges, 2)  # undirected, no self-loops, no duplicates
    assert (graph.edges[:, 0] < graph.edges[:, 1]).all()
    assert len(codes(graph.edges, nodes)) == edges
    assert set(np.unique(graph.labels)) == set(range(classes)) | ({-1} if unlabelled else set())
    assert (graph.labels == -1).sum() == unlabelled
    # Citeseer's test nodes missing from tx have neither features nor a label.
    assert (graph.features[graph.labels == -1].sum(1) == 0).all()


def test_planetoid_reader_needs_no_scipy(monkeypatch):
    read_planetoid.cache_clear()
    monkeypatch.setitem(sys.modules, "scipy", None)  # any import of scipy now fails
    monkeypatch.setitem(sys.modules, "scipy.sparse", None)
    graph = read_planetoid(planetoid_paths("cora"))
    assert graph.features.sum() == 49216  # Cora's non-zero bag-of-words entries
    read_planetoid.cache_clear()


def test_split_never_leaks_a_held_out_edge_into_the_training_graph():
    for name in ("cora", "citeseer"):
        test, valid = load_dataset(name, "test"), load_dataset(name, "valid")
        graph = read_planetoid(planetoid_paths(name))
        n = test.num_nodes
        all_edges, train = codes(graph.edges, n), codes(test.edges.numpy(), n)
        held_out_test, held_out_valid = codes(test.positive, n), codes(valid.positive, n)
        assert len(held_out_test) == len(graph.edges) // 10
        assert len(held_out_valid) == len(graph.edges) // 20
        # Every edge is in exactly one of the three parts; the training graph holds no other.
        assert not train & held_out_test and not train & held_out_valid
        assert not held_out_test & held_out_valid
        assert train | held_out_test | held_out_valid == all_edges
        # The model's input (the batch's edges) is the training graph, in every split.
        for data in (test, valid, load_dataset(name, "train")):
            _, edges, _ = next(iter(data.batches(1)))
            assert codes(edges[0].T.numpy(), n) == train
        # Non-edges: as many as edges, distinct, no edge of the full graph, valid/test disjoint.
        test_negative, valid_negative = codes(test.negative, n), codes(valid.negative, n)
        assert len(test_negative) == len(test.negative) == len(test.positive)
        assert len(valid_negative) == len(valid.negative) == len(valid.positive)
        assert not (test_negative | valid_negative) & all_edges
        assert not test_negative & valid_negative
        assert (test.negative[:, 0] != test.negative[:, 1]).all()


def test_split_is_drawn_by_its_seed():
    rng = np.random.default_rng(0)
    edges = undirected_edges(rng.integers(0, 200, size=(1500, 2)), 200)
    first, again, other = (
        link_split(edges, 200, 3),
        link_split(edges, 200, 3),
        link_split(edges, 200, 4),
    )
    for a, b in zip(first, again, strict=True):
        np.testing.assert_array_equal(a, b)
    assert codes(first.test, 200) != codes(other.test, 200)
    assert codes(first.test_negative, 200) != codes(other.test_negative, 200)
    assert sum(len(part) for part in (first.train, first.valid, first.test)) == len(edges)
    a = load_dataset("cora", "test", split_seed=1)
    b = load_dataset("cora", "test")
    assert codes(a.positive, a.num_nodes) != codes(b.positive, b.num_nodes)


def test_split_refuses_a_graph_too_dense_for_its_non_edges():
    complete = np.array([(i, j) for i in range(6) for j in range(i + 1, 6)])
    with pytest.raises(ValueError, match="too dense"):
        link_split(complete, 6)


def test_one_graph_is_one_unit_of_the_dataset_protocol():
    data = load_dataset("cora", "valid")
    assert isinstance(data, Dataset) and len(data) == 1
    batches = list(data.batches(128, generator=torch.Generator().manual_seed(0)))
    assert len(batches) == 1
    features, edges, labels = batches[0]
    assert features.shape == (1, 2708, 1433) and features.dtype == torch.float32
    assert edges.shape == (1, 2, len(data.edges)) and edges.dtype == torch.int64
    assert labels.shape == (1, 2708)
    assert data.model_options() == {"num_nodes": 2708, "num_features": 1433}
    assert data.subset(1) is data and load_dataset("cora", "train", size=64).num_nodes == 2708
    with pytest.raises(ValueError, match="one unit"):
        data.subset([0, 0])
    # Sharded over two ranks, the one graph goes to one of them (shard_positions' share).
    shares = [len(list(data.batches(1, shard=(rank, 2)))) for rank in range(2)]
    assert sorted(shares) == [0, 1]
    assert data.to("cpu").held_out()[0].equal(data.positive)
    with pytest.raises(ValueError, match="no held-out pairs"):
        load_dataset("cora", "train").held_out()


def test_featureless_variant():
    data = load_dataset("citeseer", "test", features=False)
    assert data.model_options() == {"num_nodes": 3327, "num_features": 0}
    assert next(iter(data.batches(1)))[0].shape == (1, 3327, 0)
    with pytest.raises(ValueError, match="features must be true or false"):
        load_dataset("cora", "test", features="no")


def test_a_torch_geometric_data_object_is_accepted_duck_typed():
    edge_index = torch.tensor([[0, 1, 1, 2, 3], [1, 0, 2, 1, 3]])  # both directions, a self-loop
    data = SimpleNamespace(
        x=torch.ones(4, 3), edge_index=edge_index, y=torch.arange(4), num_nodes=4
    )
    graph = GraphDataset.from_data(data, name="pyg")
    assert graph.edges.tolist() == [[0, 1], [1, 2]]
    assert graph.labels.tolist() == [0, 1, 2, 3] and graph.num_features == 3
    featureless = GraphDataset.from_data(SimpleNamespace(edge_index=edge_index, num_nodes=5))
    assert featureless.model_options() == {"num_nodes": 5, "num_features": 0}


# -- the download of the Planetoid files ---------------------------------------------------------


@pytest.fixture
def isolated(tmp_path, monkeypatch) -> Path:
    monkeypatch.delenv("PVAE_DATA_DIR", raising=False)
    monkeypatch.delenv("PVAE_DATA_MIRROR", raising=False)
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    return work


def test_planetoid_files_download_verified(http_server, isolated, monkeypatch):
    name = "planetoid/ind.cora.graph"
    body = (SHARED / name).read_bytes()
    http_server.routes["/gcn/ind.cora.graph"] = Route(body)
    resource = download.RESOURCES[name]
    assert resource.sha256[0] == resource.sources[0].sha256  # used as is, no conversion
    local = Source(
        http_server.url + "/gcn/ind.cora.graph", resource.sources[0].sha256, "ind.cora.graph"
    )
    monkeypatch.setitem(download.RESOURCES, name, dataclasses.replace(resource, sources=(local,)))
    path = fetch(name, progress=False)
    assert path == isolated / "data" / name and path.read_bytes() == body
    # A changed upstream file is refused and nothing is left behind.
    http_server.routes["/gcn/ind.cora.graph"] = Route(body[:-1] + b"!")
    path.unlink()
    with pytest.raises(ChecksumMismatchError):
        fetch(name, progress=False)
    assert not path.exists()
