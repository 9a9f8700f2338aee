"""The associative compression network (ACN) [1]: a VAE whose prior is conditioned on a
neighbour's code.

A VAE pays for every datum's code against one unconditional prior. ACN instead remembers the
code of every training datum and encodes ``x_n`` *relative to one of its neighbours*: the
prior of ``z_n`` is a learned network ``p(z | z')`` fed with the code ``z'`` of one of the K
nearest neighbours of ``x_n``'s code in the training set. Codes of similar data cluster, so the
conditional prior can be sharp where the unconditional one cannot, and the KL (the cost of
the code) drops. Generative story, for each datum n::

    z'_n = c_m,   m ~ Uniform(KNN_K(c_n))      (training: a random one of the K nearest codes)
    z'_n = c_m,   m = NN_1(c_n)                (evaluation: the nearest training code)
    z_n  ~ p(z | z'_n) = sum_j pi_j(z'_n) Normal(mu_j(z'_n), diag sigma_j(z'_n)^2)   site "z"
    x_n  ~ p(x | f_theta(z_n))                                                        site "x"

with ``c_n = mu_phi(x_n)`` the guide's mean code and ``KNN_K`` the K nearest codes of the
**code memory** ``{c_m}``, one per training datum, excluding the datum itself.
Guide: ``q(z_n | x_n) = Normal(mu_phi(x_n), diag sigma_phi(x_n)^2)``, as in the VAE; or, with
``posterior_scale = s > 0``, ``Normal(mu_phi(x_n), s^2 I)`` (``s = 1``: the paper's
unit-variance codes, whose only free parameter is the mean: the KL to the neighbour's prior
cannot be lowered by widening the posterior, only by drawing the means together, which a
PixelCNN decoder conditioned by a per-layer bias alone still does: ``benchmarks/results/acn.md``,
``acn_collapse.md``).

- The **memory** is a buffer of the model (``memory``, ``(N, D)``), so checkpoints hold it and
  a resumed run continues exactly. The guide writes the codes of a training batch's data into
  it as it encodes them (batches ``(x, y, index)`` of an :class:`~pvae.data.indexed.
  IndexedDataset`, which :meth:`ACN.training_setup` supplies); a callback re-encodes the whole
  training set, without gradients, before every epoch (at the end of the previous one, so
  that the checkpoints and the evaluation see codes of the final encoder).
- The **neighbour search** (:func:`nearest_neighbours`) is exact, in torch, in chunks of the
  memory: never an ``N x N`` matrix; ``search="faiss"`` uses faiss's exact flat index instead
  (:func:`faiss_nearest_neighbours`, the optional ``faiss-cpu``), with the same results.
- The **prior network** (:class:`ConditionalPrior`) is an MLP from ``z'`` to a mixture of
  diagonal Gaussians (``components``; one component is a Gaussian, whose KL is analytic; the
  mixture's is estimated by Monte Carlo, which pvae's ELBO does by itself); with
  ``prior_skips`` and ``prior_hidden=512,512,512``, ``prior_activation=tanh``, the paper's
  (the input to every hidden layer, every hidden layer to the output).
- **Sampling** draws the first code ``z'`` from the unconditional ``Normal(0, I)``, then
  ``z ~ p(z | z')``, and decodes.
- **Daydreaming** (:meth:`ACN.daydream`, [1] Sec. 3.3): from a code ``c_0`` (a training
  datum's, from the memory), repeat ``z_t ~ p(z | c_t)``, ``x_t = E[x | z_t]``,
  ``c_{t+1} = E_q[z | x_t]`` (the guide's mean code of the new image, as in the paper: the
  chain re-encodes its own samples, it does not snap to the nearest memory code). The run's
  report shows a few chains.
- **The cost of the compression order** (:func:`chain_coding_cost`): the ELBO code length of
  a data set sent in a nearest-neighbour chain order (:func:`neighbour_chain`), each code
  under the prior given its predecessor's code, beside the same data coded independently
  under the unconditional prior.
- A model without a memory (fresh, never trained) uses ``Normal(0, I)`` as its prior.

.. note:: Evaluation (``eval_args``: no indices) bounds ``log p(x | c_m(x))``, the nearest
   training code found with ``x`` itself: not the log-density of a normalised model of ``x``.
   Subtract ``log N`` (the cost of naming one of the N training codes) for a bound on
   ``log p(x)`` of ACN as the uniform mixture ``(1/N) sum_m p(x | c_m)`` over its memory.
   Evaluated on training data, the nearest code is the datum's own.

Inputs, shapes (MNIST: ``x`` ``(B, 1, 28, 28)``): ``model(x, index=None)`` and
``guide(x, index=None)``; ``index`` (int64 ``(B,)``) are the data's positions in the training
set, given in training only. ``z``: ``(B, latent_dim)``.

- **Decoders** (``architecture``): the MLP decoder of pvae's other image models (``mlp``), or
  a small gated PixelCNN (``pixelcnn``, :class:`~pvae.nets.pixelcnn.PixelCNN`, conditioned on
  ``z`` by a per-layer bias, and with ``pixelcnn_spatial`` also by maps of the image's size)
  for binary images: an autoregressive decoder that can model the pixels without ``z``, where
  an ordinary VAE's KL collapses ([1] Sec. 4). With the per-layer bias alone ACN's codes
  collapsed too on 5,000 MNIST images; with the spatial maps its decoder used its code about
  three times as much as the VAE's (``benchmarks/results/acn_collapse.md``). Its samples are
  drawn pixel by pixel (one pass per pixel): the daydreams re-encode those binary samples.

References:
    [1] Graves, Menick, van den Oord. Associative Compression Networks for Representation
        Learning. 2018. arXiv:1804.02476
    [2] Johnson, Douze, Jégou. Billion-scale similarity search with GPUs. IEEE Transactions on
        Big Data, 2019. arXiv:1702.08734 (faiss)
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import pyro
import pyro.distributions as dist
import torch
from torch import nn
from torch.nn import functional as F

from pvae.infer.callbacks import Callback, TrainState
from pvae.models.base import ReportItem, flag, ints, option
from pvae.models.image import ImageConfig, StandardNormalPrior
from pvae.models.likelihoods import Likelihood
from pvae.models.registry import register_model
from pvae.nets import ACTIVATIONS, GaussianMLP, mlp, numel
from pvae.nets.pixelcnn import check_pixelcnn_options, pixelcnn_from_config

__all__ = [
    "ACN",
    "ACNConfig",
    "ChainCost",
    "ConditionalPrior",
    "Daydream",
    "MemoryRefresh",
    "chain_coding_cost",
    "faiss_nearest_neighbours",
    "nearest_neighbours",
    "neighbour_chain",
]


# -- the neighbour search -----------------------------------------------------------------------
def nearest_neighbours(
    queries: torch.Tensor,
    memory: torch.Tensor,
    k: int,
    *,
    exclude: torch.Tensor | None = None,
    chunk_size: int = 4096,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` nearest rows of ``memory`` to each query (Euclidean), exactly, in chunks.

    :param queries: ``(Q, D)``.
    :param memory: ``(N, D)``.
    :param k: neighbours per query, ``1 <= k <= N`` (``N - 1`` with ``exclude``).
    :param exclude: int64 ``(Q,)``: a row of ``memory`` that query ``q`` may not return (the
        query's own datum). Excluded by position, so a duplicate of the datum's code in
        another row is still a neighbour, and the datum itself never is.
    :param chunk_size: queries and memory rows compared at once: at most
        ``chunk_size x chunk_size`` distances exist at a time.
    :return: squared distances ``(Q, k)``, ascending, and the rows' indices ``(Q, k)``.
    """
    num_memory = memory.shape[0]
    available = num_memory - (exclude is not None)
    if not 1 <= k <= available:
        raise ValueError(
            f"need 1 <= k <= {available} neighbours in a memory of {num_memory}, got {k}"
        )
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive integer, got {chunk_size}")
    distances, indices = [], []
    memory_norms = memory.pow(2).sum(-1)
    for q_start in range(0, queries.shape[0], chunk_size):
        query = queries[q_start : q_start + chunk_size]
        query_norms = query.pow(2).sum(-1, keepdim=True)
        best = query.new_full((query.shape[0], 0), float("inf"))
        best_index = torch.zeros(query.shape[0], 0, dtype=torch.int64, device=query.device)
        for m_start in range(0, num_memory, chunk_size):
            rows = memory[m_start : m_start + chunk_size]
            chunk = query_norms - 2 * query @ rows.T + memory_norms[m_start : m_start + chunk_size]
            chunk = chunk.clamp_min(0)
            if exclude is not None:
                # Set the excluded entry to +inf where it falls in this chunk; a scatter rather
                # than boolean indexing keeps the search free of host synchronisation.
                column = exclude[q_start : q_start + chunk_size] - m_start
                inside = (column >= 0) & (column < rows.shape[0])
                column = column.clamp(0, rows.shape[0] - 1).unsqueeze(-1)
                kept = chunk.gather(-1, column)
                chunk = chunk.scatter(
                    -1, column, torch.where(inside.unsqueeze(-1), float("inf"), kept)
                )
            candidates = torch.cat([best, chunk], dim=-1)
            candidate_index = torch.cat(
                [
                    best_index,
                    torch.arange(m_start, m_start + rows.shape[0], device=query.device).expand(
                        query.shape[0], -1
                    ),
                ],
                dim=-1,
            )
            best, position = candidates.topk(min(k, candidates.shape[-1]), largest=False)
            best_index = candidate_index.gather(-1, position)
        distances.append(best)
        indices.append(best_index)
    return torch.cat(distances), torch.cat(indices)


def faiss_nearest_neighbours(
    queries: torch.Tensor,
    memory: torch.Tensor,
    k: int,
    *,
    exclude: torch.Tensor | None = None,
    chunk_size: int = 4096,
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`nearest_neighbours` by faiss [2] (``pip install faiss-cpu``, or the
    ``pvae-zoo[faiss]`` extra): the same arguments and results, from faiss's exact flat L2
    index (``IndexFlatL2``, squared distances, float32 on the CPU; ``chunk_size`` is unused:
    faiss blocks its own search). With ``exclude`` it searches ``k + 1`` neighbours and drops
    the query's own row (or, when ties push that row out, the farthest one).

    The index is built from ``memory`` on every call (a copy of ``N x D`` floats, no
    training): the search itself, ``O(Q N D)``, is the cost, as in the torch search.
    """
    try:
        import faiss
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError(
            "search='faiss' needs faiss: pip install faiss-cpu (or pvae-zoo[faiss])"
        ) from error
    num_memory = memory.shape[0]
    extra = int(exclude is not None)
    if not 1 <= k <= num_memory - extra:
        raise ValueError(
            f"need 1 <= k <= {num_memory - extra} neighbours in a memory of {num_memory}, got {k}"
        )
    index = faiss.IndexFlatL2(memory.shape[-1])
    index.add(memory.detach().to("cpu", torch.float32).contiguous().numpy())
    found = index.search(queries.detach().to("cpu", torch.float32).contiguous().numpy(), k + extra)
    distances, indices = (torch.from_numpy(array) for array in found)
    indices = indices.to(torch.int64)
    if exclude is not None:
        own = indices == exclude.to("cpu", torch.int64).unsqueeze(-1)
        # A stable sort moves the own row (True) behind the others, which keep their order.
        keep = own.to(torch.uint8).argsort(stable=True, dim=-1)[:, :k]
        distances, indices = distances.gather(-1, keep), indices.gather(-1, keep)
    return distances.to(queries.device, queries.dtype), indices.to(queries.device)


#: the neighbour searches of :class:`ACNConfig`'s ``search`` option
SEARCHES = {"exact": nearest_neighbours, "faiss": faiss_nearest_neighbours}


# -- the prior network ------------------------------------------------------------------------
class ConditionalPrior(nn.Module):
    """``p(z | z')``: an MLP from the neighbour's code ``z'`` ``(..., D)`` to a mixture of
    ``components`` diagonal Gaussians over ``z`` (batch shape ``(...)``, event ``(D,)``);
    with one component, a diagonal Gaussian (whose KL to a Gaussian guide is analytic).

    With ``skips``, the paper's prior network ([1], as quoted in johannah/ACN: "an MLP with three hidden layers
    each containing 512 tanh units, and skip connections from the input to all hidden layers
    and all hiddens to the output layer"): hidden layer ``i`` reads ``z'`` and layer
    ``i - 1``'s output, ``h_i = act(W_i [z', h_{i-1}] + b_i)`` (``h_1 = act(W_1 z' + b_1)``),
    and the output layer reads every hidden layer, ``W_o [h_1, ..., h_L] + b_o``."""

    def __init__(
        self,
        latent_dim: int,
        hidden: Iterable[int],
        components: int,
        activation: str,
        skips: bool = False,
    ) -> None:
        super().__init__()
        self.latent_dim, self.components, self.skips = latent_dim, components, skips
        hidden = list(hidden)
        outputs = components * (1 + 2 * latent_dim)
        if skips:
            inputs = [latent_dim] + [latent_dim + h for h in hidden[:-1]]
            self.hidden_layers = nn.ModuleList(
                nn.Linear(a, b) for a, b in zip(inputs, hidden, strict=True)
            )
            self.output_layer = nn.Linear(sum(hidden), outputs)
            self.activation = ACTIVATIONS[activation]()
        else:
            self.net = mlp([latent_dim, *hidden, outputs], activation)

    def features(self, code: torch.Tensor) -> torch.Tensor:
        """The network's output ``(..., M (1 + 2 D))``: logits, locations, raw scales."""
        if not self.skips:
            return self.net(code)
        hiddens: list[torch.Tensor] = []
        for layer in self.hidden_layers:
            inputs = code if not hiddens else torch.cat([code, hiddens[-1]], -1)
            hiddens.append(self.activation(layer(inputs)))
        return self.output_layer(torch.cat(hiddens, -1))

    def parameters_of(self, code: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Mixture logits ``(..., M)``, locations and scales ``(..., M, D)``."""
        m, d = self.components, self.latent_dim
        logits, loc, raw_scale = self.features(code).split([m, m * d, m * d], dim=-1)
        shape = (*code.shape[:-1], m, d)
        return logits, loc.reshape(shape), F.softplus(raw_scale.reshape(shape)) + 1e-4

    def forward(self, code: torch.Tensor) -> dist.TorchDistribution:
        logits, loc, scale = self.parameters_of(code)
        if self.components == 1:
            return dist.Normal(loc.squeeze(-2), scale.squeeze(-2)).to_event(1)
        return dist.MixtureSameFamily(
            dist.Categorical(logits=logits), dist.Normal(loc, scale).to_event(1)
        )

    def sample(self, code: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """One ``z ~ p(z | z')`` per row of ``code`` ``(n, D)``, from ``generator``."""
        logits, loc, scale = self.parameters_of(code)
        component = torch.multinomial(logits.softmax(-1), 1, generator=generator)
        pick = component.unsqueeze(-1).expand(-1, 1, self.latent_dim)
        loc, scale = loc.gather(-2, pick).squeeze(-2), scale.gather(-2, pick).squeeze(-2)
        eps = torch.randn(loc.shape, generator=generator, device=loc.device, dtype=loc.dtype)
        return loc + scale * eps


# -- daydreams ------------------------------------------------------------------------------
class Daydream(NamedTuple):
    """Chains of :meth:`ACN.daydream`: ``images`` ``(n, steps, *input_shape)`` (``x_1 ..
    x_steps``, mean images) and ``codes`` ``(n, steps + 1, D)`` (``c_0 .. c_steps``; ``c_0``
    the start, ``c_t`` the guide's mean code of ``x_t``)."""

    images: torch.Tensor
    codes: torch.Tensor


# -- the model --------------------------------------------------------------------------------
@dataclass(frozen=True)
class ACNConfig(ImageConfig):
    """Options of :class:`ACN`."""

    neighbours: int = option(
        5, "K: training conditions on a random one of the K nearest codes", convert=int
    )
    components: int = option(
        3, "Gaussian components of the prior p(z | z') (1: a Gaussian)", convert=int
    )
    prior_hidden: tuple[int, ...] = option(
        (400,), "hidden layer sizes of the prior network", convert=ints
    )
    prior_activation: str = option(
        "", "activation of the prior network's hidden layers (empty: the model's activation)"
    )
    prior_skips: bool = option(
        False,
        "skip connections in the prior network: the input to every hidden layer, every "
        "hidden layer to the output (the paper's prior network: prior_hidden 512,512,512, "
        "prior_activation tanh)",
        convert=flag,
    )
    search_chunk: int = option(
        4096, "queries and memory rows compared at once by the neighbour search", convert=int
    )
    search: str = option(
        "exact", "neighbour search: exact (torch, in chunks) or faiss (faiss-cpu's flat index)"
    )
    architecture: str = option(
        "mlp", "decoder: mlp, or pixelcnn (a gated PixelCNN; bernoulli, (C, H, W) images)"
    )
    pixelcnn_layers: int = option(5, "gated layers of the pixelcnn decoder", convert=int)
    pixelcnn_channels: int = option(32, "feature maps of the pixelcnn decoder", convert=int)
    pixelcnn_spatial: int = option(
        0,
        "maps of the pixelcnn's location-dependent code m(z), an MLP through the first hidden "
        "size (van den Oord et al. Eq. 5); 0: a per-layer bias only",
        convert=int,
    )
    posterior_scale: float = option(
        0.0,
        "fixed scale of every unit of q(z | x) (1: the paper's unit-variance codes); 0: learned",
        convert=float,
    )

    def validate(self) -> None:
        super().validate()
        if not (self.posterior_scale >= 0 and math.isfinite(self.posterior_scale)):
            raise ValueError(
                f"posterior_scale must be 0 (learned) or a positive number, "
                f"got {self.posterior_scale}"
            )
        for name in ("neighbours", "components", "search_chunk"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)}")
        if any(h < 1 for h in self.prior_hidden):
            raise ValueError(f"prior_hidden sizes must be positive, got {list(self.prior_hidden)}")
        if self.prior_activation and self.prior_activation not in ACTIVATIONS:
            raise ValueError(
                f"unknown prior_activation {self.prior_activation!r}; choose from "
                f"{sorted(ACTIVATIONS)} (or empty: the model's activation)"
            )
        if self.search not in SEARCHES:
            raise ValueError(f"search must be one of {', '.join(SEARCHES)}, got {self.search!r}")
        if self.architecture not in ("mlp", "pixelcnn"):
            raise ValueError(f"architecture must be 'mlp' or 'pixelcnn', got {self.architecture!r}")
        if self.architecture == "pixelcnn":
            check_pixelcnn_options(self)


@register_model(
    "acn",
    smoke={"latent_dim": 2, "hidden": [16], "prior_hidden": [16], "neighbours": 3, "components": 2},
)
class ACN(StandardNormalPrior):
    """The associative compression network [1] with an MLP encoder and an MLP or PixelCNN
    decoder (see the module docstring for the story and the memory).

    Options (:class:`ACNConfig`): those of every image model (``input_shape``, ``latent_dim``
    D, ``hidden`` (the decoder mirrors them), ``activation``, ``likelihood``), ``neighbours``
    K, ``components`` of the prior mixture, the prior network's ``prior_hidden``,
    ``prior_activation`` and ``prior_skips`` (the paper's: ``512,512,512``, ``tanh``,
    skips), ``search_chunk``, ``search``
    (``exact`` or ``faiss``), the decoder ``architecture`` (``mlp`` or ``pixelcnn``, with
    ``pixelcnn_layers``, ``pixelcnn_channels`` and ``pixelcnn_spatial``) and ``posterior_scale`` (0: learned
    scales; ``s > 0``: ``q(z | x) = Normal(mu(x), s^2 I)``).

    Buffers: ``memory`` ``(N, D)`` (empty until :meth:`training_setup`), ``memory_labels``
    ``(N,)`` (the training labels, ``-1`` where none) and ``memory_epoch`` (the epoch whose
    start the memory was last refreshed for).
    """

    Config = ACNConfig
    config: ACNConfig

    def __init__(self, config: ACNConfig | None = None, **options: Any) -> None:
        super().__init__(config, **options)
        config = self.config
        pixels, hidden = numel(self.input_shape), list(config.hidden)
        self.encoder = GaussianMLP(pixels, hidden, self.latent_dim, config.activation)
        if config.architecture == "pixelcnn":
            self.decoder = pixelcnn_from_config(config, self.latent_dim, self.input_shape)
        else:
            self.decoder = mlp([self.latent_dim, *reversed(hidden), pixels], config.activation)
        self.conditional_prior = ConditionalPrior(
            self.latent_dim,
            config.prior_hidden,
            config.components,
            config.prior_activation or config.activation,
            skips=config.prior_skips,
        )
        self.likelihood = Likelihood(config.likelihood, self.input_shape)
        self.register_buffer("memory", torch.zeros(0, self.latent_dim))
        self.register_buffer("memory_labels", torch.zeros(0, dtype=torch.int64))
        self.register_buffer("memory_epoch", torch.tensor(-1))

    # -- Pyro model and guide -------------------------------------------------------------
    def model(self, x: torch.Tensor, index: torch.Tensor | None = None) -> None:
        """p(x, z | z') = p(z | z') p(x | z), ``z'`` a neighbour's code from the memory."""
        self._check_input(x)
        neighbour = self.neighbour_code(x, index)
        prior = self.prior() if neighbour is None else self.conditional_prior(neighbour)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", prior)
            pyro.sample("x", self.likelihood(self.decode_logits(z, x)), obs=x)

    def guide(self, x: torch.Tensor, index: torch.Tensor | None = None) -> None:
        """q(z | x) = Normal(mu(x), diag sigma(x)^2); in training (``index`` given) the means
        are written into the memory at ``index``."""
        self._check_input(x)
        loc, scale = self.encode(x)
        if index is not None:
            self.remember(index, loc)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(loc, scale).to_event(1))

    # -- the memory -----------------------------------------------------------------------
    @torch.no_grad()
    def neighbour_code(
        self, x: torch.Tensor, index: torch.Tensor | None = None
    ) -> torch.Tensor | None:
        """``z'`` ``(B, D)``: with ``index`` (training) the code of a random one of the K
        nearest memory entries other than the datum's own; without, the nearest entry's code.
        ``None`` while the memory is empty (a model never set up for training)."""
        if self.memory.shape[0] == 0:
            if index is not None:
                raise ValueError(
                    "ACN's memory is empty: call training_setup(train) before training"
                )
            return None
        code = self.encode_mean(x)
        if index is None:
            _, nearest = self.search(code, self.memory, 1, chunk_size=self.config.search_chunk)
            return self.memory[nearest[:, 0]]
        k = self.config.neighbours
        _, nearest = self.search(
            code, self.memory, k, exclude=index, chunk_size=self.config.search_chunk
        )
        pick = torch.randint(k, (x.shape[0], 1), device=nearest.device)
        return self.memory[nearest.gather(-1, pick).squeeze(-1)]

    @torch.no_grad()
    def remember(self, index: torch.Tensor, code: torch.Tensor) -> None:
        """Writes ``code`` ``(B, D)`` into the memory at rows ``index`` ``(B,)``, in place."""
        self.memory[index] = code.detach().to(self.memory.dtype)

    @torch.no_grad()
    def refresh_memory(
        self, data: Any, generator: torch.Generator | None = None, batch_size: int = 1000
    ) -> None:
        """Re-encodes every datum of ``data`` (the training set, in its order) into the
        memory, ``batch_size`` at a time, without gradients; ``generator`` draws the dynamic
        binarization of the pass."""
        device = self.memory.device
        start = 0
        for batch in data.batches(batch_size, shuffle=False, generator=generator):
            x = batch[0].to(device)
            self.memory[start : start + x.shape[0]] = self.encode_mean(x).to(self.memory.dtype)
            start += x.shape[0]

    def _load_from_state_dict(self, state_dict: Mapping[str, Any], prefix: str, *args: Any) -> None:
        # The memory's size is the training set's, unknown when the model is built from its
        # config: take the saved size, so that load_state_dict restores it.
        for name in ("memory", "memory_labels"):
            saved = state_dict.get(prefix + name)
            if saved is not None:
                current = getattr(self, name)
                setattr(self, name, current.new_zeros(saved.shape))
        super()._load_from_state_dict(state_dict, prefix, *args)

    def search(
        self, queries: torch.Tensor, memory: torch.Tensor, k: int, **options: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The configured neighbour search (``search``: :func:`nearest_neighbours` or
        :func:`faiss_nearest_neighbours`)."""
        return SEARCHES[self.config.search](queries, memory, k, **options)

    # -- networks -------------------------------------------------------------------------
    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(loc, scale)`` of ``q(z | x)``, each ``(B, D)``; with ``posterior_scale > 0`` the
        scale is that constant (the encoder's scale head is not evaluated)."""
        if self.config.posterior_scale > 0:
            loc = self.encoder.head.loc(self.encoder.trunk(self._flat(x)))
            return loc, torch.full_like(loc, self.config.posterior_scale)
        return self.encoder(self._flat(x))

    def encode_mean(self, x: torch.Tensor) -> torch.Tensor:
        return self.encode(x)[0]

    def decode_logits(self, z: torch.Tensor, x: torch.Tensor | None = None) -> torch.Tensor:
        """Logits of ``p(x | z)``, ``(..., *input_shape)``. The pixelcnn decoder's depend on
        ``x`` (each pixel's on the pixels before it); without ``x`` it draws one image from
        ``p(x | z)`` pixel by pixel and returns the logits given that draw."""
        if self.config.architecture == "pixelcnn":
            return self.decoder(z, self.decoder.sample(z) if x is None else x)
        return self.decoder(z).reshape(*z.shape[:-1], *self.input_shape)

    @torch.no_grad()
    def decode_image(
        self, z: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """The image shown for a code: the mean image ``E[x | z]`` of the MLP decoder, a draw
        ``x ~ p(x | z)`` of the pixelcnn decoder (whose mean has no closed form)."""
        if self.config.architecture == "pixelcnn":
            return self.decoder.sample(z, generator)
        return self.likelihood.mean(self.decode_logits(z))

    def eval_datum_size(self, args: tuple) -> int | None:
        """The pixelcnn decoder's feature maps, so that the evaluator's chunks fit in memory."""
        if self.config.architecture == "pixelcnn":
            return self.decoder.elements_per_image
        return None

    # -- the protocol ---------------------------------------------------------------------
    def batch_args(self, batch: Any) -> tuple:
        """``(x, index)`` from a training batch ``(x, y, index)``; ``(x,)`` from ``(x, y)``."""
        if isinstance(batch, (tuple, list)):
            return (batch[0], batch[2]) if len(batch) == 3 else (batch[0],)
        return (batch,)

    def eval_args(self, batch: Any) -> tuple:
        """``(x,)``: evaluation conditions on the nearest training code."""
        return (batch[0],) if isinstance(batch, (tuple, list)) else (batch,)

    @torch.no_grad()
    def sample(self, num_samples: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Images of ``z ~ p(z | z')``, ``z' ~ Normal(0, I)`` (:meth:`decode_image`: mean images,
        or the pixelcnn's draws): ``(n, *input_shape)``."""
        first = self.prior_sample(num_samples, generator)
        z = self.conditional_prior.sample(first, generator)
        return self.decode_image(z, generator)

    @torch.no_grad()
    def daydream(
        self,
        start: torch.Tensor | int,
        steps: int,
        generator: torch.Generator | None = None,
    ) -> Daydream:
        """Daydream chains ([1] Sec. 3.3), one per start::

            c_0 given;   for t = 1 .. steps:
                z_t ~ p(z | c_{t-1}),   x_t = E[x | z_t],   c_t = mu_phi(x_t)

        The next code is the guide's mean code of the decoded image (the paper encodes its
        samples; it does not replace them by the nearest memory code). The images are
        :meth:`decode_image`'s: the MLP decoder's mean images, the pixelcnn's draws.

        :param start: the first codes: int64 indices ``(n,)`` (or one int) of training data
            in the memory, or codes ``(n, D)`` (floating point).
        :param steps: images per chain, ``>= 1``.
        :param generator: draws ``z_t`` (component, then Gaussian noise).
        :return: :class:`Daydream`: ``images`` ``(n, steps, *input_shape)``, ``codes``
            ``(n, steps + 1, D)`` with ``codes[:, 0]`` the start codes.
        """
        if steps < 1:
            raise ValueError(f"steps must be a positive integer, got {steps}")
        start = torch.as_tensor(start, device=self.memory.device)
        if start.is_floating_point():
            if start.dim() != 2 or start.shape[-1] != self.latent_dim:
                raise ValueError(
                    f"start codes must have shape (n, {self.latent_dim}), got {tuple(start.shape)}"
                )
            code = start.to(self.memory.dtype)
        else:
            if self.memory.shape[0] == 0:
                raise ValueError("ACN's memory is empty: start from codes, or train first")
            code = self.memory[start.reshape(-1)]
        codes, images = [code], []
        for _ in range(steps):
            z = self.conditional_prior.sample(code, generator)
            image = self.decode_image(z, generator)
            code = self.encode_mean(image)
            images.append(image)
            codes.append(code)
        return Daydream(torch.stack(images, 1), torch.stack(codes, 1))

    def report_items(self, test: Any, out: Path, seed: int = 0) -> list[ReportItem]:
        """The image models' samples and reconstructions and, with a memory, 8 daydream chains
        of 10 steps from random training codes (first column: the decoded start code)."""
        items = super().report_items(test, out, seed)
        if self.memory.shape[0] == 0:
            return items
        from pvae.figures import image_grid

        generator = torch.Generator().manual_seed(seed)
        start = torch.randperm(self.memory.shape[0], generator=generator)[:8]
        chains = self.daydream(start, 10, generator)
        first = self.decode_image(chains.codes[:, 0], generator)
        rows = torch.cat([first.unsqueeze(1), chains.images], 1).cpu()
        image_grid(rows.reshape(-1, *self.input_shape), out / "daydreams.png", nrow=11)
        items.append(
            ReportItem(
                "Daydreams (one row a chain; first column: a training code decoded; then "
                "z ~ p(z | c), decode, re-encode to the next c)",
                "daydreams.png",
            )
        )
        return items

    def training_setup(self, train: Any, valid: Any = None, **options: Any) -> dict[str, Any]:
        """A memory of ``len(train)`` codes; the training data as ``(x, y, index)`` batches
        (:class:`~pvae.data.indexed.IndexedDataset`) and the :class:`MemoryRefresh` callback."""
        from pvae.data.indexed import IndexedDataset

        if len(train) <= self.config.neighbours:
            raise ValueError(
                f"ACN needs more training data than neighbours ({self.config.neighbours}), "
                f"got {len(train)}"
            )
        indexed = IndexedDataset(train)
        self.memory = self.memory.new_zeros(len(train), self.latent_dim)
        self.memory_labels = indexed.labels.to(self.memory_labels.device).clone()
        self.memory_epoch.fill_(-1)
        refresh = MemoryRefresh(self, indexed.dataset, seed=int(options.get("seed") or 0))
        return {"train_data": indexed, "callbacks": [refresh]}

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """:meth:`decode_image` of the guide's mean code of ``x``."""
        return self.decode_image(self.encode_mean(x))

    @torch.no_grad()
    def metrics(self, test: Any) -> dict[str, float]:
        """How informative the test codes are (``{}`` without a memory):

        - ``test_kl``: nats per datum of ``KL(q(z | x) || p(z | c_m(x)))``, the code's cost
          under the evaluation prior (the nearest training code's), by Monte Carlo (16 draws
          per datum, seed 0; exact for one component);
        - ``test_active_units``: units ``u`` with ``Var_x(E_q[z_u | x]) > 0.01`` (Burda et al.);
        - ``test_knn_accuracy``: the majority label of each test code's K nearest training
          codes (labelled ones), against the test labels (datasets with labels only).
        """
        from pvae.evaluation import active_units

        if self.memory.shape[0] == 0:
            return {}
        device, labels = self.memory.device, self.memory_labels
        has_labels = bool((labels >= 0).any())
        num_classes = int(labels.max()) + 1 if has_labels else 0
        k = min(self.config.neighbours, self.memory.shape[0])
        generator = torch.Generator().manual_seed(0)
        correct = total = 0
        kl_total, means = 0.0, []
        for x, y in test.batches(1000, shuffle=False, generator=generator):
            x, y = x.to(device), y.to(device)
            loc, scale = self.encode(x)
            means.append(loc)
            _, nearest = self.search(loc, self.memory, k, chunk_size=self.config.search_chunk)
            prior = self.conditional_prior(self.memory[nearest[:, 0]])
            q = dist.Normal(loc, scale).to_event(1)
            eps = torch.randn((16, *loc.shape), generator=generator, dtype=loc.dtype).to(device)
            z = loc + scale * eps
            kl_total += float((q.log_prob(z) - prior.log_prob(z)).mean(0).sum())
            if has_labels:
                votes = labels[nearest]
                counts = F.one_hot(votes.clamp_min(0), num_classes) * (votes >= 0).unsqueeze(-1)
                predicted = counts.sum(-2).argmax(-1)
                keep = y >= 0
                correct += int((predicted == y)[keep].sum())
                total += int(keep.sum())
        means = torch.cat(means)
        result = {"test_kl": kl_total / means.shape[0]}
        if means.shape[0] >= 2:
            result["test_active_units"] = float(active_units(lambda batch: batch, means).count)
        if total:
            result["test_knn_accuracy"] = correct / total
        return result


class MemoryRefresh(Callback):
    """Re-encodes the training set into ``model.memory`` so that every epoch starts with codes
    of the current encoder: at the end of each epoch (before its checkpoints, so that they and
    the evaluation hold fresh codes) and at the start of an epoch whose memory is not fresh
    (the first one). ``model.memory_epoch`` records the epoch the memory is fresh for; it is in
    the checkpoints, so a run resumed mid-epoch keeps the memory it had, and continues exactly.

    The pass draws its dynamic binarization from a generator seeded with ``(seed, epoch)``, not
    from the data stream's, which it leaves untouched."""

    def __init__(self, model: ACN, data: Any, seed: int = 0) -> None:
        self.model, self.data, self.seed = model, data, seed

    def refresh(self, epoch: int) -> None:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        self.model.refresh_memory(self.data, generator)
        self.model.memory_epoch.fill_(epoch)

    def on_epoch_start(self, state: TrainState) -> None:
        if int(self.model.memory_epoch) != state.epoch:
            self.refresh(state.epoch)

    def on_epoch_end(self, state: TrainState, record: dict[str, float]) -> None:
        self.refresh(state.epoch + 1)


# -- the cost of the compression order ----------------------------------------------------------
@torch.no_grad()
def neighbour_chain(codes: torch.Tensor, start: int = 0) -> torch.Tensor:
    """A greedy nearest-neighbour order of ``codes`` ``(N, D)``: from row ``start``, each next
    row is the nearest (Euclidean) row not yet in the chain (ties: the lowest index).

    ``N`` steps of ``O(N D)`` each, memory ``O(N)``: no ``N x N`` matrix.

    :return: int64 ``(N,)``, a permutation of ``0 .. N - 1`` beginning with ``start``.
    """
    num = codes.shape[0]
    if not 0 <= start < num:
        raise ValueError(f"start must index one of the {num} codes, got {start}")
    order = torch.empty(num, dtype=torch.int64, device=codes.device)
    visited = torch.zeros(num, dtype=torch.bool, device=codes.device)
    current = torch.tensor(start, device=codes.device)
    for t in range(num):
        order[t] = current
        visited[current] = True
        if t + 1 < num:
            distance = (codes - codes[current]).pow(2).sum(-1).masked_fill(visited, float("inf"))
            current = distance.argmin()
    return order


@dataclass(frozen=True)
class ChainCost:
    """Per-datum code lengths (nats, ``(N,)`` tensors, in the data's order) of
    :func:`chain_coding_cost`, with ``order`` the transmission order (int64 ``(N,)``)."""

    order: torch.Tensor
    #: ``E_q[-log p(x_n | z)]``, the same in both codes
    reconstruction: torch.Tensor
    #: ``KL(q(z | x_n) || p(z | c_pred(n)))``; the first datum's against ``Normal(0, I)``
    kl_chain: torch.Tensor
    #: ``KL(q(z | x_n) || Normal(0, I))``
    kl_independent: torch.Tensor

    @property
    def chain_nats(self) -> float:
        """Nats per datum of the data set sent in ``order``."""
        return float((self.reconstruction + self.kl_chain).mean())

    @property
    def independent_nats(self) -> float:
        """Nats per datum of every datum coded on its own under ``Normal(0, I)``."""
        return float((self.reconstruction + self.kl_independent).mean())


@torch.no_grad()
def chain_coding_cost(
    model: ACN,
    x: torch.Tensor,
    *,
    num_samples: int = 10,
    generator: torch.Generator | None = None,
    start: int = 0,
    batch_size: int = 1000,
) -> ChainCost:
    """The ELBO code length of the data ``x`` ``(N, *input_shape)`` sent as a sequence in a
    nearest-neighbour chain order, beside the same data coded independently ([1] Sec. 2 and
    issue 15's "compression view").

    With ``c_n = mu_phi(x_n)`` the guide's mean codes, the order ``pi`` is
    :func:`neighbour_chain` ``(c, start)``, and datum ``pi_t`` costs (bits-back coding)::

        L_t = E_{q(z | x_n)}[-log p(x_n | z)] + KL(q(z | x_n) || p(z | c_{pi_{t-1}})),  n = pi_t

    with ``p(z | c_{pi_0}) := Normal(0, I)`` for the first; the independent code uses
    ``Normal(0, I)`` for every datum. The receiver decodes ``x_{pi_{t-1}}`` before ``x_{pi_t}``
    and re-encodes it to ``c_{pi_{t-1}}``, so the conditioning costs nothing; the order itself
    costs nothing when the data are a set (any order recovers the set; to restore the
    original order add ``log N!``). Both expectations are Monte Carlo estimates from the same
    ``num_samples`` draws ``z ~ q(z | x_n)`` per datum (the mixture prior's KL has no closed
    form): ``KL ~ mean_s [log q(z_s | x_n) - log p(z_s | c)]``.

    :return: :class:`ChainCost`: per-datum terms in the data's order, and ``order``.
    """
    if num_samples < 1:
        raise ValueError(f"num_samples must be a positive integer, got {num_samples}")
    device = model.prior_loc.device
    x = x.to(device)
    locs, scales = zip(
        *(model.encode(x[i : i + batch_size]) for i in range(0, x.shape[0], batch_size)),
        strict=True,
    )
    loc, scale = torch.cat(locs), torch.cat(scales)
    order = neighbour_chain(loc, start)
    first = order[0]
    predecessor = torch.full_like(order, -1)  # predecessor[n]: the datum sent just before n
    predecessor[order[1:]] = order[:-1]
    predecessor[first] = first  # a placeholder: the first datum's prior is Normal(0, I)
    reconstruction, kl_chain, kl_independent = [], [], []
    for i in range(0, x.shape[0], batch_size):
        rows = torch.arange(i, min(i + batch_size, x.shape[0]), device=device)
        q = dist.Normal(loc[rows], scale[rows]).to_event(1)
        eps = torch.randn(
            (num_samples, len(rows), model.latent_dim), generator=generator, dtype=loc.dtype
        ).to(device)
        z = loc[rows] + scale[rows] * eps
        log_q = q.log_prob(z)
        log_px = model.likelihood(model.decode_logits(z, x[rows])).log_prob(x[rows])
        log_p0 = model.prior().log_prob(z)
        log_pc = model.conditional_prior(loc[predecessor[rows]]).log_prob(z)
        log_pc = torch.where(rows == first, log_p0, log_pc)
        reconstruction.append(-log_px.mean(0))
        kl_chain.append((log_q - log_pc).mean(0))
        kl_independent.append((log_q - log_p0).mean(0))
    return ChainCost(
        order, torch.cat(reconstruction), torch.cat(kl_chain), torch.cat(kl_independent)
    )
