"""The Neural Statistician and the variational homoencoder: the per-set likelihood through
nested plates, the VHE bound against its definition, and few-shot classification."""

from __future__ import annotations

import math

import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
import pytest
import torch

from pvae.evaluation import log_importance_weights, log_likelihood
from pvae.infer.objectives import ELBO
from pvae.models.neural_statistician import HomoEncoder, NeuralStatistician


class LinearGaussianSets:
    """c ~ N(0, I_C); x_i = W c + b + s eps_i, i = 1..S, in plates ("data" over sets at dim -2,
    "elements" at dim -1). A set is jointly Gaussian: X ~ N(1_S (x) b, (1 1^T) (x) W W^T + s^2 I),
    and q(c | X) can be the exact posterior N(m, V), V = (I + S W^T W / s^2)^-1,
    m = V W^T sum_i (x_i - b) / s^2, or that posterior widened by ``widen``."""

    def __init__(self, c_dim: int = 2, x_dim: int = 3, s: float = 0.7, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.W = torch.randn(x_dim, c_dim, generator=g, dtype=torch.float64)
        self.b = torch.randn(x_dim, generator=g, dtype=torch.float64)
        self.s = s
        self.widen = 1.0

    def model(self, x: torch.Tensor) -> None:
        num_sets, set_size = x.shape[:2]
        c_dim = self.W.shape[1]
        with pyro.plate("data", num_sets, dim=-2):
            c = pyro.sample("c", dist.Normal(x.new_zeros(c_dim), 1.0).to_event(1))
            with pyro.plate("elements", set_size, dim=-1):
                loc = c @ self.W.T + self.b
                pyro.sample("x", dist.Normal(loc, self.s).to_event(1), obs=x)

    def posterior(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        set_size = x.shape[1]
        eye = torch.eye(self.W.shape[1], dtype=x.dtype)
        cov = torch.linalg.inv(eye + set_size * self.W.T @ self.W / self.s**2)
        mean = ((x - self.b).sum(1) @ self.W / self.s**2) @ cov.T
        return mean, cov

    def guide(self, x: torch.Tensor) -> None:
        mean, cov = self.posterior(x)
        with pyro.plate("data", x.shape[0], dim=-2):
            q = dist.MultivariateNormal(mean.unsqueeze(-2), self.widen**2 * cov)
            pyro.sample("c", q)

    def exact_log_marginal(self, x: torch.Tensor) -> torch.Tensor:
        num_sets, set_size, x_dim = x.shape
        ones = torch.ones(set_size, set_size, dtype=x.dtype)
        cov = torch.kron(ones, self.W @ self.W.T) + self.s**2 * torch.eye(set_size * x_dim)
        mvn = dist.MultivariateNormal(self.b.repeat(set_size), cov)
        return mvn.log_prob(x.reshape(num_sets, -1))


def _sets(model: LinearGaussianSets, num_sets: int, set_size: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    c = torch.randn(num_sets, 1, model.W.shape[1], generator=g, dtype=torch.float64)
    noise = torch.randn(num_sets, set_size, model.W.shape[0], generator=g, dtype=torch.float64)
    return c @ model.W.T + model.b + model.s * noise


def test_log_likelihood_of_sets_with_the_exact_posterior_is_exact():
    lg = LinearGaussianSets()
    x = _sets(lg, num_sets=6, set_size=4, seed=1)
    estimate = log_likelihood(lg.model, lg.guide, x, num_samples=3)
    assert torch.allclose(estimate, lg.exact_log_marginal(x), atol=1e-8)


@pytest.mark.statistical
def test_log_likelihood_of_sets_matches_the_multivariate_normal(seed):
    """With a widened posterior the importance weights vary; the estimate of each set's
    log p(X) lies within 5 standard errors (delta method: sd(w) / (sqrt(K) mean(w))) of the
    exact multivariate normal, plus the estimator's bias bound var(w)/(2 K mean(w)^2)."""
    lg = LinearGaussianSets()
    lg.widen = 1.5
    x = _sets(lg, num_sets=6, set_size=4, seed=seed + 1)
    num_samples = 4000
    log_w = log_importance_weights(lg.model, lg.guide, x, num_samples)  # (K, N)
    estimate = torch.logsumexp(log_w, 0) - math.log(num_samples)
    w = torch.exp(log_w - log_w.max(0).values)
    relative_sd = w.std(0) / w.mean(0)
    stderr = relative_sd / math.sqrt(num_samples)
    bias = relative_sd**2 / (2 * num_samples)
    error = (estimate - lg.exact_log_marginal(x)).abs()
    assert bool((error < 5 * stderr + bias).all()), (error, stderr)


TINY = dict(input_shape=(1, 6, 6), context_dim=3, latent_dim=2, latent_layers=2, hidden=8)


def _binary_sets(num_sets: int, set_size: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.bernoulli(torch.rand(num_sets, set_size, 1, 6, 6, generator=g) * 0.5, generator=g)


def test_the_vhe_bound_equals_its_definition():
    """log p(x | c, z) - KL_c / |X| - KL_z with one context per target, from the very draws
    that pvae's ELBO used (same seed), the KLs analytic as pvae's ELBO takes them."""
    with pyro.settings.context(module_local_params=True):
        torch.manual_seed(0)
        model = HomoEncoder(**TINY, support_size=2)
        x = _binary_sets(3, 5, seed=2)
        elbo = ELBO()
        elbo(model.vhe_model, model.vhe_guide, x)  # probes the plates once
        pyro.set_rng_seed(7)
        value = elbo(model.vhe_model, model.vhe_guide, x).bound
        pyro.set_rng_seed(7)
        guide_trace = poutine.trace(model.vhe_guide).get_trace(x)
        model_trace = poutine.trace(poutine.replay(model.vhe_model, trace=guide_trace)).get_trace(x)
    kl = torch.distributions.kl_divergence
    log_px = model_trace.nodes["x"]["fn"].log_prob(x).sum()
    kl_c = kl(guide_trace.nodes["c"]["fn"], model_trace.nodes["c"]["fn"]).sum()
    kl_z = sum(
        kl(guide_trace.nodes[name]["fn"], model_trace.nodes[name]["fn"]).sum()
        for name in ("z1", "z2")
    )
    expected = (log_px - kl_c / 5 - kl_z).detach()
    assert float(value) == pytest.approx(float(expected), rel=1e-5)


def test_the_vhe_support_never_holds_the_target():
    """The context of target i is inferred from other members only: changing x_i leaves the
    context of target i unchanged."""
    with pyro.settings.context(module_local_params=True):
        torch.manual_seed(0)
        model = HomoEncoder(**TINY, support_size=3)
        x = _binary_sets(2, 4, seed=3)
        changed = x.clone()
        changed[:, 0] = 1.0 - changed[:, 0]
        contexts = []
        for data in (x, changed):
            pyro.set_rng_seed(11)
            trace = poutine.trace(model.vhe_guide).get_trace(data)
            contexts.append(trace.nodes["c"]["fn"].base_dist.loc[:, 0])
    assert torch.equal(contexts[0], contexts[1])


def test_shared_context_model_scores_whole_sets():
    """The Neural Statistician's bound is per set: one context site of shape (B, 1, C) and
    element latents (B, S, Z); its importance-sampled log-likelihood has one value per set."""
    with pyro.settings.context(module_local_params=True):
        torch.manual_seed(0)
        model = NeuralStatistician(**TINY)
        x = _binary_sets(4, 3, seed=4)
        trace = poutine.trace(model.guide).get_trace(x)
        assert trace.nodes["c"]["value"].shape == (4, 1, 3)
        assert trace.nodes["z2"]["value"].shape == (4, 3, 2)
        values = log_likelihood(model.model, model.guide, x, num_samples=5)
    assert values.shape == (4,) and torch.isfinite(values).all()


@pytest.mark.parametrize("order", ["query_to_class", "class_to_query"])
def test_one_shot_query_equal_to_its_support_is_classified_as_its_class(order):
    """Algorithm 4 with one shot: a query identical to a class's only support member has
    KL 0 to that class's context (in either order), so it is assigned that class whatever
    the weights."""
    with pyro.settings.context(module_local_params=True):
        torch.manual_seed(0)
        model = NeuralStatistician(**TINY, few_shot_kl=order)
        support = _binary_sets(5, 1, seed=5)
        predicted = model.classify_episode(support, support[:, 0])
    assert torch.equal(predicted, torch.arange(5))


@pytest.mark.slow
def test_few_shot_benchmark_runs_in_its_smoke_setting(data_dir, tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[2] / "benchmarks" / "few_shot.py"
    out = tmp_path / "few_shot.md"
    done = subprocess.run(
        [sys.executable, str(script), "--smoke", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    table = out.read_text()
    for task in ("omniglot 5-way 1-shot", "MNIST 10-way 5-shot", "test NLL per set"):
        assert task in table


def test_sample_dropout_infers_the_context_from_a_random_subset_in_training_only():
    """With ``sample_dropout`` p the training guide's q(c | X) is the statistic network of the
    mean over a random non-empty subset of the members (each of the S - 1 members besides a
    kept one left out with probability p: on average 1 + (S - 1)(1 - p) members); in eval
    mode it is q(c | X) of the whole set, as ``context_posterior``."""
    import itertools

    with pyro.settings.context(module_local_params=True):
        torch.manual_seed(0)
        model = NeuralStatistician(**TINY, sample_dropout=0.5)
        x = _binary_sets(400, 4, seed=6)
        with torch.no_grad():
            h = model.features(model._flat(x))  # (N, S, H)
            masks = torch.tensor(
                [m for m in itertools.product((0.0, 1.0), repeat=4) if sum(m) > 0]
            )  # (15, S)
            means = (masks @ h) / masks.sum(-1, keepdim=True)  # (N, 15, H)
            subset_locs = model.statistic(means)[0]  # (N, 15, C)
            pyro.set_rng_seed(3)
            trained = poutine.trace(model.guide).get_trace(x).nodes["c"]["fn"].base_dist.loc
            distance = (trained[:, 0].unsqueeze(1) - subset_locs).abs().amax(-1)  # (N, 15)
            assert bool((distance.min(1).values < 1e-5).all())
            kept = masks.sum(-1)[distance.argmin(1)]
            assert float(kept.mean()) == pytest.approx(2.5, abs=0.25)
            assert float(kept.min()) == 1.0 and float(kept.max()) == 4.0
            model.eval()
            evaluated = poutine.trace(model.guide).get_trace(x).nodes["c"]["fn"].base_dist.loc
            assert torch.allclose(evaluated[:, 0], model.context_posterior(x).loc)
            # the bound stays finite with the subsets' contexts
            model.train()
            assert torch.isfinite(ELBO()(model.model, model.guide, x[:8]).bound)


def test_sample_dropout_is_a_probability_and_not_a_homoencoder_option():
    with pytest.raises(ValueError, match="sample_dropout"):
        NeuralStatistician(**TINY, sample_dropout=1.0)
    with pytest.raises(ValueError, match="sample_dropout"):
        HomoEncoder(**TINY, sample_dropout=0.5)


def test_few_shot_kl_orders_the_kl_of_algorithm_4():
    """``few_shot_kl`` picks argmin_k KL(q(c | x) || q(c | D_k)) or argmin_k
    KL(q(c | D_k) || q(c | x)): each equals its definition computed from the posteriors, and
    the two orders disagree on some queries of random sets."""
    kl = torch.distributions.kl_divergence
    with pyro.settings.context(module_local_params=True):
        predictions = {}
        for order in ("query_to_class", "class_to_query"):
            torch.manual_seed(0)
            model = NeuralStatistician(**TINY, few_shot_kl=order)
            support, query = _binary_sets(6, 3, seed=7), _binary_sets(200, 1, seed=8)[:, 0]
            predictions[order] = model.classify_episode(support, query)
            classes = model.context_posterior(support)
            queries = model.context_posterior(query.unsqueeze(1))
            qx = dist.Normal(queries.loc.unsqueeze(1), queries.scale.unsqueeze(1))
            qd = dist.Normal(classes.loc.unsqueeze(0), classes.scale.unsqueeze(0))
            pair = (qx, qd) if order == "query_to_class" else (qd, qx)
            assert torch.equal(predictions[order], kl(*pair).sum(-1).argmin(-1))
    assert not torch.equal(predictions["query_to_class"], predictions["class_to_query"])
    with pytest.raises(ValueError, match="few_shot_kl"):
        NeuralStatistician(**TINY, few_shot_kl="symmetric")


@pytest.mark.slow
def test_context_benchmark_runs_in_its_smoke_setting(data_dir, tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[2] / "benchmarks" / "ns_context.py"
    out = tmp_path / "ns_context.md"
    done = subprocess.run(
        [sys.executable, str(script), "--smoke", "--variants", "base,dropout", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    table = out.read_text()
    for heading in ("## base", "## dropout", "KL_c/set", r"5w1s KL(D\|\|x)", "5w1s ELBO"):
        assert heading in table


SMALL = dict(context_dim=3, latent_dim=2, latent_layers=1, hidden=8)


def test_report_draws_contexts_histograms_and_point_sets(tmp_path):
    """The report's figures of non-image sets: the synthetic sets' contexts coloured by
    family and histograms of drawn members; for 2-D points, test sets beside drawn sets."""
    from pvae.data.sets import SetDataset, build_synthetic_sets

    torch.manual_seed(0)
    synthetic = build_synthetic_sets((), "test", num_sets=24, set_size=30)
    model = NeuralStatistician(input_shape=(1,), likelihood="normal", **SMALL).eval()
    items = model.report_items(synthetic, tmp_path / "synthetic")
    assert [item.path for item in items] == ["contexts.png", "set_histograms.png"]
    assert "0 exponential" in items[0].title
    for item in items:
        assert (tmp_path / "synthetic" / item.path).stat().st_size > 1000

    points = torch.rand(12, 50, 2) * 28
    spatial = SetDataset(points, torch.arange(12) % 3, set_size=50, name="spatial_mnist/test")
    model = NeuralStatistician(input_shape=(2,), likelihood="normal", **SMALL).eval()
    items = model.report_items(spatial, tmp_path / "spatial")
    assert [item.path for item in items] == ["contexts.png", "point_sets.png"]
    # Omniglot-like sets (a label per set, more than 20 labels) get no context scatter.
    crowded = SetDataset(torch.rand(30, 5, 2), torch.arange(30), set_size=5)
    assert model.report_items(crowded, tmp_path / "crowded")[0].path == "point_sets.png"


def test_draws_differ_from_means_and_repeat_with_the_generator():
    """``draw=True`` samples p(x | c, z) (reproducibly given a generator); the default
    returns its means."""
    model = NeuralStatistician(input_shape=(2,), likelihood="normal", **SMALL).eval()
    sets = torch.randn(3, 10, 2)
    first = model.generate_like(sets, 6, torch.Generator().manual_seed(1), draw=True)
    again = model.generate_like(sets, 6, torch.Generator().manual_seed(1), draw=True)
    means = model.generate_like(sets, 6, torch.Generator().manual_seed(1))
    assert first.shape == means.shape == (3, 6, 2)
    assert torch.equal(first, again)
    assert not torch.allclose(first, means)
    prior = model.sample(4, torch.Generator().manual_seed(2), set_size=5, draw=True)
    assert prior.shape == (4, 5, 2)
