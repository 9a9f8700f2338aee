"""Models of datasets: the Neural Statistician [1] and the variational homoencoder [2].

The unit is a *set* ``X = (x_1, ..., x_S)`` (the 20 drawings of one Omniglot character, 200
draws of one 1-D distribution). Generative story, with L layers of per-element latents::

    c   ~ Normal(0, I_C)                                   site "c",  (B, 1, C)
    z1_i ~ Normal(mu_1(c), diag sigma_1(c)^2)              site "z1", (B, S, Z)
    zl_i ~ Normal(mu_l(z(l-1)_i, c), ...)   l = 2..L      site "zl"
    x_i  ~ p(x | c, z1_i, ..., zL_i)                       site "x",  (B, S, *event)

with the sets in ``pyro.plate("data", B, dim=-2)`` and their elements in
``pyro.plate("elements", S, dim=-1)``. Guide: the *statistic network* encodes every element
(``h_i = f(x_i)``), pools by the mean and maps the pool to ``q(c | X) = N(mu_c, sigma_c^2)``;
then ``q(zl_i | z(l-1)_i, x_i, c)`` bottom-up. The ELBO of the pair is a bound on the
per-set ``log p(X)``, which ``pvae.evaluation.log_likelihood`` estimates with both latents
sampled in nested plates.

The variational homoencoder [2] (:class:`HomoEncoder`) keeps the networks and the generative
story but trains with another bound: every element ``x_i`` gets its own context, inferred from
a random support subset ``D_i`` of the other members of its set (redrawn for every target),
and the context's KL is divided by the set's size::

    L_VHE = sum_i E[ log p(x_i | c_i, z_i) ] - KL(q(c_i | D_i) || p(c)) / |X| - KL(q(z_i | ...) || p(z_i | c_i))

(``bound = log p(x | c, z) - KL_c / |X_x| - KL_z`` in the authors' code). Its training pair is
:meth:`HomoEncoder.vhe_model` / :meth:`HomoEncoder.vhe_guide` (``training_setup`` hands it to
the runner); ``model``/``guide`` stay the shared-context pair, so both models are evaluated by
the same per-set likelihood.

Few-shot classification (Algorithm 4 of [1]): for each class ``k``, ``q(c | D_k)`` of its
support set; for each query, ``q(c | x)`` of the set ``{x}``; the class whose context is
closest, ``argmin_k KL(q(c | D_k) || q(c | x))`` by default, the order of the k-shot script
built on the authors' group's reimplementation (option ``few_shot_kl``: the other order; the
default was the more accurate in all 20 models compared in
``benchmarks/results/ns_context.md``).

References:
    [1] Edwards, Storkey. Towards a Neural Statistician. ICLR 2017. arXiv:1606.02185
    [2] Hewitt, Nye, Gane, Jaakkola, Tenenbaum. The Variational Homoencoder: Learning to Learn
        High Capacity Generative Models from Few Examples. UAI 2018. arXiv:1807.08919
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
import torch
from torch import nn
from torch.nn import functional as F

from pvae.models.base import Model, ModelConfig, ReportItem, ints, option, width
from pvae.models.likelihoods import Likelihood
from pvae.models.registry import register_model
from pvae.nets import ACTIVATIONS, GaussianHead, mlp, numel


@dataclass(frozen=True)
class NeuralStatisticianConfig(ModelConfig):
    """Options of :class:`NeuralStatistician`."""

    input_shape: tuple[int, ...] = option(
        (1, 28, 28), "shape of one element (set by the dataset)", convert=ints
    )
    context_dim: int = option(
        64, "C, the context's dimensions (the paper: 512 on Omniglot)", convert=int
    )
    latent_dim: int = option(16, "Z, each element latent layer's dimensions", convert=int)
    latent_layers: int = option(1, "L, layers of element latents (the paper: 3)", convert=int)
    hidden: int = option(256, "width of the hidden layers", convert=width)
    architecture: str = option("mlp", "mlp, or conv (1x28x28 elements)")
    activation: str = option("elu", f"one of {', '.join(ACTIVATIONS)}")
    likelihood: str = option(
        "bernoulli", "bernoulli or continuous_bernoulli (images in [0, 1]), or normal (reals)"
    )
    sample_dropout: float = option(
        0.0,
        "in training, the probability of leaving each member of a set (all but one, kept at "
        "random) out of q(c | X)'s pooled mean, so the statistic network also learns from "
        "small subsets, as a few-shot episode's singletons; 0: off",
        convert=float,
    )
    few_shot_kl: str = option(
        "class_to_query",
        "few-shot rule: class_to_query, argmin_k KL(q(c | D_k) || q(c | x)) (the order of "
        "the k-shot script of the authors' group's reimplementation, and the more accurate "
        "in every model measured in benchmarks/results/ns_context.md); or query_to_class, "
        "argmin_k KL(q(c | x) || q(c | D_k))",
    )

    def validate(self) -> None:
        if self.few_shot_kl not in ("query_to_class", "class_to_query"):
            raise ValueError(
                "few_shot_kl must be 'query_to_class' or 'class_to_query', "
                f"got {self.few_shot_kl!r}"
            )
        if not 0.0 <= self.sample_dropout < 1.0:
            raise ValueError(f"sample_dropout must be in [0, 1), got {self.sample_dropout}")
        for name in ("context_dim", "latent_dim", "latent_layers", "hidden"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)}")
        if self.architecture not in ("mlp", "conv"):
            raise ValueError(f"architecture must be 'mlp' or 'conv', got {self.architecture!r}")
        if self.architecture == "conv" and self.input_shape != (1, 28, 28):
            raise ValueError(
                f"architecture='conv' needs (1, 28, 28) elements, got {self.input_shape}"
            )
        if self.activation not in ACTIVATIONS:
            raise ValueError(
                f"unknown activation {self.activation!r}; choose from {sorted(ACTIVATIONS)}"
            )
        if self.likelihood not in ("bernoulli", "continuous_bernoulli", "normal"):
            raise ValueError(
                f"likelihood must be bernoulli, continuous_bernoulli or normal, got {self.likelihood!r}"
            )


def _cat(*tensors: torch.Tensor) -> torch.Tensor:
    """Concatenates along the last dim, broadcasting the leading dims."""
    batch = torch.broadcast_shapes(*(t.shape[:-1] for t in tensors))
    return torch.cat([t.expand(*batch, t.shape[-1]) for t in tensors], -1)


class _ConvFeatures(nn.Module):
    """(..., 1, 28, 28) -> (..., width)."""

    def __init__(self, width: int, activation: str) -> None:
        super().__init__()
        act = ACTIVATIONS[activation]
        self.net = nn.Sequential(
            nn.Conv2d(1, 32, 3, stride=2, padding=1),
            act(),
            nn.Conv2d(32, 64, 3, stride=2, padding=1),
            act(),
            nn.Flatten(),
            nn.Linear(64 * 7 * 7, width),
            act(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch = x.shape[:-3]
        return self.net(x.reshape(-1, *x.shape[-3:])).reshape(*batch, -1)


class _ConvDecoder(nn.Module):
    """(..., features) -> logits (..., 1, 28, 28)."""

    def __init__(self, features: int, activation: str) -> None:
        super().__init__()
        act = ACTIVATIONS[activation]
        self.linear = nn.Sequential(nn.Linear(features, 64 * 7 * 7), act())
        self.net = nn.Sequential(
            nn.ConvTranspose2d(64, 32, 4, stride=2, padding=1),
            act(),
            nn.ConvTranspose2d(32, 1, 4, stride=2, padding=1),
        )

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        batch = h.shape[:-1]
        out = self.net(self.linear(h).reshape(-1, 64, 7, 7))
        return out.reshape(*batch, 1, 28, 28)


@register_model(
    "neural_statistician",
    smoke={"context_dim": 4, "latent_dim": 2, "latent_layers": 2, "hidden": 16},
    smoke_dataset="omniglot_sets",
)
class NeuralStatistician(Model):
    """The Neural Statistician: a context per set, element latents given the context.

    Options (:class:`NeuralStatisticianConfig`): ``context_dim`` C, ``latent_dim`` Z,
    ``latent_layers`` L, ``hidden`` (width), ``architecture`` (``mlp`` or ``conv``),
    ``activation``, ``likelihood``, ``sample_dropout`` (train q(c | X) on random subsets),
    ``few_shot_kl`` (the order of the KL in Algorithm 4).

    Shapes: ``model(x)``/``guide(x)`` take sets ``x`` ``(B, S, *input_shape)``; site ``"c"``
    is ``(B, 1, C)``, sites ``"z1"``..``"zL"`` ``(B, S, Z)``.
    """

    Config = NeuralStatisticianConfig
    config: NeuralStatisticianConfig
    data_keys = ("input_shape",)

    def __init__(self, config: NeuralStatisticianConfig | None = None, **options: Any) -> None:
        super().__init__(config, **options)
        cfg = self.config
        self.input_shape = cfg.input_shape
        c, z, h, layers = cfg.context_dim, cfg.latent_dim, cfg.hidden, cfg.latent_layers
        act = cfg.activation
        if cfg.architecture == "conv":
            self.features = _ConvFeatures(h, act)
        else:
            self.features = nn.Sequential(
                mlp([numel(cfg.input_shape), h, h], act), ACTIVATIONS[act]()
            )
        # The statistic network: pooled features -> q(c | X).
        self.statistic = nn.Sequential(mlp([h, h], act), ACTIVATIONS[act](), GaussianHead(h, c))
        # q(zl | z(l-1), x, c) and p(zl | z(l-1), c).
        self.inference = nn.ModuleList(
            nn.Sequential(
                mlp([h + c + (z if layer else 0), h], act), ACTIVATIONS[act](), GaussianHead(h, z)
            )
            for layer in range(layers)
        )
        self.latent_decoders = nn.ModuleList(
            nn.Sequential(
                mlp([c + (z if layer else 0), h], act), ACTIVATIONS[act](), GaussianHead(h, z)
            )
            for layer in range(layers)
        )
        pixels = numel(cfg.input_shape)
        decoder_in = c + layers * z
        if cfg.architecture == "conv":
            self.decoder = _ConvDecoder(decoder_in, act)
        else:
            out = 2 * pixels if cfg.likelihood == "normal" else pixels
            self.decoder = mlp([decoder_in, h, h, out], act)
        if cfg.likelihood != "normal":
            self.likelihood = Likelihood(cfg.likelihood, cfg.input_shape)
        self.register_buffer("prior_loc", torch.zeros(c))
        self.register_buffer("prior_scale", torch.ones(c))

    # -- the generative story ----------------------------------------------------------------
    def model(self, x: torch.Tensor) -> None:
        """p(X, c, z) = p(c) prod_i p(z_i | c) p(x_i | z_i, c); ``x`` ``(B, S, *input_shape)``."""
        self._check_input(x)
        num_sets, set_size = x.shape[:2]
        with pyro.plate("data", num_sets, dim=-2):
            c = pyro.sample("c", dist.Normal(self.prior_loc, self.prior_scale).to_event(1))
            with pyro.plate("elements", set_size, dim=-1):
                zs = self._latents_given_context(c, set_size)
                pyro.sample("x", self._observation(c, zs), obs=x)

    def guide(self, x: torch.Tensor) -> None:
        """q(c | X) from the statistic network, then q(zl_i | z(l-1)_i, x_i, c)."""
        self._check_input(x)
        num_sets, set_size = x.shape[:2]
        h = self.features(self._flat(x))  # (B, S, H)
        loc, scale = self.statistic(self._pool(h))
        with pyro.plate("data", num_sets, dim=-2):
            c = pyro.sample("c", dist.Normal(loc.unsqueeze(-2), scale.unsqueeze(-2)).to_event(1))
            with pyro.plate("elements", set_size, dim=-1):
                self._infer_latents(h, c)

    # -- pieces of the story ------------------------------------------------------------------
    def _pool(self, h: torch.Tensor) -> torch.Tensor:
        """The mean of the members' features ``(..., S, H)`` over the set; in training with
        ``sample_dropout`` p, over a random subset: each member left out with probability p,
        one member chosen uniformly always kept. Every subset's ``q(c | subset)`` is a valid
        guide, so the bound stays a bound on log p(X)."""
        p = self.config.sample_dropout
        if not self.training or p == 0.0 or h.shape[-2] == 1:
            return h.mean(-2)
        keep = torch.rand(h.shape[:-1], device=h.device) >= p  # (..., S)
        kept = torch.randint(h.shape[-2], (*h.shape[:-2], 1), device=h.device)
        keep = keep.scatter(-1, kept, True).to(h.dtype)
        return (h * keep.unsqueeze(-1)).sum(-2) / keep.sum(-1, keepdim=True)

    def _latents_given_context(self, c: torch.Tensor, set_size: int) -> list[torch.Tensor]:
        """Samples z1..zL from p(z | c) for ``set_size`` elements (inside the plates); ``c`` is
        one context per set ``(..., B, 1, C)`` or one per element ``(..., B, S, C)``."""
        context = c.expand(*c.shape[:-2], set_size, c.shape[-1])
        zs: list[torch.Tensor] = []
        for layer, net in enumerate(self.latent_decoders):
            loc, scale = net(_cat(context, zs[-1]) if zs else context)
            zs.append(pyro.sample(f"z{layer + 1}", dist.Normal(loc, scale).to_event(1)))
        return zs

    def _infer_latents(self, h: torch.Tensor, c: torch.Tensor) -> list[torch.Tensor]:
        zs: list[torch.Tensor] = []
        for layer, net in enumerate(self.inference):
            loc, scale = net(_cat(h, c, zs[-1]) if zs else _cat(h, c))
            zs.append(pyro.sample(f"z{layer + 1}", dist.Normal(loc, scale).to_event(1)))
        return zs

    def _observation(self, c: torch.Tensor, zs: list[torch.Tensor]) -> dist.TorchDistribution:
        out = self.decoder(_cat(c, *zs))
        if self.config.likelihood == "normal":
            loc, raw = out.chunk(2, -1)
            shape = (*loc.shape[:-1], *self.input_shape)
            scale = F.softplus(raw) + 1e-3
            return dist.Normal(loc.reshape(shape), scale.reshape(shape)).to_event(
                len(self.input_shape)
            )
        if self.config.architecture == "mlp":
            out = out.reshape(*out.shape[:-1], *self.input_shape)
        return self.likelihood(out)

    def _flat(self, x: torch.Tensor) -> torch.Tensor:
        if self.config.architecture == "conv":
            return x
        return x.reshape(*x.shape[: -len(self.input_shape)], -1)

    def _check_input(self, x: torch.Tensor) -> None:
        shape = self.input_shape
        if x.dim() != 2 + len(shape) or tuple(x.shape[2:]) != shape:
            raise ValueError(
                f"{type(self).__name__} expects sets of shape (sets, elements, "
                f"{', '.join(map(str, shape))}); got {tuple(x.shape)}"
            )

    # -- contexts and few-shot classification ----------------------------------------------------
    @torch.no_grad()
    def context_posterior(self, sets: torch.Tensor) -> dist.Normal:
        """q(c | X) for sets ``(N, S, *input_shape)``: a ``Normal`` of batch shape ``(N, C)``."""
        loc, scale = self.statistic(self.features(self._flat(sets)).mean(-2))
        return dist.Normal(loc, scale)

    @torch.no_grad()
    def classify_episode(self, support: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
        """Algorithm 4 of [1]: ``support`` ``(k, n, *input_shape)``, ``query`` ``(q, *input_shape)``;
        returns for each query the class ``argmin_k KL(q(c | D_k) || q(c | x))``, or with
        ``few_shot_kl="query_to_class"`` ``argmin_k KL(q(c | x) || q(c | D_k))``."""
        classes = self.context_posterior(support)  # (k, C)
        queries = self.context_posterior(query.unsqueeze(1))  # (q, C)
        q = dist.Normal(queries.loc.unsqueeze(1), queries.scale.unsqueeze(1))  # (q, 1, C)
        p = dist.Normal(classes.loc.unsqueeze(0), classes.scale.unsqueeze(0))  # (1, k, C)
        if self.config.few_shot_kl == "class_to_query":
            q, p = p, q
        kl = torch.distributions.kl_divergence(q, p).sum(-1)  # (q, k)
        return kl.argmin(-1)

    @torch.no_grad()
    def few_shot_accuracy(
        self,
        data: Any,
        k_way: int,
        n_shot: int,
        *,
        num_episodes: int = 100,
        num_queries: int = 1,
        seed: int = 0,
    ) -> tuple[float, float]:
        """Mean accuracy over ``num_episodes`` random k-way n-shot episodes of ``data`` (a set
        dataset with ``episodes``) and its standard error over episodes."""
        device = self.prior_loc.device
        generator = torch.Generator().manual_seed(seed)
        scores = []
        for episode in data.episodes(
            num_episodes, k_way, n_shot, num_queries=num_queries, generator=generator
        ):
            predicted = self.classify_episode(episode.support.to(device), episode.query.to(device))
            scores.append(float((predicted.cpu() == episode.query_labels).double().mean()))
        values = torch.tensor(scores, dtype=torch.float64)
        stderr = float(values.std() / math.sqrt(len(values))) if len(values) > 1 else float("nan")
        return float(values.mean()), stderr

    # -- the protocol ---------------------------------------------------------------------------
    def metrics(self, test: Any) -> dict[str, float]:
        """Few-shot accuracy (5-way and 20-way, 1-shot and 5-shot, 100 episodes each, as many
        as the test classes allow) when ``test`` is a set dataset with episodes."""
        if getattr(test, "episodes", None) is None:
            return {}
        members = test.items.shape[1] if hasattr(test, "items") else 0
        out: dict[str, float] = {}
        for k_way in (5, 20):
            for n_shot in (1, 5):
                if len(test) < k_way or members < n_shot + 1:
                    continue
                mean, stderr = self.few_shot_accuracy(test, k_way, n_shot)
                out[f"few_shot_{k_way}way_{n_shot}shot"] = mean
                out[f"few_shot_{k_way}way_{n_shot}shot_stderr"] = stderr
        return out

    def initialize(self, data_options: Mapping[str, Any]) -> None:
        """Sets a Bernoulli decoder's output bias to logit(mean pixel)."""
        mean = data_options.get("data_mean")
        last = self.decoder[-1] if isinstance(self.decoder, nn.Sequential) else None
        if (
            mean is not None
            and isinstance(last, nn.Linear)
            and self.config.likelihood == "bernoulli"
        ):
            p = mean.reshape(-1).clamp(1e-3, 1 - 1e-3).to(last.bias)
            with torch.no_grad():
                last.bias.copy_(torch.log(p) - torch.log1p(-p))

    @torch.no_grad()
    def sample(
        self,
        num_samples: int,
        generator: torch.Generator | None = None,
        set_size: int = 8,
        *,
        draw: bool = False,
    ) -> torch.Tensor:
        """``num_samples`` sets of ``set_size`` elements from the prior (no encoder):
        ``(num_samples, set_size, *input_shape)``, the means of ``p(x | c, z)`` (images) or,
        with ``draw``, draws from it (point sets, 1-D samples)."""
        device = self.prior_loc.device
        eps = torch.randn(num_samples, 1, self.config.context_dim, generator=generator).to(device)
        c = self.prior_loc + self.prior_scale * eps
        return self._decode(c, set_size, generator, draw)

    @torch.no_grad()
    def generate_like(
        self,
        sets: torch.Tensor,
        num: int = 8,
        generator: torch.Generator | None = None,
        *,
        draw: bool = False,
    ) -> torch.Tensor:
        """New elements of each set given a few of its members: ``c`` drawn from
        ``q(c | sets)``, then ``num`` elements from ``p(x | c)``: ``(N, num, *input_shape)``,
        means or (``draw``) draws as in :meth:`sample`."""
        q = self.context_posterior(sets)
        eps = torch.randn(q.loc.shape, generator=generator).to(q.loc)
        c = (q.loc + q.scale * eps).unsqueeze(-2)
        return self._decode(c, num, generator, draw)

    def _decode(
        self, c: torch.Tensor, set_size: int, generator: torch.Generator | None, draw: bool
    ) -> torch.Tensor:
        context = c.expand(*c.shape[:-2], set_size, c.shape[-1])
        zs: list[torch.Tensor] = []
        for net in self.latent_decoders:
            loc, scale = net(_cat(context, zs[-1]) if zs else context)
            eps = torch.randn(loc.shape, generator=generator).to(loc)
            zs.append(loc + scale * eps)
        observation = self._observation(c, zs)
        if not draw:
            return observation.mean
        if generator is None:
            return observation.sample()
        seed = int(torch.randint(2**62, (1,), generator=generator))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return observation.sample()

    def report_items(self, test: Any, out: Path, seed: int = 0) -> list[ReportItem]:
        """Figures of a set dataset ``test``: the test sets' contexts coloured by label (when
        there are at most 20 labels: the synthetic sets' families, spatial MNIST's digits);
        for 1x28x28 images, sets sampled from the prior and one-shot generations; for 2-D
        points, test sets beside new sets drawn given them and sets from the prior; for 1-D
        samples, histograms of test sets and of new members drawn given them."""
        if not hasattr(test, "batches"):
            return []
        items = self._context_scatter(test, out)
        if self.input_shape == (1, 28, 28):
            items += self._image_report(test, out, seed)
        elif self.input_shape == (2,):
            items += self._point_report(test, out, seed)
        elif self.input_shape == (1,):
            items += self._histogram_report(test, out, seed)
        return items

    def _context_scatter(self, test: Any, out: Path, num_sets: int = 1000) -> list[ReportItem]:
        labels = getattr(test, "labels", None)
        if labels is None or bool((labels < 0).any()) or labels.unique().numel() > 20:
            return []
        from pvae.figures import plot_latent_scatter

        device = self.prior_loc.device
        x, y = next(iter(test.batches(num_sets, shuffle=False)))
        means = torch.cat(
            [self.context_posterior(part.to(device)).loc.cpu() for part in x.split(100)]
        )
        caption = "Contexts of test sets: means of q(c | X), first two principal components"
        if getattr(test, "name", "").startswith("synthetic_sets"):
            from pvae.data.sets import FAMILIES

            caption += " (" + ", ".join(f"{i} {name}" for i, name in enumerate(FAMILIES)) + ")"
        plot_latent_scatter(means, y, out / "contexts.png", title="q(c | X) of test sets")
        return [ReportItem(caption, "contexts.png")]

    def _point_report(self, test: Any, out: Path, seed: int) -> list[ReportItem]:
        from pvae.figures import plot_point_sets

        generator = torch.Generator().manual_seed(seed)
        x, _ = next(iter(test.batches(8, shuffle=False)))
        x = x.to(self.prior_loc.device)
        like = self.generate_like(x, num=x.shape[1], generator=generator, draw=True)
        prior = self.sample(x.shape[0], generator=generator, set_size=x.shape[1], draw=True)
        plot_point_sets(
            [x.cpu(), like.cpu(), prior.cpu()],
            out / "point_sets.png",
            row_labels=["test set", "drawn given it", "from the prior"],
        )
        return [ReportItem("Point sets: test sets, new sets given them, prior", "point_sets.png")]

    def _histogram_report(self, test: Any, out: Path, seed: int) -> list[ReportItem]:
        from pvae.figures import plot_set_histograms

        generator = torch.Generator().manual_seed(seed)
        x, y = next(iter(test.batches(min(len(test), 200), shuffle=False)))
        # The first test set of each label, at most 4.
        first = [int((y == label).nonzero()[0]) for label in y.unique()[:4]]
        sets = x[first].to(self.prior_loc.device)
        new = self.generate_like(sets, num=sets.shape[1], generator=generator, draw=True)
        titles = [f"label {int(y[i])}" for i in first]
        if getattr(test, "name", "").startswith("synthetic_sets"):
            from pvae.data.sets import FAMILIES

            titles = [FAMILIES[int(y[i])] for i in first]
        plot_set_histograms(sets.cpu(), new.cpu(), out / "set_histograms.png", titles=titles)
        return [
            ReportItem(
                "Test sets (bars) and as many new members drawn given each (line)",
                "set_histograms.png",
            )
        ]

    def _image_report(self, test: Any, out: Path, seed: int) -> list[ReportItem]:
        from pvae.figures import image_grid

        generator = torch.Generator().manual_seed(seed)
        samples = self.sample(8, generator=generator).cpu()
        image_grid(samples.reshape(-1, *self.input_shape), out / "samples.png", nrow=8)
        x, _ = next(iter(test.batches(8, shuffle=False)))
        seen = x[:, :1].to(self.prior_loc.device)
        new = self.generate_like(seen, num=8, generator=generator).cpu()
        rows = torch.cat([seen.cpu(), new], 1)  # (8, 9, 1, 28, 28)
        image_grid(rows.reshape(-1, *self.input_shape), out / "one_shot.png", nrow=9)
        return [
            ReportItem("Sets sampled from the prior (one row a set)", "samples.png"),
            ReportItem(
                "One-shot generation (first column: the one member seen; then new elements)",
                "one_shot.png",
            ),
        ]


@dataclass(frozen=True)
class HomoEncoderConfig(NeuralStatisticianConfig):
    """Options of :class:`HomoEncoder`: the Neural Statistician's and the support size."""

    support_size: int = option(
        1, "k, members of the set the context of each target is inferred from", convert=int
    )
    set_weight_size: int | None = option(
        None, "|X| dividing the context's KL (default: the set size of each batch)", convert=int
    )

    def validate(self) -> None:
        super().validate()
        if self.sample_dropout != 0.0:
            raise ValueError(
                "the homoencoder takes no sample_dropout: its bound already infers each "
                "context from a random support subset (support_size)"
            )
        if self.support_size < 1:
            raise ValueError(f"support_size must be >= 1, got {self.support_size}")
        if self.set_weight_size is not None and self.set_weight_size < 1:
            raise ValueError(f"set_weight_size must be >= 1, got {self.set_weight_size}")


@register_model(
    "homoencoder",
    smoke={"context_dim": 4, "latent_dim": 2, "latent_layers": 1, "hidden": 16},
    smoke_dataset="omniglot_sets",
)
class HomoEncoder(NeuralStatistician):
    """The variational homoencoder: the Neural Statistician's networks trained with the VHE
    bound (:meth:`vhe_model`/:meth:`vhe_guide`, handed to the runner by ``training_setup``);
    evaluated, like it, by the per-set likelihood of ``model``/``guide``.

    Options (:class:`HomoEncoderConfig`): the Neural Statistician's, ``support_size`` k and
    ``set_weight_size`` ``|X|``.
    """

    Config = HomoEncoderConfig
    config: HomoEncoderConfig

    def vhe_model(self, x: torch.Tensor) -> None:
        """The generative story with one context per target element, its density weighted by
        ``1/|X|``: ``p(c_i)^(1/|X|) p(z_i | c_i) p(x_i | z_i, c_i)``."""
        self._check_input(x)
        num_sets, set_size = x.shape[:2]
        with pyro.plate("data", num_sets, dim=-2), pyro.plate("elements", set_size, dim=-1):
            with poutine.scale(scale=1.0 / self._set_weight(set_size)):
                c = pyro.sample("c", dist.Normal(self.prior_loc, self.prior_scale).to_event(1))
            zs = self._latents_given_context(c, set_size)
            pyro.sample("x", self._observation(c, zs), obs=x)

    def vhe_guide(self, x: torch.Tensor) -> None:
        """q(c_i | D_i) from a support subset ``D_i`` of the other members of the set (redrawn
        for every target and every call), weighted by ``1/|X|``; then q(z_i | x_i, c_i)."""
        self._check_input(x)
        num_sets, set_size = x.shape[:2]
        if set_size < 2:
            raise ValueError("the homoencoder's bound needs sets of at least two elements")
        h = self.features(self._flat(x))  # (B, S, H)
        k = min(self.config.support_size, set_size - 1)
        # For each target i a random k-subset of the other members: sort random keys, the
        # target's own key pushed last.
        keys = torch.rand(num_sets, set_size, set_size, device=x.device)
        keys = keys + 2.0 * torch.eye(set_size, device=x.device)
        support = keys.argsort(-1)[..., :k]  # (B, S, k)
        pooled = torch.gather(
            h.unsqueeze(1).expand(num_sets, set_size, set_size, h.shape[-1]),
            2,
            support.unsqueeze(-1).expand(num_sets, set_size, k, h.shape[-1]),
        ).mean(2)  # (B, S, H)
        loc, scale = self.statistic(pooled)
        with pyro.plate("data", num_sets, dim=-2), pyro.plate("elements", set_size, dim=-1):
            with poutine.scale(scale=1.0 / self._set_weight(set_size)):
                c = pyro.sample("c", dist.Normal(loc, scale).to_event(1))
            self._infer_latents(h, c)

    def _set_weight(self, set_size: int) -> int:
        return self.config.set_weight_size or set_size

    def training_setup(self, train: Any, valid: Any = None, **options: Any) -> dict[str, Any]:
        """Trains (and validates) the VHE pair."""
        return {"model": self.vhe_model, "guide": self.vhe_guide}
