"""Encoders and decoders shared by pvae's models: one module per family.

- :mod:`pvae.nets.mlp`: multilayer perceptrons and Gaussian heads;
- :mod:`pvae.nets.conv`: a small convolutional encoder/decoder for 28x28 images;
- :mod:`pvae.nets.conv_lstm`: convolutional LSTMs and the strided read/write of conv DRAW;
- :mod:`pvae.nets.pixelcnn`: a gated PixelCNN decoder for binary images, conditioned on ``z``;
- :mod:`pvae.nets.recurrent`: LSTM sentence encoders and decoders over token ids;
- :mod:`pvae.nets.variance`: variance layers (zero-mean weights, Neklyudov et al. 2019).

All networks map leading batch dims through unchanged, so a decoder applied to latents of shape
``(K, B, D)`` (K importance samples) returns ``(K, B, ...)``.
"""

from pvae.nets.conv import ConvDecoder, ConvEncoder
from pvae.nets.mlp import ACTIVATIONS, GaussianHead, GaussianMLP, mlp, numel

__all__ = [
    "ACTIVATIONS",
    "ConvDecoder",
    "ConvEncoder",
    "GaussianHead",
    "GaussianMLP",
    "mlp",
    "numel",
]
