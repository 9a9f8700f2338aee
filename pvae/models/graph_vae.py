"""Variational graph autoencoders: the Gaussian VGAE [1] and the hyperspherical S-VGAE [2].

One graph of ``N`` nodes with features ``X`` ``(N, F)`` and (training) adjacency ``A``; the
nodes fill the ``"data"`` plate. Generative story, with ``latent_dim = d``::

    z_i ~ p(z)                                   site "z", shape (N, d)
    A_ij | z ~ Bernoulli(sigmoid(z_i . z_j))     site "adjacency", shape (N, N): row i of
                                                 A + I is node i's observation (event dim N)

with ``p(z) = Normal(0, I_d)`` (``vgae``) or the uniform distribution on ``S^(d-1)``
(``svgae``). Guide: a two-layer graph convolutional encoder (:class:`~pvae.nets.GraphEncoder`,
``h = relu(A_hat X W_0)``) gives ``q(z_i | X, A) = Normal(mu_i, diag sigma_i^2)`` with
``mu = A_hat h W_mu``, ``log sigma = A_hat h W_sigma`` (``vgae``), or
``vMF(mu_i / |mu_i|, kappa_i)`` with ``kappa = softplus(A_hat h W_kappa) + 1`` (``svgae``,
the concentration as the S-VAE's [2]). The decoder has no parameters.

Training weights the edge likelihood as Kipf's gae code does: with ``S = sum(A)`` (both
directions, no self-loops) the positive entries of ``A + I`` get weight
``norm * pos_weight = N^2 / (2 S)`` and the others ``norm = N^2 / (2 (N^2 - S))``, so the two
classes weigh equally; the gae loss is this weighted negative ELBO divided by ``N^2`` (same
optimum, same Adam steps up to its epsilon). ``reweight=False`` trains the plain Bernoulli
likelihood. Evaluation (``eval_args``: the test NLL, any ``log p``) always scores the plain
Bernoulli likelihood, a proper ``log p(A + I | X)`` of the training graph.

Link prediction scores a node pair ``(i, j)`` by ``mu_i . mu_j`` with the guide's means (the
vMF's mean direction), as the gae code does (sigmoid of it: the same ranking); ``metrics``
reports the test AUC and average precision of held-out edges against held-out non-edges, and
``training_setup`` records the validation ones each epoch and keeps the epoch with the best
validation AUC.

Inputs of ``model``/``guide``: ``features`` ``(1, N, F)`` (``F = 0``: featureless) and
``edges`` ``(1, 2, E)`` int64 (each undirected training edge once): a batch of one graph of a
:class:`~pvae.data.graphs.GraphDataset`.

References:
    [1] T. N. Kipf, M. Welling. Variational Graph Auto-Encoders. NIPS Workshop on Bayesian
        Deep Learning, 2016. https://arxiv.org/abs/1611.07308, https://github.com/tkipf/gae
    [2] T. R. Davidson, L. Falorsi, N. De Cao, T. Kipf, J. M. Tomczak. Hyperspherical
        Variational Auto-Encoders. UAI 2018. https://arxiv.org/abs/1804.00891
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyro
import pyro.distributions as dist
import torch
from pyro.distributions import constraints
from torch.nn import functional as F

from pvae.distributions import HypersphericalUniform, VonMisesFisher
from pvae.models.base import Model, ModelConfig, ReportItem, flag, option
from pvae.models.registry import register_model
from pvae.nets.graph import GraphEncoder, normalized_adjacency

__all__ = ["SVGAE", "VGAE", "EdgeBernoulli", "GraphVAE", "GraphVAEConfig", "edge_weights"]


class EdgeBernoulli(dist.TorchDistribution):
    """Independent Bernoulli entries of adjacency rows, ``logits`` ``(..., N)`` (event dim
    ``N``), each entry's log-probability weighted by ``positive_weight`` where the value is 1
    and ``negative_weight`` where it is 0 (both 1: the plain Bernoulli likelihood).

    .. note:: with weights other than 1 ``log_prob`` is a weighted pseudo-likelihood (Kipf's
        class balancing), not a normalised density.
    """

    arg_constraints = {"logits": constraints.real}
    support = constraints.independent(constraints.boolean, 1)

    def __init__(
        self,
        logits: torch.Tensor,
        positive_weight: float = 1.0,
        negative_weight: float = 1.0,
        validate_args: bool | None = None,
    ) -> None:
        self.logits = logits
        self.positive_weight = float(positive_weight)
        self.negative_weight = float(negative_weight)
        super().__init__(logits.shape[:-1], logits.shape[-1:], validate_args=validate_args)

    def expand(self, batch_shape: Any, _instance: Any = None) -> EdgeBernoulli:
        new = self._get_checked_instance(EdgeBernoulli, _instance)
        batch_shape = torch.Size(batch_shape)
        new.logits = self.logits.expand(batch_shape + self.event_shape)
        new.positive_weight, new.negative_weight = self.positive_weight, self.negative_weight
        super(EdgeBernoulli, new).__init__(batch_shape, self.event_shape, validate_args=False)
        new._validate_args = self._validate_args
        return new

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        # Kipf's weighting is torch's pos_weight (positives' weight relative to negatives)
        # times norm; the support of ``value`` is not re-checked here: the model builds it.
        ratio = self.positive_weight / self.negative_weight
        cross_entropy = F.binary_cross_entropy_with_logits(
            self.logits,
            value.expand_as(self.logits),
            pos_weight=None if ratio == 1.0 else self.logits.new_tensor(ratio),
            reduction="none",
        )
        return cross_entropy.sum(-1) * -self.negative_weight

    def sample(self, sample_shape: torch.Size | tuple[int, ...] = ()) -> torch.Tensor:
        with torch.no_grad():
            return torch.bernoulli(
                torch.sigmoid(self.logits).expand(self._extended_shape(torch.Size(sample_shape)))
            )


def edge_weights(num_edges: int, num_nodes: int) -> tuple[float, float]:
    """Kipf's ``(norm * pos_weight, norm)``: the weights of the positive and negative entries
    for a graph of ``num_edges`` undirected edges (``S = 2 num_edges``) on ``num_nodes``."""
    entries, positives = num_nodes * num_nodes, 2 * num_edges
    if positives == 0:
        return 1.0, 1.0
    norm = entries / (2.0 * (entries - positives))
    return norm * (entries - positives) / positives, norm


@dataclass(frozen=True)
class GraphVAEConfig(ModelConfig):
    """Options of the graph VAEs (defaults: the gae code's)."""

    num_nodes: int = option(0, "nodes of the graph (set from the data)", convert=int)
    num_features: int = option(0, "node features (set from the data; 0: featureless)", convert=int)
    hidden: int = option(32, "units of the first graph convolution", convert=int)
    latent_dim: int = option(
        16, "d: latent dimensions (svgae: the sphere S^(d-1) in R^d)", convert=int
    )
    dropout: float = option(0.0, "dropout on the encoder's layer inputs", convert=float)
    reweight: bool = option(True, "train with Kipf's class-balanced edge likelihood", convert=flag)
    sample_nodes: int = option(32, "nodes of each graph that sample() draws", convert=int)

    def validate(self) -> None:
        if self.num_nodes < 1:
            raise ValueError(f"num_nodes must be >= 1 (the dataset sets it), got {self.num_nodes}")
        if self.num_features < 0:
            raise ValueError(f"num_features must be >= 0, got {self.num_features}")
        for name in ("hidden", "latent_dim", "sample_nodes"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")


class GraphVAE(Model):
    """Base of the graph VAEs (see the module docstring); a subclass gives the encoder's heads,
    the prior and the posterior."""

    Config = GraphVAEConfig
    config: GraphVAEConfig
    data_keys = ("num_nodes", "num_features")
    #: log p(A + I | X) of a whole graph: each sample materialises N x N logits, and with
    #: N x d latents per sample the importance weights of one graph are far from uniform, so
    #: K beyond a few tightens the bound little
    default_eval_samples = 10
    head_sizes: tuple[int, ...]

    def __init__(self, config: GraphVAEConfig | None = None, **options: Any) -> None:
        super().__init__(config, **options)
        config = self.config
        self.encoder = GraphEncoder(
            config.num_features,
            config.num_nodes,
            config.hidden,
            self._heads(config.latent_dim),
            config.dropout,
        )
        self.register_buffer("_anchor", torch.zeros(()))  # carries dtype and device

    # -- subclass hooks -------------------------------------------------------------------------
    def _heads(self, latent_dim: int) -> tuple[int, ...]:
        raise NotImplementedError

    def prior(self) -> dist.TorchDistribution:
        """``p(z_i)``, one node's latent."""
        raise NotImplementedError

    def posterior(self, heads: list[torch.Tensor]) -> dist.TorchDistribution:
        """``q(z_i | X, A)`` from the encoder's heads, batch shape ``(N,)``."""
        raise NotImplementedError

    def posterior_mean(self, heads: list[torch.Tensor]) -> torch.Tensor:
        """The node codes ``(N, d)`` that link prediction scores (the guide's means)."""
        raise NotImplementedError

    # -- the generative story -------------------------------------------------------------------
    def _graph(
        self, features: torch.Tensor, edges: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One graph's ``features (N, F)`` and ``edges (2, E)`` from a batch of one graph."""
        if features.dim() != 3 or features.shape[0] != 1 or edges.dim() != 3 or edges.shape[0] != 1:
            raise ValueError(
                "a graph VAE takes one graph: features (1, N, F) and edges (1, 2, E), got "
                f"{tuple(features.shape)} and {tuple(edges.shape)}"
            )
        features, edges = features[0], edges[0]
        if features.shape != (self.config.num_nodes, self.config.num_features):
            raise ValueError(
                f"features must be ({self.config.num_nodes}, {self.config.num_features}) for this "
                f"model, got {tuple(features.shape)}"
            )
        return features, edges

    def model(self, features: torch.Tensor, edges: torch.Tensor, reweight: bool = False) -> None:
        """p(A + I, z) = prod_i p(z_i) prod_ij Bernoulli(A_ij + I_ij; sigmoid(z_i . z_j)),
        Kipf's weighted likelihood with ``reweight``; ``features`` ``(1, N, F)``, ``edges``
        ``(1, 2, E)``."""
        features, edges = self._graph(features, edges)
        num_nodes = features.shape[0]
        target = self.adjacency_target(edges, num_nodes)
        weights = edge_weights(edges.shape[1], num_nodes) if reweight else (1.0, 1.0)
        with pyro.plate("data", num_nodes):
            z = pyro.sample("z", self.prior())
            logits = z @ z.transpose(-1, -2)
            pyro.sample("adjacency", EdgeBernoulli(logits, *weights), obs=target)

    def guide(self, features: torch.Tensor, edges: torch.Tensor, reweight: bool = False) -> None:
        """q(z | X, A) = prod_i q(z_i | X, A), from the graph convolutional encoder."""
        features, edges = self._graph(features, edges)
        heads = self.encoder(features, normalized_adjacency(edges, features.shape[0]))
        with pyro.plate("data", features.shape[0]):
            pyro.sample("z", self.posterior(heads))

    @staticmethod
    def adjacency_target(edges: torch.Tensor, num_nodes: int) -> torch.Tensor:
        """The dense ``A + I`` ``(N, N)`` that the decoder reconstructs (as the gae code)."""
        target = torch.eye(num_nodes, device=edges.device)
        target[edges[0], edges[1]] = 1.0
        target[edges[1], edges[0]] = 1.0
        return target

    # -- data -----------------------------------------------------------------------------------
    def batch_args(self, batch: Any) -> tuple:
        """``(features, edges, reweight)`` from a graph batch ``(features, edges, labels)``."""
        return (batch[0], batch[1], self.config.reweight)

    def eval_args(self, batch: Any) -> tuple:
        """``(features, edges)``: evaluation scores the plain Bernoulli likelihood."""
        return (batch[0], batch[1])

    def eval_datum_size(self, args: tuple) -> int:
        return int(args[0].shape[1]) ** 2

    # -- what a trained model offers ------------------------------------------------------------
    @torch.no_grad()
    def node_codes(self, features: torch.Tensor, edges: torch.Tensor) -> torch.Tensor:
        """The guide's means ``(N, d)`` (evaluation mode: no dropout), for one graph's
        ``features`` ``(N, F)`` and ``edges`` ``(2, E)``."""
        mode = self.training
        self.eval()
        try:
            heads = self.encoder(features, normalized_adjacency(edges, features.shape[0]))
            return self.posterior_mean(heads)
        finally:
            self.train(mode)

    def _codes_of(self, data: Any) -> torch.Tensor:
        device = self._anchor.device
        features, edges, _ = data.batch()
        return self.node_codes(features[0].to(device), edges[0].to(device))

    @torch.no_grad()
    def link_scores(self, data: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """``(scores, labels)`` of a split's held-out pairs: ``mu_i . mu_j`` (the decoder's
        logit at the guide's means), labels 1 for held-out edges, 0 for non-edges."""
        positive, negative = data.held_out()
        codes = self._codes_of(data)
        pairs = torch.cat([positive, negative]).to(codes.device)
        scores = (codes[pairs[:, 0]] * codes[pairs[:, 1]]).sum(-1)
        labels = torch.cat([torch.ones(len(positive)), torch.zeros(len(negative))])
        return scores.cpu(), labels

    def link_metrics(self, data: Any, prefix: str) -> dict[str, float]:
        """``{prefix_auc, prefix_ap}``: ROC AUC and average precision of the held-out pairs."""
        from pvae.evaluation.link_prediction import average_precision, roc_auc

        scores, labels = self.link_scores(data)
        return {
            f"{prefix}_auc": roc_auc(scores, labels),
            f"{prefix}_ap": average_precision(scores, labels),
        }

    def metrics(self, test: Any) -> dict[str, float]:
        """Test ROC AUC and average precision of link prediction (``test_auc``, ``test_ap``)."""
        return self.link_metrics(test, "test")

    def training_setup(self, train: Any, valid: Any = None, **options: Any) -> dict[str, Any]:
        """With a ``valid`` split: every epoch records ``valid_auc`` and ``valid_ap``, and the
        best checkpoint follows ``valid_auc`` (the validation split selects the epoch); no
        validation bound (the validation graph is the training graph)."""
        from pvae.infer.callbacks import ValidMetrics

        if valid is None:
            return {}
        return {
            "callbacks": [ValidMetrics(lambda: self.link_metrics(valid, "valid"))],
            "monitor": "valid_auc",
            # The validation graph is the training graph: its ELBO would repeat the epoch's.
            "valid_data": None,
        }

    def sample(self, num_samples: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``num_samples`` graphs of ``sample_nodes`` nodes from the prior, as edge
        probabilities ``sigmoid(z_i . z_j)``: ``(num_samples, 1, M, M)`` (images of adjacency
        matrices)."""
        nodes = self.config.sample_nodes
        z = self.prior_sample(num_samples * nodes, generator).reshape(num_samples, nodes, -1)
        return torch.sigmoid(z @ z.transpose(-1, -2)).unsqueeze(1)

    def prior_sample(
        self, num_samples: int, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        raise NotImplementedError

    def report_items(self, test: Any, out: Path, seed: int = 0) -> list[ReportItem]:
        """The node codes (guide means; PCA when ``d > 2``) coloured by node class, and the
        link-prediction numbers."""
        from pvae.figures import plot_latent_scatter

        codes = self._codes_of(test).cpu()
        labels = test.labels.cpu()
        known = labels >= 0
        plot_latent_scatter(codes[known], labels[known], out / "node_codes.png", title="Node codes")
        items = [ReportItem("Node codes (guide means, PCA), coloured by class", "node_codes.png")]
        if test.positive is not None:
            numbers = self.metrics(test)
            items.append(
                ReportItem(
                    "Link prediction",
                    text=(
                        "| split | pairs | AUC | AP |\n|---|---|---|---|\n"
                        f"| test | {len(test.positive)} + {len(test.negative)} | "
                        f"{numbers['test_auc']:.4f} | {numbers['test_ap']:.4f} |\n"
                    ),
                )
            )
        return items


_SMOKE = {"hidden": 8, "latent_dim": 4}


@register_model("vgae", smoke=_SMOKE, smoke_dataset="cora")
class VGAE(GraphVAE):
    """The variational graph autoencoder [1]: ``p(z_i) = Normal(0, I_d)``,
    ``q(z_i | X, A) = Normal(mu_i, diag sigma_i^2)``. Shapes: site ``"z"`` ``(N, d)``."""

    def __init__(self, config: GraphVAEConfig | None = None, **options: Any) -> None:
        super().__init__(config, **options)
        self.register_buffer("prior_loc", torch.zeros(self.config.latent_dim))

    def _heads(self, latent_dim: int) -> tuple[int, ...]:
        return (latent_dim, latent_dim)  # mu, log sigma

    def prior(self) -> dist.TorchDistribution:
        return dist.Normal(self.prior_loc, torch.ones_like(self.prior_loc)).to_event(1)

    def posterior(self, heads: list[torch.Tensor]) -> dist.TorchDistribution:
        loc, log_scale = heads
        return dist.Normal(loc, log_scale.exp()).to_event(1)

    def posterior_mean(self, heads: list[torch.Tensor]) -> torch.Tensor:
        return heads[0]

    def prior_sample(
        self, num_samples: int, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        anchor = self.prior_loc
        return torch.randn(
            num_samples, anchor.shape[0], generator=generator, dtype=anchor.dtype
        ).to(anchor.device)


@register_model("svgae", smoke={**_SMOKE, "latent_dim": 3}, smoke_dataset="cora")
class SVGAE(GraphVAE):
    """The hyperspherical variational graph autoencoder [2]: ``p(z_i)`` uniform on
    ``S^(d-1)``, ``q(z_i | X, A) = vMF(mu_i / |mu_i|, kappa_i)``. Shapes: site ``"z"``
    ``(N, d)``, rows of unit norm."""

    def _heads(self, latent_dim: int) -> tuple[int, ...]:
        if latent_dim < 2:
            raise ValueError(
                f"latent_dim of svgae is the sphere's ambient d and must be >= 2, got {latent_dim}"
            )
        return (latent_dim, 1)  # direction, concentration

    def prior(self) -> dist.TorchDistribution:
        return HypersphericalUniform(self.config.latent_dim, like=self._anchor)

    def posterior(self, heads: list[torch.Tensor]) -> dist.TorchDistribution:
        direction, concentration = heads
        return VonMisesFisher(
            self._direction(direction), F.softplus(concentration).squeeze(-1) + 1.0
        )

    @staticmethod
    def _direction(direction: torch.Tensor) -> torch.Tensor:
        """``direction / |direction|``; a zero row (an isolated node without features: the GCN
        has no bias, so its output is exactly 0) gets the first basis vector, as the mean
        direction is undefined there."""
        norm = torch.linalg.vector_norm(direction, dim=-1, keepdim=True)
        first = torch.zeros_like(direction)
        first[..., 0] = 1.0
        return torch.where(norm > 1e-12, direction / norm.clamp_min(1e-12), first)

    def posterior_mean(self, heads: list[torch.Tensor]) -> torch.Tensor:
        return self._direction(heads[0])

    def prior_sample(
        self, num_samples: int, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        g = torch.randn(
            num_samples, self.config.latent_dim, generator=generator, dtype=self._anchor.dtype
        )
        return (g / torch.linalg.vector_norm(g, dim=-1, keepdim=True)).to(self._anchor.device)
