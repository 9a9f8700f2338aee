"""Encoders and decoders shared by pvae's models.

All networks map leading batch dims through unchanged, so a decoder applied to latents of shape
``(K, B, D)`` (K importance samples) returns ``(K, B, *image_shape)``.
"""

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


class ConvEncoder(nn.Module):
    """A small convolutional encoder for 1x28x28 images: 2 strided convs, then an MLP head."""

    def __init__(self, out_features: int, channels: int = 32, hidden: int = 256) -> None:
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(1, channels, 4, stride=2, padding=1),  # 14x14
            nn.ReLU(),
            nn.Conv2d(channels, 2 * channels, 4, stride=2, padding=1),  # 7x7
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(2 * channels * 49, hidden),
            nn.ReLU(),
        )
        self.head = GaussianHead(hidden, out_features)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        batch = x.shape[:-3]
        h = self.conv(x.reshape(-1, *x.shape[-3:]))
        loc, scale = self.head(h)
        return loc.reshape(*batch, -1), scale.reshape(*batch, -1)


class ConvDecoder(nn.Module):
    """Mirror of :class:`ConvEncoder`: latent ``(..., D)`` to logits ``(..., 1, 28, 28)``."""

    def __init__(self, in_features: int, channels: int = 32, hidden: int = 256) -> None:
        super().__init__()
        self.channels = channels
        self.fc = nn.Sequential(
            nn.Linear(in_features, hidden),
            nn.ReLU(),
            nn.Linear(hidden, 2 * channels * 49),
            nn.ReLU(),
        )
        self.deconv = nn.Sequential(
            nn.ConvTranspose2d(2 * channels, channels, 4, stride=2, padding=1),  # 14x14
            nn.ReLU(),
            nn.ConvTranspose2d(channels, 1, 4, stride=2, padding=1),  # 28x28
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        batch = z.shape[:-1]
        h = self.fc(z.reshape(-1, z.shape[-1])).reshape(-1, 2 * self.channels, 7, 7)
        return self.deconv(h).reshape(*batch, 1, 28, 28)


def numel(shape: Sequence[int]) -> int:
    return math.prod(shape)
