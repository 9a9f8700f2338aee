"""The bound ladder: ELBO <= IWAE_K (increasing in K) <= log p(x), with AIS as the reference.

For each datum, one pool of S guide samples gives every IWAE_K [1] (K = 1 is the ELBO) by
splitting the pool into disjoint groups of K; AIS [2] on the same data estimates log p(x)
itself. The gaps between the rungs tell how loose the training bound is and how much of it
more importance samples recover.

References:
    [1] Burda, Grosse, Salakhutdinov. Importance Weighted Autoencoders. ICLR 2016.
        arXiv:1509.00519
    [2] Wu, Burda, Salakhutdinov, Grosse. On the Quantitative Analysis of Decoder-Based
        Generative Models. ICLR 2017. arXiv:1611.04273
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from pvae.evaluation.importance import PerDatumEstimate, mean_and_stderr


@dataclass
class LadderRow(PerDatumEstimate):
    """One bound of the ladder: per-datum values ``(N,)`` in nats."""

    name: str
    num_samples: int
    values: torch.Tensor


@dataclass
class BoundLadder:
    """ELBO <= IWAE_K (increasing in K) <= log p(x), with AIS as the reference [1, 2].

    ``gap_to_reference`` reports each bound minus the last row (AIS), averaged over data with
    a *paired* standard error: the bounds of one datum move together, so their difference is
    far more precise than the spread of either over data.
    """

    rows: list[LadderRow] = field(default_factory=list)

    def paired_difference(self, row: LadderRow, base: LadderRow) -> tuple[float, float]:
        """Mean over data of ``row - base`` and the standard error of that paired difference."""
        gap = mean_and_stderr(row.values.double() - base.values.double())
        return gap["mean"], gap["stderr"]

    def gap_to_reference(self, row: LadderRow) -> tuple[float, float]:
        return self.paired_difference(row, self.rows[-1])

    def as_dict(self) -> list[dict[str, Any]]:
        out = []
        for row in self.rows:
            gap, gap_se = self.gap_to_reference(row)
            out.append(
                {
                    "bound": row.name,
                    "num_samples": row.num_samples,
                    "mean": row.mean,
                    "stderr": row.stderr,
                    "minus_reference": gap,
                    "minus_reference_stderr": gap_se,
                }
            )
        return out

    def table(self) -> str:
        """A markdown table of the ladder."""
        ref = self.rows[-1].name
        lines = [
            f"| bound | samples | mean log p(x) (nats) | stderr | minus {ref} (paired se) |",
            "|---|---|---|---|---|",
        ]
        for entry in self.as_dict():
            lines.append(
                f"| {entry['bound']} | {entry['num_samples']} | {entry['mean']:.3f} | "
                f"{entry['stderr']:.3f} | {entry['minus_reference']:.3f} "
                f"({entry['minus_reference_stderr']:.3f}) |"
            )
        return "\n".join(lines)


def iwae_bounds(log_weights: torch.Tensor, ks: Sequence[int]) -> dict[int, torch.Tensor]:
    """Per-datum IWAE_K bounds from a pool of ``S`` log weights ``(S, N)``.

    The pool is split into ``floor(S / K)`` disjoint groups of K; IWAE_K of a datum is the
    mean over groups of ``log mean_k w_k`` (K = 1 gives the ELBO).
    """
    s = log_weights.shape[0]
    out = {}
    for k in ks:
        k = int(k)
        if not 1 <= k <= s:
            raise ValueError(f"K={k} needs between 1 and {s} samples in the pool")
        groups = s // k
        lw = log_weights[: groups * k].double().reshape(groups, k, -1)
        out[k] = (torch.logsumexp(lw, dim=1) - math.log(k)).mean(0)
    return out


def bound_ladder(
    model: Callable,
    guide: Callable,
    x: torch.Tensor,
    *args,
    ks: Sequence[int] = (1, 10, 100, 1000),
    num_samples: int | None = None,
    ais_steps: int | None = 1000,
    ais_chains: int = 16,
    ais_from_guide: bool = False,
    ais_leapfrog_steps: int = 10,
    ais_schedule: str = "adaptive",
    seed: int | None = None,
    progress: bool = False,
    log_weights: torch.Tensor | None = None,
) -> BoundLadder:
    """The ELBO, IWAE_K for each K in ``ks`` [1] and an AIS estimate [2] on the same data.

    ``num_samples`` (default ``max(ks)``) guide samples per datum are drawn once and split
    into groups for every K. ``ais_steps=None`` skips AIS (the last row is then the largest-K
    bound). AIS starts from the prior as in Wu et al. [2], or from the guide with
    ``ais_from_guide``, with the annealing schedule ``ais_schedule`` (see
    :func:`~pvae.evaluation.ais.ais_log_likelihood`). Pass precomputed ``log_weights`` ``(S, N)`` (e.g. from
    :func:`pvae.diagnostics.importance_diagnostics`) to reuse them instead of sampling the
    guide again.
    """
    from pvae.evaluation.ais import ais_log_likelihood
    from pvae.evaluation.importance import log_importance_weights

    ks = sorted({int(k) for k in ks})
    if log_weights is not None:
        log_w = log_weights
    else:
        pool = int(num_samples) if num_samples is not None else max(ks)
        log_w = log_importance_weights(model, guide, x, pool, *args)
    bounds = iwae_bounds(log_w, ks)
    ladder = BoundLadder()
    for k in ks:
        ladder.rows.append(LadderRow("ELBO" if k == 1 else f"IWAE (K={k})", k, bounds[k]))
    if ais_steps:
        ais = ais_log_likelihood(
            model,
            x,
            *args,
            num_steps=int(ais_steps),
            num_chains=int(ais_chains),
            guide=guide if ais_from_guide else None,
            leapfrog_steps=ais_leapfrog_steps,
            schedule=ais_schedule,
            seed=seed,
            progress=progress,
        )
        ladder.rows.append(LadderRow(f"AIS (T={int(ais_steps)})", int(ais_chains), ais.values))
    return ladder
