"""Convolutional LSTMs and the strided read/write networks of convolutional DRAW.

- :class:`ConvLSTMCell`: an LSTM whose gates are convolutions over ``(input, h)`` [1];
- :func:`read_network` and :func:`write_network`: ``levels`` stride-2 convolutions from an image
  ``(C, H, W)`` down to the recurrent maps ``(channels, H / 2^levels, W / 2^levels)``, and
  transposed convolutions back up (Gregor et al.'s convolutional read and write [2]);
- :func:`apply_2d`: runs a 2-D module on tensors with any leading dims ``(..., C, H, W)`` (the
  importance samples and data of pvae's evaluators), broadcasting them against each other.

References:
    [1] Shi, Chen, Wang, Yeung, Wong, Woo. Convolutional LSTM Network: A Machine Learning
        Approach for Precipitation Nowcasting. NeurIPS 2015. arXiv:1506.04214
    [2] Gregor, Besse, Rezende, Danihelka, Wierstra. Towards Conceptual Compression.
        NeurIPS 2016. arXiv:1604.08772
"""

from __future__ import annotations

import torch
from torch import nn


def apply_2d(module: nn.Module, *tensors: torch.Tensor) -> torch.Tensor:
    """``module`` applied to ``tensors`` ``(..., C_i, H, W)`` concatenated along channels.

    The leading dims of the tensors are broadcast against each other and flattened into one
    batch dim for the convolution, then restored: ``(*leading, C_out, H', W')``.
    """
    leading = torch.broadcast_shapes(*(t.shape[:-3] for t in tensors))
    flat = [t.expand(*leading, *t.shape[-3:]).reshape(-1, *t.shape[-3:]) for t in tensors]
    out = module(flat[0] if len(flat) == 1 else torch.cat(flat, dim=1))
    return out.reshape(*leading, *out.shape[1:])


class ConvLSTMCell(nn.Module):
    """One step of a convolutional LSTM: ``(input, (h, c)) -> (h', c')``.

    The four gates are one ``kernel_size`` convolution (same padding) of ``[input, h]``::

        i, f, o, g = conv([input, h])
        c' = sigmoid(f) c + sigmoid(i) tanh(g),   h' = sigmoid(o) tanh(c')

    Shapes: ``input`` ``(..., input_channels, H, W)``, ``h`` and ``c``
    ``(..., hidden_channels, H, W)``; leading dims broadcast (:func:`apply_2d`). The forget
    gate's bias starts at 1, so that a fresh cell keeps its memory.
    """

    def __init__(self, input_channels: int, hidden_channels: int, kernel_size: int = 3) -> None:
        super().__init__()
        if kernel_size % 2 != 1:
            raise ValueError(f"kernel_size must be odd (same padding), got {kernel_size}")
        self.hidden_channels = hidden_channels
        self.gates = nn.Conv2d(
            input_channels + hidden_channels,
            4 * hidden_channels,
            kernel_size,
            padding=kernel_size // 2,
        )
        with torch.no_grad():
            self.gates.bias[hidden_channels : 2 * hidden_channels].fill_(1.0)

    def forward(
        self, inputs: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        h, c = state
        i, f, o, g = apply_2d(self.gates, inputs, h).chunk(4, dim=-3)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        return torch.sigmoid(o) * torch.tanh(c), c


def read_network(in_channels: int, channels: int, levels: int) -> nn.Sequential:
    """``levels`` stride-2 3x3 convolutions with ELUs, ``(in_channels, H, W)`` to
    ``(channels, H / 2^levels, W / 2^levels)``; ``levels = 0``: one 1x1 convolution."""
    if levels == 0:
        return nn.Sequential(nn.Conv2d(in_channels, channels, 1), nn.ELU())
    layers: list[nn.Module] = []
    for level in range(levels):
        layers += [
            nn.Conv2d(in_channels if level == 0 else channels, channels, 3, stride=2, padding=1),
            nn.ELU(),
        ]
    return nn.Sequential(*layers)


def write_network(channels: int, out_channels: int, levels: int) -> nn.Sequential:
    """Mirror of :func:`read_network`: ``levels`` stride-2 4x4 transposed convolutions (ELUs
    between them, none after the last), ``(channels, h, w)`` to ``(out_channels, 2^levels h,
    2^levels w)``; ``levels = 0``: one 1x1 convolution."""
    if levels == 0:
        return nn.Sequential(nn.Conv2d(channels, out_channels, 1))
    layers: list[nn.Module] = []
    for level in range(levels):
        last = level == levels - 1
        layers.append(
            nn.ConvTranspose2d(channels, out_channels if last else channels, 4, 2, padding=1)
        )
        if not last:
            layers.append(nn.ELU())
    return nn.Sequential(*layers)
