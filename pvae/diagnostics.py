"""Posterior diagnostics of a model/guide pair that need ArviZ: PSIS k-hat, importance ESS
and an ArviZ ``InferenceData`` of the guide's draws laid out as ArviZ expects. The only module
of pvae that imports ArviZ, and only inside functions, so ``import pvae`` never pays for it.
(The bound ladder, ELBO <= IWAE_K <= AIS, needs no ArviZ: :mod:`pvae.evaluation.ladder`.)

For each datum x_n and S guide draws z_s ~ q(z | x_n), the importance log weights
``log w_s = log p(x_n, z_s) - log q(z_s | x_n)`` tell how well q covers the posterior:

- ESS of the normalized weights ``wbar_s = w_s / sum_s w_s``: ``1 / sum_s wbar_s^2`` (S when
  q is the posterior, 1 when one draw dominates).
- Pareto k-hat [1, 2]: the shape of a generalized Pareto fit to the largest weights. Below 0.5
  importance sampling (and so the IWAE bound and ``log_likelihood``) is reliable; between 0.5
  and 0.7 it converges slowly; above 0.7 its estimates are not to be trusted, however large S.
  Yao et al. [2] read k-hat of ``p(x, z) / q(z | x)`` as a diagnostic of the variational
  approximation itself.

Weights that are constant to within 1e-3 nats (q equal to the posterior up to floating-point
error) have no tail to fit: their k-hat is ``-inf``, set without calling ArviZ (whose Pareto
fit on a handful of tied values divides 0 by 0).

With ArviZ (all of it through this module, so that moving to ArviZ 1.x changes only this file)::

    idata = to_inference_data(model, guide, x, num_samples=1000)
    az.summary(idata)                          # q's draws; r_hat NaN with one chain (see below)
    az.plot_posterior(idata, var_names=["z"], coords={"datum": [0]})
    az.loo(idata)                              # conditional PSIS-LOO (see to_inference_data)
    az.plot_khat(importance_loo(idata))        # k-hat of the importance weights, per datum

References:
    [1] Vehtari, Simpson, Gelman, Yao, Gabry. Pareto Smoothed Importance Sampling. JMLR 25,
        2024. arXiv:1507.02646
    [2] Yao, Vehtari, Simpson, Gelman. Yes, but Did It Work?: Evaluating Variational
        Inference. ICML 2018. arXiv:1802.02538
    [3] Vehtari, Mononen, Tolvanen, Sivula, Winther. Bayesian Leave-One-Out Cross-Validation
        Approximations for Gaussian Latent Variable Models. JMLR 17, 2016. arXiv:1412.7461
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

CONSTANT_WEIGHTS_TOLERANCE = 1e-3  # nats
MIN_SAMPLES_FOR_KHAT = 50
SAMPLE_DIMS = ("chain", "draw")
DATUM_DIM = "datum"


def _arviz():
    """Imports ArviZ on first use, without its import-time FutureWarning about ArviZ 1.0."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        import arviz

    return arviz


def _check_log_weights(log_weights: torch.Tensor) -> None:
    if log_weights.dim() != 2 or log_weights.shape[0] < MIN_SAMPLES_FOR_KHAT:
        raise ValueError(
            f"k-hat needs log weights of shape (S, N) with S >= {MIN_SAMPLES_FOR_KHAT} samples "
            f"(the Pareto fit uses the largest ~3 sqrt(S)); got {tuple(log_weights.shape)}"
        )


def _pareto_smoothed(log_weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """PSIS [1] of each column of ``log_weights`` ``(S, N)``: the smoothed, unnormalized log
    weights ``(S, N)`` and k-hat ``(N,)``, float64. Constant columns (spread below
    ``CONSTANT_WEIGHTS_TOLERANCE``) are left as they are, with k-hat ``-inf``."""
    _check_log_weights(log_weights)
    lw = log_weights.detach().double().cpu()
    khat = torch.full((lw.shape[1],), -math.inf, dtype=torch.float64)
    smoothed = lw.clone()
    varying = (lw.max(0).values - lw.min(0).values) >= CONSTANT_WEIGHTS_TOLERANCE
    if varying.any():
        az = _arviz()
        columns = varying.nonzero().squeeze(1)
        fitted_lw, fitted_k = az.psislw(lw[:, columns].T.numpy().copy(), normalize=False)
        smoothed[:, columns] = torch.as_tensor(fitted_lw, dtype=torch.float64).T
        khat[columns] = torch.as_tensor(fitted_k, dtype=torch.float64).reshape(-1)
    return smoothed, khat


def pareto_khat(log_weights: torch.Tensor) -> torch.Tensor:
    """PSIS k-hat [1] of each column of ``log_weights`` ``(S, N)``, shape ``(N,)`` (float64).

    Uses ``arviz.psislw`` on the columns whose weights vary; columns constant within 1e-3 nats
    get ``-inf`` without a fit.
    """
    return _pareto_smoothed(log_weights)[1]


def importance_ess(log_weights: torch.Tensor) -> torch.Tensor:
    """``1 / sum_s wbar_s^2`` per column of ``log_weights`` ``(S, N)``, shape ``(N,)``."""
    w = torch.softmax(log_weights.double(), dim=0)
    return 1.0 / (w**2).sum(0)


def _stacked(values: Any) -> torch.Tensor:
    """An xarray variable with dims ``(chain, draw, datum)`` as a tensor ``(chain * draw, N)``."""
    values = values.transpose(*SAMPLE_DIMS, DATUM_DIM)
    return torch.as_tensor(values.values).reshape(-1, values.sizes[DATUM_DIM])


@dataclass
class ImportanceDiagnostics:
    """Per-datum importance-sampling diagnostics: ``log_weights`` ``(S, N)``; ``khat``,
    ``ess`` and ``log_likelihood`` (``log mean_s w_s``) of shape ``(N,)``."""

    log_weights: torch.Tensor
    khat: torch.Tensor
    ess: torch.Tensor

    @classmethod
    def from_log_weights(cls, log_weights: torch.Tensor) -> ImportanceDiagnostics:
        return cls(log_weights, pareto_khat(log_weights), importance_ess(log_weights))

    @classmethod
    def from_inference_data(cls, idata: Any) -> ImportanceDiagnostics:
        """The diagnostics of ``idata.sample_stats["log_weight"]`` (from
        :func:`to_inference_data`), its ``chain * draw`` draws as ``S``."""
        return cls.from_log_weights(_stacked(idata.sample_stats["log_weight"]))

    @property
    def num_samples(self) -> int:
        return self.log_weights.shape[0]

    @property
    def log_likelihood(self) -> torch.Tensor:
        return torch.logsumexp(self.log_weights.double(), 0) - math.log(self.num_samples)

    def share_above(self, threshold: float = 0.7) -> float:
        """Share of data whose k-hat exceeds ``threshold``."""
        return float((self.khat > threshold).double().mean())

    def summary(self) -> dict[str, float]:
        finite = self.khat[torch.isfinite(self.khat)]
        return {
            "num_samples": self.num_samples,
            "num_data": int(self.khat.numel()),
            "khat_max": float(self.khat.max()),
            "khat_median": float(finite.median()) if finite.numel() else float("-inf"),
            "share_khat_above_0.5": self.share_above(0.5),
            "share_khat_above_0.7": self.share_above(0.7),
            "ess_mean": float(self.ess.mean()),
            "ess_min": float(self.ess.min()),
            "relative_ess_mean": float(self.ess.mean() / self.num_samples),
        }

    def to_dataset(self) -> Any:
        """An xarray ``Dataset`` with ``khat``, ``ess`` and ``log_likelihood``, dims
        ``(datum,)``; ``az.plot_khat(dataset["khat"])`` plots the k-hats (ArviZ 0.23 warns
        that it prefers an ``ELPDData``: :func:`importance_loo`)."""
        import xarray as xr

        n = self.khat.numel()
        return xr.Dataset(
            {
                "khat": ([DATUM_DIM], self.khat.numpy()),
                "ess": ([DATUM_DIM], self.ess.numpy()),
                "log_likelihood": ([DATUM_DIM], self.log_likelihood.numpy()),
            },
            coords={DATUM_DIM: list(range(n))},
        )


def importance_diagnostics(
    model: Callable,
    guide: Callable,
    x: torch.Tensor,
    *args,
    num_samples: int = 1000,
    sample_batch_size: int = 200,
) -> ImportanceDiagnostics:
    """k-hat [1, 2] and ESS of ``p(x_n, z) / q(z | x_n)`` from ``num_samples`` guide samples."""
    from pvae.evaluation.importance import log_importance_weights

    log_w = log_importance_weights(
        model, guide, x, int(num_samples), *args, sample_batch_size=sample_batch_size
    )
    return ImportanceDiagnostics.from_log_weights(log_w)


@dataclass
class _GuideDraws:
    latents: dict[str, torch.Tensor]  # site -> (S, N, *event)
    log_weights: torch.Tensor  # (S, N)
    log_likelihood: dict[str, torch.Tensor]  # observed site -> log p(x_n | z_s), (S, N)
    observed: dict[str, torch.Tensor]  # observed site -> (N, *event)

    @classmethod
    def concatenate(cls, parts: list[_GuideDraws]) -> _GuideDraws:
        """The draws of consecutive blocks of data as those of all of them (data in order)."""
        first = parts[0]
        return cls(
            {name: torch.cat([p.latents[name] for p in parts], 1) for name in first.latents},
            torch.cat([p.log_weights for p in parts], 1),
            {
                name: torch.cat([p.log_likelihood[name] for p in parts], 1)
                for name in first.log_likelihood
            },
            {
                name: torch.cat([p.observed[name] for p in parts])
                for name in first.observed
                if all(name in p.observed for p in parts)
            },
        )


def _particle_datum_first(
    site: dict[str, Any], k: int, n: int, num_dims: int, data_dim: int
) -> torch.Tensor:
    """A latent's value ``(K, ..., N, ..., *event)`` as ``(K, N, *inner, *event)``: the
    particle and data dims first, then the sizes of inner plates (the elements of a set),
    singleton plate dims dropped."""
    value = site["value"]
    event_dim = site["fn"].event_dim
    batch = value.shape[: value.dim() - event_dim]
    if len(batch) > num_dims:
        raise ValueError(
            f"guide site {site['name']!r} has batch shape {tuple(batch)}, more dims than its "
            "plates; declare extra batch dims as event dims with .to_event()"
        )
    value = value.reshape((1,) * (num_dims - len(batch)) + tuple(value.shape))
    data_axis = num_dims + data_dim
    inner = [d for d in range(1, num_dims) if d != data_axis]
    events = list(range(num_dims, value.dim()))
    value = value.permute(0, data_axis, *inner, *events)
    sizes = [value.shape[2 + i] for i in range(len(inner))]
    value = value.reshape(
        value.shape[0], value.shape[1], *(s for s in sizes if s != 1), *value.shape[num_dims:]
    )
    if value.shape[1] != n or value.shape[0] not in (1, k):
        raise ValueError(
            f"guide site {site['name']!r} has batch shape {tuple(batch)}; expected "
            f"(particles, {n}) with the data plate"
        )
    return value.expand(k, *value.shape[1:])


@torch.no_grad()
def _guide_draws(
    model: Callable, guide: Callable, x: torch.Tensor, *args, num_samples: int, sample_batch_size
) -> _GuideDraws:
    from pvae.infer.trace import (
        data_frame,
        latent_sites,
        per_datum_log_weights,
        probe_max_plate_nesting,
        reduce_to_particle_data,
        scored_sites,
        site_log_prob,
        trace_model_guide,
    )

    n = x.shape[0]
    nesting = probe_max_plate_nesting(model, guide, (x[:1], *(a[:1] for a in args)))
    latents: dict[str, list[torch.Tensor]] = {}
    likelihood: dict[str, list[torch.Tensor]] = {}
    observed: dict[str, torch.Tensor] = {}
    weights = []
    for start in range(0, int(num_samples), sample_batch_size):
        k = min(sample_batch_size, int(num_samples) - start)
        model_trace, guide_trace = trace_model_guide(
            model, guide, (x, *args), num_particles=k, max_plate_nesting=nesting
        )
        weights.append(per_datum_log_weights(model_trace, guide_trace, max_plate_nesting=nesting))
        data_dim = data_frame(model_trace).dim
        for site in latent_sites(guide_trace):
            value = _particle_datum_first(site, k, n, nesting + 1, data_dim)
            latents.setdefault(site["name"], []).append(value)
        for site in scored_sites(model_trace):
            if not site["is_observed"]:
                continue
            log_p = reduce_to_particle_data(
                site_log_prob(site), site, num_dims=nesting + 1, data_dim=data_dim
            )
            likelihood.setdefault(site["name"], []).append(log_p.expand(k, n))
            if start == 0 and site["value"].dim() >= 1 and site["value"].shape[0] == n:
                observed[site["name"]] = site["value"]
    return _GuideDraws(
        {name: torch.cat(v) for name, v in latents.items()},
        torch.cat(weights),
        {name: torch.cat(v) for name, v in likelihood.items()},
        observed,
    )


def guide_samples(
    model: Callable,
    guide: Callable,
    x: torch.Tensor,
    *args,
    num_samples: int = 200,
    sample_batch_size: int = 200,
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """``num_samples`` draws of every latent from ``q(z | x_n)`` and their log weights.

    Returns ``({site: (S, N, *event)}, log_weights (S, N))``.
    """
    draws = _guide_draws(
        model, guide, x, *args, num_samples=num_samples, sample_batch_size=sample_batch_size
    )
    return draws.latents, draws.log_weights


def to_inference_data(
    model: Callable,
    guide: Callable,
    x: torch.Tensor,
    *args,
    num_samples: int = 200,
    sample_batch_size: int = 200,
    num_chains: int = 1,
    include_data: bool = True,
) -> Any:
    """An ArviZ ``InferenceData`` of ``num_samples`` guide draws per datum, in ArviZ's layout.

    Groups (``C`` = ``num_chains``, ``D = S / C`` draws per chain, ``N`` data; every variable
    but the observed data has dims ``(chain, draw, ...)``):

    - ``posterior``: each latent site, dims ``(chain, draw, datum, <site>_dim_0, ...)``: draws
      of the guide q(z | x_n), independent, not of the exact posterior;
    - ``log_likelihood``: each observed site, ``log p(x_n | z_s)`` per draw, dims
      ``(chain, draw, datum)`` (the pointwise log-likelihood ArviZ expects);
    - ``sample_stats``: ``log_weight``, ``log p(x_n, z_s) - log q(z_s | x_n)``, dims
      ``(chain, draw, datum)``: the importance weights that turn q's draws into the
      posterior's (normalized: :func:`importance_weights`);
    - ``observed_data``: each observed site whose value has N rows, dims
      ``(datum, <site>_dim_0, ...)`` (when ``include_data``).

    What ArviZ then computes:

    - ``az.summary(idata)``, ``az.plot_posterior(idata, var_names=["z"])``: statistics and
      plots of q's draws (weight them with :func:`importance_weights` for the posterior's).
      The draws are independent, so R-hat has nothing to diagnose: with one chain (the
      default) ArviZ reports it as NaN; ``num_chains=C`` splits the S draws into C chains,
      and R-hat is then 1 up to Monte Carlo noise by construction, whatever q is. How well q
      fits is read from the importance weights' k-hat, not from R-hat.
    - ``az.loo(idata)``: PSIS-LOO on ``log p(x_n | z_s)`` with q's draws taken for posterior
      draws. Each datum has its own latent, so leaving x_n out leaves z_n its prior: when q
      is the posterior, ``elpd_loo`` estimates ``sum_n log p(x_n)`` by importance sampling
      from the posterior to the prior, with ratios ``1 / p(x_n | z_s)`` (a smoothed
      harmonic-mean estimator [3]); ``pareto_k`` is the PSIS k-hat of these ratios,
      ``pareto_khat(-log_likelihood)``, large whenever x_n pins z_n down much more than the
      prior does, however good q is. (When q is not the posterior, these ratios do not even
      target the prior: from q's draws it takes ``p(z) / q(z | x_n)``.)
      :func:`importance_loo` estimates the same ``elpd_loo_n = log p(x_n)`` as the mean of the
      importance weights ``p(x_n, z_s) / q(z_s | x_n)``, right for any q that covers the
      posterior, and its ``pareto_k`` is the k-hat of these weights.
    - ``az.plot_khat(importance_loo(idata))``: k-hat of the importance weights per datum.

    ``num_samples`` must be a multiple of ``num_chains``. Save with ``idata.to_netcdf(path)``.
    """
    if num_chains < 1 or int(num_samples) % num_chains:
        raise ValueError(
            f"num_samples ({num_samples}) must be a positive multiple of num_chains "
            f"({num_chains}): the draws are split into chains of equal length"
        )
    draws = _guide_draws(
        model, guide, x, *args, num_samples=int(num_samples), sample_batch_size=sample_batch_size
    )
    return _inference_data(draws, num_chains, include_data)


def _inference_data(draws: _GuideDraws, num_chains: int, include_data: bool) -> Any:
    """:func:`to_inference_data`'s ``InferenceData`` of draws already made."""
    az = _arviz()
    import xarray as xr

    s, n = draws.log_weights.shape
    if s % num_chains:
        raise ValueError(f"{s} draws cannot be split into {num_chains} chains of equal length")
    coords: dict[str, Any] = {
        "chain": list(range(num_chains)),
        "draw": list(range(s // num_chains)),
        DATUM_DIM: list(range(n)),
    }

    def per_draw(value: torch.Tensor, name: str, *, dtype=None) -> xr.DataArray:
        value = value.reshape(num_chains, s // num_chains, *value.shape[1:])
        value = value.to(dtype) if dtype is not None else value
        dims = [*SAMPLE_DIMS, DATUM_DIM] + [f"{name}_dim_{i}" for i in range(value.dim() - 3)]
        return xr.DataArray(value.cpu().numpy(), dims=dims)

    groups = {
        "posterior": xr.Dataset(
            {name: per_draw(value, name) for name, value in draws.latents.items()},
            coords=coords,
        ),
        "log_likelihood": xr.Dataset(
            {
                name: per_draw(value, name, dtype=torch.float64)
                for name, value in draws.log_likelihood.items()
            },
            coords=coords,
        ),
        "sample_stats": xr.Dataset(
            {"log_weight": per_draw(draws.log_weights, "log_weight", dtype=torch.float64)},
            coords=coords,
        ),
    }
    if include_data and draws.observed:
        data = {}
        for name, value in draws.observed.items():
            dims = [DATUM_DIM] + [f"{name}_dim_{i}" for i in range(value.dim() - 1)]
            data[name] = xr.DataArray(value.detach().cpu().numpy(), dims=dims)
        groups["observed_data"] = xr.Dataset(data, coords={DATUM_DIM: list(range(n))})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return az.InferenceData(**groups)


def importance_weights(idata: Any) -> Any:
    """The normalized importance weights ``w_s / sum_s w_s`` of each datum, an xarray
    ``DataArray`` with dims ``(chain, draw, datum)`` summing to 1 over ``(chain, draw)``.

    The posterior mean of a latent is then, e.g.,
    ``(idata.posterior["z"] * importance_weights(idata)).sum(("chain", "draw"))``.
    """
    import numpy as np

    log_w = idata.sample_stats["log_weight"]
    w = np.exp(log_w - log_w.max(SAMPLE_DIMS))
    return (w / w.sum(SAMPLE_DIMS)).rename("importance_weight")


def importance_loo(idata: Any) -> Any:
    """PSIS-LOO of ``idata`` (from :func:`to_inference_data`) computed from the importance
    weights, as ArviZ's ``ELPDData`` (what ``az.loo(..., pointwise=True)`` returns).

    Each datum has its own latent, so its leave-one-out predictive density is its marginal
    likelihood: ``p(x_n | x_-n) = p(x_n) = E_q[w]``. Here ``loo_i`` is the PSIS estimate [1]
    ``log mean_s w~_s`` (``w~`` the Pareto-smoothed weights), ``elpd_loo`` its sum over
    data, ``se`` its standard error over data, ``p_loo`` ArviZ's ``lppd - elpd_loo`` (``lppd``
    from the ``log_likelihood`` group over q's draws, all observed sites summed) and
    ``pareto_k`` (dims ``(datum,)``) the k-hat of the importance weights [2]: the same numbers
    as :func:`pareto_khat` of ``sample_stats["log_weight"]`` (``-inf`` for constant weights).
    Pass it to ``az.plot_khat``; ``good_k`` is ArviZ's ``min(1 - 1 / log10(S), 0.7)``. The
    plot leaves out ``-inf`` k-hats (q equal to the posterior there), and ``show_bins``
    counts only the plotted ones.
    """
    az = _arviz()
    import xarray as xr

    log_w = _stacked(idata.sample_stats["log_weight"]).double()
    s, n = log_w.shape
    smoothed, khat = _pareto_smoothed(log_w)
    loo_i = torch.logsumexp(smoothed, 0) - math.log(s)
    log_likelihood = sum(
        _stacked(idata.log_likelihood[name]).double() for name in idata.log_likelihood.data_vars
    )
    lppd = float((torch.logsumexp(log_likelihood, 0) - math.log(s)).sum())
    elpd = float(loo_i.sum())
    good_k = min(1 - 1 / math.log10(s), 0.7)
    coords = {DATUM_DIM: idata.sample_stats[DATUM_DIM].values}
    return az.ELPDData(
        data=[
            elpd,
            float((n * loo_i.var(correction=0)) ** 0.5),
            lppd - elpd,
            s,
            n,
            bool((khat > good_k).any()),
            xr.DataArray(loo_i.numpy(), dims=[DATUM_DIM], coords=coords, name="loo_i"),
            xr.DataArray(khat.numpy(), dims=[DATUM_DIM], coords=coords, name="pareto_shape"),
            "log",
            good_k,
        ],
        index=[
            "elpd_loo",
            "se",
            "p_loo",
            "n_samples",
            "n_data_points",
            "warning",
            "loo_i",
            "pareto_k",
            "scale",
            "good_k",
        ],
    )
