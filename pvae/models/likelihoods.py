"""Observation models p(x | z) shared by the image models, chosen by name."""

from __future__ import annotations

import pyro.distributions as dist
import torch
from torch import nn
from torch.nn import functional as F

LIKELIHOODS = ("bernoulli", "gaussian", "continuous_bernoulli")
#: the closed range the data of each likelihood must lie in (None: any real). Bernoulli takes
#: grey levels in [0, 1] too (the cross-entropy of a grey level), by design.
DATA_RANGES: dict[str, tuple[float, float] | None] = {
    "bernoulli": (0.0, 1.0),
    "continuous_bernoulli": (0.0, 1.0),
    "gaussian": None,
}


def check_data_range(likelihood: str, x: torch.Tensor, owner: str = "the model") -> None:
    """``ValueError`` unless every value of ``x`` lies in ``likelihood``'s :data:`DATA_RANGES`
    (NaN never does); the message says what range was found and what to do.

    Cost: one min/max reduction over ``x`` and one host sync (a ``bool``) per call; nothing for
    the Gaussian likelihood.
    """
    bounds = DATA_RANGES.get(likelihood)
    if bounds is None or x.numel() == 0:
        return
    low, high = bounds
    values = x.detach()
    if not values.dtype.is_floating_point:
        values = values.float()
    smallest, largest = torch.aminmax(values)
    if bool((smallest >= low) & (largest <= high)):
        return
    found = (
        "NaN values"
        if bool(torch.isnan(values).any())
        else f"values in [{float(smallest):.4f}, {float(largest):.4f}]"
    )
    raise ValueError(
        f"{owner} with likelihood={likelihood!r} needs data in [{low:g}, {high:g}]; got {found}. "
        "Standardised inputs (Normalize(mean, std)) do not fit it: feed pixel intensities in "
        "[0, 1] (binarize them, e.g. --binarize, or keep the grey levels), or use "
        "likelihood='gaussian' for real-valued data"
    )


class Likelihood(nn.Module):
    """Turns decoder logits of shape ``(..., *event_shape)`` into a distribution over x.

    - ``bernoulli``: Bernoulli(logits); for binary (or binarized) data.
    - ``continuous_bernoulli``: the normalised continuous Bernoulli of Loaiza-Ganem and
      Cunningham (2019, arXiv:1907.06845) for data in [0, 1].
    - ``gaussian``: Normal(sigmoid(logits), sigma) with one learned sigma per pixel.
    """

    def __init__(self, name: str, event_shape: tuple[int, ...]) -> None:
        super().__init__()
        if name not in LIKELIHOODS:
            raise ValueError(f"unknown likelihood {name!r}; choose from {', '.join(LIKELIHOODS)}")
        self.name = name
        self.event_dims = len(event_shape)
        if name == "gaussian":
            self.raw_scale = nn.Parameter(torch.full(event_shape, -2.0))

    def forward(self, logits: torch.Tensor) -> dist.TorchDistribution:
        if self.name == "bernoulli":
            fn = dist.Bernoulli(logits=logits, validate_args=False)
        elif self.name == "continuous_bernoulli":
            fn = dist.ContinuousBernoulli(logits=logits.clamp(-15.0, 15.0), validate_args=False)
        else:
            fn = dist.Normal(torch.sigmoid(logits), F.softplus(self.raw_scale) + 1e-3)
        return fn.to_event(self.event_dims)

    def mean(self, logits: torch.Tensor) -> torch.Tensor:
        if self.name == "continuous_bernoulli":
            return dist.ContinuousBernoulli(logits=logits.clamp(-15.0, 15.0)).mean
        return torch.sigmoid(logits)
