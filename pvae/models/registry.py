"""The model registry: ``@register_model("name")`` makes a model reachable from the CLI,
the tests and the benchmarks by name."""

from __future__ import annotations

import importlib
from collections.abc import Callable

_REGISTRY: dict[str, type] = {}

# Modules that register built-in models; imported on first lookup, not at ``import pvae``.
_BUILTIN_MODULES = (
    "pvae.models.vae",
    "pvae.models.two_layer",
    "pvae.models.cvae",
    "pvae.models.iaf",
    "pvae.models.svae",
    "pvae.models.mixture_vae",
    "pvae.models.m2",
)


def register_model(name: str) -> Callable[[type], type]:
    """Class decorator registering a model under ``name`` (the ``pvae train --model`` value)."""

    def decorator(cls: type) -> type:
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ValueError(f"a model named {name!r} is already registered ({_REGISTRY[name]})")
        _REGISTRY[name] = cls
        cls.registry_name = name
        return cls

    return decorator


def _load_builtins() -> None:
    for module in _BUILTIN_MODULES:
        importlib.import_module(module)


def available_models() -> list[str]:
    _load_builtins()
    return sorted(_REGISTRY)


def get_model_class(name: str) -> type:
    _load_builtins()
    if name not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}; available: {', '.join(available_models())}")
    return _REGISTRY[name]


def build_model(name: str, **config) -> object:
    """Instantiates the registered model ``name`` with ``config``; unknown options are an error."""
    cls = get_model_class(name)
    try:
        return cls(**config)
    except TypeError as error:
        raise ValueError(f"bad options for model {name!r}: {error}") from None
