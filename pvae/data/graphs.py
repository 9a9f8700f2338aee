"""Graphs: one graph, its nodes in the model's ``"data"`` plate, trained full-batch.

A :class:`GraphDataset` is one independent unit (``len(dataset) == 1``): the graph the model
observes (its node features and the edges it may train on), and, for a link-prediction split,
held-out node pairs to score: edges removed from the training graph (positives) and as many
sampled non-edges (negatives). Its one batch is ``(features, edges, labels)`` with a leading
dimension of one graph: ``features`` ``(1, N, F)`` float (``F = 0``: a featureless graph),
``edges`` ``(1, 2, E)`` int64, each undirected training edge once (``i < j``), ``labels``
``(1, N)`` int64 node classes (``-1`` where a node has none). The model puts the ``N`` nodes in
its ``"data"`` plate; the plate is larger than the dataset's one unit, so training scales its
sites by exactly 1 (:func:`pvae.infer.trace.plate_scale`) and evaluation sums them into one
per-graph value.

:func:`link_split` is the link-prediction split of Kipf & Welling [1] (``mask_test_edges`` of
their gae code): of the undirected edges, ``floor(E / 10)`` go to test and ``floor(E / 20)``
to validation, the rest train; each held-out set gets as many non-edges, drawn uniformly
among the unordered pairs ``i != j`` that are no edge of the *full* graph, without repeats,
the validation and test non-edges disjoint (the gae code allows a validation non-edge to be a
test edge or a test non-edge; here neither happens).

References:
    [1] T. N. Kipf, M. Welling. Variational Graph Auto-Encoders. NIPS Workshop on Bayesian
        Deep Learning, 2016. https://arxiv.org/abs/1611.07308, https://github.com/tkipf/gae
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, NamedTuple

import numpy as np
import torch

from pvae.data.registry import checked_labels, shard_positions, subset_index

__all__ = ["GraphDataset", "LinkSplit", "link_split", "undirected_edges"]

LINK_SPLITS = ("train", "valid", "test")


class LinkSplit(NamedTuple):
    """Undirected node pairs ``(n, 2)`` int64 (``i < j``) of a link-prediction split."""

    train: np.ndarray
    valid: np.ndarray
    valid_negative: np.ndarray
    test: np.ndarray
    test_negative: np.ndarray


def undirected_edges(pairs: np.ndarray, num_nodes: int) -> np.ndarray:
    """Unique undirected edges ``(E, 2)`` with ``i < j``, sorted, self-loops dropped, from any
    directed or undirected pairs ``(n, 2)``."""
    pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
    if pairs.size and (pairs.min() < 0 or pairs.max() >= num_nodes):
        raise ValueError(f"edge endpoints must be node indices in 0..{num_nodes - 1}")
    low, high = pairs.min(axis=1), pairs.max(axis=1)
    keep = low != high
    codes = np.unique(low[keep] * num_nodes + high[keep])
    return np.stack([codes // num_nodes, codes % num_nodes], axis=1)


def _sample_non_edges(
    count: int, num_nodes: int, taken: set[int] | np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """``count`` distinct unordered pairs ``i < j`` whose codes ``i * N + j`` are not in
    ``taken``, uniformly at random (rejection in vectorised rounds)."""
    taken = np.asarray(sorted(taken) if isinstance(taken, set) else taken, dtype=np.int64)
    chosen = np.zeros(0, dtype=np.int64)
    while chosen.size < count:
        draws = rng.integers(0, num_nodes, size=(2 * (count - chosen.size) + 16, 2))
        low, high = draws.min(axis=1), draws.max(axis=1)
        codes = (low * num_nodes + high)[low != high]
        codes = codes[~np.isin(codes, taken) & ~np.isin(codes, chosen)]
        _, first = np.unique(codes, return_index=True)
        codes = codes[np.sort(first)]  # distinct, in the order drawn
        chosen = np.concatenate([chosen, codes[: count - chosen.size]])
    return np.stack([chosen // num_nodes, chosen % num_nodes], axis=1)


def link_split(
    edges: np.ndarray, num_nodes: int, seed: int = 0, *, valid: float = 0.05, test: float = 0.10
) -> LinkSplit:
    """Kipf & Welling's link-prediction split of the undirected ``edges`` ``(E, 2)`` (see the
    module docstring): ``floor(E * test)`` test and ``floor(E * valid)`` validation edges, the
    rest for training, and as many non-edges of the full graph for each held-out set; every
    draw from ``numpy.random.default_rng(seed)``."""
    edges = undirected_edges(edges, num_nodes)
    if not (0 <= valid and 0 <= test and valid + test < 1):
        raise ValueError(
            f"valid and test must be fractions summing to less than 1, got {valid}, {test}"
        )
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(edges))
    num_test, num_valid = int(np.floor(len(edges) * test)), int(np.floor(len(edges) * valid))
    valid_edges = edges[np.sort(order[:num_valid])]
    test_edges = edges[np.sort(order[num_valid : num_valid + num_test])]
    train_edges = edges[np.sort(order[num_valid + num_test :])]
    pairs = num_nodes * (num_nodes - 1) // 2
    if len(edges) + num_valid + num_test > pairs:
        raise ValueError("the graph is too dense to draw as many non-edges as held-out edges")
    existing = edges[:, 0] * num_nodes + edges[:, 1]
    test_negative = _sample_non_edges(num_test, num_nodes, existing, rng)
    taken = np.concatenate([existing, test_negative[:, 0] * num_nodes + test_negative[:, 1]])
    valid_negative = _sample_non_edges(num_valid, num_nodes, taken, rng)
    return LinkSplit(train_edges, valid_edges, valid_negative, test_edges, test_negative)


def _as_tensor(values: Any, dtype: torch.dtype) -> torch.Tensor:
    return (
        values.to(dtype)
        if isinstance(values, torch.Tensor)
        else torch.as_tensor(values, dtype=dtype)
    )


class GraphDataset:
    """One graph held in memory: the graph modality's :class:`~pvae.data.registry.Dataset`.

    :param features: float ``(N, F)`` node features; ``F = 0`` for a featureless graph (a model
        then learns one input vector per node, the identity features of [1]).
    :param edges: the edges the model observes, ``(E, 2)`` or ``(2, E)`` node pairs (any
        direction, duplicates and self-loops dropped).
    :param labels: int64 ``(N,)`` node classes (``None``: all ``-1``), for figures only.
    :param positive, negative: held-out pairs ``(n, 2)`` this split scores (``None``: none):
        edges absent from ``edges`` and non-edges of the full graph.
    :param name: a description such as ``"cora/test"``.
    """

    def __init__(
        self,
        features: torch.Tensor | np.ndarray,
        edges: torch.Tensor | np.ndarray,
        labels: torch.Tensor | np.ndarray | None = None,
        *,
        positive: torch.Tensor | np.ndarray | None = None,
        negative: torch.Tensor | np.ndarray | None = None,
        name: str = "",
    ) -> None:
        features = _as_tensor(features, torch.float32)
        if features.dim() != 2:
            raise ValueError(f"features must be (nodes, features), got {tuple(features.shape)}")
        num_nodes = features.shape[0]
        edges = _as_tensor(edges, torch.int64)
        if edges.dim() == 2 and edges.shape[0] == 2 and edges.shape[1] != 2:
            edges = edges.T
        edges = torch.from_numpy(undirected_edges(edges.cpu().numpy(), num_nodes))
        self.features = features
        self.edges = edges.to(features.device)
        self.labels = checked_labels(
            None if labels is None else _as_tensor(labels, torch.int64), num_nodes, features.device
        )
        if (positive is None) != (negative is None):
            raise ValueError("pass both positive and negative held-out pairs, or neither")
        self.positive = (
            None if positive is None else _as_tensor(positive, torch.int64).reshape(-1, 2)
        )
        self.negative = (
            None if negative is None else _as_tensor(negative, torch.int64).reshape(-1, 2)
        )
        self.name = name

    @classmethod
    def from_data(cls, data: Any, **options: Any) -> GraphDataset:
        """A graph from a ``torch_geometric.data.Data`` (duck-typed: ``x`` or ``num_nodes``,
        ``edge_index`` ``(2, E)``, optional ``y``), without importing torch_geometric."""
        edge_index = data.edge_index
        features = getattr(data, "x", None)
        if features is None:
            features = torch.zeros(int(data.num_nodes), 0)
        return cls(features, edge_index, getattr(data, "y", None), **options)

    def __len__(self) -> int:
        return 1

    def __repr__(self) -> str:
        held_out = 0 if self.positive is None else len(self.positive)
        return (
            f"GraphDataset({self.name!r}, nodes={self.num_nodes}, features={self.num_features}, "
            f"edges={len(self.edges)}, held_out={held_out} + {held_out})"
        )

    @property
    def num_nodes(self) -> int:
        return self.features.shape[0]

    @property
    def num_features(self) -> int:
        return self.features.shape[1]

    def batch(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The graph as one batch: ``(features (1, N, F), edges (1, 2, E), labels (1, N))``."""
        return self.features[None], self.edges.T.contiguous()[None], self.labels[None]

    def batches(
        self,
        batch_size: int,
        *,
        shuffle: bool = True,
        generator: torch.Generator | None = None,
        shard: tuple[int, int] = (0, 1),
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """One epoch: the whole graph as one batch (:meth:`batch`), whatever ``batch_size``;
        nothing is random. Sharded, the rank whose share (:func:`shard_positions`) holds the
        one unit gets the graph, the others nothing."""
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        positions = shard_positions(1, shard)
        if positions.stop > positions.start:
            yield self.batch()

    def held_out(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The split's held-out ``(positive, negative)`` pairs, each ``(n, 2)``."""
        if self.positive is None or self.negative is None:
            raise ValueError(f"{self.name or 'this graph'} holds no held-out pairs to score")
        return self.positive, self.negative

    def model_options(self) -> dict[str, Any]:
        """``num_nodes`` and ``num_features`` (0: featureless)."""
        return {"num_nodes": self.num_nodes, "num_features": self.num_features}

    def subset(
        self, n_or_indices: int | Sequence[int] | torch.Tensor, *, seed: int | None = None
    ) -> GraphDataset:
        """The dataset itself: its one unit is the whole graph (``n`` must be 1)."""
        index = subset_index(n_or_indices, 1, seed)
        if index.tolist() != [0]:
            raise ValueError("a graph dataset has one unit, the graph: subset(1) only")
        return self

    def to(self, device: torch.device | str) -> GraphDataset:
        """The same graph with its tensors on ``device``."""
        moved = GraphDataset.__new__(GraphDataset)
        moved.features = self.features.to(device)
        moved.edges = self.edges.to(device)
        moved.labels = self.labels.to(device)
        moved.positive = None if self.positive is None else self.positive.to(device)
        moved.negative = None if self.negative is None else self.negative.to(device)
        moved.name = self.name
        return moved
