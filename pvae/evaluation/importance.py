"""Importance-sampled estimates of the marginal log-likelihood log p(x).

For each datum, with K samples from the guide (Burda et al. 2015, Eq. 8)::

    log p(x) ~= log (1/K) sum_k p(x, z_k) / q(z_k | x),   z_k ~ q(z | x)

a stochastic lower bound that tightens to log p(x) as K grows. Works on any model/guide pair
whose data sit in a plate named ``"data"``.

References:
    [1] Burda, Grosse, Salakhutdinov. Importance Weighted Autoencoders. ICLR 2016.
        arXiv:1509.00519
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from pvae.infer.distributed import DistributedContext, derive_seed
from pvae.infer.trace import (
    per_datum_log_weights,
    probe_max_plate_nesting,
    trace_model_guide,
    warn_on_new_params,
)


def _starts_and_sizes(total: int, size: int) -> Iterator[tuple[int, int]]:
    """``(start, length)`` of consecutive chunks of at most ``size`` out of ``total``."""
    for start in range(0, total, size):
        yield start, min(size, total - start)


@torch.no_grad()
def log_importance_weights(
    model: Callable,
    guide: Callable,
    x: torch.Tensor,
    num_samples: int,
    *args,
    sample_batch_size: int = 500,
) -> torch.Tensor:
    """``log p(x_n, z_kn) - log q(z_kn | x_n)`` for ``k < num_samples``, shape ``(K, N)``.

    ``x`` is one batch of data (all of it is passed to the model at once); extra positional
    ``args`` (labels, for conditional models) are passed after ``x``. Warns when the tracing
    creates ``pyro.param`` values (a plain-function model outside its trained store: pass
    ``fit``'s ``result.model`` and ``result.guide``).
    """
    with warn_on_new_params("log_importance_weights"):
        return _log_importance_weights(
            model, guide, x, num_samples, *args, sample_batch_size=sample_batch_size
        )


def _log_importance_weights(
    model: Callable,
    guide: Callable,
    x: torch.Tensor,
    num_samples: int,
    *args,
    sample_batch_size: int = 500,
) -> torch.Tensor:
    nesting = probe_max_plate_nesting(model, guide, (x[:1], *(a[:1] for a in args)))
    parts = []
    for _, size in _starts_and_sizes(num_samples, sample_batch_size):
        model_trace, guide_trace = trace_model_guide(
            model, guide, (x, *args), num_particles=size, max_plate_nesting=nesting
        )
        parts.append(
            per_datum_log_weights(
                model_trace, guide_trace, max_plate_nesting=nesting, num_units=x.shape[0]
            )
        )
    return torch.cat(parts, dim=0)


def mean_and_stderr(values: torch.Tensor) -> dict[str, float]:
    """``{"mean", "stderr"}`` of ``values`` ``(N,)``: their mean and its standard error
    ``sd(values) / sqrt(N)`` (unbiased sd; NaN for one value), in the dtype of ``values``.

    The one standard error of pvae: per-datum estimates, paired differences of bounds, the
    diagnostics' JSON.
    """
    n = values.numel()
    return {
        "mean": float(values.mean()),
        "stderr": float(values.std(unbiased=True) / math.sqrt(n)) if n > 1 else float("nan"),
    }


class PerDatumEstimate:
    """Mixin for results holding per-datum estimates ``values`` of shape ``(N,)`` (nats)."""

    values: torch.Tensor

    @property
    def mean(self) -> float:
        return mean_and_stderr(self.values)["mean"]

    @property
    def stderr(self) -> float:
        """Standard error of the mean over data (the spread of log p(x) across data)."""
        return mean_and_stderr(self.values)["stderr"]


@dataclass
class LogLikelihood(PerDatumEstimate):
    """Per-datum estimates and their summary. ``values`` has shape ``(N,)`` (nats)."""

    values: torch.Tensor
    num_samples: int

    def __repr__(self) -> str:
        return f"LogLikelihood(mean={self.mean:.3f}, stderr={self.stderr:.3f}, K={self.num_samples}, N={self.values.numel()})"


@torch.no_grad()
def log_likelihood(
    model: Callable,
    guide: Callable,
    x: torch.Tensor,
    *args: torch.Tensor,
    num_samples: int = 5000,
    batch_size: int = 100,
    sample_batch_size: int | None = None,
    max_elements: int = 20_000_000,
    progress: bool = False,
    datum_size: int | None = None,
    seed: int | None = None,
    distributed: DistributedContext | None = None,
) -> torch.Tensor:
    """Importance-sampled estimate of log p(x_n) for every datum, shape ``(N,)`` (nats).

    Data go through the model ``batch_size`` at a time, and the ``num_samples`` importance
    samples in chunks of ``sample_batch_size`` (by default as many as keep
    ``chunk * batch * datum_size`` under ``max_elements``; ``datum_size`` defaults to the
    elements of one datum, and a model whose sample of a datum materialises more, like a text
    decoder's ``length x vocabulary`` logits, passes that), with a running log-sum-exp, so
    K = 5000 fits in memory. Extra positional ``args`` (labels) are sliced alongside ``x``.

    Summarise with :class:`LogLikelihood` (``LogLikelihood(values, K).mean``, ``.stderr``).

    A model or guide written as plain functions (``pyro.param``) must run with its trained
    parameters: pass ``fit``'s ``result.model`` and ``result.guide``. If the evaluation creates
    parameters in the current store (the functions themselves, outside ``result.params()``), a
    ``UserWarning`` names them and they are removed again.

    With ``seed``, the samples of the ``j``-th batch of data are drawn from torch's generator
    seeded with ``derive_seed(seed, j)`` (the caller's random state is restored): the estimate
    is then the same however the batches are shared among processes. Without it (the default)
    they come from torch's generator as it stands.

    ``distributed`` (a :class:`~pvae.infer.distributed.DistributedContext`; every rank calls
    with the same arguments) shares the batches among the ranks, each a contiguous block of
    them, and gathers the per-datum results in order: every rank returns all ``N`` values,
    equal to one process's with the same ``seed``. Without ``seed``, rank 0 draws one from
    torch's generator for all. The progress bar is rank 0's (its share).
    """
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    if x.dim() < 1 or x.shape[0] == 0:
        raise ValueError(f"x must hold at least one datum, got shape {tuple(x.shape)}")
    for a in args:
        if a.shape[0] != x.shape[0]:
            raise ValueError("extra arguments must have the same number of data as x")
    with warn_on_new_params("log_likelihood"):
        return _log_likelihood(
            model,
            guide,
            x,
            args,
            num_samples,
            batch_size,
            sample_batch_size,
            max_elements,
            progress,
            datum_size,
            seed,
            distributed,
        )


def _log_likelihood(
    model,
    guide,
    x,
    args,
    num_samples,
    batch_size,
    sample_batch_size,
    max_elements,
    progress,
    datum_size=None,
    seed=None,
    distributed=None,
) -> torch.Tensor:
    datum_size = max(1, datum_size or x[0].numel())
    batches = list(_starts_and_sizes(x.shape[0], batch_size))
    mine = list(enumerate(batches))
    if distributed is not None and distributed.world_size > 1:
        if seed is None:
            seed = distributed.broadcast_object(int(torch.randint(2**62, (1,))))
        blocks = [
            _block(len(batches), r, distributed.world_size) for r in range(distributed.world_size)
        ]
        mine = mine[blocks[distributed.rank]]
        progress = progress and distributed.is_main
    else:
        distributed = None
    results = []
    total = sum(size for _, (_, size) in mine)
    bar = tqdm(total=total, desc="log p(x)", unit="datum", disable=not progress)
    devices = [x.device.index or 0] if x.device.type == "cuda" else []
    for index, (start, size) in mine:
        xb = x[start : start + size]
        extra = tuple(a[start : start + size] for a in args)
        chunk = sample_batch_size or max(1, min(num_samples, max_elements // (size * datum_size)))
        with torch.random.fork_rng(devices=devices, enabled=seed is not None):
            if seed is not None:
                torch.manual_seed(derive_seed(seed, index))
            running = None
            for _, k in _starts_and_sizes(num_samples, chunk):
                log_w = _log_importance_weights(model, guide, xb, k, *extra, sample_batch_size=k)
                part = torch.logsumexp(log_w, dim=0)
                running = part if running is None else torch.logaddexp(running, part)
        results.append(running - math.log(num_samples))
        bar.update(size)
    bar.close()
    if distributed is None:
        return torch.cat(results)
    local = torch.cat(results) if results else x.new_zeros(0, dtype=torch.get_default_dtype())
    counts = [sum(size for _, size in batches[blocks[r]]) for r in range(distributed.world_size)]
    return distributed.all_gather_rows(local, counts)


def _block(count: int, rank: int, world_size: int) -> slice:
    """Rank ``rank``'s contiguous block of ``count`` batches (balanced, as data shards)."""
    return slice(rank * count // world_size, (rank + 1) * count // world_size)
