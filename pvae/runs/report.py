"""A run's ``report.md``: the numbers, the training curve and the model's own report items."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pvae.models.base import ReportItem
from pvae.runs.folder import write_text

DIAGNOSTICS_MARKER = "\n## Diagnostics (`pvae diagnose`)\n"


def _metric_name(key: str) -> str:
    return key.replace("_", " ")


def plus_minus(stderr: float | None, separator: str = " ± ") -> str:
    """`` ± 1.23`` for a standard error, nothing where there is none (one test datum)."""
    return "" if stderr is None else f"{separator}{stderr:.2f}"


def write_report(
    out: Path, config: dict[str, Any], metrics: dict[str, Any], items: Sequence[ReportItem]
) -> Path:
    """Writes ``out/report.md`` (atomically) from a finished run's config and metrics."""
    from pvae.figures import loss_curve

    loss_curve(
        metrics["history"],
        out / "loss_curve.png",
        title=f"{config['model']} on {config['dataset']}",
    )
    last = metrics["history"][-1]
    size = metrics["eval_size"]
    extra = [
        f"| {_metric_name(key)} ({size} test items) | {value:.4f} |"
        for key, value in metrics.get("model_metrics", {}).items()
    ]
    monitor = config.get("monitor", "valid_bound")
    best = (
        [f"| {_metric_name(monitor)}, best epoch | {metrics['best_valid']:.4f} |"]
        if monitor != "valid_bound" and metrics.get("best_valid") is not None
        else []
    )
    lines = [
        f"# {config['model']} on {config['dataset']}",
        "",
        f"Command: `{config['command']}`",
        "",
        "| metric | value |",
        "|---|---|",
        f"| test NLL (nats, K={metrics['eval_samples']}, {size} items) | "
        f"{metrics['test_nll']:.2f}{plus_minus(metrics['test_nll_stderr'])} |",
        *extra,
        f"| best epoch (validation) | {metrics['best_epoch']} of {last['epoch']} |",
        f"| train bound, last epoch (nats per datum) | {last['train_bound']:.2f} |",
        f"| valid ELBO, last epoch | "
        f"{last.get('valid_elbo', last.get('valid_bound', float('nan'))):.2f} |",
        *best,
        f"| objective | {config['objective']} (K={config['num_particles']})"
        f"{''.join(f', {k}={v}' for k, v in config.get('objective_options', {}).items())} |",
        f"| model | {json.dumps(_abridged(config['model_config']))} |",
        f"| training time | {metrics['train_wall_time']:.0f} s |",
        f"| evaluation time | {metrics['eval_wall_time']:.0f} s |",
        "",
        _likelihood_note(config["model"]),
        "",
        "## Training curve",
        "![loss curve](loss_curve.png)",
        "",
        *(item.markdown() for item in items),
    ]
    path = out / "report.md"
    write_text(path, "\n".join(lines))
    return path


def _markdown_table(rows: Sequence[Sequence[str]]) -> str:
    """``rows`` (the first one the header) as a markdown table; ``|`` in cells escaped."""
    cells = [[str(cell).replace("|", "\\|") for cell in row] for row in rows]
    lines = ["| " + " | ".join(cells[0]) + " |", "|" + "---|" * len(cells[0])]
    lines += ["| " + " | ".join(row) + " |" for row in cells[1:]]
    return "\n".join(lines)


def append_diagnostics(
    run_dir: Path,
    figures: Sequence[tuple[str, str]],
    notes: Sequence[str],
    summary: Sequence[tuple[str, str, str]] = (),
) -> None:
    """Adds (or replaces) the report's diagnostics section: the ``summary`` table (rows of
    :func:`pvae.runs.diagnose.summary_rows`), notes, then one heading and image per figure."""
    from pvae.runs.diagnose import SUMMARY_FOOTNOTE, SUMMARY_HEADER

    report = run_dir / "report.md"
    text = report.read_text() if report.exists() else f"# {run_dir.name}\n"
    text = text.split(DIAGNOSTICS_MARKER)[0].rstrip("\n") + "\n" + DIAGNOSTICS_MARKER
    if summary:
        text += f"\n{_markdown_table([SUMMARY_HEADER, *summary])}\n\n{SUMMARY_FOOTNOTE}\n"
    text += "\nAll numbers: `diagnostics.json`; ArviZ data: `diagnostics.nc`.\n"
    for note in notes:
        text += f"\n- {note}"
    if notes:
        text += "\n"
    for title, filename in figures:
        text += f"\n### {title}\n![{title}]({filename})\n"
    write_text(report, text)


def _abridged(options: dict[str, Any], longest: int = 16) -> dict[str, Any]:
    """The model's options with long lists (a text model's vocabulary) shown by their length;
    config.json keeps them whole."""
    return {
        key: f"[{len(value)} items]" if isinstance(value, list) and len(value) > longest else value
        for key, value in options.items()
    }


def _likelihood_note(model: str) -> str:
    """What the report's NLL is: exact for a model without latents, else a bound."""
    from pvae.models.registry import get_model_class

    try:
        exact = get_model_class(model).exact_likelihood
    except ValueError:  # a model no longer registered: say what holds for every model
        exact = False
    if exact:
        return (
            "The ± is the standard error of the mean over test items. The NLL is exact: the "
            "model has no latent variable (numbers derived from it, like perplexity, too)."
        )
    return (
        "The ± is the standard error of the mean over test items. The NLL is an "
        "importance-sampled\nupper bound on -log p(x) that tightens as K grows (Burda et al. "
        "2015), in expectation;\nnumbers derived from it (perplexity) are bounds too."
    )
