"""Checkpoints that survive a kill: written atomically, validated when read.

A checkpoint holds everything needed to continue a run bit for bit: the model's state (module
parameters and/or Pyro's parameter store), the optimizer and learning-rate schedule, the epoch
and step, every random number generator's state, the training configuration and the metric
history.
"""

from __future__ import annotations

import os
import pickle
import random
import re
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

FORMAT = "pvae-checkpoint"
VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint is missing, corrupt, or belongs to a different model or run."""


def _umask() -> int:
    """The process umask (read by setting and restoring it: POSIX offers no getter)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Writes ``data`` to ``path`` atomically: a temp file in the same folder, fsync, rename.

    The file gets the permissions of an ordinary new file (``0o666`` less the process umask),
    not ``mkstemp``'s private ``0o600``, so a colleague in the same group can read a run.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


#: the temp files of :func:`atomic_write_bytes` (``mkstemp``'s ``.NAME.XXXXXXXX.tmp``)
TEMP_FILE = re.compile(r"\..+\.[a-z0-9_]{8}\.tmp")


def remove_stale_temp_files(folder: str | os.PathLike, older_than: float) -> list[Path]:
    """Removes the temp files of :func:`atomic_write_bytes` in ``folder`` last modified before
    ``older_than`` (a ``time.time()``): a kill between ``mkstemp`` and the rename leaves them
    behind. Files of other names are never touched. Returns what it removed."""
    removed = []
    try:
        entries = list(os.scandir(folder))
    except (FileNotFoundError, NotADirectoryError):
        return removed
    for entry in entries:
        if not (TEMP_FILE.fullmatch(entry.name) and entry.is_file(follow_symlinks=False)):
            continue
        try:
            if entry.stat(follow_symlinks=False).st_mtime < older_than:
                os.unlink(entry.path)
                removed.append(Path(entry.path))
        except FileNotFoundError:  # gone meanwhile
            pass
    return removed


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` that never leaves a half-written file at ``path``."""
    import io

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def rng_state(generator: torch.Generator | None = None) -> dict[str, Any]:
    state = {
        "torch": torch.get_rng_state(),
        "numpy": np.random.get_state(),
        "python": random.getstate(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
    }
    if generator is not None:
        state["generator"] = generator.get_state()
    return state


def set_rng_state(state: dict[str, Any], generator: torch.Generator | None = None) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    if generator is not None and state.get("generator") is not None:
        generator.set_state(state["generator"])


def save_checkpoint(path: str | os.PathLike, payload: dict[str, Any]) -> None:
    """Writes a checkpoint atomically, then removes the temp files that killed writes left in
    its folder (those last modified before this write began)."""
    started = time.time()
    atomic_torch_save({"format": FORMAT, "version": VERSION, **payload}, path)
    remove_stale_temp_files(Path(path).parent, older_than=started)


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict:
    """Reads a pvae checkpoint; :class:`CheckpointError` if it is missing, corrupt or foreign."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    try:
        # Our checkpoints hold numpy/python RNG states, so full unpickling is needed; only load
        # checkpoints you wrote or trust.
        payload = torch.load(path, map_location=map_location, weights_only=False)
    except (RuntimeError, EOFError, pickle.UnpicklingError, OSError, ValueError) as error:
        raise CheckpointError(f"checkpoint {path} is corrupt or unreadable ({error})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a pvae checkpoint")
    if payload.get("version", 0) > VERSION:
        raise CheckpointError(
            f"{path} was written by a newer pvae (format {payload['version']} > {VERSION})"
        )
    return payload


def check_same_model(payload: dict, model_class: str, model_config: dict | None, path) -> None:
    """Refuses to load a checkpoint of another model class or configuration."""
    saved_class = payload.get("model_class")
    saved_config = payload.get("model_config")
    if saved_class != model_class:
        raise CheckpointError(
            f"checkpoint {path} was written for model {saved_class}, not {model_class}"
        )
    if model_config is not None and saved_config is not None and saved_config != model_config:
        diff = {
            k: (saved_config.get(k), model_config.get(k))
            for k in set(saved_config) | set(model_config)
            if saved_config.get(k) != model_config.get(k)
        }
        raise CheckpointError(
            f"checkpoint {path} was written for a {model_class} with a different configuration "
            f"(saved vs now: {diff})"
        )
