"""InfoVAE [1]: the Gaussian VAE trained to match the *aggregate* posterior to the prior.

Generative story and guide: those of :class:`~pvae.models.vae.VAE` (site ``"z"``, shape
``(B, D)``; ``z_n ~ Normal(0, I_D)``, ``x_n ~ p(x | f_theta(z_n))``,
``q(z_n | x_n) = Normal(mu_phi(x_n), diag sigma_phi(x_n)^2)``). What changes is the objective
(Eq. 6 of [1]), maximised per datum::

    L = E_q[log p(x | z)] - (1 - alpha) KL(q(z | x) || p(z)) - (alpha + lambda - 1) D(q(z) || p(z))

with ``q(z) = E_pD[q(z | x)]`` the aggregate posterior and ``D`` the maximum mean discrepancy
between the minibatch's ``z`` (one draw per datum) and as many draws of the prior, estimated by
the unbiased U-statistic (:func:`pvae.evaluation.mmd.mmd`; kernels ``rbf`` or ``imq``).

- The KL weight ``1 - alpha`` is ``poutine.scale`` around the latent site in the model and the
  guide, as the VAE's ``beta``: every pvae and Pyro ELBO weights the KL by it.
- The MMD term is a ``pyro.factor("mmd", ...)`` site in the model whose value is a
  *zero-valued surrogate* ``c - stop_grad(c)``, ``c = -(alpha + lambda - 1) * MMD^2_u`` (the
  same scalar for every datum, so with the data plate's ``N / B`` scaling the bound carries
  ``N`` times the per-datum penalty, as ``N`` times ``L``). Reported bounds, validation ELBOs
  and importance-sampled log-likelihoods are thus those of the beta-VAE with
  ``beta = 1 - alpha`` (and exactly the VAE's for ``alpha = 0``), not biased by a
  batch-dependent term, while the gradient is the InfoVAE gradient: the MMD's gradient
  reaches the encoder through the reparameterised ``z``. It is computed only when the model is
  in training mode with gradients on, so evaluation (and HMC in AIS, which differentiates the
  joint in ``z``) sees the plain model.

Which settings are which objective: the table in :mod:`pvae.infer.info`, whose
``objective="infovae"`` trains any model of the zoo (``vae``, ``svae``, the text VAEs) with the
same weights; this model builds them into the model instead, for training with any ELBO (a
Pyro one included). The weights are validated by the same
:func:`pvae.infer.info.check_weights`.

``alpha = 1`` itself (no KL at all) is refused: Pyro's ``poutine.scale`` needs a positive
scale; use ``alpha`` close to 1. The training value is the beta-VAE objective with
``beta = 1 - alpha``, a lower bound on ``log p(x)`` only for ``alpha <= 0``;
``log_likelihood`` (unscaled sites, no MMD factor) is unaffected. Weights that
make the MMD weight negative (``alpha + lambda < 1``, e.g. ``alpha = 0.5, lambda = 0.03``)
are refused too: they would push ``q(z)`` *away* from the prior.

Note: Pyro's ``Trace_MMD`` is not this objective: it computes the MMD over the particle
dimension (each particle the whole batch's codes as one vector), not across the data batch, so
it does not measure the aggregate posterior (see :mod:`pvae.infer.info`).

References:
    [1] Zhao, Song, Ermon. InfoVAE: Balancing Learning and Inference in Variational
        Autoencoders. AAAI 2019. arXiv:1706.02262
    [2] Tolstikhin, Bousquet, Gelly, Schoelkopf. Wasserstein Auto-Encoders. ICLR 2018.
        arXiv:1711.01558
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pyro
import torch

from pvae.evaluation.mmd import KERNELS, mmd
from pvae.infer.info import check_bandwidth, check_weights
from pvae.models.base import option
from pvae.models.image import ImageConfig
from pvae.models.registry import register_model
from pvae.models.vae import VAE

__all__ = ["InfoVAE", "InfoVAEConfig"]


@dataclass(frozen=True)
class InfoVAEConfig(ImageConfig):
    """Options of :class:`InfoVAE`."""

    architecture: str = option("mlp", "mlp, or conv (28x28 single-channel images only)")
    alpha: float = option(0.0, "the KL weight is 1 - alpha (alpha < 1)", convert=float)
    mmd_lambda: float = option(
        1000.0, "lambda: the MMD weight is alpha + lambda - 1 (>= 0)", convert=float
    )
    kernel: str = option("rbf", f"MMD kernel: one of {', '.join(KERNELS)}")
    bandwidth: float | str | None = option(
        None,
        "kernel bandwidth h: a number, 'median', or null for 2 * latent_dim",
        convert=check_bandwidth,
    )

    def validate(self) -> None:
        super().validate()
        check_weights(self.alpha, self.mmd_lambda, allow_alpha_one=False)
        if self.kernel not in KERNELS:
            raise ValueError(f"unknown kernel {self.kernel!r}; choose from {', '.join(KERNELS)}")
        if self.architecture not in ("mlp", "conv"):
            raise ValueError(f"architecture must be 'mlp' or 'conv', got {self.architecture!r}")
        if self.architecture == "conv" and self.input_shape != (1, 28, 28):
            raise ValueError(
                f"architecture='conv' needs inputs of shape (1, 28, 28), got {self.input_shape}"
            )


@register_model("info_vae", smoke={"latent_dim": 2, "hidden": [16]})
class InfoVAE(VAE):
    """The Gaussian VAE with the InfoVAE objective [1] (MMD divergence).

    Options (:class:`InfoVAEConfig`): those of every image model, ``architecture``, ``alpha``
    (the KL weight is ``1 - alpha``), ``mmd_lambda`` (lambda; the MMD weight is
    ``alpha + lambda - 1``), ``kernel`` (``rbf`` or ``imq`` [2]) and ``bandwidth``.

    Shapes: those of :class:`~pvae.models.vae.VAE`; the MMD needs at least 2 data per batch.
    """

    Config = InfoVAEConfig
    config: InfoVAEConfig

    def __init__(self, config: InfoVAEConfig | None = None, **options: Any) -> None:
        super().__init__(config, **options)
        config = self.config
        self.beta = 1.0 - config.alpha
        self.mmd_weight = config.alpha + config.mmd_lambda - 1.0

    def model(self, x: torch.Tensor) -> None:
        """p(x, z), the latent term weighted by 1 - alpha, and the zero-valued MMD factor."""
        self._check_input(x)
        with pyro.plate("data", x.shape[0]):
            with self._kl_weight():
                z = pyro.sample("z", self.prior())
            if self.mmd_weight > 0 and self.training and torch.is_grad_enabled():
                pyro.factor("mmd", self.mmd_surrogate(z))
            pyro.sample("x", self.likelihood(self.decode_logits(z)), obs=x)

    def mmd_surrogate(
        self, z: torch.Tensor, prior_draws: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``c - stop_grad(c)``, ``c = -mmd_weight * MMD^2_u(z, prior_draws)``, per datum.

        ``z``: ``(..., B, D)``, the guide's draws (leading dims: particles, each its own MMD);
        ``prior_draws``: draws of p(z) (default: as many as ``z``, fresh). Returns shape
        ``(..., B)``, zero in value.
        """
        if prior_draws is None:
            prior_draws = torch.randn_like(z)
        penalty = -self.mmd_weight * mmd(
            z, prior_draws, kernel=self.config.kernel, bandwidth=self.config.bandwidth
        )
        zero_valued = penalty - penalty.detach()
        return zero_valued.unsqueeze(-1).expand(z.shape[:-1])
