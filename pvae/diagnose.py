"""``diagnose_run``: every evaluation and diagnostic of a trained model in one call.

Used by ``pvae diagnose RUN_DIR``: on test data it computes the bound ladder (ELBO, IWAE-K,
AIS), PSIS k-hat and importance ESS per datum, BDMC bounds on data simulated from the model,
and the collapse metrics (active units, KL per unit, mutual information), then writes into
``out_dir``:

- ``diagnostics.json``: the metrics;
- ``diagnostics.nc``: an ArviZ ``InferenceData`` (guide samples, log weights, k-hat, ESS);
- ``diagnostics_*.png``: the figures of :mod:`pvae.figures`.

References:
    [1] Wu, Burda, Salakhutdinov, Grosse. On the Quantitative Analysis of Decoder-Based
        Generative Models. ICLR 2017. arXiv:1611.04273
    [2] Grosse, Ghahramani, Adams. Sandwiching the marginal likelihood using bidirectional
        Monte Carlo. arXiv:1511.02543
    [3] Yao, Vehtari, Simpson, Gelman. Yes, but Did It Work?: Evaluating Variational
        Inference. ICML 2018. arXiv:1802.02538
    [4] Burda, Grosse, Salakhutdinov. Importance Weighted Autoencoders. arXiv:1509.00519
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch


def _tensor(values: Any) -> torch.Tensor | None:
    if values is None:
        return None
    if isinstance(values, torch.Tensor):
        return values
    return torch.as_tensor(values)


def _finite(value: float) -> float | None:
    """JSON has no inf/nan: report them as null."""
    return value if math.isfinite(value) else None


def _clean(obj: Any) -> Any:
    if isinstance(obj, float):
        return _finite(obj)
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_clean(v) for v in obj]
    return obj


def diagnose_run(
    model: Any,
    x_test: torch.Tensor,
    y_test: Any = None,
    out_dir: str | os.PathLike = ".",
    *,
    num_data: int | None = None,
    num_samples: int = 1000,
    ks: Sequence[int] = (1, 10, 100, 1000),
    ais_steps: int = 500,
    ais_chains: int = 8,
    ais_leapfrog_steps: int = 10,
    bdmc_data: int = 20,
    bdmc_steps: int | None = None,
    seed: int | None = 0,
    progress: bool = True,
) -> tuple[dict[str, Any], list[tuple[str, str]]]:
    """Diagnoses ``model`` (a pvae model with ``model``/``guide`` methods) on ``x_test``.

    Args:
        model: the trained model (e.g. loaded from a run folder).
        x_test: test data ``(N, ...)``; the first ``num_data`` (default all) are used.
        y_test: labels for the latent scatter plot (optional).
        out_dir: where ``diagnostics.json``, ``diagnostics.nc`` and the PNGs go.
        num_samples: guide samples per datum for k-hat, ESS and the IWAE bounds; bounds with
            K > ``num_samples`` are skipped.
        ais_steps, ais_chains: AIS on the test data (0 skips AIS and BDMC).
        bdmc_data, bdmc_steps: simulated data and steps (default ``ais_steps``) for BDMC
            (0 skips it).
        seed: seeds AIS and BDMC (their randomness only; the global generator is restored).

    Returns:
        ``(metrics, figures)``: the metrics written to ``diagnostics.json`` and a list of
        ``(title, png file name relative to out_dir)``.
    """
    from pvae import figures as plots
    from pvae.diagnostics import to_inference_data
    from pvae.evaluation.ais import bdmc
    from pvae.evaluation.collapse import (
        active_units,
        kl_per_dimension,
        mutual_information,
        posterior_means,
    )
    from pvae.evaluation.importance import mean_and_stderr
    from pvae.evaluation.ladder import bound_ladder

    if not (hasattr(model, "model") and hasattr(model, "guide")):
        raise ValueError("diagnose_run needs a pvae model with .model and .guide methods")
    x_test = _tensor(x_test)
    if x_test is None or x_test.dim() < 1 or x_test.shape[0] < 2:
        raise ValueError("x_test must hold at least two data points")
    n = x_test.shape[0] if num_data is None else min(int(num_data), x_test.shape[0])
    x = x_test[:n]
    labels = _tensor(y_test)
    labels = labels[:n] if labels is not None else None
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    metrics: dict[str, Any] = {"num_data": n, "num_samples": int(num_samples)}
    figures: list[tuple[str, str]] = []

    def figure(title: str, name: str, draw) -> None:
        draw(out / name)
        figures.append((title, name))

    # Importance diagnostics and their InferenceData (one set of guide samples for both).
    idata = to_inference_data(model.model, model.guide, x, num_samples=int(num_samples))
    stats = idata.sample_stats
    log_w = torch.as_tensor(stats["log_weight"].values[0])
    khat = torch.as_tensor(stats["khat"].values)
    ess = torch.as_tensor(stats["ess"].values)
    finite_khat = khat[torch.isfinite(khat)]
    metrics["importance"] = {
        "khat_max": float(khat.max()),
        "khat_median": float(finite_khat.median()) if finite_khat.numel() else float("-inf"),
        "share_khat_above_0.5": float((khat > 0.5).double().mean()),
        "share_khat_above_0.7": float((khat > 0.7).double().mean()),
        "ess_mean": float(ess.mean()),
        "relative_ess_mean": float(ess.mean()) / int(num_samples),
    }
    idata.to_netcdf(str(out / "diagnostics.nc"))
    figure("PSIS k-hat per test datum", "diagnostics_khat.png", lambda p: plots.plot_khat(khat, p))

    # Bound ladder: ELBO, IWAE-K from the same samples, AIS.
    usable = [k for k in ks if int(k) <= int(num_samples)]
    ladder = bound_ladder(
        model.model,
        model.guide,
        x,
        ks=usable,
        ais_steps=int(ais_steps) or None,
        ais_chains=int(ais_chains),
        ais_leapfrog_steps=int(ais_leapfrog_steps),
        seed=seed,
        progress=progress,
        log_weights=log_w,
    )
    metrics["ladder"] = ladder.as_dict()
    metrics["elbo"] = mean_and_stderr(ladder.rows[0].values)
    metrics["iwae"] = {
        str(r.num_samples): mean_and_stderr(r.values) for r in ladder.rows[1 : len(usable)]
    }
    if ais_steps:
        ais_row = ladder.rows[-1]
        metrics["ais"] = {
            **mean_and_stderr(ais_row.values),
            "steps": int(ais_steps),
            "chains": int(ais_chains),
        }
    figure("Bound ladder", "diagnostics_ladder.png", lambda p: plots.plot_bound_ladder(ladder, p))

    # BDMC on data simulated from the model.
    if ais_steps and bdmc_data:
        steps = int(bdmc_steps or ais_steps)
        result = bdmc(
            model.model,
            int(bdmc_data),
            steps,
            int(ais_chains),
            example_x=x[:1],
            leapfrog_steps=int(ais_leapfrog_steps),
            seed=seed,
            progress=progress,
        )
        metrics["bdmc"] = {
            "num_data": int(bdmc_data),
            "steps": steps,
            "chains": int(ais_chains),
            "lower_mean": result.lower_mean,
            "upper_mean": result.upper_mean,
            "gap_mean": result.gap_mean,
            "gap_stderr": mean_and_stderr(result.gap)["stderr"],
        }

    # Posterior collapse.
    units = active_units(model, x)
    metrics["active_units"] = {
        "count": units.count,
        "total": int(units.variances.numel()),
        "threshold": units.threshold,
        "variances": units.variances.tolist(),
    }
    try:
        kl = kl_per_dimension(model, x)
    except ValueError as error:  # latents that do not factorize (vMF): no per-unit KL
        metrics["kl_per_dimension"] = None
        metrics["kl_per_dimension_note"] = str(error)
    else:
        metrics["kl_per_dimension"] = kl.tolist()
        metrics["kl_total"] = float(kl.sum())
        figure(
            "KL per latent unit",
            "diagnostics_kl.png",
            lambda p: plots.plot_kl_per_dimension(kl, p),
        )
    metrics["mutual_information"] = mutual_information(model, x, num_samples=10)
    metrics["mutual_information_max"] = math.log(n)

    means = posterior_means(model, x)
    figure(
        "Guide means (PCA) by label",
        "diagnostics_latents.png",
        lambda p: plots.plot_latent_scatter(means, labels, p),
    )
    if hasattr(model, "decode_logits") and x.dim() >= 3:
        if hasattr(model, "latent_dim") and means.shape[1] == int(model.latent_dim):
            figure(
                "Latent traversals (highest-variance units)",
                "diagnostics_traversals.png",
                lambda p: plots.plot_latent_traversals(model, p, units.variances),
            )
        pairs = min(4, n // 2)
        if pairs:
            figure(
                "Interpolations between test images",
                "diagnostics_interpolations.png",
                lambda p: plots.plot_interpolations(model, x[:pairs], x[pairs : 2 * pairs], p),
            )

    metrics["seconds"] = time.perf_counter() - start
    metrics["files"] = ["diagnostics.json", "diagnostics.nc", *(name for _, name in figures)]
    metrics = _clean(metrics)
    (out / "diagnostics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    return metrics, figures
