"""Multilayer perceptrons and Gaussian heads."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F

ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh, "elu": nn.ELU, "softplus": nn.Softplus}


def _activation(name: str) -> type[nn.Module]:
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; choose from {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[name]


def mlp(sizes: Sequence[int], activation: str = "relu") -> nn.Sequential:
    """``Linear -> act -> ... -> Linear`` through ``sizes`` (no activation after the last)."""
    act = _activation(activation)
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(act())
    return nn.Sequential(*layers)


class GaussianHead(nn.Module):
    """Maps features to ``(loc, scale)`` of a diagonal Gaussian, ``scale = softplus(.) + eps``."""

    def __init__(self, in_features: int, out_features: int, min_scale: float = 1e-4) -> None:
        super().__init__()
        self.loc = nn.Linear(in_features, out_features)
        self.raw_scale = nn.Linear(in_features, out_features)
        self.min_scale = min_scale

    def forward(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.loc(h), F.softplus(self.raw_scale(h)) + self.min_scale


class GaussianMLP(nn.Module):
    """``x -> (loc, scale)``: an MLP trunk (``hidden``) and a :class:`GaussianHead`."""

    def __init__(
        self, in_features: int, hidden: Sequence[int], out_features: int, activation: str = "relu"
    ) -> None:
        super().__init__()
        self.trunk = nn.Sequential(
            mlp([in_features, *hidden], activation), _activation(activation)()
        )
        self.head = GaussianHead(hidden[-1] if hidden else in_features, out_features)
        if not hidden:
            self.trunk = nn.Identity()

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.head(self.trunk(x))


def numel(shape: Sequence[int]) -> int:
    return math.prod(shape)
