"""The graph VAEs (vgae, svgae): one graph's node terms scaled by exactly 1, per-graph
importance weights, Kipf's weighted edge likelihood, link prediction learnt on a small
block-model graph, the ranking metrics, and training and evaluation from the command line."""

from __future__ import annotations

import json
import math

import numpy as np
import pyro
import pytest
import torch
from pyro.poutine.messenger import Messenger
from pyro.poutine.subsample_messenger import _Subsample

from pvae.cli import main as cli_main
from pvae.data.graphs import GraphDataset, link_split
from pvae.evaluation import log_likelihood
from pvae.evaluation.link_prediction import average_precision, roc_auc
from pvae.infer.objectives import ELBO
from pvae.infer.trace import per_datum_log_weights, trace_model_guide
from pvae.infer.train import fit
from pvae.models.graph_vae import SVGAE, VGAE, EdgeBernoulli, edge_weights
from pvae.models.registry import build_model


def block_graph(seed: int = 0, blocks: int = 3, per_block: int = 30, features: int = 5):
    """A stochastic block model: edges within a block with probability 0.3, across 0.01;
    features a noisy one-hot of the block. Returns the edges, features and block labels."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(blocks), per_block)
    n = len(labels)
    same = labels[:, None] == labels[None, :]
    draws = rng.random((n, n)) < np.where(same, 0.3, 0.01)
    edges = np.argwhere(np.triu(draws, 1))
    x = np.eye(blocks)[labels] @ rng.normal(size=(blocks, features)) + 0.5 * rng.normal(
        size=(n, features)
    )
    return edges, x.astype(np.float32), labels


def split_graph(seed: int = 0, featureless: bool = False) -> dict[str, GraphDataset]:
    edges, x, labels = block_graph(seed)
    split = link_split(edges, len(labels), seed)
    features = np.zeros((len(labels), 0), np.float32) if featureless else x
    return {
        "train": GraphDataset(features, split.train, labels),
        "valid": GraphDataset(
            features, split.train, labels, positive=split.valid, negative=split.valid_negative
        ),
        "test": GraphDataset(
            features, split.train, labels, positive=split.test, negative=split.test_negative
        ),
    }


# -- ranking metrics ---------------------------------------------------------------------------


def test_auc_and_average_precision_by_hand():
    # Ranking 0.9(+) 0.8(-) 0.7(+) 0.1(-): AUC = 3 of 4 pairs ordered; AP = (1 + 2/3) / 2.
    scores, labels = torch.tensor([0.9, 0.8, 0.7, 0.1]), torch.tensor([1, 0, 1, 0])
    assert roc_auc(scores, labels) == pytest.approx(0.75, abs=1e-15)
    assert average_precision(scores, labels) == pytest.approx((1 + 2 / 3) / 2, abs=1e-15)
    # Ties count one half in the AUC; tied scores form one threshold in AP.
    tied = torch.tensor([0.5, 0.5, 0.5, 0.5])
    assert roc_auc(tied, labels) == pytest.approx(0.5, abs=1e-15)
    assert average_precision(tied, labels) == pytest.approx(0.5, abs=1e-15)
    assert roc_auc(torch.tensor([1.0, 0.5, 0.5, 0.0]), labels) == pytest.approx(0.875, abs=1e-15)
    perfect = torch.tensor([3.0, 2.0, 1.0, 0.0]), torch.tensor([1, 1, 0, 0])
    assert roc_auc(*perfect) == 1.0 and average_precision(*perfect) == 1.0
    assert roc_auc(-perfect[0], perfect[1]) == 0.0
    with pytest.raises(ValueError, match="at least one positive and one negative"):
        roc_auc(scores, torch.ones(4))
    with pytest.raises(ValueError, match="0 \\(negative\\) or 1"):
        average_precision(scores, torch.tensor([2, 0, 1, 0]))


def test_auc_and_average_precision_match_scikit_learn():
    from sklearn import metrics  # a dev dependency: the cross-check runs in CI

    generator = torch.Generator().manual_seed(0)
    for trial in range(100):
        n = int(torch.randint(2, 50, (1,), generator=generator))
        labels = torch.randint(0, 2, (n,), generator=generator)
        labels[:2] = torch.tensor([0, 1])
        if trial % 2:  # many ties
            scores = torch.randint(0, 4, (n,), generator=generator).double()
        else:
            scores = torch.randn(n, generator=generator, dtype=torch.float64)
        assert roc_auc(scores, labels) == pytest.approx(
            metrics.roc_auc_score(labels.numpy(), scores.numpy()), abs=1e-12
        )
        assert average_precision(scores, labels) == pytest.approx(
            metrics.average_precision_score(labels.numpy(), scores.numpy()), abs=1e-12
        )


# -- the likelihood and the plate --------------------------------------------------------------


def test_edge_likelihood_is_kipfs_weighted_cross_entropy():
    generator = torch.Generator().manual_seed(1)
    n, num_edges = 7, 5
    logits = torch.randn(n, n, generator=generator, dtype=torch.float64)
    target = torch.eye(n, dtype=torch.float64)
    pairs = [(0, 1), (1, 2), (2, 5), (3, 4), (0, 6)]
    for i, j in pairs:
        target[i, j] = target[j, i] = 1.0
    # tkipf/gae: S = adj.sum() (no diagonal), pos_weight, norm; cost = norm * mean(wce).
    s = 2 * num_edges
    pos_weight = (n * n - s) / s
    norm = n * n / ((n * n - s) * 2)
    sigmoid = torch.sigmoid(logits)
    wce = target * -torch.log(sigmoid) * pos_weight + (1 - target) * -torch.log(1 - sigmoid)
    kipf_cost = norm * wce.mean()
    positive, negative = edge_weights(num_edges, n)
    assert (positive, negative) == pytest.approx((norm * pos_weight, norm), rel=1e-15)
    log_p = EdgeBernoulli(logits, positive, negative).log_prob(target)
    assert log_p.shape == (n,)
    assert -log_p.sum() / n**2 == pytest.approx(float(kipf_cost), rel=1e-12)
    # Unweighted: the Bernoulli log-likelihood.
    plain = torch.distributions.Bernoulli(logits=logits).log_prob(target).sum(-1)
    torch.testing.assert_close(EdgeBernoulli(logits).log_prob(target), plain)


class SiteScales(Messenger):
    """The final scale of every sample site, after every other handler."""

    def __init__(self):
        super().__init__()
        self.scales: dict[str, set[float]] = {}

    def _postprocess_message(self, msg):
        if msg["type"] == "sample" and not isinstance(msg["fn"], _Subsample):
            self.scales.setdefault(msg["name"], set()).add(float(msg["scale"]))


class RecordingELBO(ELBO):
    def __init__(self):
        super().__init__()
        self.steps = []

    def __call__(self, model, guide, *args, **kwargs):
        spy = SiteScales()
        with spy:
            value = super().__call__(model, guide, *args, **kwargs)
        if torch.is_grad_enabled():
            self.steps.append((value, spy.scales))
        return value


@pytest.mark.parametrize("name", ["vgae", "svgae"])
def test_one_graph_node_terms_are_scaled_by_exactly_one_in_training(name):
    data = split_graph()
    model = build_model(name, **data["train"].model_options(), hidden=8, latent_dim=3)
    objective = RecordingELBO()
    with pyro.settings.context(module_local_params=True):
        result = fit(
            model.model, model.guide, data["train"], objective=objective, epochs=3, progress=False
        )
    assert len(objective.steps) == 3  # one full-batch step per epoch
    for (value, scales), record in zip(objective.steps, result.history, strict=True):
        # Both the nodes' latents and their adjacency rows: scale exactly 1 (one unit).
        assert scales == {"z": {1.0}, "adjacency": {1.0}}
        assert value.loss.item() == -value.bound.item()
        assert record["train_bound"] == value.bound.item()


def test_evaluation_scores_the_graph_as_one_datum():
    data = split_graph()
    model = VGAE(**data["train"].model_options(), hidden=8, latent_dim=3)
    features, edges = model.eval_args(data["test"].batch())
    model_trace, guide_trace = trace_model_guide(
        model.model, model.guide, (features, edges), num_particles=4, max_plate_nesting=1
    )
    per_node = per_datum_log_weights(model_trace, guide_trace, max_plate_nesting=1)
    per_graph = per_datum_log_weights(model_trace, guide_trace, max_plate_nesting=1, num_units=1)
    assert per_node.shape == (4, 90) and per_graph.shape == (4, 1)
    torch.testing.assert_close(per_graph[:, 0], per_node.sum(1))
    with pytest.raises(ValueError, match="units \\(not their parts\\)"):
        per_datum_log_weights(model_trace, guide_trace, max_plate_nesting=1, num_units=2)
    # log p(A + I | X) of the graph: one value, at most the log-likelihood of a perfect guess.
    values = log_likelihood(model.model, model.guide, features, edges, num_samples=8, seed=0)
    assert values.shape == (1,) and math.isfinite(values.item()) and values.item() < 0


@pytest.mark.parametrize("name", ["vgae", "svgae"])
@pytest.mark.parametrize("featureless", [False, True])
def test_link_prediction_is_learnt_on_a_block_model(name, featureless):
    """On a 3-block stochastic block model (within 0.3, across 0.01), 150 full-batch epochs
    rank held-out edges nearly as well as the oracle that knows the blocks."""
    data = split_graph(seed=2, featureless=featureless)
    torch.manual_seed(0)
    model = build_model(name, **data["train"].model_options(), hidden=16, latent_dim=8)
    setup = model.training_setup(data["train"], data["valid"])
    with pyro.settings.context(module_local_params=True):
        result = fit(
            model.model, model.guide, data["train"], epochs=150, lr=0.01, progress=False, **setup
        )
    assert {"valid_auc", "valid_ap"} <= set(result.history[-1])
    after = model.metrics(data["test"])
    # The oracle that knows the blocks scores a pair 1 within a block and 0 across.
    positive, negative = data["test"].held_out()
    pairs = torch.cat([positive, negative])
    labels = data["test"].labels
    oracle = (labels[pairs[:, 0]] == labels[pairs[:, 1]]).double()
    truth = torch.cat([torch.ones(len(positive)), torch.zeros(len(negative))])
    best_auc, best_ap = roc_auc(oracle, truth), average_precision(oracle, truth)
    assert after["test_auc"] > best_auc - 0.05 and after["test_ap"] > best_ap - 0.1, (
        after,
        best_auc,
        best_ap,
    )
    codes = model.node_codes(data["test"].features, data["test"].edges.T)
    if name == "svgae":
        torch.testing.assert_close(codes.norm(dim=-1), torch.ones(len(codes)))


def test_an_isolated_node_without_features_has_a_code_on_the_sphere():
    """Citeseer has nodes with neither features nor training edges: the GCN (no bias) gives
    them exactly 0, and the vMF's mean direction must still be a unit vector."""
    features = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [0.0, 0.0]])
    graph = GraphDataset(features, [[0, 1], [1, 2]])
    torch.manual_seed(0)
    model = SVGAE(**graph.model_options(), hidden=4, latent_dim=3)
    codes = model.node_codes(graph.features, graph.edges.T)
    torch.testing.assert_close(codes[3], torch.tensor([1.0, 0.0, 0.0]))
    torch.testing.assert_close(codes.norm(dim=-1), torch.ones(4))
    value = ELBO()(model.model, model.guide, *model.batch_args(graph.batch()), num_data=1)
    value.loss.backward()
    assert torch.isfinite(value.loss)
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_samples_are_graphs_from_the_prior():
    model = SVGAE(num_nodes=10, num_features=0, latent_dim=3, sample_nodes=6)
    samples = model.sample(4, generator=torch.Generator().manual_seed(0))
    assert samples.shape == (4, 1, 6, 6)
    assert ((samples > 0) & (samples < 1)).all()
    torch.testing.assert_close(samples, samples.transpose(-1, -2))


def test_bad_inputs_are_clear_errors():
    with pytest.raises(ValueError, match="num_nodes must be >= 1"):
        VGAE()
    with pytest.raises(ValueError, match="must be >= 2"):
        SVGAE(num_nodes=5, latent_dim=1)
    model = VGAE(num_nodes=5, num_features=2)
    with pytest.raises(ValueError, match="one graph"):
        model.model(torch.zeros(5, 2), torch.zeros(2, 1, dtype=torch.int64))
    with pytest.raises(ValueError, match="features must be \\(5, 2\\)"):
        model.guide(torch.zeros(1, 4, 2), torch.zeros(1, 2, 1, dtype=torch.int64))


def test_train_and_evaluate_svgae_on_cora_from_the_command_line(tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["train", "--model", "svgae", "--dataset", "cora", "--epochs", "2", "--lr", "0.01"]
    assert cli_main([*argv, "--out", str(out), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "test_auc" in printed and "(K=10, 1 items)" in printed
    metrics = json.loads((out / "metrics.json").read_text())
    assert 0.5 < metrics["test_auc"] <= 1 and 0.5 < metrics["test_ap"] <= 1
    assert metrics["test_nll_stderr"] is None and metrics["eval_size"] == 1
    assert [r["epoch"] for r in metrics["history"]] == [1, 2]
    assert all("valid_auc" in r for r in metrics["history"])
    report = (out / "report.md").read_text()
    assert "node_codes.png" in report and "| test | 527 + 527 |" in report
    assert cli_main(["evaluate", str(out), "--no-progress"]) == 0
    evaluated = json.loads((out / "evaluation_test_K10.json").read_text())
    assert evaluated["test_auc"] == metrics["test_auc"]
    assert evaluated["nll"] == pytest.approx(metrics["test_nll"], rel=1e-6)
