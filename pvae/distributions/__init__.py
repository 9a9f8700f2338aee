"""Pyro distributions with ``rsample`` and exact ``log_prob`` for latents Pyro/torch lack,
and :class:`TokenSequence`, the likelihood of an autoregressive sentence decoder.

Importing this package registers the KL divergences (``kl_divergence`` and
``TraceMeanField_ELBO`` find them). It imports torch and Pyro only (no scipy).
"""

from pvae.distributions.bessel import bessel_iv_ratio, log_bessel_iv
from pvae.distributions.hyperspherical_uniform import HypersphericalUniform, log_sphere_area
from pvae.distributions.mixture import ReparameterizedMixture
from pvae.distributions.power_spherical import PowerSpherical
from pvae.distributions.token_sequence import TokenSequence
from pvae.distributions.von_mises_fisher import VonMisesFisher

__all__ = [
    "HypersphericalUniform",
    "PowerSpherical",
    "ReparameterizedMixture",
    "TokenSequence",
    "VonMisesFisher",
    "bessel_iv_ratio",
    "log_bessel_iv",
    "log_sphere_area",
]
