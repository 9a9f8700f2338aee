"""The power spherical distribution on the unit sphere ``S^(d-1)``."""

import math

import torch
from torch.distributions import register_kl

from pvae.distributions.hyperspherical_uniform import HypersphericalUniform, log_sphere_area
from pvae.distributions.spherical import SphericalLocConcentration
from pvae.distributions.von_mises_fisher import _householder_from_e1


def _log_normalizer_plus_kappa_log2(kappa: torch.Tensor, d: int) -> torch.Tensor:
    """``log N_d(kappa) + kappa log 2`` in float64 (finite for huge kappa).

    ``log N = -[(a + b) log 2 + b log pi + lgamma(a) - lgamma(a + b)]``, ``a = (d-1)/2 + kappa``,
    ``b = (d-1)/2``.
    """
    kappa = kappa.double()
    b = (d - 1) / 2
    a = b + kappa
    return -(d - 1) * math.log(2) - b * math.log(math.pi) - torch.lgamma(a) + torch.lgamma(a + b)


def _entropy64(kappa: torch.Tensor, d: int) -> torch.Tensor:
    kappa = kappa.double()
    b = (d - 1) / 2
    a = b + kappa
    # H = -log N - kappa E[log(1 + <mu, x>)], E[log(1 + t)] = log 2 + psi(a) - psi(a + b)
    return -_log_normalizer_plus_kappa_log2(kappa, d) + kappa * (
        torch.digamma(a + b) - torch.digamma(a)
    )


class PowerSpherical(SphericalLocConcentration):
    r"""Power spherical distribution on :math:`S^{d-1}`, a rejection-free alternative to the
    von Mises-Fisher distribution [1]:

    .. math:: p(x) \propto (1 + \mu^T x)^\kappa,

    sampled as ``(1 + <mu, x>) / 2 ~ Beta((d-1)/2 + kappa, (d-1)/2)`` (reparameterized through
    torch's Beta), a uniform tangent direction and a Householder reflection onto ``mu``.
    ``log_prob``, ``mean``, ``entropy`` and the KL divergence to
    :class:`~pvae.distributions.HypersphericalUniform` are closed form. Internally float64,
    cast back to the parameters' dtype.

    :param torch.Tensor loc: mean direction, shape ``(..., d)``, unit norm, ``d >= 2``.
    :param torch.Tensor concentration: ``kappa > 0``, broadcastable with ``loc[..., 0]``.

    References:
        [1] N. De Cao and W. Aziz, "The Power Spherical distribution", ICML INNF+ workshop
            2020, https://arxiv.org/abs/2001.04437
    """

    @property
    def mean(self) -> torch.Tensor:
        kappa = self.concentration
        return (kappa / (self.dim - 1 + kappa)).unsqueeze(-1) * self.loc

    def rsample(self, sample_shape=()) -> torch.Tensor:
        shape = self._extended_shape(torch.Size(sample_shape))
        d = self.dim
        kappa = self.concentration.double()
        b = torch.full_like(kappa, (d - 1) / 2)
        # y = 1 - <mu, x> = 2 (1 - z), 1 - z ~ Beta(b, a): sampled directly, so that huge kappa
        # keeps relative precision in y.
        half_y = torch.distributions.Beta(b, b + kappa).rsample(shape[: -1 - len(self.batch_shape)])
        y = 2 * half_y
        sin = torch.sqrt(torch.clamp(y * (2 - y), min=0.0))
        dtype = self.loc.dtype
        tangent = torch.randn(shape[:-1] + (d - 1,), dtype=dtype, device=self.loc.device)
        tangent = tangent / torch.linalg.vector_norm(tangent, dim=-1, keepdim=True)
        x = torch.cat([(1 - y).unsqueeze(-1).to(dtype), sin.unsqueeze(-1).to(dtype) * tangent], -1)
        return _householder_from_e1(x, self.loc)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        if self._validate_args:
            self._validate_sample(value)
        # kappa log(1 + <mu, x>) = kappa log 2 + kappa log1p(-|x - mu|^2 / 4) for unit vectors
        quarter_sq_dist = 0.25 * ((value - self.loc) ** 2).sum(-1)
        log_norm = _log_normalizer_plus_kappa_log2(self.concentration, self.dim)
        return log_norm.to(value.dtype) + self.concentration * torch.log1p(-quarter_sq_dist)

    def entropy(self) -> torch.Tensor:
        return _entropy64(self.concentration, self.dim).to(self.concentration.dtype)


@register_kl(PowerSpherical, HypersphericalUniform)
def _kl_power_spherical_uniform(p: PowerSpherical, q: HypersphericalUniform) -> torch.Tensor:
    if p.dim != q.dim:
        raise ValueError(f"kl_divergence: dimensions differ ({p.dim} vs {q.dim}).")
    kl = -_entropy64(p.concentration, p.dim) + log_sphere_area(p.dim)
    return kl.to(p.concentration.dtype).expand(torch.broadcast_shapes(p.batch_shape, q.batch_shape))
