"""Figures, each written to a PNG file: those of a training run and those of the diagnostics.

Built on ``matplotlib.figure.Figure`` directly (never ``pyplot``), so they neither touch
global figure state nor need a display; safe under any backend, ``Agg`` included. Nothing
imports this module at ``import pvae``: matplotlib is paid for only by who draws.

A training run (``pvae train``, ``pvae sample``):

- :func:`image_grid`: images ``(N, C, H, W)`` as one grid.
- :func:`loss_curve`: train and validation bounds per epoch.
- :func:`plot_confusion_matrix`: a classifier's counts per true and predicted class.

Diagnostics (``pvae diagnose``):

- :func:`plot_khat`: PSIS k-hat per datum with the 0.5 and 0.7 thresholds [1].
- :func:`plot_bound_ladder`: each bound of the ladder (IWAE-K, AIS) minus the ELBO, with the
  standard error of that *paired* difference [2, 3].
- :func:`plot_kl_per_dimension`: KL(q(z_u | x) || p(z_u)) per unit, sorted.
- :func:`plot_latent_scatter`: guide means in 2-D (PCA above two dims), coloured by label.
- :func:`plot_latent_traversals`: decoded images along the highest-variance units.
- :func:`plot_interpolations`: decoded images between the guide means of two images.

Axes that count things (epochs, data) get integer ticks; every line and colour is named in a
legend or an axis label.

Every image grid goes through one helper, :func:`_draw_images`: the images tiled into one
array with a one-pixel white border, drawn by a single ``imshow``.

References:
    [1] Vehtari, Simpson, Gelman, Yao, Gabry. Pareto Smoothed Importance Sampling.
        arXiv:1507.02646
    [2] Burda, Grosse, Salakhutdinov. Importance Weighted Autoencoders. arXiv:1509.00519
    [3] Wu, Burda, Salakhutdinov, Grosse. On the Quantitative Analysis of Decoder-Based
        Generative Models. arXiv:1611.04273
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
import torch
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

PathLike = str | os.PathLike


def _figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path: PathLike, tight: bool = True) -> Path:
    """Writes ``fig`` at 100 dpi; ``tight`` crops it to what is drawn."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100, bbox_inches="tight" if tight else None)
    return path


def _numpy(values: Any) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        return values.detach().cpu().double().numpy()
    return np.asarray(values, dtype=float)


def _tile(images: np.ndarray, border: int = 1) -> np.ndarray:
    """One array of ``images`` ``(rows, cols, C, H, W)`` or ``(rows, cols, H, W)`` (values
    clipped to [0, 1]; C is 1 or 3), each framed by ``border`` white pixels: shape
    ``(rows (H + 2 border), cols (W + 2 border))``, with a trailing 3 for colour images."""
    if images.ndim == 5:
        images = images[:, :, 0] if images.shape[2] == 1 else np.moveaxis(images, 2, -1)
    images = np.clip(images, 0.0, 1.0)
    rows, cols, h, w = images.shape[:4]
    framed = np.pad(
        images,
        [(0, 0), (0, 0), (border, border), (border, border)] + [(0, 0)] * (images.ndim - 4),
        constant_values=1.0,
    )
    # (rows, cols, H', W', ...) -> (rows, H', cols, W', ...) -> (rows H', cols W', ...)
    framed = np.swapaxes(framed, 1, 2)
    return framed.reshape(rows * (h + 2 * border), cols * (w + 2 * border), *images.shape[4:])


def _draw_images(
    ax: Axes,
    images: np.ndarray,
    row_labels: Sequence[str] | None = None,
    fontsize: float = 7,
    col_labels: Sequence[str] | None = None,
) -> None:
    """Draws ``images`` ``(rows, cols, C, H, W)`` or ``(rows, cols, H, W)`` as one grid on
    ``ax``, with ``row_labels`` to the left of the rows and ``col_labels`` below the columns."""
    rows, cols = images.shape[:2]
    mosaic = _tile(images)
    ax.imshow(mosaic, cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
    if row_labels is None and col_labels is None:
        ax.set_axis_off()
        return
    height, width = mosaic.shape[0] / rows, mosaic.shape[1] / cols
    ax.set_yticks([(r + 0.5) * height - 0.5 for r in range(rows)] if row_labels else [])
    ax.set_yticklabels(list(row_labels or []), fontsize=fontsize)
    ax.set_xticks([(c + 0.5) * width - 0.5 for c in range(cols)] if col_labels else [])
    ax.set_xticklabels(list(col_labels or []), fontsize=fontsize)
    ax.tick_params(length=0)
    for spine in ax.spines.values():
        spine.set_visible(False)


def image_grid(
    images: torch.Tensor, path: PathLike, *, nrow: int | None = None, title: str | None = None
) -> Path:
    """Saves ``images`` of shape ``(n, C, H, W)`` (values in [0, 1]; C is 1 or 3) as one grid
    PNG with ``nrow`` images per row (default ``ceil(sqrt(n))``); empty cells are white."""
    images = images.detach().float().cpu().clamp(0, 1)
    n = images.shape[0]
    nrow = nrow or math.ceil(math.sqrt(n))
    ncol = math.ceil(n / nrow)
    cells = torch.ones(ncol * nrow, *images.shape[1:])
    cells[:n] = images
    fig = _figure(max(2.0, nrow * 0.4), max(2.0, ncol * 0.4) + (0.3 if title else 0))
    ax = fig.add_axes((0, 0, 1, 0.92 if title else 1))
    _draw_images(ax, cells.reshape(ncol, nrow, *images.shape[1:]).numpy())
    if title:
        fig.suptitle(title, fontsize=9)
    return _save(fig, path, tight=False)


def plot_point_sets(
    rows: Sequence[Any],
    path: PathLike,
    *,
    row_labels: Sequence[str] | None = None,
    flip_y: bool = True,
    title: str | None = None,
) -> Path:
    """Sets of 2-D points as a grid of scatter plots: ``rows`` is a sequence of ``(N, S, 2)``
    arrays (one row of ``N`` panels each, the same ``N`` for all), a panel one set of ``S``
    points ``(x, y)``; ``flip_y`` puts y = 0 at the top, as an image's row 0."""
    arrays = [_numpy(r) for r in rows]
    if not arrays or any(a.ndim != 3 or a.shape[-1] != 2 for a in arrays):
        raise ValueError("rows must be a non-empty sequence of (N, S, 2) point sets")
    cols = arrays[0].shape[0]
    if any(a.shape[0] != cols for a in arrays):
        raise ValueError(f"every row must have {cols} sets, got {[a.shape[0] for a in arrays]}")
    if row_labels is not None and len(row_labels) != len(arrays):
        raise ValueError(f"{len(arrays)} rows but {len(row_labels)} row labels")
    everything = np.concatenate([a.reshape(-1, 2) for a in arrays])
    low, high = everything.min(0), everything.max(0)
    pad = 0.05 * np.maximum(high - low, 1e-9)
    fig = _figure(1.2 * cols + 0.6, 1.2 * len(arrays) + (0.3 if title else 0))
    axes = np.asarray(fig.subplots(len(arrays), cols, squeeze=False))
    for r, points in enumerate(arrays):
        for c in range(cols):
            ax = axes[r, c]
            ax.scatter(points[c, :, 0], points[c, :, 1], s=3, color="black")
            ax.set_xlim(low[0] - pad[0], high[0] + pad[0])
            bottom, top = low[1] - pad[1], high[1] + pad[1]
            ax.set_ylim((top, bottom) if flip_y else (bottom, top))
            ax.set_aspect("equal", adjustable="box")
            ax.set_xticks([])
            ax.set_yticks([])
            if c == 0 and row_labels is not None:
                ax.set_ylabel(row_labels[r], fontsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    return _save(fig, path)


def plot_set_histograms(
    sets: Any,
    generated: Any,
    path: PathLike,
    *,
    titles: Sequence[str] | None = None,
    bins: int = 30,
) -> Path:
    """One panel per 1-D set: the histogram of its members ``sets[i]`` ``(N, S)`` and of new
    members drawn given it ``generated[i]`` ``(N, S')``, as densities on shared bins."""
    real, new = _numpy(sets), _numpy(generated)
    real, new = real.reshape(real.shape[0], -1), new.reshape(new.shape[0], -1)
    if real.shape[0] != new.shape[0]:
        raise ValueError(f"{real.shape[0]} sets but {new.shape[0]} generated sets")
    if titles is not None and len(titles) != real.shape[0]:
        raise ValueError(f"{real.shape[0]} sets but {len(titles)} titles")
    cols = real.shape[0]
    fig = _figure(2.4 * cols, 2.2)
    axes = np.asarray(fig.subplots(1, cols, squeeze=False))[0]
    for i, ax in enumerate(axes):
        edges = np.histogram_bin_edges(np.concatenate([real[i], new[i]]), bins=bins)
        ax.hist(real[i], bins=edges, density=True, alpha=0.6, label="set")
        ax.hist(new[i], bins=edges, density=True, histtype="step", color="black", label="drawn")
        ax.tick_params(labelsize=6)
        if titles is not None:
            ax.set_title(titles[i], fontsize=8)
    axes[0].legend(fontsize=6)
    return _save(fig, path)


def loss_curve(history: Sequence[dict], path: PathLike, *, title: str = "") -> Path:
    """Train and validation bounds per epoch (nats per datum)."""
    fig = _figure(5, 3.2)
    ax = fig.add_subplot(1, 1, 1)
    epochs = [h["epoch"] for h in history]
    ax.plot(epochs, [h["train_bound"] for h in history], marker="o", label="train bound")
    for key, label in (("valid_elbo", "valid ELBO"), ("valid_bound", "valid bound")):
        values = [h[key] for h in history if key in h]
        if values and not (
            key == "valid_bound" and values == [h.get("valid_elbo") for h in history]
        ):
            ax.plot(epochs[: len(values)], values, marker="s", label=label)
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("nats per datum")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, path, tight=False)


def plot_confusion_matrix(
    counts: Any,
    path: PathLike,
    *,
    class_names: Sequence[str] | None = None,
    title: str = "",
) -> Path:
    """``counts[i, j]`` (true class i predicted as j) as a grid, each cell showing its count
    and its share of row i (the recall of class i on the diagonal); accuracy in the title."""
    values = _numpy(counts).astype(np.int64)
    if values.ndim != 2 or values.shape[0] != values.shape[1]:
        raise ValueError(f"counts must be a square matrix, got shape {values.shape}")
    classes = values.shape[0]
    names = list(class_names) if class_names is not None else [str(c) for c in range(classes)]
    if len(names) != classes:
        raise ValueError(f"{len(names)} class names for {classes} classes")
    shares = values / np.maximum(values.sum(1, keepdims=True), 1)
    size = 1.2 + 0.6 * classes
    fig = _figure(size + 1.0, size)
    ax = fig.subplots()
    image = ax.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    for i in range(classes):
        for j in range(classes):
            ax.text(
                j,
                i,
                f"{values[i, j]}\n{shares[i, j]:.0%}",
                ha="center",
                va="center",
                fontsize=7,
                color="white" if shares[i, j] > 0.5 else "black",
            )
    ax.set_xticks(range(classes), names)
    ax.set_yticks(range(classes), names)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    fig.colorbar(image, ax=ax, label="share of the true class")
    accuracy = float(np.trace(values)) / max(int(values.sum()), 1)
    ax.set_title(f"{title + ': ' if title else ''}accuracy {accuracy:.3f}", fontsize=9)
    return _save(fig, path)


def plot_khat(khat: Any, path: PathLike, title: str = "PSIS k-hat per datum") -> Path:
    """k-hat per datum with the 0.5 and 0.7 lines; ``-inf`` (exact weights) drawn at the floor."""
    k = _numpy(khat).reshape(-1)
    finite = k[np.isfinite(k)]
    floor = min(-0.5, float(finite.min()) - 0.1) if finite.size else -0.5
    shown = np.where(np.isfinite(k), k, floor)
    fig = _figure(7, 3.5)
    ax = fig.subplots()
    colors = np.where(shown > 0.7, "C3", np.where(shown > 0.5, "C1", "C0"))
    exact = ~np.isfinite(k)
    index = np.arange(k.size)
    ax.scatter(index[~exact], shown[~exact], c=colors[~exact], s=12)
    if exact.any():
        ax.scatter(index[exact], shown[exact], c="0.5", marker="x", s=14, label="exact (-inf)")
    for level, style in ((0.5, "--"), (0.7, "-")):
        ax.axhline(level, color="0.3", linestyle=style, linewidth=1, label=f"k = {level}")
    share = float((k > 0.7).mean()) if k.size else 0.0
    ax.set_title(f"{title} ({100 * share:.1f}% above 0.7)")
    ax.set_xlabel("datum (index)")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("k-hat")
    ax.legend(loc="upper right", fontsize=8)
    return _save(fig, path)


def plot_bound_ladder(ladder: Any, path: PathLike, title: str = "Bound ladder") -> Path:
    """Each bound of ``ladder`` (a :class:`pvae.evaluation.ladder.BoundLadder`, ELBO first)
    minus the ELBO, averaged over data, with the standard error of that paired difference.

    The bounds of one datum move together: their spread over data (several nats) hides
    differences that the paired standard error (often a few tenths of a nat) resolves, so the
    figure draws the differences; each bound's own mean is written under its name.
    """
    rows = list(ladder.rows)
    if not rows:
        raise ValueError("the bound ladder has no rows to plot")
    base = rows[0]
    gains = np.array([ladder.paired_difference(row, base) for row in rows])
    position = np.arange(len(rows))
    fig = _figure(7, 3.8)
    ax = fig.subplots()
    ax.axhline(0.0, color="0.6", linewidth=1)
    ax.errorbar(
        position,
        gains[:, 0],
        yerr=np.nan_to_num(gains[:, 1]),
        fmt="o-",
        capsize=4,
        label="mean over data ± s.e. of the paired difference",
    )
    for i, (gain, stderr) in enumerate(gains[1:], start=1):
        text = f"{gain:+.2f}" + (f" ± {stderr:.2f}" if math.isfinite(stderr) else "")
        ax.annotate(
            text, (i, gain), textcoords="offset points", xytext=(0, 9), ha="center", fontsize=8
        )
    ax.set_xlim(-0.5, len(rows) - 0.5)
    ax.set_xticks(position)
    ax.set_xticklabels([f"{row.name}\n{row.mean:.2f}" for row in rows], fontsize=8)
    ax.set_xlabel("bound (below: its mean over data, nats)", fontsize=8)
    ax.set_ylabel(f"bound − {base.name} (nats per datum)")
    ax.set_ylim(top=ax.get_ylim()[1] + 0.12 * np.ptp(ax.get_ylim()))
    ax.set_title(f"{title}: gain over the {base.name} on {base.values.numel()} data", fontsize=10)
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, path)


def plot_kl_per_dimension(
    kl: Any, path: PathLike, threshold: float | None = 0.01, title: str = "KL per latent unit"
) -> Path:
    """Bars of the average KL of each unit, sorted in decreasing order."""
    values = _numpy(kl).reshape(-1)
    order = np.argsort(-values)
    fig = _figure(max(5, 0.15 * values.size + 2), 3.5)
    ax = fig.subplots()
    ax.bar(np.arange(values.size), values[order], color="C0", label="mean KL over data")
    summary = f"total {values.sum():.2f} nats"
    if threshold is not None:
        ax.axhline(
            threshold,
            color="0.3",
            linestyle="--",
            linewidth=1,
            label=f"{threshold:g} nats: units below carry almost no information",
        )
        summary += f"; {int((values > threshold).sum())} of {values.size} above {threshold:g}"
    ax.legend(fontsize=8)
    ax.set_xticks(np.arange(values.size))
    ax.set_xticklabels([str(i) for i in order], fontsize=6, rotation=90)
    ax.set_xlabel("latent unit (index), sorted by KL")
    ax.set_ylabel("KL (nats)")
    ax.set_title(f"{title} ({summary})")
    return _save(fig, path)


def principal_components(z: torch.Tensor, num_components: int = 2) -> torch.Tensor:
    """Projection of ``z`` ``(N, D)`` onto its top principal components (``torch.linalg.svd``)."""
    centered = z - z.mean(0, keepdim=True)
    _, _, vh = torch.linalg.svd(centered, full_matrices=False)
    return centered @ vh[:num_components].T


def plot_latent_scatter(
    means: torch.Tensor,
    labels: Any,
    path: PathLike,
    title: str = "Guide means",
) -> Path:
    """2-D scatter of guide means ``(N, D)`` coloured by ``labels`` (PCA when D > 2).

    Up to 20 distinct integer labels (classes) get one colour each and a legend; other labels
    (continuous values) a continuous colour map with its colour bar.
    """
    z = means.detach().double().reshape(means.shape[0], -1).cpu()
    if z.shape[1] > 2:
        z = principal_components(z, 2)
        xlabel, ylabel = "PC 1", "PC 2"
    elif z.shape[1] == 2:
        xlabel, ylabel = "z_0", "z_1"
    else:
        z = torch.cat([z, torch.zeros_like(z)], dim=1)
        xlabel, ylabel = "z_0", ""
    fig = _figure(5.5, 5)
    ax = fig.subplots()
    if labels is None:
        ax.scatter(z[:, 0], z[:, 1], s=6, alpha=0.7)
    else:
        lab = _numpy(labels).reshape(-1)
        classes = np.unique(lab)
        if classes.size <= 20 and np.all(classes == np.round(classes)):
            palette = "tab10" if classes.size <= 10 else "tab20"
            colors = matplotlib.colormaps[palette].colors
            for i, value in enumerate(classes):
                chosen = lab == value
                ax.scatter(
                    z[chosen, 0], z[chosen, 1], color=colors[i], s=6, alpha=0.8, label=f"{value:g}"
                )
            ax.legend(
                title="label", fontsize=7, markerscale=2, loc="center left", bbox_to_anchor=(1, 0.5)
            )
        else:
            points = ax.scatter(z[:, 0], z[:, 1], c=lab, cmap="viridis", s=6, alpha=0.8)
            fig.colorbar(points, ax=ax, label="label")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    return _save(fig, path)


@torch.no_grad()
def decode_mean(model: Any, z: torch.Tensor) -> torch.Tensor:
    """``E[x | z]`` of a pvae image model (``likelihood.mean(decode_logits(z))``)."""
    if not hasattr(model, "decode_logits"):
        raise ValueError("traversals and interpolations need a model with decode_logits(z)")
    logits = model.decode_logits(z)
    likelihood = getattr(model, "likelihood", None)
    return likelihood.mean(logits) if likelihood is not None else torch.sigmoid(logits)


def _check_images(decoded: torch.Tensor) -> None:
    if decoded.dim() < 3:
        raise ValueError(
            f"decoded data of shape {tuple(decoded.shape)} are not images (need (..., H, W))"
        )


@torch.no_grad()
def plot_latent_traversals(
    model: Any,
    path: PathLike,
    variances: torch.Tensor | None = None,
    num_dims: int = 8,
    steps: int = 9,
    span: float = 3.0,
    base: torch.Tensor | None = None,
    title: str = "Latent traversals",
) -> Path:
    """Decoded means along each of the ``num_dims`` highest-``variances`` units.

    Row u varies unit u over ``base_u + linspace(-span, span, steps)`` with the other units at
    ``base`` (default: the prior mean, zero); ``variances`` (e.g. from
    :func:`pvae.evaluation.active_units`) picks the units, by default the first ones. Rows are
    labelled by unit (and its variance), columns by the value of the unit (or, with ``base``,
    its offset from ``base_u``).
    """
    dim = int(model.latent_dim) if base is None else base.numel()
    default_base = base is None
    if base is None:
        base = torch.zeros(dim)
    order = (
        torch.argsort(variances.detach().cpu(), descending=True)
        if variances is not None
        else torch.arange(dim)
    )
    units = order[: min(num_dims, dim)].tolist()
    grid = torch.linspace(-span, span, steps)
    z = base.reshape(1, 1, dim).repeat(len(units), steps, 1)
    for row, unit in enumerate(units):
        z[row, :, unit] = base[unit] + grid
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    decoded = decode_mean(model, z.to(device)).cpu()
    _check_images(decoded)
    fig = _figure(0.9 * steps + 0.6, 0.9 * len(units) + 0.9)
    ax = fig.subplots()
    labels = [
        f"z_{u}" + (f"\nvar {float(variances[u]):.2f}" if variances is not None else "")
        for u in units
    ]
    values = [f"{round(v, 2):g}" for v in grid.tolist()]
    _draw_images(ax, decoded.numpy(), labels, col_labels=values)
    ax.set_ylabel(
        "unit varied" + (" (variance of its guide mean)" if variances is not None else ""),
        fontsize=8,
    )
    ax.set_xlabel(
        "value of that unit; the others stay at the prior mean, 0"
        if default_base
        else "offset of that unit from base; the others stay at base",
        fontsize=8,
    )
    ax.set_title(f"{title}: one row per unit", fontsize=9)
    return _save(fig, path)


@torch.no_grad()
def plot_interpolations(
    model: Any,
    x_start: torch.Tensor,
    x_end: torch.Tensor,
    path: PathLike,
    steps: int = 8,
    title: str = "Interpolations between guide means",
) -> Path:
    """Rows of decoded means along the segment between the guide means of ``x_start[i]`` and
    ``x_end[i]``; the first and last columns show the input images."""
    from pvae.evaluation.collapse import posterior_means

    if x_start.shape != x_end.shape:
        raise ValueError(f"x_start {tuple(x_start.shape)} and x_end {tuple(x_end.shape)} differ")
    if hasattr(model, "encode_mean"):
        z0, z1 = model.encode_mean(x_start), model.encode_mean(x_end)
    else:
        z0, z1 = posterior_means(model, x_start), posterior_means(model, x_end)
    t = torch.linspace(0.0, 1.0, steps, device=z0.device).reshape(1, steps, 1)
    z = z0.unsqueeze(1) * (1 - t) + z1.unsqueeze(1) * t  # (P, steps, D)
    decoded = decode_mean(model, z).cpu()
    _check_images(decoded)
    images = torch.cat([x_start.cpu().unsqueeze(1), decoded, x_end.cpu().unsqueeze(1)], dim=1)
    rows = images.shape[0]
    fig = _figure(0.9 * (steps + 2), 0.9 * rows + 0.8)
    ax = fig.subplots()
    columns = ["start", *(f"{v:.2g}" for v in t.reshape(-1).tolist()), "end"]
    _draw_images(ax, images.numpy(), col_labels=columns)
    ax.set_xlabel("t: decoded z = (1 - t) z_start + t z_end; first and last column: the data")
    ax.xaxis.label.set_fontsize(8)
    ax.set_title(title, fontsize=9)
    return _save(fig, path)
