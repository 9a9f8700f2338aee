"""What pvae's image models share: :class:`ImageConfig` and :class:`ImageModel`.

An image model decodes a latent ``z`` to the logits of ``p(x | z)`` (:meth:`decode_logits`),
draws ``z`` from its prior without the encoder (:meth:`prior_sample`), and offers a point of
``q(z | x)`` (:meth:`encode_mean`). From these, :class:`ImageModel` implements the protocol's
``sample``, ``initialize`` (the decoder's output bias at logit(mean pixel), as Burda et al.
do) and ``report_items`` (a grid of samples and one of reconstructions).
"""

from __future__ import annotations

import weakref
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyro.distributions as dist
import torch

from pvae.models.base import Model, ModelConfig, ReportItem, ints, option
from pvae.models.likelihoods import LIKELIHOODS, check_data_range
from pvae.nets import ACTIVATIONS


@dataclass(frozen=True)
class ImageConfig(ModelConfig):
    """The options every image model has."""

    input_shape: tuple[int, ...] = option(
        (1, 28, 28), "shape of one datum (set by the dataset)", convert=ints
    )
    latent_dim: int = option(50, "latent dimensions", convert=int)
    hidden: tuple[int, ...] = option((400,), "hidden layer sizes of the encoder", convert=ints)
    activation: str = option("relu", f"one of {', '.join(ACTIVATIONS)}")
    likelihood: str = option("bernoulli", f"p(x | z): one of {', '.join(LIKELIHOODS)}")

    #: models whose output is the last hidden layer's features need at least one hidden layer
    needs_hidden = False

    def validate(self) -> None:
        if self.latent_dim < 1:
            raise ValueError(f"latent_dim must be a positive integer, got {self.latent_dim}")
        if any(h < 1 for h in self.hidden):
            raise ValueError(f"hidden sizes must be positive, got {list(self.hidden)}")
        if self.needs_hidden and not self.hidden:
            raise ValueError(f"{type(self).__name__} needs at least one hidden layer")
        if self.activation not in ACTIVATIONS:
            raise ValueError(
                f"unknown activation {self.activation!r}; choose from {sorted(ACTIVATIONS)}"
            )
        if self.likelihood not in LIKELIHOODS:
            raise ValueError(
                f"unknown likelihood {self.likelihood!r}; choose from {', '.join(LIKELIHOODS)}"
            )


class _LastChecked:
    """The input whose range ``_check_input`` checked last: held weakly, with its in-place
    version; a copy or a pickle of the model starts empty."""

    def __init__(self) -> None:
        self.tensor: weakref.ref | None = None
        self.version = -1

    def __reduce__(self) -> tuple:
        return (_LastChecked, ())


class ImageModel(Model):
    """Base of pvae's image models (not a model by itself).

    Subclasses define ``model(x)``, ``guide(x)``, ``decode_logits(z)``, ``prior_sample(n)``,
    ``encode_mean(x)`` and, where the decoder ends in a ``Linear``, ``output_bias()``.
    """

    Config = ImageConfig
    config: ImageConfig
    data_keys = ("input_shape",)

    def __init__(self, config: ImageConfig | None = None, **options: Any) -> None:
        super().__init__(config, **options)
        self.input_shape = self.config.input_shape
        self.latent_dim = self.config.latent_dim

    def _check_input(self, x: torch.Tensor) -> None:
        """``ValueError`` for inputs of the wrong shape or outside the likelihood's support
        ([0, 1] for the Bernoulli likelihoods); one min/max and one host sync per batch
        (:func:`~pvae.models.likelihoods.check_data_range`): the guide and the model of one
        step get the same tensor, and the range of the tensor last checked is not checked
        again while it is unchanged (same object, same in-place version)."""
        shape = self.input_shape
        if tuple(x.shape[-len(shape) :]) != shape:
            raise ValueError(
                f"{type(self).__name__} expects inputs of shape (batch, {', '.join(map(str, shape))}); "
                f"got {tuple(x.shape)}"
            )
        last = self.__dict__.get("_range_checked")
        if last is None:  # created here: subclasses need not call ImageModel.__init__
            last = self.__dict__["_range_checked"] = _LastChecked()
        if last.tensor is not None and last.tensor() is x and last.version == x._version:
            return
        check_data_range(self.config.likelihood, x, type(self).__name__)
        last.tensor, last.version = weakref.ref(x), x._version

    def _flat(self, x: torch.Tensor) -> torch.Tensor:
        """``(..., *input_shape)`` -> ``(..., pixels)``."""
        return x.reshape(*x.shape[: -len(self.input_shape)], -1)

    # -- the protocol ---------------------------------------------------------------------------
    @torch.no_grad()
    def sample(self, num_samples: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Mean images E[x | z] for ``z`` drawn from the prior (no encoder), ``(n, *input_shape)``."""
        z = self.prior_sample(num_samples, generator)
        return self.likelihood.mean(self.decode_logits(z))

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """Mean images E[x | z = guide mean(x)]."""
        return self.likelihood.mean(self.decode_logits(self.encode_mean(x)))

    def initialize(self, data_options: Mapping[str, Any]) -> None:
        """Sets the decoder's output bias from the data's mean image, if it has one."""
        mean = data_options.get("data_mean")
        if mean is not None:
            self.initialize_output_bias(mean)

    @torch.no_grad()
    def initialize_output_bias(self, data_mean: torch.Tensor) -> None:
        """Sets the decoder's output bias to logit(mean pixel), as Burda et al. do."""
        bias = self.output_bias()
        if bias is not None and self.likelihood.name == "bernoulli":
            p = data_mean.reshape(-1).clamp(1e-3, 1 - 1e-3).to(bias)
            bias.copy_(torch.log(p) - torch.log1p(-p))

    def output_bias(self) -> torch.Tensor | None:
        """The decoder's output-layer bias (one per pixel), or ``None``."""
        last = self.decoder[-1] if isinstance(self.decoder, torch.nn.Sequential) else None
        return last.bias if isinstance(last, torch.nn.Linear) else None

    def report_items(self, test: Any, out: Path, seed: int = 0) -> list[ReportItem]:
        """64 samples from the prior and 32 test images beside their reconstructions."""
        from pvae.figures import image_grid

        device = next(self.parameters()).device
        generator = torch.Generator().manual_seed(seed)
        image_grid(self.sample(64, generator=generator).cpu(), out / "samples.png", nrow=8)
        x, y = next(iter(test.batches(32, shuffle=False)))
        originals = x.cpu()
        recon = self._reconstruct_batch((x.to(device), y.to(device))).cpu()
        pairs = torch.stack([originals, recon], dim=1).reshape(-1, *originals.shape[1:])
        image_grid(pairs, out / "reconstructions.png", nrow=8)
        return [
            ReportItem("Samples from the prior", "samples.png"),
            ReportItem(
                "Reconstructions (odd columns: test images; even columns: reconstructions)",
                "reconstructions.png",
            ),
        ]

    def _reconstruct_batch(self, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        return self.reconstruct(batch[0])


class StandardNormalPrior(ImageModel):
    """Base of image models with ``p(z) = Normal(0, I_D)``: the buffers ``prior_loc`` and
    ``prior_scale`` (they follow the model's device and dtype), ``prior()`` and
    ``prior_sample()``."""

    def __init__(self, config: ImageConfig | None = None, **options: Any) -> None:
        super().__init__(config, **options)
        self.register_buffer("prior_loc", torch.zeros(self.latent_dim))
        self.register_buffer("prior_scale", torch.ones(self.latent_dim))

    def prior(self) -> dist.TorchDistribution:
        return dist.Normal(self.prior_loc, self.prior_scale).to_event(1)

    def prior_sample(
        self, num_samples: int, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        eps = torch.randn(
            num_samples, self.latent_dim, generator=generator, device=self.prior_loc.device
        )
        return self.prior_loc + self.prior_scale * eps
