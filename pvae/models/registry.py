"""The model registry: ``@register_model("name", smoke={...})`` makes a model reachable from
the command line, the runner, the tests and the benchmarks by name.

``smoke`` is the model's smoke config: the smallest options (beside the dataset's
``input_shape``) with which the registry-driven test suite (``tests/models/test_suite.py``)
builds, trains, saves, samples, evaluates and diagnoses it in seconds. Every registered model
must have one.

Registration happens when a model's module is imported; the registry imports every module of
the ``pvae.models`` package on first lookup (not at ``import pvae``), so a new model file is
found without being listed anywhere.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable, Mapping
from typing import Any

_REGISTRY: dict[str, type] = {}
_SMOKE: dict[str, dict[str, Any]] = {}
_SMOKE_DATASET: dict[str, str] = {}
_LOADED = False


def register_model(
    name: str, *, smoke: Mapping[str, Any] | None = None, smoke_dataset: str = "mnist"
) -> Callable[[type], type]:
    """Class decorator registering a model under ``name`` (the ``pvae train --model`` value),
    with its smoke config ``smoke`` (options for a seconds-long test run) and the registered
    dataset of its smoke run (``smoke_dataset``: data of the model's modality)."""

    dataset = smoke_dataset

    def decorator(cls: type) -> type:
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ValueError(f"a model named {name!r} is already registered ({_REGISTRY[name]})")
        _REGISTRY[name] = cls
        if smoke is not None:
            _SMOKE[name] = dict(smoke)
        _SMOKE_DATASET[name] = dataset
        cls.registry_name = name
        return cls

    return decorator


def _load_builtins() -> None:
    global _LOADED
    if _LOADED:
        return
    import pvae.models as package

    for info in pkgutil.iter_modules(package.__path__):
        importlib.import_module(f"{package.__name__}.{info.name}")
    _LOADED = True


def available_models() -> list[str]:
    _load_builtins()
    return sorted(_REGISTRY)


def get_model_class(name: str) -> type:
    _load_builtins()
    if name not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}; available: {', '.join(available_models())}")
    return _REGISTRY[name]


def smoke_config(name: str) -> dict[str, Any]:
    """The smoke config registered with model ``name`` (``ValueError`` if it has none)."""
    get_model_class(name)
    if name not in _SMOKE:
        raise ValueError(f"model {name!r} was registered without a smoke config")
    return dict(_SMOKE[name])


def smoke_dataset(name: str) -> str:
    """The registered dataset of model ``name``'s smoke run."""
    get_model_class(name)
    return _SMOKE_DATASET.get(name, "mnist")


def build_model(name: str, **options: Any) -> Any:
    """Instantiates the registered model ``name`` with ``options``; unknown options are a
    ``ValueError`` that lists the model's options."""
    cls = get_model_class(name)
    try:
        return cls(**options)
    except TypeError as error:
        raise ValueError(f"bad options for model {name!r}: {error}") from None
    except ValueError as error:
        raise ValueError(f"model {name!r}: {error}") from None
