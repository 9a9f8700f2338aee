"""Cora and Citeseer (Planetoid [1]) as graphs for link prediction [2].

The Planetoid files (``planetoid/ind.<name>.{x,y,tx,ty,allx,ally,graph,test.index}``, as in
tkipf/gcn) are Python pickles of scipy sparse matrices, numpy arrays and a dict of adjacency
lists; :func:`read_planetoid` reads them with numpy alone (an unpickler that takes a CSR
matrix's arrays without importing scipy) and assembles them as Kipf's ``load_data`` does:
features ``vstack(allx, tx)`` with the test rows put back at their node indices (Citeseer's
15 isolated test nodes, absent from ``tx``, get zero features and no label), the adjacency
from ``graph``.

Registered datasets, each one graph (:class:`~pvae.data.graphs.GraphDataset`):

- ``"cora"``: 2708 nodes, 1433 binary features, 7 classes, 5278 undirected edges;
- ``"citeseer"``: 3327 nodes, 3703 binary features, 6 classes, 4552 undirected edges.

Splits ``train`` / ``valid`` / ``test`` are Kipf & Welling's link-prediction split
(:func:`pvae.data.graphs.link_split`: 85 / 5 / 10 % of the edges, with as many non-edges for
``valid`` and ``test``): every split is the same training graph, ``valid`` and ``test`` add
their held-out pairs. Options: ``split_seed=`` (default 0) draws the split; ``features=False``
gives the featureless variant (``F = 0``: the model learns one vector per node).

References:
    [1] Z. Yang, W. W. Cohen, R. Salakhutdinov. Revisiting Semi-Supervised Learning with Graph
        Embeddings. ICML 2016. https://github.com/kimiyoung/planetoid
    [2] T. N. Kipf, M. Welling. Variational Graph Auto-Encoders. NIPS Workshop on Bayesian
        Deep Learning, 2016. https://arxiv.org/abs/1611.07308
"""

from __future__ import annotations

import functools
import pickle
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from pvae.data.download import RESOURCES
from pvae.data.graphs import LINK_SPLITS, GraphDataset, link_split, undirected_edges
from pvae.data.registry import UNLABELLED, DatasetSpec, register_dataset

__all__ = ["PLANETOID_PARTS", "Planetoid", "build_planetoid", "read_planetoid"]

PLANETOID_PARTS = ("x", "y", "tx", "ty", "allx", "ally", "graph", "test.index")
"""The Planetoid files of a dataset, in the order its resources are listed."""


class Planetoid(NamedTuple):
    """A Planetoid graph: ``features`` float32 ``(N, F)``, ``labels`` int64 ``(N,)`` (``-1``:
    none), ``edges`` int64 ``(E, 2)`` undirected (``i < j``, no self-loops)."""

    features: np.ndarray
    labels: np.ndarray
    edges: np.ndarray


class _CSRMatrix:
    """What a pickled ``scipy.sparse.csr_matrix`` holds (its ``__dict__``), without scipy."""

    def dense(self) -> np.ndarray:
        rows, columns = self.__dict__["_shape"]
        indptr, indices = self.__dict__["indptr"], self.__dict__["indices"]
        out = np.zeros((rows, columns), dtype=np.float32)
        row_of = np.repeat(np.arange(rows), np.diff(indptr))
        out[row_of, indices] = self.__dict__["data"]
        return out


class _NumpyUnpickler(pickle.Unpickler):
    """Unpickles Planetoid's files with numpy only: scipy's CSR class becomes
    :class:`_CSRMatrix`; numpy's pre-2.0 module paths map to numpy's own."""

    def find_class(self, module: str, name: str) -> Any:
        if module.startswith("scipy.sparse") and name == "csr_matrix":
            return _CSRMatrix
        if module.startswith("numpy.core"):
            module = "numpy._core" + module[len("numpy.core") :]
        if module.split(".")[0] not in (
            "numpy",
            "collections",
            "builtins",
            "__builtin__",
            "copyreg",
        ):
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a Planetoid file")
        return super().find_class(module, name)


def _load(path: Path) -> Any:
    with open(path, "rb") as handle:
        return _NumpyUnpickler(handle, encoding="latin1").load()


def _dense(value: Any) -> np.ndarray:
    return value.dense() if isinstance(value, _CSRMatrix) else np.asarray(value, dtype=np.float32)


@functools.lru_cache(maxsize=4)
def read_planetoid(paths: Sequence[Path]) -> Planetoid:
    """The graph in the Planetoid files ``paths`` (in :data:`PLANETOID_PARTS` order), as Kipf's
    ``load_data`` assembles it (see the module docstring). Cached per process (the three
    splits of a run read it once)."""
    parts = dict(zip(PLANETOID_PARTS, paths, strict=True))
    test_index = np.loadtxt(parts["test.index"], dtype=np.int64, ndmin=1)
    test_sorted = np.sort(test_index)
    allx, tx = _dense(_load(parts["allx"])), _dense(_load(parts["tx"]))
    ally, ty = _dense(_load(parts["ally"])), _dense(_load(parts["ty"]))
    # Citeseer: test nodes without features are missing from tx; give them zero rows.
    full = np.arange(test_sorted.min(), test_sorted.max() + 1)
    tx_full = np.zeros((len(full), tx.shape[1]), dtype=np.float32)
    ty_full = np.zeros((len(full), ty.shape[1]), dtype=np.float32)
    tx_full[test_sorted - test_sorted.min()] = tx
    ty_full[test_sorted - test_sorted.min()] = ty
    features = np.concatenate([allx, tx_full])
    onehot = np.concatenate([ally, ty_full])
    features[test_index] = features[test_sorted]
    onehot[test_index] = onehot[test_sorted]
    labels = np.where(onehot.sum(1) > 0, onehot.argmax(1), UNLABELLED).astype(np.int64)
    graph = _load(parts["graph"])
    pairs = np.array(
        [(node, neighbour) for node, neighbours in graph.items() for neighbour in neighbours],
        dtype=np.int64,
    )
    num_nodes = max(len(features), int(pairs.max()) + 1)
    if num_nodes != len(features):
        raise ValueError(f"the graph has {num_nodes} nodes but {len(features)} feature rows")
    return Planetoid(features, labels, undirected_edges(pairs, num_nodes))


def build_planetoid(
    paths: tuple[Path, ...], split: str, *, split_seed: int = 0, features: bool = True
) -> GraphDataset:
    """One split of a Planetoid link-prediction dataset (see the module docstring)."""
    if isinstance(split_seed, bool) or not isinstance(split_seed, int):
        raise ValueError(f"split_seed must be an integer, got {split_seed!r}")
    if not isinstance(features, bool):
        raise ValueError(f"features must be true or false, got {features!r}")
    graph = read_planetoid(tuple(paths))
    num_nodes = len(graph.features)
    split_edges = link_split(graph.edges, num_nodes, split_seed)
    held_out = {
        "train": (None, None),
        "valid": (split_edges.valid, split_edges.valid_negative),
        "test": (split_edges.test, split_edges.test_negative),
    }[split]
    name = Path(paths[0]).name.split(".")[1]
    node_features = graph.features if features else np.zeros((num_nodes, 0), dtype=np.float32)
    return GraphDataset(
        node_features.copy(),
        split_edges.train,
        graph.labels.copy(),
        positive=held_out[0],
        negative=held_out[1],
        name=f"{name}/{split}",
    )


def _planetoid_spec(name: str, description: str) -> DatasetSpec:
    return DatasetSpec(
        name=name,
        resource=tuple(RESOURCES[f"planetoid/ind.{name}.{part}"] for part in PLANETOID_PARTS),
        splits=LINK_SPLITS,
        build=build_planetoid,
        description=description,
    )


CORA = register_dataset(
    _planetoid_spec("cora", "Cora citation graph, 2708 nodes: link prediction 85/5/10 %")
)
CITESEER = register_dataset(
    _planetoid_spec("citeseer", "Citeseer citation graph, 3327 nodes: link prediction 85/5/10 %")
)
