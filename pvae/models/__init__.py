"""pvae's models: each a :class:`~pvae.models.base.Model` (a ``PyroModule`` with ``model`` and
``guide``) with a typed config, registered by name."""

from pvae.models.base import Model, ModelConfig, ReportItem
from pvae.models.conv_draw import ConvDRAW, ConvDRAWConfig
from pvae.models.cvae import CVAE, CVAEConfig
from pvae.models.iaf import IAFVAE, IAFVAEConfig
from pvae.models.image import ImageConfig, ImageModel, StandardNormalPrior
from pvae.models.m2 import M2, M2Config
from pvae.models.mixture_vae import MixtureVAE, MixtureVAEConfig
from pvae.models.registry import (
    available_models,
    build_model,
    get_model_class,
    register_model,
    smoke_config,
)
from pvae.models.svae import HypersphericalVAE, HypersphericalVAEConfig
from pvae.models.two_layer import TwoLayerVAE, TwoLayerVAEConfig
from pvae.models.vae import VAE, VAEConfig

__all__ = [
    "Model",
    "ModelConfig",
    "ReportItem",
    "ImageConfig",
    "ImageModel",
    "StandardNormalPrior",
    "VAE",
    "VAEConfig",
    "TwoLayerVAE",
    "TwoLayerVAEConfig",
    "CVAE",
    "CVAEConfig",
    "IAFVAE",
    "IAFVAEConfig",
    "HypersphericalVAE",
    "HypersphericalVAEConfig",
    "MixtureVAE",
    "MixtureVAEConfig",
    "M2",
    "M2Config",
    "ConvDRAW",
    "ConvDRAWConfig",
    "available_models",
    "build_model",
    "get_model_class",
    "register_model",
    "smoke_config",
]
