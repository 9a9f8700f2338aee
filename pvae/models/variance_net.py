"""A variance network [1]: LeNet-5 whose layers have zero-mean weights, as a Pyro model.

Network (the authors' LeNet-5 for MNIST): ``conv 5x5 (20) -> BN -> ReLU -> maxpool 2`` ``->
conv 5x5 (50) -> BN -> ReLU -> maxpool 2 -> dense (500) -> BN -> ReLU -> dense (10)``. The
layers named in ``variance_layers`` (0: conv1, 1: conv2, 2: dense1, 3: the output layer) are
variance layers (:mod:`pvae.nets.variance`): weights ``w = sigma * epsilon``, zero mean; the
others are ordinary layers (``variance_layers=[]`` is the plain LeNet-5, the baseline). The
default makes the three hidden layers variance layers and keeps the output layer ordinary: an
output variance layer cannot be trained by the expected log-likelihood, because log-softmax is
concave in the logits and a variance layer's logits have an input-independent mean (the bias),
so by Jensen ``E[log softmax_y(b)] <= log softmax_y(bias)``, the value of a constant predictor
(measured: with all four layers variance layers, 3 epochs stay at chance,
``benchmarks/results/variance_layers.md``). Hidden variance layers are trainable: the batch
normalisation and ReLU after them turn the pre-activations' variance into a mean.

Model, for each labelled image n (the local reparameterisation written as latents)::

    e_ln ~ Normal(0, I)                          site "noise_<layer>", shape (B, *out_l)
    b_ln = bias_l + e_ln * sqrt(h_(l-1),n^2 sigma_l^2)    (pre-activations of variance layer l)
    y_n ~ Categorical(softmax(b_Ln))             site "y", observed, shape (B,)

Guide: ``e_ln ~ Normal(0, I)``, the same distribution. ``e`` is the whitened weight noise: with
``q(w) = N(0, sigma^2)`` and the ARD prior ``p(w) = N(0, lambda^2)`` at its empirical-Bayes
optimum ``lambda = sigma`` the KL term of the SGVLB is zero (:func:`pvae.nets.variance.ard_kl`),
and so is ``KL(q(e) || p(e))`` here: the ELBO of this pair is the paper's training bound, the
expected log-likelihood ``sum_n E_q[log p(y_n | x_n, w)]``, trained by ``pvae.infer.fit`` as any
model. Importance sampling with K draws (guide = prior, the weights are exactly 1) gives
``log (1/K) sum_k p(y_n | x_n, e_k)``: the run's "test NLL" is the classification NLL of the
K-sample ensemble (K = ``default_eval_samples`` = 10, test-time averaging of [1]), in nats per
image; it is not an image likelihood and cannot be compared with a VAE's NLL. The model is
conditional (p(y | x)) and draws no images.

For the convolutions the noise of each output position is independent (the local
reparameterisation's approximation, as in [1]'s code), so for those layers the model is that of
per-position weights, not one shared kernel draw per image. The dense layers are exact.

Data: ``pvae train --model variance_lenet --dataset mnist`` trains on the dataset's default
images (dynamically binarized training images); ``benchmarks/variance_layers.py`` loads grey
levels (``binarize=None``) as the authors do.

``metrics`` reports the test accuracy of one sample, of ``eval_ensemble`` samples, and with the
noise off (every variance layer outputs its bias alone: chance level, the paper's point).

Against the authors' code: with the same parameters and noise, the loss ``fit`` minimises and
its gradients are those of their ``SGVLB`` for ``lenet5-vn.py --var1 --var2 --var3``
(``tests/nets/test_variance.py``), and their script, run beside ours at the same budget (3
epochs of 20,000 images), learns as slowly (0.787 / 0.780 test accuracy with 10 samples at two
seeds against ours 0.781; plain LeNet-5 0.983). The slowness grows with the number of stacked
variance layers: one alone is within 0.01 of the plain network after 3 epochs, two convolutions
reach 0.93 (``benchmarks/results/variance_layers.md``).

References:
    [1] Neklyudov, Molchanov, Ashukha, Vetrov. Variance Networks: When Expectation Does Not
        Meet Your Expectations. ICLR 2019. arXiv:1803.03764 (code:
        github.com/da-molchanov/variance-networks, ``lenet5-vn.py``)
    [2] LeCun, Bottou, Bengio, Haffner. Gradient-Based Learning Applied to Document
        Recognition. Proc. IEEE 1998.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pyro
import pyro.distributions as dist
import torch
from torch import nn

from pvae.data.registry import UNLABELLED
from pvae.models.base import Model, ModelConfig, ints, option, width
from pvae.models.registry import register_model
from pvae.nets.variance import ConvVariance, LinearVariance, VarianceLayer, ensemble_log_probs

__all__ = ["LAYER_NAMES", "VarianceLeNet", "VarianceLeNetConfig", "LeNet5"]

#: names of the four weight layers, indexed by ``variance_layers``
LAYER_NAMES = ("conv1", "conv2", "dense1", "output")


@dataclass(frozen=True)
class VarianceLeNetConfig(ModelConfig):
    """Options of :class:`VarianceLeNet`."""

    input_shape: tuple[int, ...] = option(
        (1, 28, 28), "shape of one image (set by the dataset)", convert=ints
    )
    num_classes: int = option(10, "classes of the labels", convert=int)
    channels: tuple[int, ...] = option((20, 50), "channels of the two convolutions", convert=ints)
    dense: int = option(500, "units of the hidden dense layer", convert=width)
    variance_layers: tuple[int, ...] = option(
        (0, 1, 2),
        "which layers are variance layers (0 conv1, 1 conv2, 2 dense1, 3 output; [] the plain "
        "LeNet-5)",
        convert=ints,
    )
    batch_norm: bool = option(True, "batch normalisation after the hidden layers (as [1])")
    eval_ensemble: int = option(10, "samples averaged for the reported test accuracy", convert=int)

    def validate(self) -> None:
        if len(self.input_shape) != 3:
            raise ValueError(f"input_shape must be (C, H, W), got {self.input_shape}")
        _, height, w = self.input_shape
        if min(height, w) < 16:
            raise ValueError(f"LeNet-5 needs images of at least 16x16, got {height}x{w}")
        if len(self.channels) != 2 or min(self.channels) < 1:
            raise ValueError(f"channels must be two positive integers, got {self.channels}")
        if self.dense < 1 or self.num_classes < 2:
            raise ValueError("dense must be >= 1 and num_classes >= 2")
        if sorted(set(self.variance_layers)) != sorted(self.variance_layers) or any(
            i not in range(4) for i in self.variance_layers
        ):
            raise ValueError(
                f"variance_layers must be distinct indices in 0..3 ({', '.join(LAYER_NAMES)}), "
                f"got {list(self.variance_layers)}"
            )
        if self.eval_ensemble < 1:
            raise ValueError(f"eval_ensemble must be >= 1, got {self.eval_ensemble}")


def _flat_apply(module: nn.Module, h: torch.Tensor, event_dim: int) -> torch.Tensor:
    """``module`` on ``h`` ``(..., *event)``, its leading dims flattened into one batch dim."""
    lead = h.shape[: h.dim() - event_dim]
    out = module(h.reshape(-1, *h.shape[h.dim() - event_dim :]))
    return out.reshape(*lead, *out.shape[1:])


class LeNet5(nn.Module):
    """LeNet-5 [2] with any of its four weight layers replaced by variance layers; inputs
    ``(..., C, H, W)`` to logits ``(..., num_classes)``; ``forward(x, noise)`` takes the
    standard normal noise of each variance layer by index (missing: drawn)."""

    def __init__(self, config: VarianceLeNetConfig) -> None:
        super().__init__()
        channels_in, height, w = config.input_shape
        c1, c2 = config.channels
        bn = config.batch_norm
        variance = set(config.variance_layers)

        def conv(index: int, cin: int, cout: int) -> nn.Module:
            if index in variance:
                return ConvVariance(cin, cout, 5, bias=not bn)
            return nn.Conv2d(cin, cout, 5, bias=not bn)

        def dense(index: int, fin: int, fout: int, bias: bool) -> nn.Module:
            return (
                LinearVariance(fin, fout, bias) if index in variance else nn.Linear(fin, fout, bias)
            )

        flat = c2 * (((height - 4) // 2 - 4) // 2) * (((w - 4) // 2 - 4) // 2)
        self.weights = nn.ModuleList(
            [
                conv(0, channels_in, c1),
                conv(1, c1, c2),
                dense(2, flat, config.dense, not bn),
                dense(3, config.dense, config.num_classes, True),
            ]
        )
        self.norms = nn.ModuleList(
            [nn.BatchNorm2d(c1), nn.BatchNorm2d(c2), nn.BatchNorm1d(config.dense)]
            if bn
            else [nn.Identity(), nn.Identity(), nn.Identity()]
        )
        self.pool = nn.MaxPool2d(2)
        self.variance_layers = tuple(sorted(variance))
        shapes, shape = {}, tuple(config.input_shape)
        for index, layer in enumerate(self.weights):
            out = self._out_shape(layer, shape)
            if index in variance:
                shapes[index] = out
            shape = (out[0], out[1] // 2, out[2] // 2) if index < 2 else out
            if index == 1:
                shape = (flat,)
        self.noise_shapes: dict[int, tuple[int, ...]] = shapes

    @staticmethod
    def _out_shape(layer: nn.Module, shape: tuple[int, ...]) -> tuple[int, ...]:
        if isinstance(layer, VarianceLayer):
            return layer.output_shape(shape)
        with torch.no_grad():
            return tuple(layer(torch.zeros(1, *shape)).shape[1:])

    def forward(
        self, x: torch.Tensor, noise: dict[int, torch.Tensor] | None = None
    ) -> torch.Tensor:
        noise = noise or {}
        h = x
        for index, layer in enumerate(self.weights):
            event_dim = 3 if index < 2 else 1
            if index == 2:
                h = h.reshape(*h.shape[:-3], -1)
            if isinstance(layer, VarianceLayer):
                h = layer(h, noise.get(index))
            else:
                h = _flat_apply(layer, h, event_dim)
            if index < 3:
                h = torch.relu(_flat_apply(self.norms[index], h, event_dim))
            if index < 2:
                h = _flat_apply(self.pool, h, 3)
        return h

    def variance_modules(self) -> list[VarianceLayer]:
        return [m for m in self.weights if isinstance(m, VarianceLayer)]


@register_model(
    "variance_lenet",
    smoke={"channels": [2, 3], "dense": 8, "eval_ensemble": 2},
)
class VarianceLeNet(Model):
    """The variance network of [1] on LeNet-5: a classifier p(y | x) whose weight posteriors
    have zero mean (module docstring).

    Options (:class:`VarianceLeNetConfig`): ``channels``, ``dense``, ``variance_layers``,
    ``batch_norm``, ``num_classes``, ``eval_ensemble``.

    Shapes: ``model(y, x)`` takes labels ``(B,)`` and images ``(B, C, H, W)`` (the scored
    data first, as every pvae evaluator reads its first argument); the noise sites
    ``"noise_conv1"``... have shapes ``(B, *out)``; ``"y"`` ``(B,)``.
    """

    Config = VarianceLeNetConfig
    config: VarianceLeNetConfig
    data_keys = ("input_shape",)
    default_eval_samples = 10  # the ensemble of [1]'s test-time averaging

    def __init__(self, config: VarianceLeNetConfig | None = None, **options: Any) -> None:
        super().__init__(config, **options)
        self.net = LeNet5(self.config)

    def _noise_sites(self, x: torch.Tensor) -> dict[int, torch.Tensor]:
        noise = {}
        for index, shape in self.net.noise_shapes.items():
            standard = dist.Normal(x.new_zeros(()), 1.0).expand(shape).to_event(len(shape))
            noise[index] = pyro.sample(f"noise_{LAYER_NAMES[index]}", standard)
        return noise

    def _check(self, x: torch.Tensor, y: torch.Tensor) -> None:
        if tuple(x.shape[1:]) != self.config.input_shape:
            raise ValueError(
                f"variance_lenet expects images of shape (B, {', '.join(map(str, self.config.input_shape))}), "
                f"got {tuple(x.shape)}"
            )
        if y.shape != x.shape[:1] or bool(((y < 0) | (y >= self.config.num_classes)).any()):
            raise ValueError(
                f"labels must be integers in 0..{self.config.num_classes - 1}, one per image"
            )

    def model(self, y: torch.Tensor, x: torch.Tensor) -> None:
        """p(y | x) = E_e[Categorical(y | softmax(net(x, e)))], e ~ N(0, I) per variance layer."""
        self._check(x, y)
        with pyro.plate("data", x.shape[0]):
            logits = self.net(x, self._noise_sites(x))
            pyro.sample("y", dist.Categorical(logits=logits), obs=y)

    def guide(self, y: torch.Tensor, x: torch.Tensor) -> None:
        """q(e) = N(0, I): the zero-mean weight posterior N(0, sigma^2), whitened."""
        with pyro.plate("data", x.shape[0]):
            self._noise_sites(x)

    # -- data ---------------------------------------------------------------------------------
    def batch_args(self, batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """``(y, x)``: the scored labels first (what evaluation and BDMC take as the data),
        the images they are conditioned on second; unlabelled images are a ``ValueError``."""
        if not isinstance(batch, (tuple, list)) or len(batch) < 2:
            raise ValueError("variance_lenet trains on labelled (x, y) batches")
        x, y = batch[0], batch[1]
        if bool((y == UNLABELLED).any()):
            raise ValueError("variance_lenet needs labelled images (label -1 found)")
        return y, x

    def eval_datum_size(self, args: tuple) -> int:
        noise = sum(int(torch.Size(s).numel()) for s in self.net.noise_shapes.values())
        return noise + int(torch.Size(self.config.input_shape).numel())

    # -- what a trained model offers ----------------------------------------------------------
    @contextlib.contextmanager
    def noise_off(self) -> Iterator[None]:
        """Every variance layer's noise at zero (mean propagation): outputs are the biases."""
        layers = self.net.variance_modules()
        try:
            for layer in layers:
                layer.stochastic = False
            yield
        finally:
            for layer in layers:
                layer.stochastic = True

    @torch.no_grad()
    def predict_log_probs(self, x: torch.Tensor, num_samples: int = 1) -> torch.Tensor:
        """``log (1/S) sum_s softmax(net(x, e_s))``, ``(B, C)``, in eval mode."""
        mode = self.training
        self.eval()
        try:
            return ensemble_log_probs(self.net, x, num_samples)
        finally:
            self.train(mode)

    @torch.no_grad()
    def accuracy(self, data: Any, num_samples: int = 1, batch_size: int = 500) -> float:
        """The share of ``data``'s images classified correctly by an ``num_samples`` ensemble."""
        device = next(self.parameters()).device
        correct = total = 0
        for x, y in data.batches(batch_size, shuffle=False):
            predicted = self.predict_log_probs(x.to(device), num_samples).argmax(-1).cpu()
            correct += int((predicted == y).sum())
            total += int(y.numel())
        if total == 0:
            raise ValueError("accuracy needs labelled data")
        return correct / total

    def metrics(self, test: Any) -> dict[str, float]:
        """Test accuracy with 1 and ``eval_ensemble`` samples and with the noise off."""
        metrics = {
            "test_accuracy_1_sample": self.accuracy(test, 1),
            "test_accuracy": self.accuracy(test, self.config.eval_ensemble),
        }
        if self.net.variance_layers:
            with self.noise_off():
                metrics["test_accuracy_noise_off"] = self.accuracy(test, 1)
        return metrics

    def sample(self, num_samples: int, generator: torch.Generator | None = None) -> Any:
        """Not available: a classifier models p(y | x), not images."""
        raise NotImplementedError("variance_lenet models p(y | x) only and cannot draw images")
