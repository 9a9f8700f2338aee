"""A mixture of one family with reparameterized samples (implicit gradients through the CDF)."""

import torch
from pyro.distributions import TorchDistribution, constraints


class ReparameterizedMixture(TorchDistribution):
    r"""Mixture of ``K`` components of one family whose ``rsample`` is differentiable in the
    mixing logits and in the component parameters, like ``torch``'s ``MixtureSameFamily``
    (which has no ``rsample``).

    A sample is drawn exactly (component index, then the component's sample) without
    gradient; gradients are attached by implicit reparameterization [1, 2]. For a diagonal
    multivariate mixture, coordinate ``i`` given ``x_{<i}`` is a univariate mixture whose
    weights are the responsibilities ``pi_k(x_{<i}) ∝ pi_k prod_{j<i} p_kj(x_j)`` [1];
    with its CDF ``F_i`` and density ``p_i``

    .. math:: \frac{dx_i}{d\theta} = -\frac{1}{p_i(x_i)} \Big(\frac{\partial F_i}{\partial\theta}
        + \sum_{j<i} \frac{\partial F_i}{\partial x_j}\frac{dx_j}{d\theta}\Big),

    realised as the surrogate ``x_i - (F_i - stop_grad(F_i)) / stop_grad(p_i)`` in a loop over
    the ``D`` coordinates (``O(D K)`` work per sample). Only first derivatives are correct.

    Components: a univariate distribution with a differentiable ``cdf`` (``Normal``,
    ``Logistic`` as a ``TransformedDistribution`` of ``Uniform``, ...), batch shape
    ``(..., K)``; or ``Independent(base, 1)`` of such a univariate ``base`` with batch shape
    ``(..., K, D)`` (a diagonal multivariate mixture).

    :param Categorical mixture_distribution: mixing weights, batch shape ``(...)``, ``K``
        categories.
    :param component_distribution: the ``K`` components, batch shape ``(..., K)``.

    References:
        [1] A. Graves, "Stochastic Backpropagation through Mixture Density Distributions",
            2016, https://arxiv.org/abs/1607.05690
        [2] M. Figurnov, S. Mohamed, A. Mnih, "Implicit Reparameterization Gradients",
            NeurIPS 2018, https://arxiv.org/abs/1805.08498
    """

    arg_constraints = {}
    has_rsample = True

    def __init__(
        self,
        mixture_distribution: torch.distributions.Categorical,
        component_distribution: torch.distributions.Distribution,
        validate_args: bool | None = None,
    ):
        if not isinstance(mixture_distribution, torch.distributions.Categorical):
            raise ValueError(
                "ReparameterizedMixture: mixture_distribution must be a Categorical, got "
                f"{type(mixture_distribution).__name__}."
            )
        comp = component_distribution
        event_dim = len(comp.event_shape)
        if event_dim == 1:
            if not (
                isinstance(comp, torch.distributions.Independent)
                and comp.reinterpreted_batch_ndims == 1
                and len(comp.base_dist.event_shape) == 0
            ):
                raise ValueError(
                    "ReparameterizedMixture: a multivariate component_distribution must be "
                    "Independent(univariate, 1) (a diagonal distribution), got "
                    f"{type(comp).__name__}."
                )
        elif event_dim != 0:
            raise ValueError(
                "ReparameterizedMixture: component_distribution must be univariate or "
                f"Independent(univariate, 1), got event shape {tuple(comp.event_shape)}."
            )
        if len(comp.batch_shape) < 1:
            raise ValueError(
                "ReparameterizedMixture: component_distribution needs a batch dimension of "
                "size K (the number of components) on the right of its batch shape."
            )
        num_components = mixture_distribution.logits.size(-1)
        if comp.batch_shape[-1] != num_components:
            raise ValueError(
                f"ReparameterizedMixture: mixture_distribution has {num_components} "
                f"categories but component_distribution's batch shape {tuple(comp.batch_shape)} "
                f"ends in {comp.batch_shape[-1]}."
            )
        try:
            batch_shape = torch.broadcast_shapes(
                mixture_distribution.batch_shape, comp.batch_shape[:-1]
            )
        except RuntimeError as error:
            raise ValueError(
                "ReparameterizedMixture: mixture_distribution batch shape "
                f"{tuple(mixture_distribution.batch_shape)} does not broadcast with "
                f"component_distribution batch shape {tuple(comp.batch_shape[:-1])}."
            ) from error
        self.mixture_distribution = mixture_distribution
        self.component_distribution = comp
        self._num_components = num_components
        super().__init__(batch_shape, comp.event_shape, validate_args=validate_args)

    def expand(self, batch_shape, _instance=None):
        new = self._get_checked_instance(ReparameterizedMixture, _instance)
        batch_shape = torch.Size(batch_shape)
        new.mixture_distribution = self.mixture_distribution.expand(batch_shape)
        new.component_distribution = self.component_distribution.expand(
            batch_shape + (self._num_components,)
        )
        new._num_components = self._num_components
        super(ReparameterizedMixture, new).__init__(
            batch_shape, self.event_shape, validate_args=False
        )
        new._validate_args = self._validate_args
        return new

    @constraints.dependent_property
    def support(self):
        return self.component_distribution.support

    @property
    def _event_dim(self) -> int:
        return len(self.event_shape)

    @property
    def _base(self) -> torch.distributions.Distribution:
        comp = self.component_distribution
        return comp.base_dist if self._event_dim == 1 else comp

    def _log_weights(self) -> torch.Tensor:
        return torch.log_softmax(self.mixture_distribution.logits, -1)

    @property
    def mean(self) -> torch.Tensor:
        weights = torch.softmax(self.mixture_distribution.logits, -1)
        if self._event_dim == 1:
            weights = weights.unsqueeze(-1)
        return (weights * self.component_distribution.mean).sum(-1 - self._event_dim)

    @property
    def variance(self) -> torch.Tensor:
        weights = torch.softmax(self.mixture_distribution.logits, -1)
        if self._event_dim == 1:
            weights = weights.unsqueeze(-1)
        mean = self.component_distribution.mean
        second = (weights * (self.component_distribution.variance + mean**2)).sum(
            -1 - self._event_dim
        )
        return second - self.mean**2

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        if self._validate_args:
            self._validate_sample(value)
        value = value.unsqueeze(-1 - self._event_dim)
        return torch.logsumexp(
            self.component_distribution.log_prob(value) + self._log_weights(), -1
        )

    def cdf(self, value: torch.Tensor) -> torch.Tensor:
        if self._event_dim != 0:
            raise NotImplementedError("ReparameterizedMixture.cdf: univariate mixtures only.")
        cdfs = self.component_distribution.cdf(value.unsqueeze(-1))
        return (torch.softmax(self.mixture_distribution.logits, -1) * cdfs).sum(-1)

    def sample(self, sample_shape=()) -> torch.Tensor:
        with torch.no_grad():
            sample_shape = torch.Size(sample_shape)
            index = self.mixture_distribution.expand(self.batch_shape).sample(sample_shape)
            comp = self.component_distribution.expand(self.batch_shape + (self._num_components,))
            samples = comp.sample(sample_shape)  # sample + batch + (K,) + event
            index = index.reshape(index.shape + (1,) * (1 + self._event_dim))
            index = index.expand(samples.shape[: -1 - self._event_dim] + (1,) + self.event_shape)
            return torch.gather(samples, -1 - self._event_dim, index).squeeze(-1 - self._event_dim)

    def rsample(self, sample_shape=()) -> torch.Tensor:
        x = self.sample(sample_shape)
        if not torch.is_grad_enabled():
            return x
        # Coordinates as the last dim: x (..., D); per component (..., K, D).
        x = x if self._event_dim == 1 else x.unsqueeze(-1)
        base = self._base
        if self._event_dim == 0:
            base = base.expand(self.batch_shape + (self._num_components,))
            x_k = x.expand(x.shape[:-1] + (self._num_components,)).detach().requires_grad_()
        else:
            base = base.expand(self.batch_shape + (self._num_components,) + self.event_shape)
            x_k = x.unsqueeze(-2).expand(x.shape[:-1] + (self._num_components, x.size(-1)))
            x_k = x_k.detach().requires_grad_()
        log_density = base.log_prob(x_k)  # (..., K, D), differentiable in the parameters
        if not log_density.requires_grad:
            return x.squeeze(-1) if self._event_dim == 0 else x
        # d/dx log p_kj(x_j): lets log p_kj(x_hat_j) = log p_kj(x_j) + score * (x_hat_j - x_j)
        # carry the first-order dependence of later responsibilities on earlier coordinates.
        (score,) = torch.autograd.grad(log_density.sum(), x_k, retain_graph=True)
        cdf = base.cdf(x_k)
        if self._event_dim == 0:
            log_density, score, cdf = (t.unsqueeze(-1) for t in (log_density, score, cdf))
        log_weights = self._log_weights()
        log_weights = log_weights.expand(log_density.shape[:-1])
        tiny = torch.finfo(x.dtype).tiny
        offsets = []
        for i in range(x.size(-1)):
            weights = torch.softmax(log_weights, -1)
            conditional_cdf = (weights * cdf[..., i]).sum(-1)
            conditional_density = (weights * log_density[..., i].exp()).sum(-1).detach()
            offset = -(conditional_cdf - conditional_cdf.detach()) / conditional_density.clamp(
                min=tiny
            )
            offsets.append(offset)
            log_weights = log_weights + log_density[..., i] + score[..., i] * offset.unsqueeze(-1)
        x_hat = x + torch.stack(offsets, -1)
        return x_hat.squeeze(-1) if self._event_dim == 0 else x_hat
