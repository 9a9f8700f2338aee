"""pvae's models: each a ``PyroModule`` with ``model(x)`` and ``guide(x)``, registered by name."""

from pvae.models.cvae import CVAE
from pvae.models.iaf import IAFVAE
from pvae.models.m2 import M2
from pvae.models.mixture_vae import MixtureVAE
from pvae.models.registry import available_models, build_model, get_model_class, register_model
from pvae.models.svae import HypersphericalVAE
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
    "CVAE",
    "IAFVAE",
    "HypersphericalVAE",
    "MixtureVAE",
    "M2",
]
