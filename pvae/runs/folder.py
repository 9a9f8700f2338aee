"""Run folders: what ``pvae train`` writes, and how the other commands read it back.

A run folder holds ``config.json`` (written first), ``status.json`` (``running``, ``failed``,
``interrupted`` or ``complete``), ``checkpoints/``, and, once training and evaluation finish,
``metrics.json``, PNG figures and ``report.md``. Only a folder whose status is ``complete`` is
a finished run. Every file is written atomically (a temp file, then a rename) with the
permissions of an ordinary new file (the process umask), so a killed run never leaves half a
file and a colleague in the same group can read it; the temp files a kill leaves behind are
removed when training starts again.

``config.json`` says how the run's first epoch ran and never changes afterwards: a resume may
change only :data:`ADJUSTABLE` options (more epochs, another evaluation size, ...), and each
resume appends its command and those changes to the config's ``resumes`` list. The options
of :data:`FIXED` decide what the epochs already trained did; a resume that changes one is
refused (:func:`check_resume`).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import torch

from pvae.infer.checkpoint import (
    CheckpointError,
    atomic_write_bytes,
    load_checkpoint,
    remove_stale_temp_files,
)
from pvae.infer.train import BEST, LAST
from pvae.models.registry import build_model

CHECKPOINTS = "checkpoints"
#: config.json keys (``train.*``: its training options) that a resume must keep, with the
#: flag that sets each: they decide the data order, the steps and the model of the epochs
#: already trained (``num_labels``: which training items M2 sees labelled;
#: ``labelled_schedule``: when it sees them).
FIXED = {
    "model": "--model",
    "dataset": "--dataset",
    "model_config": "the model's options",
    "objective": "--objective",
    "num_particles": "--num-particles",
    "objective_options": "--objective-option",
    "train_size": "--train-size",
    "num_labels": "--num-labels",
    "labelled_schedule": "--labelled-schedule",
    "monitor": "the model's monitored metric",
    "train.batch_size": "--batch-size",
    "train.lr": "--lr",
    "train.lr_schedule": "--lr-schedule",
    "train.clip_norm": "--clip-norm",
    "train.kl_anneal_epochs": "--kl-anneal",
    "train.kl_anneal_schedule": "--kl-schedule",
    "train.kl_anneal_cycles": "--kl-cycles",
    "train.seed": "--seed",
}
#: what a resume may change: how long to train, when to stop or checkpoint, where to run,
#: and the test evaluation (recorded in config.json's ``resumes``)
ADJUSTABLE = (
    "train.epochs",
    "train.early_stopping_patience",
    "train.checkpoint_every",
    "train.device",
    "train.precision",
    "eval_samples",
    "eval_size",
)
#: kept for callers of earlier versions: the options that define a run
IDENTITY_KEYS = ("model", "dataset", "model_config", "objective", "num_particles")


def write_text(path: str | Path, text: str) -> None:
    """Writes ``text`` to ``path`` atomically."""
    atomic_write_bytes(path, text.encode())


def write_json(path: str | Path, obj: Any) -> None:
    # allow_nan=False: NaN and infinity are not JSON; refusing them here keeps every file
    # readable by any JSON parser (options are validated before a run starts).
    write_text(path, json.dumps(obj, indent=2, sort_keys=False, allow_nan=False) + "\n")


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


def check_device(device: str | torch.device) -> torch.device:
    """``device`` as a ``torch.device`` if this machine has it; else ``ValueError`` saying what
    to use (checked before anything is read or written: loading a checkpoint onto a missing
    device would otherwise look like a corrupt checkpoint)."""
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(
            f"{str(device)!r} is not a device; use cpu, cuda or cuda:N (the N-th GPU)"
        ) from None
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("CUDA is not available on this machine; use --device cpu")
        if parsed.index is not None and parsed.index >= torch.cuda.device_count():
            raise ValueError(
                f"this machine has {torch.cuda.device_count()} CUDA device(s), no {parsed}"
            )
    elif parsed.type == "mps":
        if not torch.backends.mps.is_available():
            raise ValueError("MPS is not available on this machine; use --device cpu")
    elif parsed.type != "cpu":
        raise ValueError(f"pvae runs on cpu, cuda or mps, not {parsed.type}")
    return parsed


def check_out_path(out: Path) -> None:
    """Refuses a run folder that cannot be one: a file, a path under a file, or a place this
    process cannot write (checked before any data are loaded)."""
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file, not a folder; choose another --out")
    existing = out
    while not existing.exists():
        if existing.parent == existing:
            break
        existing = existing.parent
    if not existing.is_dir():
        raise ValueError(f"--out {out}: {existing} is a file, not a folder; choose another --out")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(f"--out {out}: cannot write into {existing} (permission denied)")


def _holds_files(out: Path) -> bool:
    return out.is_dir() and any(out.iterdir())


def check_not_occupied(out: Path, resume: bool) -> None:
    """Without ``resume``, refuses a folder that holds a run to continue or keep. A run that
    failed before its first checkpoint holds nothing to continue: it may be started again."""
    if resume or not _holds_files(out):
        return
    status_path = out / "status.json"
    status = read_json(status_path) if status_path.exists() else {}
    checkpoints = out / CHECKPOINTS
    if status.get("status") == "failed" and not (
        (checkpoints / LAST).exists() or (checkpoints / BEST).exists()
    ):
        return
    what = {
        "complete": "a completed run",
        "interrupted": "an interrupted run" + _position(status),
        "failed": "a failed run",
    }.get(status.get("status"), "an unfinished run")
    raise ValueError(
        f"{out} already holds {what}; pass --resume to continue it or choose another --out"
    )


def _position(status: dict[str, Any]) -> str:
    if "epoch" in status and "step" in status:
        return f" (stopped in epoch {status['epoch']}, step {status['step']})"
    return f" (stopped during {status['during']})" if "during" in status else ""


def _flat(config: dict[str, Any]) -> dict[str, Any]:
    flat = {key: value for key, value in config.items() if key != "train"}
    flat.update({f"train.{key}": value for key, value in config.get("train", {}).items()})
    return flat


#: model options that ``pvae train`` sets with a flag of their own (cli's ``_MODEL_FLAGS``)
_OWN_FLAGS = ("latent_dim", "hidden", "activation", "likelihood", "architecture")


def _option_flag(name: str) -> str:
    if name in _OWN_FLAGS:
        return "--" + name.replace("_", "-")
    return f"--model-option {name}=..."


def _shown(value: Any) -> str:
    return json.dumps(value) if not isinstance(value, str) else value


def check_resume(out: Path, config: dict[str, Any], last: dict[str, Any]) -> dict[str, Any]:
    """The config.json to write when resuming ``out`` (whose last checkpoint is ``last``)
    with ``config``: the saved one, with this resume appended to its ``resumes``.

    ``ValueError`` naming the flag when ``config`` changes a :data:`FIXED` option, trains
    fewer epochs than the checkpoint already holds, or changes ``--epochs`` under the cosine
    schedule (whose learning rates depend on it)."""
    saved = read_json(out / "config.json")
    before, now = _flat(saved), _flat(config)
    for key, flag in FIXED.items():
        if key not in before or before[key] == now.get(key):
            continue
        if key == "model_config":
            old, new = before[key], now.get(key) or {}
            differ = ", ".join(
                f"{name} {_shown(old.get(name))} ({_option_flag(name)}; not {_shown(new.get(name))})"
                for name in sorted(set(old) | set(new))
                if old.get(name) != new.get(name)
            )
            raise ValueError(
                f"cannot resume {out}: its model was built with {differ}; pass the run's "
                "model options (see its config.json) or choose another --out"
            )
        raise ValueError(
            f"cannot resume {out}: it was trained with {flag} {_shown(before[key])}, not "
            f"{_shown(now.get(key))}, and changing it would not continue the same run; pass "
            f"{flag} {_shown(before[key])} or choose another --out"
        )
    changed = {
        key: [before[key], now.get(key)]
        for key in ADJUSTABLE
        if key in before and before[key] != now.get(key)
    }
    epochs = now.get("train.epochs")
    if epochs is not None and last.get("epoch", 0) > epochs:
        raise ValueError(
            f"cannot resume {out} with --epochs {epochs}: it has already trained "
            f"{last['epoch']} epochs; pass --epochs {last['epoch']} or more"
        )
    if "train.epochs" in changed and before.get("train.lr_schedule") == "cosine":
        raise ValueError(
            f"cannot resume {out} with --epochs {epochs}: its cosine learning-rate schedule "
            f"spans --epochs {before['train.epochs']}; start a new run to train longer"
        )
    entry = {"command": config.get("command", ""), "time": time.strftime("%Y-%m-%dT%H:%M:%S")}
    entry["changed"] = changed
    return {**saved, "resumes": [*saved.get("resumes", []), entry]}


def load_last_checkpoint(out: Path) -> dict[str, Any]:
    """``checkpoints/checkpoint_last.pt`` of ``out``; when it does not load, a
    :class:`CheckpointError` that says whether ``checkpoint_best.pt`` does, and how to use it."""
    checkpoints = out / CHECKPOINTS
    try:
        return load_checkpoint(checkpoints / LAST)
    except CheckpointError as error:
        try:
            best = load_checkpoint(checkpoints / BEST)
        except CheckpointError:
            raise CheckpointError(f"{error}; checkpoint_best.pt does not load either") from None
        raise CheckpointError(
            f"{error}; checkpoint_best.pt (epoch {best.get('epoch')}) is intact: `pvae evaluate "
            f"{out}` uses it as is, and copying it to {checkpoints / LAST} resumes from it"
        ) from None


def start_run(out: Path, config: dict[str, Any]) -> None:
    """Creates ``out`` if needed, removes temp files that killed writes left there, and writes
    ``config`` and the status ``running``: what a run does once every check has passed."""
    started = time.time()
    out.mkdir(parents=True, exist_ok=True)
    for folder in (out, out / CHECKPOINTS):
        remove_stale_temp_files(folder, older_than=started)
    write_json(out / "config.json", config)
    set_status(out, "running")


def load_run(
    run_dir: str | Path, which: str = "best", device: str | torch.device = "cpu"
) -> tuple[torch.nn.Module, dict]:
    """Rebuilds a run's model from ``config.json`` and its ``best`` (or ``last``) checkpoint."""
    run_dir = Path(run_dir)
    check_device(device)
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
