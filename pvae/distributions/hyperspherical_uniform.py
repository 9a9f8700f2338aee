"""The uniform distribution on the unit sphere ``S^(dim-1)``."""

import math

import torch
from pyro.distributions import TorchDistribution, constraints
from torch.distributions import register_kl


def log_sphere_area(dim: int) -> float:
    """log of the surface area of ``S^(dim-1) ⊂ R^dim``: ``log(2 pi^(dim/2) / Gamma(dim/2))``."""
    return math.log(2) + (dim / 2) * math.log(math.pi) - math.lgamma(dim / 2)


class HypersphericalUniform(TorchDistribution):
    r"""Uniform distribution on the unit sphere :math:`S^{dim-1} \subset R^{dim}`.

    The prior of the hyperspherical VAE [1]; sampled as a normalized standard Gaussian [2].
    ``log_prob`` is ``-log(2 pi^(dim/2) / Gamma(dim/2))`` on the sphere (it does not check
    that ``value`` is on the sphere unless validation is on).

    :param int dim: ambient dimension ``>= 2`` (samples have shape ``(..., dim)``).
    :param batch_shape: batch shape (a ``pyro.plate`` expands it).
    :param torch.Tensor like: optional tensor whose dtype and device samples take.
    :param dtype: dtype of samples (default: ``like``'s, else torch's default).
    :param device: device of samples (default: ``like``'s, else CPU).

    References:
        [1] T. R. Davidson, L. Falorsi, N. De Cao, T. Kipf, J. M. Tomczak, "Hyperspherical
            Variational Auto-Encoders", UAI 2018, https://arxiv.org/abs/1804.00891
        [2] M. E. Muller, "A note on a method for generating points uniformly on
            n-dimensional spheres", Communications of the ACM 2(4) (1959).
    """

    arg_constraints = {}
    support = constraints.sphere
    has_rsample = True

    def __init__(
        self,
        dim: int,
        batch_shape: torch.Size | tuple[int, ...] = (),
        *,
        like: torch.Tensor | None = None,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
        validate_args: bool | None = None,
    ):
        if isinstance(dim, bool) or not isinstance(dim, int) or dim < 2:
            raise ValueError(f"HypersphericalUniform: dim must be an integer >= 2, got {dim!r}.")
        self._dim = dim
        self._dtype = dtype or (like.dtype if like is not None else torch.get_default_dtype())
        self._device = torch.device(
            device if device is not None else (like.device if like is not None else "cpu")
        )
        super().__init__(torch.Size(batch_shape), torch.Size((dim,)), validate_args=validate_args)

    def expand(self, batch_shape, _instance=None):
        new = self._get_checked_instance(HypersphericalUniform, _instance)
        new._dim, new._dtype, new._device = self._dim, self._dtype, self._device
        super(HypersphericalUniform, new).__init__(
            torch.Size(batch_shape), self.event_shape, validate_args=False
        )
        new._validate_args = self._validate_args
        return new

    @property
    def dim(self) -> int:
        return self._dim

    @property
    def mean(self) -> torch.Tensor:
        return torch.zeros(self._extended_shape(), dtype=self._dtype, device=self._device)

    def rsample(self, sample_shape=()) -> torch.Tensor:
        x = torch.randn(self._extended_shape(sample_shape), dtype=self._dtype, device=self._device)
        return x / torch.linalg.vector_norm(x, dim=-1, keepdim=True)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        if self._validate_args:
            self._validate_sample(value)
        shape = torch.broadcast_shapes(value.shape[:-1], self.batch_shape)
        return torch.full(
            shape, -log_sphere_area(self._dim), dtype=value.dtype, device=value.device
        )

    def entropy(self) -> torch.Tensor:
        return torch.full(
            self.batch_shape, log_sphere_area(self._dim), dtype=self._dtype, device=self._device
        )


@register_kl(HypersphericalUniform, HypersphericalUniform)
def _kl_uniform_uniform(p: HypersphericalUniform, q: HypersphericalUniform) -> torch.Tensor:
    if p.dim != q.dim:
        raise ValueError(f"kl_divergence: dimensions differ ({p.dim} vs {q.dim}).")
    shape = torch.broadcast_shapes(p.batch_shape, q.batch_shape)
    return torch.zeros(shape, dtype=p._dtype, device=p._device)
