"""Run folders: what ``pvae train`` writes, and how the other commands read it back.

A run folder holds ``config.json`` (written first), ``status.json`` (``running``, ``failed`` or
``complete``), ``checkpoints/``, and, once training and evaluation finish, ``metrics.json``,
PNG figures and ``report.md``. Only a folder whose status is ``complete`` is a finished run.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from pvae.infer.checkpoint import CheckpointError, atomic_write_bytes, load_checkpoint
from pvae.infer.train import BEST, LAST
from pvae.models.registry import build_model

CHECKPOINTS = "checkpoints"


def write_json(path: str | Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode())


def read_json(path: str | Path) -> Any:
    return json.loads(Path(path).read_text())


def run_status(run_dir: str | Path) -> str | None:
    path = Path(run_dir) / "status.json"
    return read_json(path)["status"] if path.exists() else None


def set_status(run_dir: str | Path, status: str, **extra: Any) -> None:
    write_json(Path(run_dir) / "status.json", {"status": status, **extra})


def load_run(
    run_dir: str | Path, which: str = "best", device: str | torch.device = "cpu"
) -> tuple[torch.nn.Module, dict]:
    """Rebuilds a run's model from ``config.json`` and its ``best`` (or ``last``) checkpoint."""
    run_dir = Path(run_dir)
    if not (run_dir / "config.json").exists():
        raise FileNotFoundError(f"{run_dir} is not a pvae run folder (no config.json)")
    config = read_json(run_dir / "config.json")
    model = build_model(config["model"], **config["model_config"])
    names = {"best": [BEST, LAST], "last": [LAST]}[which]
    for name in names:
        path = run_dir / CHECKPOINTS / name
        if path.exists():
            payload = load_checkpoint(path, map_location=device)
            try:
                model.load_state_dict(payload["modules"][0])
            except (RuntimeError, IndexError, KeyError) as error:
                raise CheckpointError(f"{path} does not fit the run's model: {error}") from None
            return model.to(device).eval(), config
    raise CheckpointError(f"no checkpoint in {run_dir / CHECKPOINTS}")
