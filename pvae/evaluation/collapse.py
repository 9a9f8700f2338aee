"""Posterior-collapse metrics: active units, KL per latent dimension, mutual information.

All three read the guide's site distributions from a Pyro trace, so they work for any guide
whose per-datum latent sits in the ``"data"`` plate (dim -1); ``site`` picks the latent (by
default the guide's first one, e.g. ``"z"``, or ``"z1"`` of the two-layer VAE). For a site
whose guide distribution depends on other sampled latents, the metrics are conditional on
those samples.

- Active units [1]: unit u is active if ``Cov_x(E_q[z_u | x]) > 0.01``.
- KL per dimension: ``(1/N) sum_n KL(q(z_u | x_n) || p(z_u))``, analytic for diagonal
  Gaussians, by Monte Carlo for other factorized sites.
- Mutual information [2, 3]: ``I(x; z)`` under the aggregate posterior
  ``q(z) = (1/N) sum_n q(z | x_n)`` of the batch (the empirical distribution of x)::

      I = E_n E_{q(z | x_n)} [log q(z | x_n) - log q(z)],    0 <= I <= log N

References:
    [1] Burda, Grosse, Salakhutdinov. Importance Weighted Autoencoders. ICLR 2016.
        arXiv:1509.00519 (Sec. 5.2)
    [2] Hoffman, Johnson. ELBO surgery: yet another way to carve up the variational evidence
        lower bound. NIPS 2016 Workshop on Advances in Approximate Bayesian Inference.
    [3] He, Spokoyny, Neubig, Berg-Kirkpatrick. Lagging Inference Networks and Posterior
        Collapse in Variational Autoencoders. ICLR 2019. arXiv:1901.05534
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pyro.poutine as poutine
import torch
from torch.distributions import Independent, Normal, kl_divergence

from pvae.infer.trace import latent_sites, trace_model_guide


def _model_and_guide(model: Any, guide: Callable | None) -> tuple[Callable, Callable]:
    if guide is not None:
        return (model.model if hasattr(model, "model") else model), guide
    if hasattr(model, "model") and hasattr(model, "guide"):
        return model.model, model.guide
    raise ValueError(
        "pass an object with .model and .guide methods (a pvae model), or guide=... explicitly"
    )


def _pick_site(trace, site: str | None) -> dict[str, Any]:
    sites = latent_sites(trace)
    if not sites:
        raise ValueError("the guide has no latent sample sites")
    if site is None:
        return sites[0]
    for s in sites:
        if s["name"] == site:
            return s
    raise ValueError(f"no latent site {site!r} in the guide; it has {[s['name'] for s in sites]}")


def _start_stop_ranges(total: int, size: int) -> Iterator[tuple[int, int]]:
    """``(start, stop)`` of consecutive index ranges of at most ``size`` out of ``total``."""
    for start in range(0, total, size):
        yield start, min(total, start + size)


def _guide_site(guide: Callable, x: torch.Tensor, args: tuple, site: str | None):
    trace = poutine.trace(guide).get_trace(x, *args)
    return _pick_site(trace, site)


def _check_batch(fn, n: int, name: str) -> None:
    if tuple(fn.batch_shape) != (n,):
        raise ValueError(
            f"guide site {name!r} has batch shape {tuple(fn.batch_shape)}; these metrics need one "
            f"batch dim, the data plate of size {n} (declare other dims with .to_event())"
        )


@dataclass
class ActiveUnits:
    """``variances[u] = Var_x(E_q[z_u | x])``, shape ``(D,)``; unit u is active above the
    threshold."""

    variances: torch.Tensor
    threshold: float

    @property
    def active(self) -> torch.Tensor:
        return self.variances > self.threshold

    @property
    def count(self) -> int:
        return int(self.active.sum())

    def __repr__(self) -> str:
        return f"ActiveUnits(count={self.count} of {self.variances.numel()}, threshold={self.threshold})"


@torch.no_grad()
def posterior_means(
    encoder: Any,
    x: torch.Tensor,
    *args,
    site: str | None = None,
    batch_size: int = 500,
    num_mean_samples: int = 256,
) -> torch.Tensor:
    """``E_q[z | x_n]`` for every datum, shape ``(N, D)`` (event dims flattened).

    ``encoder`` is a pvae model (anything with a ``.guide``: the mean of the guide's site
    distribution, or, where it has no closed form (a flow), the average of
    ``num_mean_samples`` draws from it), or a function ``x -> means``.
    """
    parts = []
    for start, stop in _start_stop_ranges(x.shape[0], batch_size):
        xb = x[start:stop]
        extra = tuple(a[start:stop] for a in args)
        if hasattr(encoder, "guide"):
            fn = _guide_site(encoder.guide, xb, extra, site)["fn"]
            try:
                mean = fn.mean
            except NotImplementedError:
                mean = fn.sample((num_mean_samples,)).mean(0)
        elif callable(encoder):
            mean = encoder(xb, *extra)
            if isinstance(mean, tuple):
                mean = mean[0]
        else:
            raise ValueError("encoder must be a pvae model (with .guide) or a function x -> means")
        parts.append(mean.reshape(stop - start, -1))
    return torch.cat(parts)


def active_units(
    encoder: Any,
    x: torch.Tensor,
    *args,
    threshold: float = 0.01,
    site: str | None = None,
    batch_size: int = 500,
) -> ActiveUnits:
    """Active units of Burda et al. [1]: ``A_u = Cov_x(E_{q(z|x)}[z_u]) > threshold``.

    ``encoder``: a pvae model (its guide's site mean) or a function ``x -> means (N, D)``.
    The variance over data is the population variance (as ``numpy.var``).
    """
    if x.shape[0] < 2:
        raise ValueError("active_units needs at least two data points")
    means = posterior_means(encoder, x, *args, site=site, batch_size=batch_size)
    return ActiveUnits(means.var(0, unbiased=False), float(threshold))


def _unwrap(fn) -> tuple[Any, int]:
    """The base distribution under Independent wrappers and the number of wrapped dims."""
    reinterpreted = 0
    while isinstance(fn, Independent):
        reinterpreted += fn.reinterpreted_batch_ndims
        fn = fn.base_dist
    return fn, reinterpreted


@torch.no_grad()
def kl_per_dimension(
    model: Any,
    x: torch.Tensor,
    *args,
    guide: Callable | None = None,
    site: str | None = None,
    num_samples: int = 100,
) -> torch.Tensor:
    """``(1/N) sum_n KL(q(z_u | x_n) || p(z_u))`` for every latent unit u, shape ``(D,)``.

    Analytic when the guide and prior of ``site`` are both (Independent) ``Normal``; otherwise
    estimated with ``num_samples`` guide samples per datum from the per-unit log densities,
    which requires both distributions to factorize over units (e.g. ``Laplace``, ``Gamma``).
    Raises ``ValueError`` for sites that do not factorize (von Mises-Fisher, full-covariance
    Gaussians): their KL per dimension is not defined.
    """
    model_fn, guide_fn = _model_and_guide(model, guide)
    model_trace, guide_trace = trace_model_guide(model_fn, guide_fn, (x, *args))
    name = _pick_site(guide_trace, site)["name"]
    q_fn, q_wrapped = _unwrap(guide_trace.nodes[name]["fn"])
    p_fn, p_wrapped = _unwrap(model_trace.nodes[name]["fn"])
    event_dim = guide_trace.nodes[name]["fn"].event_dim
    batch_dims = guide_trace.nodes[name]["value"].dim() - event_dim
    if isinstance(q_fn, Normal) and isinstance(p_fn, Normal):
        kl = kl_divergence(Normal(q_fn.loc, q_fn.scale), Normal(p_fn.loc, p_fn.scale))
        kl = kl.expand(guide_trace.nodes[name]["value"].shape)
        return kl.mean(dim=tuple(range(batch_dims))).reshape(-1)
    if q_fn.event_shape != torch.Size() or p_fn.event_shape != torch.Size():
        raise ValueError(
            f"site {name!r}: the guide ({type(q_fn).__name__}) or the prior "
            f"({type(p_fn).__name__}) does not factorize over latent units, so the KL per "
            "dimension is not defined; use the total KL instead"
        )
    # Monte Carlo over S guide samples per datum: E_q[log q(z_u | x) - log p(z_u)].
    nesting = 1
    model_trace, guide_trace = trace_model_guide(
        model_fn, guide_fn, (x, *args), num_particles=int(num_samples), max_plate_nesting=nesting
    )
    value = guide_trace.nodes[name]["value"]
    q_fn, _ = _unwrap(guide_trace.nodes[name]["fn"])
    p_fn, _ = _unwrap(model_trace.nodes[name]["fn"])
    diff = q_fn.log_prob(value) - p_fn.log_prob(value)
    diff = diff.expand(value.shape)
    return diff.mean(dim=tuple(range(value.dim() - event_dim))).reshape(-1)


@torch.no_grad()
def mutual_information(
    model: Any,
    x: torch.Tensor,
    *args,
    num_samples: int = 10,
    guide: Callable | None = None,
    site: str | None = None,
    max_elements: int = 10_000_000,
) -> float:
    """Monte Carlo estimate of I(x; z) under the batch's aggregate posterior [2, 3] (nats).

    With S = ``num_samples`` draws ``z_sn ~ q(z | x_n)``::

        I ~= (1/SN) sum_{s,n} [log q(z_sn | x_n) - log (1/N) sum_m q(z_sn | x_m)]

    Every term is at most log N, so the estimate is too; its expectation is >= 0 (a KL of each
    q(z | x_n) from the mixture). ``model`` is a pvae model (its ``.guide`` is used) or pass
    ``guide=``.
    """
    if hasattr(model, "guide") and guide is None:
        guide = model.guide
    if guide is None:
        guide = model
    n = x.shape[0]
    fn = _guide_site(guide, x, args, site)["fn"]
    _check_batch(fn, n, site or "z")
    z = fn.sample((int(num_samples),))  # (S, N, *event)
    event_shape = fn.event_shape
    own = fn.log_prob(z)  # (S, N)
    per_row = int(num_samples) * n * max(1, math.prod(event_shape))
    chunk = max(1, max_elements // per_row)
    total = 0.0
    for start, stop in _start_stop_ranges(n, chunk):
        zc = z[:, start:stop].unsqueeze(2)  # (S, c, 1, *event) against batch (N,)
        cross = fn.log_prob(zc)  # (S, c, N): log q(z_sc | x_m)
        log_aggregate = torch.logsumexp(cross, dim=-1) - math.log(n)
        total += float((own[:, start:stop] - log_aggregate).sum())
    return total / (int(num_samples) * n)
