"""pvae's models: each a ``PyroModule`` with ``model(x)`` and ``guide(x)``, registered by name."""

from pvae.models.registry import available_models, build_model, get_model_class, register_model
from pvae.models.two_layer import TwoLayerVAE
from pvae.models.vae import VAE, ImageModel

__all__ = [
    "VAE",
    "ImageModel",
    "TwoLayerVAE",
    "available_models",
    "build_model",
    "get_model_class",
    "register_model",
]
