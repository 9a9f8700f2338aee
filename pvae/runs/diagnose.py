"""``diagnose_model`` and ``diagnose_run``: every evaluation and diagnostic of a trained model.

``diagnose_run(RUN_DIR)`` (``pvae diagnose``) loads a run's model and test data and calls
``diagnose_model``, which asks the model for its evaluation arguments (``eval_args``): on test
data it computes the bound ladder (ELBO, IWAE-K,
AIS), PSIS k-hat and importance ESS per datum, BDMC bounds on data simulated from the model,
and the collapse metrics (active units, KL per unit, mutual information), then writes into
``out_dir``:

- ``diagnostics.json``: the metrics;
- ``diagnostics.nc``: an ArviZ ``InferenceData`` (guide samples, log-likelihood, log weights;
  k-hat per datum: ``pvae.diagnostics.importance_loo``);
- ``diagnostics_*.png``: the figures of :mod:`pvae.figures`.

:func:`summary_rows` picks the numbers a reader looks at first (the ladder, the k-hat shares,
the BDMC gap, active units, mutual information); :func:`summary_text` lays them out as the
table ``pvae diagnose`` prints, and ``report.md`` holds the same rows.

Across processes (``pvae diagnose --nproc N``, or under ``torchrun``; issue #16): with
``distributed`` (or ``sharded=True`` in one process) the data are cut into seeded chunks
(:class:`~pvae.infer.distributed.SeededShards`) that the ranks share: the guide draws (k-hat,
ESS, the IWAE rungs), AIS on the test data and BDMC (over its simulated data) run on each
rank's chunks and are gathered in order on rank 0, so the numbers are the same at any number
of processes up to :data:`~pvae.infer.distributed.SHARD_CHUNKS` (another draw, within Monte
Carlo error, than the unsharded single stream). The collapse metrics (one pass of the guide
over the data) and the files are rank 0's; every rank returns rank 0's metrics.

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

import math
import os
import textwrap
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from pvae.evaluation.ais import RUN_SCHEDULES
from pvae.infer.distributed import SeededShards
from pvae.runs.folder import write_json

AIS_STARTS = ("guide", "prior")  # where AIS on the test data starts; BDMC: the prior


def _rows(args: tuple, lo: int, hi: int) -> tuple:
    """Rows ``lo:hi`` of every tensor in ``args`` (other arguments as they are)."""
    return tuple(a[lo:hi] if isinstance(a, torch.Tensor) else a for a in args)


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


def diagnose_model(
    model: Any,
    batch: Any,
    labels: Any = None,
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
    ais_start: str = "guide",
    ais_schedule: str = "adaptive",
    distributed: Any = None,
    sharded: bool = False,
) -> tuple[dict[str, Any], list[tuple[str, str]]]:
    """Diagnoses ``model`` (a :class:`pvae.models.base.Model`) on one batch of test data.

    Args:
        model: the trained model (e.g. loaded from a run folder).
        batch: test data as a dataset's batch (``(x, y)``) or a tensor ``x``; the model's
            ``eval_args(batch)`` are diagnosed, their first ``num_data`` (default all) rows.
        labels: labels for the latent scatter plot (optional).
        out_dir: where ``diagnostics.json``, ``diagnostics.nc`` and the PNGs go.
        num_samples: guide samples per datum for k-hat, ESS and the IWAE bounds; bounds with
            K > ``num_samples`` are skipped.
        ais_steps, ais_chains: AIS on the test data (0 skips AIS and BDMC).
        ais_start: where AIS on the test data starts: ``"guide"`` (recommended: a shorter
            annealing path, so a tighter estimate at the same steps) or ``"prior"`` (Wu et
            al.'s setup). BDMC always starts from the prior.
        ais_schedule: the annealing schedule of AIS and BDMC: ``"adaptive"`` (default: the
            pilot run's, see :mod:`pvae.evaluation.ais`), ``"sigmoid"`` or ``"linear"``.
        bdmc_data, bdmc_steps: simulated data and steps (default ``ais_steps``) for BDMC
            (0 skips it).
        seed: seeds AIS and BDMC (their randomness only; the global generator is restored).
        distributed: a :class:`~pvae.infer.distributed.DistributedContext` (every rank calls
            with the same arguments): the ranks share the work (module docstring); rank 0
            alone writes the files.
        sharded: in one process, the sharded computation (seeded chunks): the numbers that
            any number of processes gives.

    Returns:
        ``(metrics, figures)``: the metrics written to ``diagnostics.json`` and a list of
        ``(title, png file name relative to out_dir)``; ``metrics["skipped"]`` lists the
        diagnostics that did not apply, with the reason.
    """
    from pvae import figures as plots
    from pvae.diagnostics import ImportanceDiagnostics, to_inference_data
    from pvae.evaluation.ais import bdmc
    from pvae.evaluation.importance import mean_and_stderr
    from pvae.evaluation.ladder import LadderRow, bound_ladder

    if not (hasattr(model, "model") and hasattr(model, "guide")):
        raise ValueError("diagnose_model needs a pvae model with .model and .guide methods")
    if ais_start not in AIS_STARTS:
        raise ValueError(f"ais_start must be one of {AIS_STARTS}, got {ais_start!r}")
    if ais_schedule not in RUN_SCHEDULES:
        raise ValueError(f"ais_schedule must be one of {RUN_SCHEDULES}, got {ais_schedule!r}")
    eval_args = getattr(model, "eval_args", None)
    args = tuple(eval_args(batch)) if eval_args is not None else (_tensor(batch),)
    x = args[0]
    if not isinstance(x, torch.Tensor) or x.dim() < 1 or x.shape[0] < 2:
        raise ValueError("the test data must hold at least two data points")
    n = x.shape[0] if num_data is None else min(int(num_data), x.shape[0])
    args = _rows(args, 0, n)
    x, extra = args[0], args[1:]
    labels = _tensor(labels)
    labels = labels[:n] if labels is not None else None
    if distributed is not None and distributed.world_size == 1:
        distributed = None
    shards = None
    if distributed is not None or sharded:
        if seed is None:
            seed = int(torch.randint(2**62, (1,)))
            seed = seed if distributed is None else distributed.broadcast_object(seed)
        shards = SeededShards(n, distributed, seed)
        progress = progress and shards.is_main
    is_main = shards is None or shards.is_main
    out = Path(out_dir)
    if is_main:
        out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    metrics: dict[str, Any] = {"num_data": n, "num_samples": int(num_samples), "skipped": {}}
    figures: list[tuple[str, str]] = []

    def figure(title: str, name: str, draw) -> None:
        draw(out / name)
        figures.append((title, name))

    def skip(name: str, reason: Any) -> None:
        text = str(reason).splitlines()[0] if str(reason) else type(reason).__name__
        metrics["skipped"][name] = text

    # The shared part: guide draws, AIS and BDMC, on every rank's chunks (shards only).
    obstacle = _ais_obstacle(model, args)
    run_ais = bool(ais_steps) and not obstacle
    steps = int(bdmc_steps or ais_steps)
    simulated = int(bdmc_data) if not extra else min(int(bdmc_data), n)
    if shards is not None:
        shared = _sharded_work(
            model,
            args,
            shards,
            num_samples=int(num_samples),
            ais_steps=int(ais_steps) if run_ais else 0,
            ais_chains=int(ais_chains),
            ais_leapfrog_steps=int(ais_leapfrog_steps),
            ais_start=ais_start,
            ais_schedule=ais_schedule,
            bdmc_data=simulated if run_ais and bdmc_data else 0,
            bdmc_steps=steps,
            distributed=distributed,
            progress=progress,
        )
        if not is_main:
            return distributed.broadcast_object(None), []

    # Importance diagnostics and their InferenceData (one set of guide samples for both).
    if shards is None:
        idata = to_inference_data(model.model, model.guide, *args, num_samples=int(num_samples))
    else:
        idata = shared["idata"]
    importance = ImportanceDiagnostics.from_inference_data(idata)
    log_w, khat, ess = importance.log_weights, importance.khat, importance.ess
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

    # Bound ladder: ELBO, IWAE-K from the same samples, AIS where the latents allow it.
    usable = [k for k in ks if int(k) <= int(num_samples)]
    if ais_steps and obstacle:
        skip("ais", obstacle)
    ladder = bound_ladder(
        model.model,
        model.guide,
        *args,
        ks=usable,
        ais_steps=int(ais_steps) if run_ais and shards is None else None,
        ais_chains=int(ais_chains),
        ais_from_guide=ais_start == "guide",
        ais_leapfrog_steps=int(ais_leapfrog_steps),
        ais_schedule=ais_schedule,
        seed=seed,
        progress=progress,
        log_weights=log_w,
    )
    if run_ais and shards is not None:
        ladder.rows.append(LadderRow(f"AIS (T={int(ais_steps)})", int(ais_chains), shared["ais"]))
    metrics["ladder"] = ladder.as_dict()
    metrics["elbo"] = mean_and_stderr(ladder.rows[0].values)
    metrics["iwae"] = {
        str(r.num_samples): mean_and_stderr(r.values) for r in ladder.rows[1 : len(usable)]
    }
    if run_ais:
        ais_row = ladder.rows[-1]
        metrics["ais"] = {
            **mean_and_stderr(ais_row.values),
            "steps": int(ais_steps),
            "chains": int(ais_chains),
            "start": ais_start,
            "schedule": ais_schedule,
        }
    figure("Bound ladder", "diagnostics_ladder.png", lambda p: plots.plot_bound_ladder(ladder, p))

    # BDMC on data simulated from the model (given the test data's other arguments).
    if ais_steps and bdmc_data:
        if not run_ais:
            skip("bdmc", metrics["skipped"].get("ais", "AIS is off"))
        else:
            if shards is None:
                try:
                    result = bdmc(
                        model.model,
                        simulated,
                        steps,
                        int(ais_chains),
                        *_rows(extra, 0, simulated),
                        example_x=x[:1],
                        leapfrog_steps=int(ais_leapfrog_steps),
                        schedule=ais_schedule,
                        seed=seed,
                        progress=progress,
                    )
                    bounds = (result.lower, result.upper)
                except NotImplementedError as error:
                    bounds = error
            else:
                bounds = shared["bdmc"]
            if isinstance(bounds, NotImplementedError):
                # an autoregressive likelihood scores sentences but cannot draw them in one site
                skip("bdmc", f"the model cannot simulate data from its observed site: {bounds}")
            else:
                lower, upper = bounds
                metrics["bdmc"] = {
                    "num_data": simulated,
                    "steps": steps,
                    "chains": int(ais_chains),
                    "schedule": ais_schedule,
                    "lower_mean": float(lower.mean()),
                    "upper_mean": float(upper.mean()),
                    "gap_mean": float((upper - lower).mean()),
                    "gap_stderr": mean_and_stderr(upper - lower)["stderr"],
                }

    # Posterior collapse: metrics of one latent with the data plate as its only batch dim
    # (the first latent site); a model whose first latent has other plates (a set's context
    # in the data plate at dim -2) skips them, saying so.
    collapse_obstacle = _collapse_obstacle(model, args)
    if collapse_obstacle is not None:
        for name in ("active_units", "kl_per_dimension", "mutual_information", "latent_plots"):
            skip(name, collapse_obstacle)
    else:
        _collapse_metrics(model, args, labels, metrics, figure, skip, plots)

    metrics["seconds"] = time.perf_counter() - start
    metrics["files"] = ["diagnostics.json", "diagnostics.nc", *(name for _, name in figures)]
    if shards is not None:
        metrics["shards"] = {
            "chunks": len(shards.bounds),
            "processes": 1 if distributed is None else distributed.world_size,
            "seed": int(seed),
        }
    metrics = _clean(metrics)
    write_json(out / "diagnostics.json", metrics)
    if distributed is not None:
        distributed.broadcast_object(metrics)
    return metrics, figures


def _sharded_work(
    model: Any,
    args: tuple,
    shards: SeededShards,
    *,
    num_samples: int,
    ais_steps: int,
    ais_chains: int,
    ais_leapfrog_steps: int,
    ais_start: str,
    ais_schedule: str,
    bdmc_data: int,
    bdmc_steps: int,
    distributed: Any,
    progress: bool,
) -> dict[str, Any]:
    """Guide draws, AIS and BDMC on this rank's chunks, gathered on rank 0: ``{"idata",
    "ais" (N,), "bdmc" ((lower, upper) bounds, or the error that stopped the simulation)}``
    there, ``{}`` elsewhere."""
    from pvae.diagnostics import _guide_draws, _GuideDraws, _inference_data
    from pvae.evaluation.ais import ais_log_likelihood, bdmc

    shared: dict[str, Any] = {}
    draws = shards.map(
        0,
        lambda lo, hi: _guide_draws(
            model.model,
            model.guide,
            *_rows(args, lo, hi),
            num_samples=num_samples,
            sample_batch_size=200,
        ),
    )
    if shards.is_main:
        shared["idata"] = _inference_data(_GuideDraws.concatenate(draws), 1, True)
    if ais_steps:
        values = shards.map(
            1,
            lambda lo, hi: (
                ais_log_likelihood(
                    model.model,
                    *_rows(args, lo, hi),
                    num_steps=ais_steps,
                    num_chains=ais_chains,
                    guide=model.guide if ais_start == "guide" else None,
                    leapfrog_steps=ais_leapfrog_steps,
                    schedule=ais_schedule,
                    progress=progress,
                ).values
            ),
        )
        if shards.is_main:
            shared["ais"] = torch.cat(values)
    if ais_steps and bdmc_data:
        extra = args[1:]
        simulation = SeededShards(bdmc_data, distributed, shards.seed)

        def sandwich(lo: int, hi: int) -> tuple[torch.Tensor, torch.Tensor]:
            result = bdmc(
                model.model,
                hi - lo,
                bdmc_steps,
                ais_chains,
                *_rows(extra, lo, hi),
                example_x=args[0][:1],
                leapfrog_steps=ais_leapfrog_steps,
                schedule=ais_schedule,
                progress=progress,
            )
            return result.lower, result.upper

        try:
            bounds = simulation.map(2, sandwich)
        except NotImplementedError as error:
            shared["bdmc"] = error
        else:
            if shards.is_main:
                shared["bdmc"] = (
                    torch.cat([lower for lower, _ in bounds]),
                    torch.cat([upper for _, upper in bounds]),
                )
    return shared


def _collapse_obstacle(model: Any, args: tuple) -> str | None:
    """Why the collapse metrics do not apply, or ``None``: they need the guide's first latent
    site to have the data plate as its only batch dim."""
    import pyro.poutine as poutine

    from pvae.infer.trace import latent_sites

    with torch.no_grad():
        trace = poutine.trace(model.guide).get_trace(*_rows(args, 0, 2))
    sites = latent_sites(trace)
    if not sites:
        return "the guide has no latent site"
    batch = tuple(sites[0]["fn"].batch_shape)
    if len(batch) != 1:
        return (
            f"they need a latent whose only batch dim is the data plate; "
            f"{sites[0]['name']!r} has batch shape {batch} for 2 data"
        )
    return None


def _collapse_metrics(model, args, labels, metrics, figure, skip, plots) -> None:
    """Active units, KL per unit, mutual information and the latent figures, into
    ``metrics``."""
    from pvae.evaluation.collapse import (
        active_units,
        kl_per_dimension,
        mutual_information,
        posterior_means,
    )

    x = args[0]
    n = x.shape[0]
    units = active_units(model, *args)
    metrics["active_units"] = {
        "count": units.count,
        "total": int(units.variances.numel()),
        "threshold": units.threshold,
        "variances": units.variances.tolist(),
    }
    try:
        kl = kl_per_dimension(model, *args)
    except ValueError as error:  # latents that do not factorize (vMF): no per-unit KL
        metrics["kl_per_dimension"] = None
        skip("kl_per_dimension", error)
    else:
        metrics["kl_per_dimension"] = kl.tolist()
        metrics["kl_total"] = float(kl.sum())
        figure(
            "KL per latent unit",
            "diagnostics_kl.png",
            lambda p: plots.plot_kl_per_dimension(kl, p),
        )
    try:
        metrics["mutual_information"] = mutual_information(model, *args, num_samples=10)
        metrics["mutual_information_max"] = math.log(n)
    except (RuntimeError, NotImplementedError) as error:
        # I(x; z) scores every datum's code under every other datum's q(z | x); a guide
        # whose density cannot broadcast over other data (a conditional flow) cannot.
        metrics["mutual_information"] = None
        skip("mutual_information", f"q(z | x) cannot score other data's codes ({error})")

    means = posterior_means(model, *args)
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


def _ais_obstacle(model: Any, args: tuple) -> str | None:
    """Why AIS cannot run on the model's latents, or ``None``: its HMC moves in an
    unconstrained space, so every latent site must be continuous with a bijection from R^n
    to its support (a discrete label, a sphere or a mixture's support have none)."""
    import pyro.poutine as poutine
    from torch.distributions import biject_to

    from pvae.infer.trace import latent_sites

    with torch.no_grad(), torch.random.fork_rng(devices=[]):  # a check draws no randomness
        trace = poutine.trace(model.model).get_trace(*_rows(args, 0, 2))
    if not latent_sites(trace):
        return "the model has no latent variable (its importance-sampled log p(x) is exact)"
    for site in latent_sites(trace):
        support = site["fn"].support
        if support.is_discrete:
            return f"AIS needs continuous latents; {site['name']!r} is discrete"
        try:
            biject_to(support)
        except NotImplementedError:
            return (
                f"AIS runs HMC in an unconstrained space; the support of {site['name']!r} "
                f"({type(support).__name__}) has no bijection to it"
            )
    return None


def diagnose_run(
    run_dir: str | os.PathLike,
    *,
    num_data: int = 100,
    num_samples: int = 1000,
    ais_steps: int = 500,
    ais_chains: int = 8,
    bdmc_data: int = 20,
    checkpoint: str = "best",
    seed: int = 0,
    progress: bool = True,
    ais_start: str = "guide",
    ais_schedule: str = "adaptive",
    distributed: Any = None,
) -> dict[str, Any]:
    """Diagnoses a run folder's model on ``num_data`` test items drawn with ``seed``, writes
    ``diagnostics.json``, ``diagnostics.nc`` and the figures there, and adds a diagnostics
    section (with what was skipped, and why) to its ``report.md``. Returns the metrics.

    With ``distributed`` (every rank of a ``torchrun`` launch calls it) the ranks share the
    work (:func:`diagnose_model`) and rank 0 writes."""
    from pvae.data import load_dataset
    from pvae.infer.distributed import main_first
    from pvae.runs.evaluate import whole_batch
    from pvae.runs.folder import load_run
    from pvae.runs.report import append_diagnostics

    if num_samples < 50:
        # PSIS fits a Pareto tail to the largest ~3 sqrt(S) weights of each datum.
        raise ValueError(f"num_samples must be >= 50 for PSIS k-hat, got {num_samples}")
    if distributed is not None and distributed.world_size == 1:
        distributed = None
    is_main = distributed is None or distributed.is_main
    model, config = load_run(run_dir, checkpoint)
    with main_first(distributed):  # rank 0 downloads, if anything is missing
        test = load_dataset(
            config["dataset"], "test", size=num_data, size_seed=seed, progress=progress and is_main
        )
    batch = whole_batch(test)
    labels = batch[1] if isinstance(batch, (tuple, list)) and len(batch) > 1 else None
    metrics, figures = diagnose_model(
        model,
        batch,
        labels,
        run_dir,
        num_samples=num_samples,
        ais_steps=ais_steps,
        ais_chains=ais_chains,
        bdmc_data=bdmc_data,
        seed=seed,
        progress=progress,
        ais_start=ais_start,
        ais_schedule=ais_schedule,
        distributed=distributed,
    )
    if is_main:
        append_diagnostics(Path(run_dir), figures, skipped_notes(metrics), summary_rows(metrics))
    return metrics


def _number(value: float | None, digits: int = 2) -> str:
    """``value`` with ``digits`` decimals; ``n/a`` for the nulls that stand for inf/nan."""
    return "n/a" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


def summary_rows(metrics: dict[str, Any]) -> list[tuple[str, str, str]]:
    """The headline numbers of ``diagnose_model``'s ``metrics`` as ``(diagnostic, value, note)``
    rows: each bound of the ladder (mean ± standard error over data, and its paired gap to the
    ladder's last bound), the shares of k-hat above 0.5 and 0.7, the BDMC gap, active units,
    mutual information and the total KL; a diagnostic that was skipped has no row."""
    rows = []
    ladder = metrics.get("ladder") or []
    reference = ladder[-1]["bound"] if ladder else ""
    for i, entry in enumerate(ladder):
        if i == len(ladder) - 1:
            note = "the reference of the gaps above" if len(ladder) > 1 else ""
        else:
            gap, gap_se = entry["minus_reference"], entry["minus_reference_stderr"]
            note = (
                f"{_number(None if gap is None else -gap)} ± {_number(gap_se)} below "
                f"{reference} (paired)"
            )
        value = f"{_number(entry['mean'])} ± {_number(entry['stderr'])} nats"
        rows.append((entry["bound"], value, note))
    importance = metrics.get("importance")
    if importance:
        for level, note in (
            ("0.5", "weights of infinite variance: slow convergence"),
            ("0.7", "importance sampling unreliable for these data"),
        ):
            share = importance[f"share_khat_above_{level}"]
            rows.append((f"PSIS k-hat > {level}", f"{100 * share:.0f} % of data", note))
    bdmc = metrics.get("bdmc")
    if bdmc:
        rows.append(
            (
                "BDMC gap",
                f"{_number(bdmc['gap_mean'])} ± {_number(bdmc['gap_stderr'])} nats",
                f"upper - lower bound, {bdmc['num_data']} simulated data, "
                f"{bdmc['steps']} AIS steps",
            )
        )
    units = metrics.get("active_units")
    if units:
        rows.append(
            (
                "active units",
                f"{units['count']} / {units['total']}",
                f"variance over data of E[z_u | x] above {units['threshold']:g}",
            )
        )
    information = metrics.get("mutual_information")
    if information is not None:
        rows.append(
            (
                "mutual information I(x; z)",
                f"{_number(information)} nats",
                f"at most log {metrics['num_data']} = {_number(metrics['mutual_information_max'])}",
            )
        )
    if metrics.get("kl_total") is not None:
        rows.append(
            ("KL(q(z | x) || p(z))", f"{_number(metrics['kl_total'])} nats", "mean over data")
        )
    return rows


def skipped_notes(metrics: dict[str, Any]) -> list[str]:
    """One line per diagnostic that did not apply: ``"NAME skipped: REASON"``."""
    return [f"{name} skipped: {reason}" for name, reason in metrics.get("skipped", {}).items()]


SUMMARY_HEADER = ("diagnostic", "value", "note")
SUMMARY_FOOTNOTE = (
    "± is the standard error over the test data; the gaps between bounds are paired "
    "(the same data), hence far more precise."
)


def summary_text(metrics: dict[str, Any], run_dir: str | os.PathLike | None = None) -> str:
    """The table ``pvae diagnose`` prints: :func:`summary_rows` in aligned columns, then what
    was skipped and why, and where the files are."""
    where = f" {run_dir}" if run_dir is not None else ""
    lines = [
        f"Diagnostics of{where}: {metrics['num_data']} test data, "
        f"{metrics['num_samples']} importance samples each, {metrics.get('seconds') or 0:.0f} s",
        "",
    ]
    table = [SUMMARY_HEADER, *summary_rows(metrics)]
    widths = [max(len(row[c]) for row in table) for c in range(3)]
    for i, (name, value, note) in enumerate(table):
        lines.append(f"{name:<{widths[0]}}  {value:<{widths[1]}}  {note}".rstrip())
        if i == 0:
            lines.append("  ".join("-" * width for width in widths))
    lines += ["", *textwrap.wrap(SUMMARY_FOOTNOTE, 96)]
    lines += skipped_notes(metrics)
    folder = Path(run_dir) if run_dir is not None else Path(".")
    lines.append(
        f"All numbers: {folder / 'diagnostics.json'}; table and figures: {folder / 'report.md'}"
    )
    return "\n".join(lines)
