"""The InfoVAE objective [1]: the ELBO with its KL reweighted and an MMD between the *aggregate*
posterior and the prior, for any model whose latents sit in the ``"data"`` plate.

Maximised per datum (Eq. 6 of [1], with ``D`` the maximum mean discrepancy)::

    L = E_q[log p(x | z)] - (1 - alpha) KL(q(z | x) || p(z)) - (alpha + lambda - 1) D(q(z) || p(z))

``q(z) = E_pD[q(z | x)]`` is the aggregate posterior. Each step, the guide draws one code per
datum (every latent site in the ``"data"`` plate, flattened and concatenated per datum); the
model's own prior sites give as many draws of ``p(z)`` (the sites' distributions in the model
trace: ``Normal(0, I)`` for ``vae`` and the text VAEs, the uniform distribution on the sphere
for ``svae`` and ``vmf_text_vae``); ``D`` is the unbiased U-statistic between the two samples
*across the minibatch* (:func:`pvae.evaluation.mmd.mmd`, kernel ``rbf`` or ``imq``, bandwidth
a number, ``"median"`` or ``None`` for ``2 D``). With K particles there is one MMD per
particle, averaged. A prior whose distribution depends on other latents (hierarchical models)
is drawn ancestrally instead, by running the model once more without the guide.

Scaling: the MMD is a property of the batch, not of a datum, so like the per-datum terms it is
counted once per datum: the loss carries ``N * (alpha + lambda - 1) * MMD^2_u`` for a dataset
of N units (``B`` data times the data plate's ``N / B``), as ``N`` times the per-datum ``L``.

Which settings are which objective (``mmd_weight = alpha + lambda - 1``):

=========================================  ==============================================
``alpha = 0, mmd_lambda = 1``              the ELBO (the VAE) [2]
``alpha = 1 - beta, mmd_lambda = beta``    the beta-VAE (MMD weight 0) [3]
``alpha = 0, mmd_lambda > 1``              the ELBO plus ``(mmd_lambda - 1)`` MMD
``alpha = 1, mmd_lambda > 0``              MMD-VAE: reconstruction and MMD, no KL [1]
``alpha = 1, mmd_lambda = 784``            MMD-VAE as Zhao's code weights it (mean squared
                                           error per pixel + MMD, i.e. a Gaussian of
                                           variance 1/2 on 784 pixels, per image), with the
                                           stochastic guide and pvae's likelihood instead
=========================================  ==============================================

The defaults, ``alpha = 0, mmd_lambda = 1000``, are those of the ``info_vae`` model: the ELBO
plus 999 MMD, an unverified choice (the paper's experimental settings were not read). Weights
are validated (:func:`check_weights`): ``alpha <= 1`` (the KL weight ``1 - alpha`` is not
negative), ``mmd_lambda > 0``, and the MMD weight ``alpha + mmd_lambda - 1 >= 0``: a negative
MMD weight (e.g. ``alpha = 0.5, lambda = 0.03``, one library's defaults) would push q(z)
*away* from the prior, and is refused.

What ``bound`` reports: the plain ELBO (KL weight 1, no MMD), an honest stochastic lower bound
on ``log p(x)``, whatever the weights; only the loss is InfoVAE's. KL annealing multiplies the
KL weight ``1 - alpha`` (``weights_latents``). A minibatch of a single datum has no
across-batch MMD: its MMD term is 0. Under ``torch.distributed`` each rank's MMD is over its
own share of the batch (the gradients are averaged, the codes are not gathered): the same
objective as a batch of the per-rank size.

Not Pyro's ``Trace_MMD``: that objective computes the MMD between its *particles*, each
particle the whole batch's codes of a site flattened into one vector, and as many joint prior
draws: it compares the joint posterior of the batch with the prior over ``num_particles``
points, not the data's codes with the prior across the batch, so it is not the aggregate
term (with one particle it has a single point per sample; codes whose aggregate is the prior
still get a large penalty: ``tests/infer/test_info.py``). The MMD here is across the data
batch, one point per datum.

The model ``info_vae`` (:mod:`pvae.models.info_vae`) is the VAE with the same weights built
into the model (a zero-valued MMD factor): use it where the objective cannot be chosen (a Pyro
ELBO); it shares :func:`check_weights`.

References:
    [1] Zhao, Song, Ermon. InfoVAE: Balancing Learning and Inference in Variational
        Autoencoders. AAAI 2019. arXiv:1706.02262
    [2] Kingma, Welling. Auto-Encoding Variational Bayes. ICLR 2014. arXiv:1312.6114
    [3] Higgins et al. beta-VAE: Learning Basic Visual Concepts with a Constrained Variational
        Framework. ICLR 2017. https://openreview.net/forum?id=Sy2fzU9gl
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import pyro.poutine as poutine
import torch
from pyro.infer.inspect import get_dependencies

from pvae.evaluation.mmd import KERNELS, mmd
from pvae.infer.objectives import ELBO
from pvae.infer.trace import DATA_PLATE, PARTICLE_PLATE, latent_sites, vectorize

__all__ = ["InfoVAEObjective", "check_bandwidth", "check_weights", "latent_codes"]


def check_weights(alpha: float, mmd_lambda: float, *, allow_alpha_one: bool = True) -> None:
    """``ValueError`` unless the KL weight ``1 - alpha`` and the MMD weight
    ``alpha + mmd_lambda - 1`` are non-negative and ``mmd_lambda`` is positive."""
    limit_ok = alpha <= 1 if allow_alpha_one else alpha < 1
    if not (math.isfinite(alpha) and limit_ok):
        bound = "at most 1" if allow_alpha_one else "below 1"
        raise ValueError(
            f"alpha must be a number {bound} (the KL weight 1 - alpha must not be negative), "
            f"got {alpha}"
        )
    if not (mmd_lambda > 0 and math.isfinite(mmd_lambda)):
        raise ValueError(f"mmd_lambda must be a positive number, got {mmd_lambda}")
    if alpha + mmd_lambda - 1 < 0:
        raise ValueError(
            f"the MMD weight alpha + mmd_lambda - 1 = {alpha + mmd_lambda - 1:g} is negative "
            "(it would push q(z) away from the prior); raise mmd_lambda to at least "
            f"1 - alpha = {1 - alpha:g}"
        )


def check_bandwidth(value: Any) -> float | str | None:
    """A kernel bandwidth: a positive number, ``"median"``, or ``None`` (``2 D``)."""
    if value is None or value == "median":
        return value
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    if not (number > 0 and math.isfinite(number)):
        raise ValueError(f"bandwidth must be a positive number, 'median' or null, got {value!r}")
    return number


def _frame(site: dict[str, Any], name: str):
    return next((f for f in site["cond_indep_stack"] if f.name == name), None)


def _per_datum(site: dict[str, Any], value: torch.Tensor) -> torch.Tensor | None:
    """``value`` of a site in the data plate as ``(K, B, F)`` (K = 1 without particles);
    None for a site outside the data plate."""
    data = _frame(site, DATA_PLATE)
    if data is None:
        return None
    fn = site["fn"]
    value = value.expand(fn.batch_shape + fn.event_shape)
    batch_dims = len(fn.batch_shape)
    axes = [batch_dims + data.dim]
    particles = _frame(site, PARTICLE_PLATE)
    if particles is not None:
        axes.insert(0, batch_dims + particles.dim)
    rest = [d for d in range(value.dim()) if d not in axes]
    value = value.permute(*axes, *rest)
    if particles is None:
        value = value.unsqueeze(0)
    return value.reshape(value.shape[0], value.shape[1], -1)


def _draw(site: dict[str, Any]) -> torch.Tensor:
    fn = site["fn"]
    return fn.rsample() if fn.has_rsample else fn.sample()


def latent_codes(model_trace, guide_trace) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """The guide's codes and as many prior draws, each ``(K, B, F)``, from the traces of one
    step; the names of the sites used (the guide's latents in the data plate, in order).
    Prior draws are drawn from each site's distribution in the model trace."""
    codes, draws, names = [], [], []
    for site in latent_sites(guide_trace):
        code = _per_datum(site, site["value"])
        if code is None:
            continue
        prior = model_trace.nodes[site["name"]]
        codes.append(code)
        draws.append(_per_datum(prior, _draw(prior)))
        names.append(site["name"])
    if not codes:
        raise ValueError(
            "InfoVAE's MMD needs latent sites inside pyro.plate('data'); the guide has none"
        )
    return torch.cat(codes, -1), torch.cat(draws, -1), names


class InfoVAEObjective(ELBO):
    """The InfoVAE objective of Zhao et al. [1]: reconstruction, the KL weighted by
    ``1 - alpha``, and ``(alpha + mmd_lambda - 1)`` times the MMD between the minibatch's codes
    and as many prior draws (see the module docstring for the weights table and scaling).

    Args:
        num_particles: K draws per datum (one MMD across the batch per particle, averaged).
        alpha: the KL weight is ``1 - alpha`` (``alpha <= 1``; 1: no KL, the MMD-VAE).
        mmd_lambda: lambda; the MMD weight is ``alpha + mmd_lambda - 1`` (must be >= 0).
        kernel: ``"rbf"`` or ``"imq"``.
        bandwidth: the kernel's ``h``: a positive number, ``"median"``, or None for ``2 D``
            (D: the per-datum code size).
        analytic_kl: as :class:`~pvae.infer.objectives.ELBO`.
    """

    name = "infovae"

    def __init__(
        self,
        num_particles: int = 1,
        alpha: float = 0.0,
        mmd_lambda: float = 1000.0,
        kernel: str = "rbf",
        bandwidth: float | str | None = None,
        analytic_kl: bool = True,
    ) -> None:
        super().__init__(num_particles, analytic_kl=analytic_kl)
        alpha, mmd_lambda = float(alpha), float(mmd_lambda)
        check_weights(alpha, mmd_lambda)
        if kernel not in KERNELS:
            raise ValueError(f"unknown kernel {kernel!r}; choose from {', '.join(KERNELS)}")
        self.alpha = alpha
        self.mmd_lambda = mmd_lambda
        self.kernel = kernel
        self.bandwidth = check_bandwidth(bandwidth)
        self._hierarchical: dict[tuple[Callable, Callable], bool] = {}

    @property
    def kl_weight(self) -> float:
        return 1.0 - self.alpha

    @property
    def mmd_weight(self) -> float:
        return self.alpha + self.mmd_lambda - 1.0

    def _latent_weight(self) -> float:
        return self.beta * self.kl_weight

    def _prior_depends_on_latents(self, model, guide, args, kwargs, names) -> bool:
        key = (model, guide)
        if key not in self._hierarchical:
            try:
                deps = get_dependencies(model, args, kwargs)["prior_dependencies"]
                self._hierarchical[key] = any(set(deps.get(n, {})) - {n} for n in names)
            except Exception:  # a model get_dependencies cannot trace: draw ancestrally
                self._hierarchical[key] = True
        return self._hierarchical[key]

    def _ancestral_draws(self, model, args, kwargs, model_trace, names) -> torch.Tensor:
        """Prior draws of the sites ``names`` from one run of the model without the guide."""
        site = model_trace.nodes[names[0]]
        particles = _frame(site, PARTICLE_PLATE)
        if particles is not None:
            model = vectorize(model, particles.size, -particles.dim - 1)
        prior_trace = poutine.trace(model).get_trace(*args, **kwargs)
        return torch.cat(
            [_per_datum(prior_trace.nodes[n], prior_trace.nodes[n]["value"]) for n in names], -1
        )

    def mmd_term(self, codes: torch.Tensor, draws: torch.Tensor) -> torch.Tensor:
        """The mean over particles of ``MMD^2_u`` between ``codes`` and ``draws``
        (``(K, B, F)`` each)."""
        return mmd(codes, draws, kernel=self.kernel, bandwidth=self.bandwidth).mean()

    def _penalty(self, model, guide, args, kwargs, model_trace, guide_trace, frame, factor):
        if self.mmd_weight == 0 or not torch.is_grad_enabled() or frame is None:
            return None
        codes, draws, names = latent_codes(model_trace, guide_trace)
        if codes.shape[1] < 2:
            return None  # one datum: no across-batch MMD
        if self._prior_depends_on_latents(model, guide, args, kwargs, names):
            draws = self._ancestral_draws(model, args, kwargs, model_trace, names)
        return factor * frame.size * self.mmd_weight * self.mmd_term(codes, draws)
