"""Ranking metrics of link prediction: the area under the ROC curve and average precision.

Both score how well ``scores`` rank the positive pairs (held-out edges) above the negative
ones (sampled non-edges), as Kipf & Welling [1] report them (there with scikit-learn's
``roc_auc_score`` and ``average_precision_score``, whose definitions, ties included, these
follow; no scikit-learn at run time):

- ``roc_auc``: ``P(s+ > s-) + P(s+ = s-) / 2`` over all positive-negative pairs, the
  Mann-Whitney statistic with mid-ranks for ties;
- ``average_precision``: ``sum_n (R_n - R_{n-1}) P_n`` over the distinct score thresholds in
  decreasing order (precision ``P_n`` and recall ``R_n`` at threshold ``n``), without
  interpolation.

References:
    [1] T. N. Kipf, M. Welling. Variational Graph Auto-Encoders. arXiv:1611.07308
"""

from __future__ import annotations

import torch

__all__ = ["average_precision", "roc_auc"]


def _checked(scores: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    scores = torch.as_tensor(scores).detach().to(torch.float64).reshape(-1)
    labels = torch.as_tensor(labels).detach().reshape(-1).to(scores.device)
    if scores.shape != labels.shape:
        raise ValueError(
            f"scores and labels differ in length: {scores.numel()} vs {labels.numel()}"
        )
    if not torch.isin(labels, torch.tensor([0, 1], device=labels.device)).all():
        raise ValueError("labels must be 0 (negative) or 1 (positive)")
    labels = labels.to(torch.bool)
    if labels.all() or not labels.any():
        raise ValueError("ranking metrics need at least one positive and one negative")
    if not torch.isfinite(scores).all():
        raise ValueError("scores must be finite")
    return scores, labels


def roc_auc(scores: torch.Tensor, labels: torch.Tensor) -> float:
    """Area under the ROC curve of ``scores`` ``(n,)`` for binary ``labels`` ``(n,)`` (1:
    positive), ties counted one half."""
    scores, labels = _checked(scores, labels)
    values, inverse, counts = torch.unique(scores, return_inverse=True, return_counts=True)
    # Mid-rank of each distinct value (ranks from 1): those below it plus (count + 1) / 2.
    below = torch.cumsum(counts, 0) - counts
    mid_rank = below.to(torch.float64) + (counts.to(torch.float64) + 1) / 2
    positives = int(labels.sum())
    negatives = labels.numel() - positives
    rank_sum = mid_rank[inverse][labels].sum()
    return float((rank_sum - positives * (positives + 1) / 2) / (positives * negatives))


def average_precision(scores: torch.Tensor, labels: torch.Tensor) -> float:
    """Average precision of ``scores`` ``(n,)`` for binary ``labels`` ``(n,)`` (1: positive):
    the precision at each distinct threshold weighted by the recall it adds."""
    scores, labels = _checked(scores, labels)
    values, inverse = torch.unique(scores, return_inverse=True)
    # Per distinct value (ascending): positives and all pairs at that value, then counts at
    # thresholds taken in decreasing order.
    hits = torch.zeros(len(values), dtype=torch.float64, device=scores.device)
    hits.index_add_(0, inverse, labels.to(torch.float64))
    total = torch.bincount(inverse, minlength=len(values)).to(torch.float64)
    true_positives = torch.cumsum(hits.flip(0), 0)
    predicted = torch.cumsum(total.flip(0), 0)
    precision = true_positives / predicted
    recall_gain = hits.flip(0) / labels.sum()
    return float((precision * recall_gain).sum())
