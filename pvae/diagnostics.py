"""Posterior diagnostics of a model/guide pair that need ArviZ: PSIS k-hat, importance ESS
and an ArviZ ``InferenceData`` of the guide's samples. The only module of pvae that imports
ArviZ, and only inside functions, so ``import pvae`` never pays for it. (The bound ladder,
ELBO <= IWAE_K <= AIS, needs no ArviZ: :mod:`pvae.evaluation.ladder`.)

For each datum x_n and S guide samples z_s ~ q(z | x_n), the importance log weights
``log w_s = log p(x_n, z_s) - log q(z_s | x_n)`` tell how well q covers the posterior:

- ESS of the normalized weights ``wbar_s = w_s / sum_s w_s``: ``1 / sum_s wbar_s^2`` (S when
  q is the posterior, 1 when one sample dominates).
- Pareto k-hat [1, 2]: the shape of a generalized Pareto fit to the largest weights. Below 0.5
  importance sampling (and so the IWAE bound and ``log_likelihood``) is reliable; between 0.5
  and 0.7 it converges slowly; above 0.7 its estimates are not to be trusted, however large S.
  Yao et al. [2] read k-hat of ``p(x, z) / q(z | x)`` as a diagnostic of the variational
  approximation itself.

Weights that are constant to within 1e-3 nats (q equal to the posterior up to floating-point
error) have no tail to fit; their k-hat is reported as ``-inf``.

References:
    [1] Vehtari, Simpson, Gelman, Yao, Gabry. Pareto Smoothed Importance Sampling. JMLR 25,
        2024. arXiv:1507.02646
    [2] Yao, Vehtari, Simpson, Gelman. Yes, but Did It Work?: Evaluating Variational
        Inference. ICML 2018. arXiv:1802.02538
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


def _arviz():
    """Imports ArviZ on first use, without its import-time FutureWarning about ArviZ 1.0."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        import arviz

    return arviz


def pareto_khat(log_weights: torch.Tensor) -> torch.Tensor:
    """PSIS k-hat [1] of each column of ``log_weights`` ``(S, N)``, shape ``(N,)`` (float64).

    Uses ``arviz.psislw``; columns whose weights are constant within 1e-3 nats get ``-inf``.
    """
    if log_weights.dim() != 2 or log_weights.shape[0] < MIN_SAMPLES_FOR_KHAT:
        raise ValueError(
            f"k-hat needs log weights of shape (S, N) with S >= {MIN_SAMPLES_FOR_KHAT} samples "
            f"(the Pareto fit uses the largest ~3 sqrt(S)); got {tuple(log_weights.shape)}"
        )
    az = _arviz()
    lw = log_weights.detach().double().cpu()
    _, khat = az.psislw(lw.T.numpy().copy())
    khat = torch.as_tensor(khat, dtype=torch.float64).reshape(lw.shape[1])
    constant = (lw.max(0).values - lw.min(0).values) < CONSTANT_WEIGHTS_TOLERANCE
    return torch.where(constant, torch.tensor(-math.inf, dtype=torch.float64), khat)


def importance_ess(log_weights: torch.Tensor) -> torch.Tensor:
    """``1 / sum_s wbar_s^2`` per column of ``log_weights`` ``(S, N)``, shape ``(N,)``."""
    w = torch.softmax(log_weights.double(), dim=0)
    return 1.0 / (w**2).sum(0)


@dataclass
class ImportanceDiagnostics:
    """Per-datum importance-sampling diagnostics: ``log_weights`` ``(S, N)``; ``khat``,
    ``ess`` and ``log_likelihood`` (``log mean_s w_s``) of shape ``(N,)``."""

    log_weights: torch.Tensor
    khat: torch.Tensor
    ess: torch.Tensor

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
    return ImportanceDiagnostics(log_w, pareto_khat(log_w), importance_ess(log_w))


@torch.no_grad()
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
    from pvae.infer.trace import (
        latent_sites,
        per_datum_log_weights,
        probe_max_plate_nesting,
        trace_model_guide,
    )

    nesting = probe_max_plate_nesting(model, guide, (x[:1], *(a[:1] for a in args)))
    samples: dict[str, list[torch.Tensor]] = {}
    weights = []
    for start in range(0, int(num_samples), sample_batch_size):
        k = min(sample_batch_size, int(num_samples) - start)
        model_trace, guide_trace = trace_model_guide(
            model, guide, (x, *args), num_particles=k, max_plate_nesting=nesting
        )
        weights.append(per_datum_log_weights(model_trace, guide_trace, max_plate_nesting=nesting))
        for site in latent_sites(guide_trace):
            value = site["value"]
            event_dim = site["fn"].event_dim
            # (K, ..., N, *event) -> (K, N, *event): drop singleton plate dims.
            batch = value.shape[: value.dim() - event_dim]
            value = value.reshape(k, -1, *value.shape[value.dim() - event_dim :])
            if value.shape[1] != x.shape[0]:
                raise ValueError(
                    f"guide site {site['name']!r} has batch shape {tuple(batch)}; expected "
                    f"(particles, {x.shape[0]}) with the data plate"
                )
            samples.setdefault(site["name"], []).append(value)
    return {k: torch.cat(v) for k, v in samples.items()}, torch.cat(weights)


def to_inference_data(
    model: Callable,
    guide: Callable,
    x: torch.Tensor,
    *args,
    num_samples: int = 200,
    sample_batch_size: int = 200,
    include_data: bool = True,
) -> Any:
    """An ArviZ ``InferenceData`` of the guide's samples per datum and their diagnostics.

    Groups (``S`` = ``num_samples``, ``N`` data):

    - ``posterior``: each latent site, dims ``(chain=1, draw=S, datum=N, <site>_dim_0, ...)``
      (samples of q(z | x_n), not of the exact posterior: weight them by ``log_weight``);
    - ``sample_stats``: ``log_weight`` ``(chain, draw, datum)``; ``khat``, ``ess`` and
      ``log_likelihood`` (importance estimate of log p(x_n)), dims ``(datum,)``;
    - ``observed_data``: ``x`` (when ``include_data``).

    ``arviz.summary(idata)``, ``arviz.plot_posterior(idata, coords={"datum": [0]})`` and
    ``arviz.plot_khat(idata.sample_stats["khat"].values)`` work on it; save it with
    ``idata.to_netcdf(path)``.
    """
    az = _arviz()
    import xarray as xr

    samples, log_w = guide_samples(
        model, guide, x, *args, num_samples=num_samples, sample_batch_size=sample_batch_size
    )
    diagnostics = ImportanceDiagnostics(log_w, pareto_khat(log_w), importance_ess(log_w))
    s, n = log_w.shape
    coords: dict[str, Any] = {"chain": [0], "draw": list(range(s)), "datum": list(range(n))}
    posterior = {}
    for name, value in samples.items():
        dims = ["chain", "draw", "datum"] + [f"{name}_dim_{i}" for i in range(value.dim() - 2)]
        posterior[name] = xr.DataArray(value.unsqueeze(0).cpu().numpy(), dims=dims)
    stats = {
        "log_weight": xr.DataArray(
            log_w.unsqueeze(0).double().cpu().numpy(), dims=["chain", "draw", "datum"]
        ),
        "khat": xr.DataArray(diagnostics.khat.numpy(), dims=["datum"]),
        "ess": xr.DataArray(diagnostics.ess.numpy(), dims=["datum"]),
        "log_likelihood": xr.DataArray(diagnostics.log_likelihood.numpy(), dims=["datum"]),
    }
    groups = {
        "posterior": xr.Dataset(posterior, coords=coords),
        "sample_stats": xr.Dataset(stats, coords=coords),
    }
    if include_data:
        data = x.detach().cpu().numpy()
        dims = ["datum"] + [f"x_dim_{i}" for i in range(data.ndim - 1)]
        groups["observed_data"] = xr.Dataset(
            {"x": xr.DataArray(data, dims=dims)}, coords={"datum": list(range(n))}
        )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return az.InferenceData(**groups)
