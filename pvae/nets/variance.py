"""Variance layers [1]: linear and convolutional layers whose weights have zero mean.

Each weight of a variance layer is ``w_ij = sigma_ij * epsilon_ij``, ``epsilon_ij ~ N(0, 1)``:
the layer stores what it learns in the variances ``sigma^2`` alone. With the local
reparameterisation trick [2] the pre-activations are sampled instead of the weights::

    b_j = bias_j + epsilon_j * sqrt(sum_i x_i^2 sigma_ij^2),       epsilon_j ~ N(0, 1)

(for a convolution the sum runs over the receptive field: ``conv(x^2, sigma^2)``). For a dense
layer this is exactly the distribution of ``x @ w`` with ``w ~ q(w) = N(0, sigma^2)``, one
weight draw per datum; for a convolution it treats the noise of each output position as
independent, as [1] and [2] do (the weight-sharing correlation across positions is dropped).
With the noise off (``epsilon = 0``, the "mean propagation" of an ordinary stochastic network)
the output is the bias alone, whatever the input: predictions need samples, and test-time
ensembling averages the predictive distribution over them (:func:`ensemble_log_probs`).

Training bound. [1] trains ``q(w) = prod N(w_ij | 0, sigma_ij^2)`` with the SGVLB
``sum_n E_q[log p(y_n | x_n, w)] - KL(q(w) || p(w))`` under the ARD prior
``p(w_ij) = N(0, lambda_ij^2)``, whose KL (:func:`ard_kl`) is minimised by the empirical-Bayes
choice ``lambda_ij = sigma_ij``, where it is zero: the bound is the expected log-likelihood
alone (the authors' code adds no KL for its variance layers). :mod:`pvae.models.variance_net`
writes this as a Pyro model and guide.

.. note:: As a classifier's *output* layer a variance layer is untrainable by this bound: its
   logits have mean ``bias`` whatever the input, and log-softmax is concave, so
   ``E[log softmax_y(logits)] <= log softmax_y(bias)`` (Jensen), a constant predictor's value.
   Use variance layers for hidden layers, followed by a nonlinearity.

References:
    [1] Neklyudov, Molchanov, Ashukha, Vetrov. Variance Networks: When Expectation Does Not
        Meet Your Expectations. ICLR 2019. arXiv:1803.03764
    [2] Kingma, Salimans, Welling. Variational Dropout and the Local Reparameterization Trick.
        NeurIPS 2015. arXiv:1506.02557
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["ConvVariance", "LinearVariance", "VarianceLayer", "ard_kl", "ensemble_log_probs"]

# Inside the square root: the gradient of sqrt at 0 (an all-zero input) is infinite.
_VARIANCE_FLOOR = 1e-16


def ard_kl(sigma: torch.Tensor, prior_scale: torch.Tensor | float | None = None) -> torch.Tensor:
    """``KL(N(0, sigma^2) || N(0, lambda^2))`` elementwise, summed:
    ``sum log(lambda / sigma) + sigma^2 / (2 lambda^2) - 1/2``.

    ``prior_scale=None`` is the empirical-Bayes ARD prior ``lambda = |sigma|``, the minimiser,
    where the KL is exactly zero [1].
    """
    sigma = sigma.abs()
    if prior_scale is None:
        return sigma.new_zeros(())
    prior_scale = torch.as_tensor(prior_scale, dtype=sigma.dtype, device=sigma.device)
    ratio = (sigma / prior_scale) ** 2
    return (0.5 * (ratio - 1.0 - torch.log(ratio))).sum()


class VarianceLayer(nn.Module):
    """Base of the variance layers: ``sigma`` (the weights' scales, signs irrelevant) and an
    optional ``bias``; ``forward(x, noise=None)``.

    ``noise``: standard normal draws of the output's shape (leading dims broadcast with the
    input's); ``None`` draws them when ``stochastic`` is on (the default, in training and in
    evaluation alike: a variance layer predicts through its samples) and uses zeros when it is
    off, which leaves the bias alone.
    """

    sigma: nn.Parameter
    bias: nn.Parameter | None

    def __init__(self) -> None:
        super().__init__()
        self.stochastic = True

    def _aggregate(self, squares: torch.Tensor, variances: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    @property
    def event_dim(self) -> int:
        """Dimensions of one datum's input and output (1 dense, 3 convolutional)."""
        raise NotImplementedError

    def output_std(self, x: torch.Tensor) -> torch.Tensor:
        """``sqrt(x^2 sigma^2)``, the pre-activations' standard deviation, ``(..., *out)``."""
        lead = x.shape[: x.dim() - self.event_dim]
        flat = x.reshape(-1, *x.shape[x.dim() - self.event_dim :])
        variance = self._aggregate(flat * flat, self.sigma * self.sigma)
        return torch.sqrt(variance + _VARIANCE_FLOOR).reshape(*lead, *variance.shape[1:])

    def output_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        """The shape of one datum's output (the noise site's event shape)."""
        with torch.no_grad():
            return tuple(self.output_std(self.sigma.new_zeros(1, *input_shape)).shape[1:])

    def forward(self, x: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        std = self.output_std(x)
        if noise is None:
            noise = torch.randn_like(std) if self.stochastic else torch.zeros_like(std)
        out = noise * std
        if self.bias is not None:
            out = out + self.bias.reshape(self.bias.shape + (1,) * (self.event_dim - 1))
        return out

    def kl(self, prior_scale: torch.Tensor | float | None = None) -> torch.Tensor:
        """:func:`ard_kl` of the layer's weights (zero under the empirical-Bayes ARD prior)."""
        return ard_kl(self.sigma, prior_scale)


class LinearVariance(VarianceLayer):
    """A dense variance layer: ``(..., in_features)`` to ``(..., out_features)``.

    ``sigma`` ``(out, in)`` starts at ``U(-1/sqrt(in), 1/sqrt(in))`` as in the authors' code,
    ``bias`` at zero.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        bound = 1.0 / math.sqrt(in_features)
        self.sigma = nn.Parameter(torch.empty(out_features, in_features).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None

    @property
    def event_dim(self) -> int:
        return 1

    def _aggregate(self, squares: torch.Tensor, variances: torch.Tensor) -> torch.Tensor:
        return F.linear(squares, variances)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


class ConvVariance(VarianceLayer):
    """A 2-d convolutional variance layer: ``(..., C_in, H, W)`` to ``(..., C_out, H', W')``.

    ``sigma`` ``(C_out, C_in, k, k)`` starts at ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        padding: int = 0,
        bias: bool = True,
    ) -> None:
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.stride, self.padding = kernel_size, stride, padding
        bound = 1.0 / math.sqrt(in_channels * kernel_size * kernel_size)
        shape = (out_channels, in_channels, kernel_size, kernel_size)
        self.sigma = nn.Parameter(torch.empty(shape).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None

    @property
    def event_dim(self) -> int:
        return 3

    def _aggregate(self, squares: torch.Tensor, variances: torch.Tensor) -> torch.Tensor:
        return F.conv2d(squares, variances, stride=self.stride, padding=self.padding)

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
            f"stride={self.stride}, padding={self.padding}, bias={self.bias is not None}"
        )


@torch.no_grad()
def ensemble_log_probs(
    logits_fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, num_samples: int
) -> torch.Tensor:
    """Test-time ensembling: ``log (1/S) sum_s softmax(logits_fn(x))`` over ``S`` stochastic
    passes (each draws its own noise), ``(B, C)`` log-probabilities."""
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    log_probs = torch.stack([torch.log_softmax(logits_fn(x), -1) for _ in range(num_samples)])
    return torch.logsumexp(log_probs, 0) - math.log(num_samples)
