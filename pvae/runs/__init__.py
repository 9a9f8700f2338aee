"""The experiment runner: one place that knows a run's whole recipe.

- :func:`train_run` (``pvae train``): data, model, training, best checkpoint, evaluation,
  figures and report, from a typed :class:`TrainSpec`;
- :func:`evaluate_run` (``pvae evaluate``) and :func:`evaluate_model`;
- :func:`sample_run` (``pvae sample``);
- :func:`diagnose_run` (``pvae diagnose``) and :func:`diagnose_model`;
- run-folder I/O (:mod:`pvae.runs.folder`): atomic files, status, :func:`load_run`.

The command line, the benchmarks, the tutorials and the tests call these instead of
re-typing the recipe. Names are imported on first use.
"""

import importlib
from typing import Any

_EXPORTS = {
    "TrainSpec": "pvae.runs.spec",
    "train_run": "pvae.runs.train",
    "build_run_model": "pvae.runs.train",
    "load_splits": "pvae.runs.train",
    "evaluate_model": "pvae.runs.evaluate",
    "evaluate_run": "pvae.runs.evaluate",
    "sample_run": "pvae.runs.evaluate",
    "diagnose_model": "pvae.runs.diagnose",
    "diagnose_run": "pvae.runs.diagnose",
    "load_run": "pvae.runs.folder",
    "read_json": "pvae.runs.folder",
    "write_json": "pvae.runs.folder",
    "run_status": "pvae.runs.folder",
    "set_status": "pvae.runs.folder",
    "CHECKPOINTS": "pvae.runs.folder",
}


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'pvae.runs' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])


__all__ = list(_EXPORTS)
