"""Graph convolutions in plain torch with sparse matrix products (Kipf & Welling [1]).

:func:`normalized_adjacency` builds ``A_hat = D^(-1/2) (A + I) D^(-1/2)`` as a sparse COO
tensor from an edge list; :class:`GraphConvolution` is one layer ``A_hat X W`` (no bias, Glorot
uniform initialisation, as the gae code); :class:`GraphEncoder` is the VGAE's two-layer encoder
``heads(A_hat relu(A_hat X W_0))``: one shared first layer and one second-layer convolution per
output head (``mu``, ``log sigma``; or a direction and a concentration).

A featureless graph (``X = I``) passes ``features`` with no columns: the first layer is then
``A_hat W_0`` with ``W_0`` ``(N, hidden)``, one learned input vector per node.

References:
    [1] T. N. Kipf, M. Welling. Semi-Supervised Classification with Graph Convolutional
        Networks. ICLR 2017. https://arxiv.org/abs/1609.02907
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

__all__ = ["GraphConvolution", "GraphEncoder", "normalized_adjacency"]


def normalized_adjacency(edges: torch.Tensor, num_nodes: int) -> torch.Tensor:
    """``D^(-1/2) (A + I) D^(-1/2)`` as a coalesced sparse ``(N, N)`` float tensor, ``A`` the
    symmetric adjacency of the undirected ``edges`` ``(2, E)`` (each edge once, either
    direction) and ``D`` the degrees of ``A + I``."""
    if edges.dim() != 2 or edges.shape[0] != 2:
        raise ValueError(f"edges must be (2, E), got {tuple(edges.shape)}")
    loops = torch.arange(num_nodes, device=edges.device)
    rows = torch.cat([edges[0], edges[1], loops])
    cols = torch.cat([edges[1], edges[0], loops])
    degree = torch.bincount(rows, minlength=num_nodes).to(torch.get_default_dtype())
    inv_sqrt = degree.rsqrt()
    values = inv_sqrt[rows] * inv_sqrt[cols]
    return torch.sparse_coo_tensor(
        torch.stack([rows, cols]), values, (num_nodes, num_nodes), check_invariants=False
    ).coalesce()


class GraphConvolution(nn.Module):
    """``A_hat X W``: ``X`` ``(N, in_features)`` (``None`` for identity features, then
    ``in_features`` is ``N``), ``A_hat`` a sparse ``(N, N)``, output ``(N, out_features)``."""

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(in_features, out_features))
        nn.init.xavier_uniform_(self.weight)

    def forward(self, adjacency: torch.Tensor, x: torch.Tensor | None) -> torch.Tensor:
        if x is None:
            support = self.weight
        elif x.dim() == 2 and not x.is_sparse and x.shape[1] > 64:
            # Bag-of-words features are ~1 % non-zero: a sparse product is much cheaper than
            # the dense one (and its gradient needs only X^T, not X's own).
            support = torch.sparse.mm(x.to_sparse(), self.weight)
        else:
            support = x @ self.weight
        return torch.sparse.mm(adjacency, support.to(adjacency.dtype)).to(support.dtype)


class GraphEncoder(nn.Module):
    """Two graph convolutions: ``h = relu(A_hat X W_0)`` shared, then ``A_hat h W_k`` for each
    of ``heads`` (their output sizes), with dropout ``dropout`` on the inputs of both layers.

    :param num_features: columns of ``X`` (0: featureless, identity features).
    :param num_nodes: nodes of the graph (the first layer's rows when featureless).
    """

    def __init__(
        self,
        num_features: int,
        num_nodes: int,
        hidden: int,
        heads: Sequence[int],
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.featureless = num_features == 0
        self.first = GraphConvolution(num_nodes if self.featureless else num_features, hidden)
        self.heads = nn.ModuleList(GraphConvolution(hidden, size) for size in heads)
        self.dropout = nn.Dropout(dropout)

    def forward(self, features: torch.Tensor, adjacency: torch.Tensor) -> list[torch.Tensor]:
        """The heads' outputs, each ``(N, size)``, for ``features`` ``(N, F)``."""
        x = None if self.featureless else self.dropout(features)
        h = self.dropout(torch.relu(self.first(adjacency, x)))
        return [head(adjacency, h) for head in self.heads]
