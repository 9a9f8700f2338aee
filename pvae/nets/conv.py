"""Small convolutional encoder and decoder for 1x28x28 images."""

from __future__ import annotations

import torch
from torch import nn

from pvae.nets.mlp import GaussianHead


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
