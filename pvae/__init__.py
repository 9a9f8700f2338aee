"""pvae: a probabilistic-programming model zoo of variational autoencoders built on Pyro.

Submodules are imported on first use so that ``import pvae`` stays fast::

    import pvae
    pvae.models.VAE, pvae.infer.fit, pvae.evaluation.log_likelihood
"""

import importlib
from typing import Any

__version__ = "0.1.0"

_SUBMODULES = (
    "data",
    "distributions",
    "evaluation",
    "infer",
    "models",
    "nets",
    "diagnostics",
    "figures",
)


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        return importlib.import_module(f"pvae.{name}")
    raise AttributeError(f"module 'pvae' has no attribute {name!r}")


__all__ = ["__version__", *_SUBMODULES]
