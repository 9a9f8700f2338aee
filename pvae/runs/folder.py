"""Run folders: what ``pvae train`` writes, and how the other commands read it back.

A run folder holds ``config.json`` (written first), ``status.json`` (``running``, ``failed`` or
``complete``), ``checkpoints/``, and, once training and evaluation finish, ``metrics.json``,
PNG figures and ``report.md``. Only a folder whose status is ``complete`` is a finished run.
Every file is written atomically (a temp file, then a rename) with the permissions of an
ordinary new file (the process umask), so a killed run never leaves half a file and a
colleague in the same group can read it.
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
#: the options that define a run: resuming with others is refused
IDENTITY_KEYS = ("model", "dataset", "model_config", "objective", "num_particles")


def write_text(path: str | Path, text: str) -> None:
    """Writes ``text`` to ``path`` atomically."""
    atomic_write_bytes(path, text.encode())


def write_json(path: str | Path, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def read_json(path: str | Path) -> Any:
    return json.loads(Path(path).read_text())


def run_status(run_dir: str | Path) -> str | None:
    path = Path(run_dir) / "status.json"
    return read_json(path)["status"] if path.exists() else None


def set_status(run_dir: str | Path, status: str, **extra: Any) -> None:
    write_json(Path(run_dir) / "status.json", {"status": status, **extra})


def has_checkpoint(run_dir: str | Path) -> bool:
    """Whether the run has a checkpoint to resume from."""
    return (Path(run_dir) / CHECKPOINTS / LAST).exists()


def prepare_run_dir(out: Path, resume: bool, config: dict[str, Any]) -> None:
    """Creates (or, with ``resume``, reopens) the run folder ``out`` and writes its config.

    A folder that already holds files is refused unless ``resume``; resuming a run of another
    model, dataset or objective is refused (``ValueError`` with what differs).
    """
    status = run_status(out)
    if out.exists() and any(out.iterdir()):
        if not resume:
            what = "a completed run" if status == "complete" else "an unfinished run"
            raise ValueError(
                f"{out} already holds {what}; pass --resume to continue it or choose another --out"
            )
        if (out / "config.json").exists():
            saved = read_json(out / "config.json")
            for key in IDENTITY_KEYS:
                if saved.get(key) != config.get(key):
                    raise ValueError(
                        f"cannot resume {out}: its {key} is {saved.get(key)!r}, not {config.get(key)!r}"
                    )
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "config.json", config)
    set_status(out, "running")


def load_run(
    run_dir: str | Path, which: str = "best", device: str | torch.device = "cpu"
) -> tuple[torch.nn.Module, dict]:
    """Rebuilds a run's model from ``config.json`` and its ``best`` (or ``last``) checkpoint."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"run folder {run_dir} does not exist")
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
