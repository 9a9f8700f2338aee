"""Mixed precision for the networks, float32 for the distributions (issue #16).

``precision="bf16"`` (:class:`~pvae.infer.train.TrainConfig`, ``pvae train --precision bf16``)
runs every *network* of a model under ``torch.autocast(dtype=torch.bfloat16)``: its matrix
products and convolutions compute in bfloat16 (tensor cores on GPUs, AMX or AVX512-BF16 on
recent CPUs), and its outputs are cast back to float32 as they leave it. The parameters, the
optimiser state and the distributions' log-densities stay float32: a Bernoulli's logits, a
Gaussian's scale or a vMF's concentration reach Pyro's sites as float32, so the bound is not
summed in bfloat16's 8-bit mantissa.

A *network* is a submodule that is not a ``PyroModule`` (an ``nn.Sequential``, an MLP, a
PixelCNN) and holds parameters; ``PyroModule`` containers (the model itself) are walked into,
so a model's own arithmetic on its sites' parameters stays float32. Plain ``nn.Module`` models
(a plain-function model's modules) are networks as a whole.

bfloat16 keeps float32's exponent range, so no loss scaling is needed (unlike float16, which
is not offered). What it costs in the bound is measured, not assumed: a test trains the same
model in both precisions and checks that the test bound moves by less than its standard error.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from pyro.nn import PyroModule
from torch import nn

PRECISIONS = ("fp32", "bf16")

__all__ = ["PRECISIONS", "check_precision", "networks", "network_precision"]


def check_precision(precision: str) -> str:
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}; got {precision!r}")
    return precision


def networks(modules: Sequence[nn.Module]) -> list[nn.Module]:
    """The networks of ``modules`` (module docstring): non-Pyro submodules with parameters,
    outermost first, each once."""
    found: list[nn.Module] = []
    seen: set[int] = set()

    def visit(module: nn.Module) -> None:
        if id(module) in seen:
            return
        seen.add(id(module))
        if not isinstance(module, PyroModule):
            if any(True for _ in module.parameters()):
                found.append(module)
            return
        for child in module.children():
            visit(child)

    for module in modules:
        visit(module)
    return found


def _to_float32(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.float() if value.dtype in (torch.bfloat16, torch.float16) else value
    if isinstance(value, tuple) and hasattr(value, "_fields"):  # a named tuple
        return type(value)(*(_to_float32(v) for v in value))
    if isinstance(value, list | tuple):
        return type(value)(_to_float32(v) for v in value)
    if isinstance(value, dict):
        return {key: _to_float32(v) for key, v in value.items()}
    return value


@contextmanager
def network_precision(
    modules: Sequence[nn.Module], precision: str = "fp32", device_type: str = "cpu"
) -> Iterator[list[nn.Module]]:
    """Within the block, the networks of ``modules`` compute in ``precision`` and return
    float32 (module docstring); ``"fp32"`` changes nothing. Yields the wrapped networks."""
    check_precision(precision)
    if precision == "fp32":
        yield []
        return
    wrapped = networks(modules)
    for net in wrapped:
        original = net.forward

        def forward(*args: Any, _original=original, **kwargs: Any) -> Any:
            with torch.autocast(device_type, dtype=torch.bfloat16):
                out = _original(*args, **kwargs)
            return _to_float32(out)

        net.forward = forward  # an instance attribute: state_dict and the class are untouched
    try:
        yield wrapped
    finally:
        for net in wrapped:
            del net.forward
