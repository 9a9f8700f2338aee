"""Figures of a training run (matplotlib, object API only: no pyplot global state)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import torch


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def image_grid(
    images: torch.Tensor, path: str | Path, *, nrow: int | None = None, title: str | None = None
) -> Path:
    """Saves ``images`` of shape ``(n, 1, H, W)`` (values in [0, 1]) as one grid PNG."""
    images = images.detach().float().cpu().clamp(0, 1)
    n, _, h, w = images.shape
    nrow = nrow or math.ceil(math.sqrt(n))
    ncol = math.ceil(n / nrow)
    grid = torch.ones(ncol * (h + 2), nrow * (w + 2))
    for i in range(n):
        r, c = divmod(i, nrow)
        grid[r * (h + 2) + 1 : r * (h + 2) + 1 + h, c * (w + 2) + 1 : c * (w + 2) + 1 + w] = images[
            i, 0
        ]
    fig = _figure(max(2.0, nrow * 0.4), max(2.0, ncol * 0.4) + (0.3 if title else 0))
    ax = fig.add_axes((0, 0, 1, 0.92 if title else 1))
    ax.imshow(grid.numpy(), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    ax.set_axis_off()
    if title:
        fig.suptitle(title, fontsize=9)
    path = Path(path)
    fig.savefig(path)
    return path


def loss_curve(history: Sequence[dict], path: str | Path, *, title: str = "") -> Path:
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
    ax.set_ylabel("nats per datum")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    return path
