"""Convolutional DRAW (Gregor et al. 2016): a recurrent VAE that writes an image in T steps.

Generative story, for each datum (``h_0 = c_0 = 0``; maps of ``channels`` x (H/2^L) x (W/2^L),
``L = levels``)::

    for t = 1..T:
        z_t ~ Normal(mu_p(h_{t-1}), sigma_p(h_{t-1})^2)         site "z_t", (B, Cz, H/2^L, W/2^L)
        h_t, c_t = ConvLSTM_dec(z_t, (h_{t-1}, c_{t-1}))
        canvas_t = canvas_{t-1} + write(h_t)                     canvas_0: a learned bias
    x ~ Bernoulli(logits = canvas_T)                             site "x"

The prior of each step is learned and reads the decoder's state (the paper's prior), so the
latents are dependent: ``p(z) = prod_t p(z_t | z_{<t})``.

Guide, running the same decoder recurrence on its own draws (``e_0 = 0``)::

    r_t = read([x, x - sigmoid(canvas_{t-1})])                   strided convolutions
    e_t = ConvLSTM_enc([r_t, h_{t-1}], e_{t-1})
    q(z_t | x, z_{<t}) = Normal(mu_q(e_t), sigma_q(e_t)^2)

The steps sit in ``pyro.markov``, one sample site ``"z_t"`` each, inside the ``"data"`` plate:
pvae's ELBO (analytic KL per step: every parent of ``z_t`` is drawn before it by the guide),
IWAE, ``log_likelihood``, AIS and the diagnostics work on it as on any model.

Conceptual compression [1]: sending the first k latents (``sum_{t<=k} KL_t`` nats, bits-back)
and drawing the rest from the prior gives a lossy code; :meth:`ConvDRAW.rate_by_step` gives
``KL_t`` and :meth:`ConvDRAW.reconstruct_from_first` the images decoded from the first k.

Training: the prior and posterior heads start at zero (q = p, KL 0). In short runs the
posterior still collapses (q = p at every step, a few hundredths of a nat sent) unless the KL
weight is warmed up (``pvae train --kl-anneal 1``; ``benchmarks/results/conv_draw.md``).

With ``steps=1`` there is no recurrence: a VAE with one latent map, a learned constant
Gaussian prior and a gated convolutional encoder and decoder.

References:
    [1] Gregor, Besse, Rezende, Danihelka, Wierstra. Towards Conceptual Compression.
        NeurIPS 2016. arXiv:1604.08772
    [2] Gregor, Danihelka, Graves, Rezende, Wierstra. DRAW: A Recurrent Neural Network For
        Image Generation. ICML 2015. arXiv:1502.04623
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
import torch
from torch import nn
from torch.distributions import kl_divergence
from torch.nn import functional as F

from pvae.models.base import Model, ModelConfig, ReportItem, ints, option, width
from pvae.models.image import ImageModel
from pvae.models.likelihoods import LIKELIHOODS, Likelihood
from pvae.models.registry import register_model
from pvae.nets.conv_lstm import ConvLSTMCell, apply_2d, read_network, write_network

State = tuple[torch.Tensor, torch.Tensor]


@dataclass(frozen=True)
class ConvDRAWConfig(ModelConfig):
    """Options of :class:`ConvDRAW` (the command line's ``--latent-dim`` sets
    ``latent_channels`` and ``--hidden`` sets ``channels``)."""

    input_shape: tuple[int, ...] = option(
        (1, 28, 28), "shape of one datum (set by the dataset)", convert=ints
    )
    steps: int = option(8, "T, the number of DRAW steps (one latent map each)", convert=int)
    channels: int = option(
        32, "channels of the LSTM states and the read/write networks", convert=width
    )
    latent_channels: int = option(4, "channels of each step's latent map", convert=int)
    levels: int = option(2, "stride-2 levels between the image and the latent maps", convert=int)
    kernel_size: int = option(
        3, "kernel of the LSTMs' and the prior/posterior convolutions", convert=int
    )
    likelihood: str = option("bernoulli", f"p(x | canvas): one of {', '.join(LIKELIHOODS)}")

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> ConvDRAWConfig:
        options = dict(options)
        if "latent_dim" in options:
            options["latent_channels"] = options.pop("latent_dim")
        if "hidden" in options:
            options["channels"] = options.pop("hidden")
        return super().from_options(options)

    def validate(self) -> None:
        if len(self.input_shape) != 3:
            raise ValueError(
                f"conv_draw needs images (C, H, W), got input_shape {self.input_shape}"
            )
        if min(self.steps, self.channels, self.latent_channels) < 1:
            raise ValueError("steps, channels and latent_channels must be positive")
        if self.levels < 0:
            raise ValueError(f"levels must be >= 0, got {self.levels}")
        if self.kernel_size < 1 or self.kernel_size % 2 != 1:
            raise ValueError(f"kernel_size must be a positive odd number, got {self.kernel_size}")
        factor = 2**self.levels
        if any(size % factor for size in self.input_shape[1:]):
            raise ValueError(
                f"levels={self.levels} halves the image {self.levels} times: its height and width "
                f"must be multiples of {factor}, got {self.input_shape[1:]}"
            )
        if self.likelihood not in LIKELIHOODS:
            raise ValueError(
                f"unknown likelihood {self.likelihood!r}; choose from {', '.join(LIKELIHOODS)}"
            )


class GaussianMap(nn.Module):
    """A convolution to the ``(loc, scale)`` maps of a diagonal Gaussian, scale by softplus."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, 2 * out_channels, kernel_size, padding=kernel_size // 2)
        # Zero-initialised, every step's q and p start equal (KL 0): with random heads the
        # KL of hundreds of latent units starts at hundreds of nats, and the fastest way down
        # is to make q = p, which collapses the posterior before the decoder learns to read z.
        nn.init.zeros_(self.conv.weight)
        nn.init.zeros_(self.conv.bias)

    def forward(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        loc, raw = apply_2d(self.conv, h).chunk(2, dim=-3)
        return loc, F.softplus(raw) + 1e-4


@register_model(
    "conv_draw",
    smoke={"steps": 2, "channels": 4, "latent_channels": 1, "levels": 2},
)
class ConvDRAW(ImageModel):
    """Convolutional DRAW [1]: T steps of a convolutional-LSTM encoder and decoder, one latent
    map per step with a learned prior ``p(z_t | h_{t-1})``, the canvas summed over the steps.

    Options (:class:`ConvDRAWConfig`): ``steps`` T, ``channels`` (LSTM states and read/write
    networks), ``latent_channels`` Cz, ``levels`` L (latent maps of H/2^L x W/2^L: 7x7 for
    MNIST at L = 2), ``kernel_size`` and ``likelihood``.

    Shapes: ``model(x)``/``guide(x)`` take ``x`` ``(B, C, H, W)``; the sites ``"z_1"`` ..
    ``"z_T"`` have shape ``(B, Cz, H/2^L, W/2^L)`` (``(K, B, ...)`` with K importance samples).
    """

    Config = ConvDRAWConfig
    config: ConvDRAWConfig

    def __init__(self, config: ConvDRAWConfig | None = None, **options: Any) -> None:
        Model.__init__(self, config, **options)
        config = self.config
        self.input_shape = config.input_shape
        self.steps = config.steps
        colours, height, width_ = config.input_shape
        factor = 2**config.levels
        self.state_shape = (config.channels, height // factor, width_ // factor)
        self.latent_shape = (config.latent_channels, height // factor, width_ // factor)
        self.latent_dim = config.latent_channels * self.latent_shape[1] * self.latent_shape[2]
        ch, k = config.channels, config.kernel_size
        # Guide only: the read network, the encoder LSTM and q's head.
        self.read = read_network(2 * colours, ch, config.levels)
        self.encoder_cell = ConvLSTMCell(2 * ch, ch, k)
        self.posterior = GaussianMap(ch, config.latent_channels, k)
        # The generative model: prior head, decoder LSTM, write network, canvas bias.
        self.prior = GaussianMap(ch, config.latent_channels, k)
        self.decoder_cell = ConvLSTMCell(config.latent_channels, ch, k)
        self.write = write_network(ch, colours, config.levels)
        self.canvas_bias = nn.Parameter(torch.zeros(colours * height * width_))
        self.likelihood = Likelihood(config.likelihood, self.input_shape)

    @property
    def site_names(self) -> list[str]:
        """``["z_1", ..., "z_T"]``."""
        return [f"z_{t + 1}" for t in range(self.steps)]

    # -- one step's pieces, shared by the model, the guide and the decoders below -----------
    def _zero_state(self, batch: int) -> State:
        h = self.canvas_bias.new_zeros(batch, *self.state_shape)
        return h, h

    def _initial_canvas(self, batch: int) -> torch.Tensor:
        return self.canvas_bias.reshape(self.input_shape).expand(batch, *self.input_shape)

    def _write(
        self, z: torch.Tensor, state: State, canvas: torch.Tensor
    ) -> tuple[State, torch.Tensor]:
        """The decoder LSTM reads ``z_t``; its new state adds ``write(h_t)`` to the canvas."""
        state = self.decoder_cell(z, state)
        return state, canvas + apply_2d(self.write, state[0])

    def _encode(
        self, x: torch.Tensor, canvas: torch.Tensor, h_dec: torch.Tensor, state: State
    ) -> tuple[tuple[torch.Tensor, torch.Tensor], State]:
        """``q(z_t | x, z_{<t})``'s ``(loc, scale)`` and the encoder's new state: it reads the
        image and the error of the canvas so far, beside the decoder's last state."""
        error = x - self.likelihood.mean(canvas)
        features = apply_2d(self.read, x, error)
        state = self.encoder_cell(torch.cat(_broadcast(features, h_dec), dim=-3), state)
        return self.posterior(state[0]), state

    # -- Pyro model and guide ---------------------------------------------------------------
    def model(self, x: torch.Tensor) -> None:
        """p(x, z_1..T) = prod_t p(z_t | h_{t-1}) p(x | canvas_T); ``x``: ``(B, *input_shape)``."""
        self._check_input(x)
        batch = x.shape[0]
        state, canvas = self._zero_state(batch), self._initial_canvas(batch)
        with pyro.plate("data", batch):
            for t in pyro.markov(range(self.steps)):
                loc, scale = self.prior(state[0])
                z = pyro.sample(self.site_names[t], dist.Normal(loc, scale).to_event(3))
                state, canvas = self._write(z, state, canvas)
            pyro.sample("x", self.likelihood(canvas), obs=x)

    def guide(self, x: torch.Tensor) -> None:
        """q(z_1..T | x) = prod_t q(z_t | x, z_{<t}), the decoder run on the guide's draws."""
        self._check_input(x)
        batch = x.shape[0]
        state, encoder_state = self._zero_state(batch), self._zero_state(batch)
        canvas = self._initial_canvas(batch)
        with pyro.plate("data", batch):
            for t in pyro.markov(range(self.steps)):
                (loc, scale), encoder_state = self._encode(x, canvas, state[0], encoder_state)
                z = pyro.sample(self.site_names[t], dist.Normal(loc, scale).to_event(3))
                state, canvas = self._write(z, state, canvas)

    # -- decoding without Pyro --------------------------------------------------------------
    def _canvas(
        self,
        x: torch.Tensor | None,
        first: int,
        num_samples: int,
        generator: torch.Generator | None,
    ) -> torch.Tensor:
        """Logits of the canvas after T steps: ``z_t`` the mean of ``q`` for ``t <= first``
        (which reads ``x``), a draw from the prior after."""
        batch = num_samples if x is None else x.shape[0]
        state, encoder_state = self._zero_state(batch), self._zero_state(batch)
        canvas = self._initial_canvas(batch)
        for t in range(self.steps):
            if t < first:
                (z, _), encoder_state = self._encode(x, canvas, state[0], encoder_state)
            else:
                loc, scale = self.prior(state[0])
                noise = torch.randn(loc.shape, generator=generator, device=loc.device)
                z = loc + scale * noise.to(loc.dtype)
            state, canvas = self._write(z, state, canvas)
        return canvas

    @torch.no_grad()
    def sample(self, num_samples: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Mean images ``E[x | z]`` for ``z_1..T`` drawn from the prior, ``(n, *input_shape)``."""
        return self.likelihood.mean(self._canvas(None, 0, num_samples, generator))

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """Mean images with every ``z_t`` at the mean of ``q``."""
        return self.reconstruct_from_first(x, self.steps)

    @torch.no_grad()
    def reconstruct_from_first(
        self, x: torch.Tensor, k: int, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """The conceptual-compression decoding [1]: mean images ``(B, *input_shape)`` from the
        first ``k`` latents of ``x`` (means of ``q``), the other ``T - k`` drawn from the prior
        with ``generator``. ``k = 0`` is a sample; ``k = T`` the full reconstruction."""
        if not 0 <= k <= self.steps:
            raise ValueError(f"k must be in 0..{self.steps}, got {k}")
        self._check_input(x)
        return self.likelihood.mean(self._canvas(x, k, x.shape[0], generator))

    @torch.no_grad()
    def rate_by_step(self, x: torch.Tensor) -> torch.Tensor:
        """``KL(q(z_t | x, z_{<t}) || p(z_t | z_{<t}))`` in nats, ``(B, T)``, along one draw
        of the guide (torch's generator): the cost of sending step t's latent. Its sum over the
        steps is the ELBO's KL term, ``log p(x | z) - ELBO``."""
        guide_trace = poutine.trace(self.guide).get_trace(x)
        model_trace = poutine.trace(poutine.replay(self.model, trace=guide_trace)).get_trace(x)
        return torch.stack(
            [
                kl_divergence(guide_trace.nodes[name]["fn"], model_trace.nodes[name]["fn"])
                for name in self.site_names
            ],
            dim=-1,
        )

    def eval_datum_size(self, args: tuple) -> int | None:
        """Elements one importance sample holds at once: an LSTM's gates and states (6 maps of
        the state's size), the read network's first level and the image-sized canvas and
        error; the evaluator sizes its chunks of samples with it."""
        channels, height, width_ = self.state_shape
        first_level = channels * self.input_shape[1] * self.input_shape[2] // 4
        pixels = self.canvas_bias.numel()
        return (
            6 * channels * height * width_ + (first_level if self.config.levels else 0) + 3 * pixels
        )

    def output_bias(self) -> torch.Tensor | None:
        """The canvas's starting logits (one per pixel), set to logit(mean pixel)."""
        return self.canvas_bias

    # -- report -----------------------------------------------------------------------------
    def report_items(self, test: Any, out: Path, seed: int = 0) -> list[ReportItem]:
        """Samples and reconstructions (:class:`ImageModel`), then the compression by step:
        test images decoded from their first k latents, and the rate of each step."""
        items = super().report_items(test, out, seed)
        device = next(self.parameters()).device
        x = next(iter(test.batches(100, shuffle=False)))[0].to(device)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            rates = self.rate_by_step(x).mean(0).cpu()
        rows = compression_rows(self, x[:8], seed)
        plot_compression(rows, rates, out / "compression.png")
        table = "| step | " + " | ".join(str(t + 1) for t in range(self.steps)) + " | total |\n"
        table += "|---|" + "---|" * (self.steps + 1) + "\n"
        table += "| KL (nats) | " + " | ".join(f"{r:.2f}" for r in rates.tolist())
        table += f" | {float(rates.sum()):.2f} |\n"
        table += "| cumulative | " + " | ".join(f"{r:.2f}" for r in rates.cumsum(0).tolist())
        table += " | |\n"
        return items + [
            ReportItem(
                "Conceptual compression: test images (left) decoded from their first k latents, "
                "the rest drawn from the prior; right: nats sent by step",
                "compression.png",
            ),
            ReportItem(f"Rate by step (mean over {x.shape[0]} test images)", text=table),
        ]


def _broadcast(*tensors: torch.Tensor) -> list[torch.Tensor]:
    """``tensors`` ``(..., C_i, H, W)`` with their leading dims broadcast together."""
    leading = torch.broadcast_shapes(*(t.shape[:-3] for t in tensors))
    return [t.expand(*leading, *t.shape[-3:]) for t in tensors]


@torch.no_grad()
def compression_rows(model: ConvDRAW, x: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """``(B, T + 2, *input_shape)``: each image, then its decodings from the first
    k = 0..T latents (the rest from the prior, the same draws for every image's row)."""
    columns = [x]
    for k in range(model.steps + 1):
        generator = torch.Generator().manual_seed(seed + k)
        columns.append(model.reconstruct_from_first(x, k, generator))
    return torch.stack([c.cpu() for c in columns], dim=1)


def plot_compression(rows: torch.Tensor, rates: torch.Tensor, path: str | Path) -> Path:
    """Saves ``rows`` ``(B, T + 2, C, H, W)`` (:func:`compression_rows`) as an image grid
    beside bars of the nats sent at each step ``rates`` ``(T,)``, with their running sum."""
    import numpy as np

    from pvae.figures import _draw_images, _figure, _save

    steps = rates.numel()
    fig = _figure(2.0 + 0.45 * (steps + 2) + 3.5, max(2.5, 0.45 * rows.shape[0] + 0.8))
    grid, bars = fig.subplots(1, 2, gridspec_kw={"width_ratios": [0.45 * (steps + 2), 3.5]})
    labels = ["x"] + [str(k) for k in range(steps + 1)]
    _draw_images(grid, rows.float().clamp(0, 1).numpy(), col_labels=labels)
    grid.set_xlabel("k: latents sent (the rest from the prior)", fontsize=8)
    values = rates.double().numpy()
    positions = np.arange(1, steps + 1)
    bars.bar(positions, values, color="C0", label="KL of step t")
    bars.plot(positions, np.cumsum(values), color="C1", marker="o", label="sent after k steps")
    bars.set_xticks(positions)
    bars.set_xlabel("step t", fontsize=8)
    bars.set_ylabel("nats", fontsize=8)
    bars.legend(fontsize=7)
    bars.set_title(f"rate by step (total {values.sum():.1f} nats)", fontsize=9)
    return _save(fig, path)
