"""Objectives on a linear-Gaussian model whose marginal likelihood and posterior are exact.

z ~ N(0, I_d), x | z ~ N(W z + b, s^2 I_p)  =>  x ~ N(b, W W^T + s^2 I),
p(z | x) = N(Sigma W^T (x - b) / s^2, Sigma),  Sigma = (I + W^T W / s^2)^-1.
"""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch

from pvae.evaluation import log_importance_weights, log_likelihood
from pvae.infer.objectives import ELBO, IWAE, PyroObjective, make_objective

D, P, S = 2, 4, 0.7
Z = 5.0  # Monte Carlo tolerances in standard errors; those tests are marked statistical


class LinearGaussian:
    def __init__(self, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.W = torch.randn(P, D, generator=g, dtype=torch.float64)
        self.b = torch.randn(P, generator=g, dtype=torch.float64)
        self.Sigma = torch.linalg.inv(torch.eye(D, dtype=torch.float64) + self.W.T @ self.W / S**2)
        # A learnable diagonal guide, started away from the posterior.
        self.A = torch.nn.Parameter(torch.zeros(P, D, dtype=torch.float64))
        self.log_sd = torch.nn.Parameter(torch.zeros(D, dtype=torch.float64))

    def model(self, x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(torch.zeros(D, dtype=x.dtype), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(z @ self.W.T + self.b, S).to_event(1), obs=x)

    def exact_guide(self, x):
        loc = (x - self.b) @ self.W @ self.Sigma.T / S**2
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.MultivariateNormal(loc, self.Sigma))

    def guide(self, x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal((x - self.b) @ self.A, self.log_sd.exp()).to_event(1))

    def log_marginal(self, x):
        cov = self.W @ self.W.T + S**2 * torch.eye(P, dtype=torch.float64)
        return dist.MultivariateNormal(self.b, cov).log_prob(x)

    def data(self, n, seed=1):
        g = torch.Generator().manual_seed(seed)
        z = torch.randn(n, D, generator=g, dtype=torch.float64)
        return z @ self.W.T + self.b + S * torch.randn(n, P, generator=g, dtype=torch.float64)


@pytest.fixture
def lg():
    return LinearGaussian()


def test_exact_posterior_guide_gives_exact_log_likelihood(lg):
    # With q = p(z | x) every importance weight equals p(x): zero variance, so any K is exact.
    x = lg.data(20)
    values = log_likelihood(lg.model, lg.exact_guide, x, num_samples=3)
    torch.testing.assert_close(values, lg.log_marginal(x), rtol=0, atol=1e-9)
    for objective in (ELBO(), ELBO(analytic_kl=False), IWAE(7), IWAE(7, "dreg")):
        value = objective(lg.model, lg.exact_guide, x)
        torch.testing.assert_close(value.bound, lg.log_marginal(x).sum(), rtol=0, atol=1e-8)


@pytest.mark.statistical
def test_importance_estimate_converges_with_standard_error(lg):
    x = lg.data(5)
    exact = lg.log_marginal(x)
    log_w = log_importance_weights(lg.model, lg.guide, x, 20000)
    assert log_w.shape == (20000, 5)
    # The estimator p_hat = mean_k w_k has relative standard error sd(w)/(mean(w) sqrt(K));
    # by the delta method log p_hat is within a few of those of log p(x).
    w = (log_w - exact).exp()
    rel_se = w.std(0) / math.sqrt(w.shape[0])
    estimate = log_likelihood(lg.model, lg.guide, x, num_samples=20000, sample_batch_size=3000)
    assert torch.all((estimate - exact).abs() < Z * rel_se + 1e-6)
    # A stochastic lower bound in expectation: K=1 (the ELBO) is below log p(x) on average,
    # by more than Z standard errors of the mean log weight.
    log_w_se = log_w.std(0) / math.sqrt(log_w.shape[0])
    assert (log_w.mean(0) + Z * log_w_se).lt(exact).all()


@pytest.mark.statistical
def test_bounds_are_ordered_in_k(lg):
    # E[L_1] <= E[L_5] <= E[L_50] <= log p(x) (Burda et al. Theorem 1); compare means over
    # repeated draws with Z standard errors of slack.
    x = lg.data(50)
    exact = lg.log_marginal(x).sum()
    means = []
    for k in (1, 5, 50):
        draws = torch.stack([IWAE(k)(lg.model, lg.guide, x).bound for _ in range(200)])
        means.append((draws.mean(), draws.std() / math.sqrt(len(draws))))
    (m1, s1), (m5, s5), (m50, s50) = means
    assert m1 < m5 + Z * math.hypot(s1, s5)
    assert m5 < m50 + Z * math.hypot(s5, s50)
    assert m50 < exact + Z * s50
    assert m1 + Z * math.hypot(s1, s50) < m50  # the gap here is many standard errors wide


@pytest.mark.statistical
def test_analytic_kl_matches_monte_carlo_elbo(lg):
    x = lg.data(30)
    analytic = torch.stack([ELBO()(lg.model, lg.guide, x).bound for _ in range(400)])
    mc = torch.stack([ELBO(analytic_kl=False)(lg.model, lg.guide, x).bound for _ in range(400)])
    se = math.hypot(analytic.std(), mc.std()) / math.sqrt(400)
    assert abs(analytic.mean() - mc.mean()) < Z * se


def _guide_grads(objective, lg, x, repeats):
    grads = []
    for _ in range(repeats):
        lg.A.grad = None
        lg.log_sd.grad = None
        objective(lg.model, lg.guide, x).loss.backward()
        grads.append(torch.cat([lg.A.grad.flatten(), lg.log_sd.grad.flatten()]))
    return torch.stack(grads)


@pytest.mark.statistical
def test_dreg_is_unbiased_and_less_noisy_than_iwae(lg):
    # Both estimate the gradient of the same IWAE bound: equal means within standard errors;
    # DReG's variance is lower (Tucker et al. 2018).
    x = lg.data(8)
    standard = _guide_grads(IWAE(10), lg, x, 600)
    dreg = _guide_grads(IWAE(10, "dreg"), lg, x, 600)
    se = (standard.var(0) / 600 + dreg.var(0) / 600).sqrt()
    assert torch.all((standard.mean(0) - dreg.mean(0)).abs() < Z * se + 1e-9)
    assert dreg.var(0).sum() < standard.var(0).sum()


def test_dreg_single_site_shortcut_matches_the_general_path(lg, monkeypatch):
    """One latent site: DReG scores it from the first guide trace instead of re-running the
    guide twice; with the same random draws the loss and gradients must be the same."""
    import pvae.infer.objectives as objectives

    x = lg.data(8)
    results = []
    for reuse in (True, False):
        monkeypatch.setattr(objectives, "_REUSE_SINGLE_SITE_TRACE", reuse)
        pyro.set_rng_seed(5)
        lg.A.grad = lg.log_sd.grad = None
        value = IWAE(6, "dreg")(lg.model, lg.guide, x)
        value.loss.backward()
        results.append((value.loss.detach(), lg.A.grad.clone(), lg.log_sd.grad.clone()))
    for shortcut, general in zip(*results, strict=True):
        torch.testing.assert_close(shortcut, general, rtol=1e-12, atol=1e-12)


def test_minibatch_scaling_only_touches_the_data_plate(lg):
    x = lg.data(10)
    elbo = ELBO()
    elbo(lg.model, lg.guide, x)  # the first call probes the model (and draws random numbers)
    pyro.set_rng_seed(3)
    unscaled = elbo(lg.model, lg.guide, x)
    pyro.set_rng_seed(3)
    scaled = elbo(lg.model, lg.guide, x, scale=7.0)
    torch.testing.assert_close(scaled.loss, 7.0 * unscaled.loss)
    torch.testing.assert_close(scaled.bound, unscaled.bound)


def test_pyro_objective_agrees_with_pvae_elbo(lg):
    x = lg.data(10)
    elbo = ELBO(analytic_kl=False)
    elbo(lg.model, lg.guide, x)  # the first call probes the model (and draws random numbers)
    pyro.set_rng_seed(5)
    ours = elbo(lg.model, lg.guide, x, scale=3.0)
    pyro.set_rng_seed(5)
    theirs = PyroObjective(pyro.infer.Trace_ELBO())(lg.model, lg.guide, x, scale=3.0)
    torch.testing.assert_close(ours.loss, theirs.loss)


def test_errors_are_clear(lg):
    with pytest.raises(ValueError, match="unknown objective"):
        make_objective("nope")
    with pytest.raises(ValueError, match="num_particles"):
        IWAE(0)

    def no_plate_model(x):
        pyro.sample("x", dist.Normal(0.0, 1.0).expand(x.shape).to_event(2), obs=x)

    def no_plate_guide(x):
        pass

    with pytest.raises(ValueError, match="plate named 'data'"):
        ELBO()(no_plate_model, no_plate_guide, lg.data(3))

    def discrete_guide(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Bernoulli(0.5 * torch.ones_like(x[:, :D])).to_event(1))

    with pytest.raises(ValueError, match="not reparameterizable"):
        ELBO()(lg.model, discrete_guide, lg.data(3))
