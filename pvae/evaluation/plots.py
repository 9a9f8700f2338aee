"""Diagnostic figures, each written to a PNG file.

Built on ``matplotlib.figure.Figure`` directly (never ``pyplot``), so they neither touch
global figure state nor need a display; safe under any backend, ``Agg`` included.

- :func:`plot_khat`: PSIS k-hat per datum with the 0.5 and 0.7 thresholds [1].
- :func:`plot_bound_ladder`: ELBO, IWAE-K and AIS means with standard errors [2, 3].
- :func:`plot_kl_per_dimension`: KL(q(z_u | x) || p(z_u)) per unit, sorted.
- :func:`plot_latent_scatter`: guide means in 2-D (PCA above two dims), coloured by label.
- :func:`plot_latent_traversals`: decoded images along the highest-variance units.
- :func:`plot_interpolations`: decoded images between the guide means of two images.

References:
    [1] Vehtari, Simpson, Gelman, Yao, Gabry. Pareto Smoothed Importance Sampling.
        arXiv:1507.02646
    [2] Burda, Grosse, Salakhutdinov. Importance Weighted Autoencoders. arXiv:1509.00519
    [3] Wu, Burda, Salakhutdinov, Grosse. On the Quantitative Analysis of Decoder-Based
        Generative Models. arXiv:1611.04273
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure

PathLike = str | os.PathLike


def _save(fig: Figure, path: PathLike) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    return path


def _numpy(values: Any) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        return values.detach().cpu().double().numpy()
    return np.asarray(values, dtype=float)


def plot_khat(khat: Any, path: PathLike, title: str = "PSIS k-hat per datum") -> Path:
    """k-hat per datum with the 0.5 and 0.7 lines; ``-inf`` (exact weights) drawn at the floor."""
    k = _numpy(khat).reshape(-1)
    finite = k[np.isfinite(k)]
    floor = min(-0.5, float(finite.min()) - 0.1) if finite.size else -0.5
    shown = np.where(np.isfinite(k), k, floor)
    fig = Figure(figsize=(7, 3.5))
    ax = fig.subplots()
    colors = np.where(shown > 0.7, "C3", np.where(shown > 0.5, "C1", "C0"))
    ax.scatter(np.arange(k.size), shown, c=colors, s=12)
    for level, style in ((0.5, "--"), (0.7, "-")):
        ax.axhline(level, color="0.3", linestyle=style, linewidth=1, label=f"k = {level}")
    share = float((k > 0.7).mean()) if k.size else 0.0
    ax.set_title(f"{title} ({100 * share:.1f}% above 0.7)")
    ax.set_xlabel("datum")
    ax.set_ylabel("k-hat")
    ax.legend(loc="upper right", fontsize=8)
    return _save(fig, path)


def plot_bound_ladder(ladder: Any, path: PathLike, title: str = "Bound ladder") -> Path:
    """Means and standard errors of each bound (a :class:`pvae.diagnostics.BoundLadder` or
    its ``as_dict()`` rows)."""
    rows = ladder.as_dict() if hasattr(ladder, "as_dict") else list(ladder)
    names = [r["bound"] for r in rows]
    means = np.array([r["mean"] for r in rows])
    errors = np.array([r["stderr"] for r in rows])
    fig = Figure(figsize=(7, 3.5))
    ax = fig.subplots()
    ax.errorbar(np.arange(len(rows)), means, yerr=errors, fmt="o-", capsize=4)
    for i, m in enumerate(means):
        ax.annotate(f"{m:.2f}", (i, m), textcoords="offset points", xytext=(0, 8), ha="center")
    ax.set_xticks(np.arange(len(rows)))
    ax.set_xticklabels(names, rotation=20)
    ax.set_ylabel("mean log p(x) estimate (nats)")
    ax.set_title(title)
    return _save(fig, path)


def plot_kl_per_dimension(
    kl: Any, path: PathLike, threshold: float | None = 0.01, title: str = "KL per latent unit"
) -> Path:
    """Bars of the average KL of each unit, sorted in decreasing order."""
    values = _numpy(kl).reshape(-1)
    order = np.argsort(-values)
    fig = Figure(figsize=(max(5, 0.15 * values.size + 2), 3.5))
    ax = fig.subplots()
    ax.bar(np.arange(values.size), values[order], color="C0")
    if threshold is not None:
        ax.axhline(threshold, color="0.3", linestyle="--", linewidth=1, label=f"{threshold}")
        ax.legend(fontsize=8)
    ax.set_xticks(np.arange(values.size))
    ax.set_xticklabels([str(i) for i in order], fontsize=6, rotation=90)
    ax.set_xlabel("latent unit (sorted)")
    ax.set_ylabel("KL (nats)")
    ax.set_title(f"{title} (total {values.sum():.2f} nats)")
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
    """2-D scatter of guide means ``(N, D)`` coloured by ``labels`` (PCA when D > 2)."""
    z = means.detach().double().reshape(means.shape[0], -1).cpu()
    if z.shape[1] > 2:
        z = principal_components(z, 2)
        xlabel, ylabel = "PC 1", "PC 2"
    elif z.shape[1] == 2:
        xlabel, ylabel = "z_0", "z_1"
    else:
        z = torch.cat([z, torch.zeros_like(z)], dim=1)
        xlabel, ylabel = "z_0", ""
    fig = Figure(figsize=(5.5, 5))
    ax = fig.subplots()
    if labels is None:
        ax.scatter(z[:, 0], z[:, 1], s=6, alpha=0.7)
    else:
        lab = _numpy(labels).reshape(-1)
        points = ax.scatter(z[:, 0], z[:, 1], c=lab, cmap="tab10", s=6, alpha=0.8)
        if np.unique(lab).size <= 10:
            fig.colorbar(points, ax=ax, ticks=np.unique(lab), label="label")
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


def _image_grid(fig: Figure, images: np.ndarray, row_labels: Sequence[str] | None = None) -> None:
    """Draws ``images`` ``(rows, cols, C, H, W)`` or ``(rows, cols, H, W)`` as a grid."""
    rows, cols = images.shape[:2]
    axes = np.atleast_2d(fig.subplots(rows, cols, squeeze=False))
    for r in range(rows):
        for c in range(cols):
            ax = axes[r, c]
            img = images[r, c]
            if img.ndim == 3:
                img = img[0] if img.shape[0] == 1 else np.moveaxis(img, 0, -1)
            ax.imshow(np.clip(img, 0.0, 1.0), cmap="gray", vmin=0.0, vmax=1.0)
            ax.set_xticks([])
            ax.set_yticks([])
            if c == 0 and row_labels is not None:
                ax.set_ylabel(row_labels[r], fontsize=7)


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
    :func:`pvae.evaluation.active_units`) picks the units, by default the first ones.
    """
    dim = int(model.latent_dim) if base is None else base.numel()
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
    fig = Figure(figsize=(0.9 * steps, 0.9 * len(units) + 0.4))
    labels = [
        f"z_{u}" + (f" ({float(variances[u]):.2f})" if variances is not None else "") for u in units
    ]
    _image_grid(fig, decoded.numpy(), labels)
    fig.suptitle(f"{title}: {-span:g} .. {span:g} around the prior mean", fontsize=9)
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
    fig = Figure(figsize=(0.9 * (steps + 2), 0.9 * rows + 0.4))
    _image_grid(fig, images.numpy())
    fig.suptitle(f"{title} (first/last column: data)", fontsize=9)
    return _save(fig, path)
