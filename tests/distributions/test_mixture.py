"""ReparameterizedMixture against Pyro's MixtureOfDiagNormals and analytic gradients.

Monte Carlo tolerances: Z = 5 standard errors, estimated from the same samples (see
test_generic.py).
"""

import math

import pyro.distributions as dist
import pytest
import scipy.stats
import torch
from torch.distributions import transforms

from pvae.distributions import ReparameterizedMixture

Z = 5.0


def _parameters(requires_grad=False):
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(3, generator=generator, dtype=torch.float64)
    locs = 2 * torch.randn(3, 4, generator=generator, dtype=torch.float64)
    scales = 0.5 + torch.rand(3, 4, generator=generator, dtype=torch.float64)
    return [t.requires_grad_(requires_grad) for t in (logits, locs, scales)]


def _ours(logits, locs, scales):
    return ReparameterizedMixture(
        dist.Categorical(logits=logits), dist.Normal(locs, scales).to_event(1)
    )


def test_log_prob_matches_mixture_of_diag_normals():
    logits, locs, scales = _parameters()
    pyro_mixture = dist.MixtureOfDiagNormals(locs, scales, logits)
    x = pyro_mixture.sample((100,))
    torch.testing.assert_close(_ours(logits, locs, scales).log_prob(x), pyro_mixture.log_prob(x))


def test_samples_match_mixture_of_diag_normals_in_distribution():
    logits, locs, scales = _parameters()
    ours = _ours(logits, locs, scales).rsample((20_000,)).detach()
    theirs = dist.MixtureOfDiagNormals(locs, scales, logits).rsample((20_000,)).detach()
    for j in range(4):  # two-sample Kolmogorov-Smirnov per coordinate
        assert scipy.stats.ks_2samp(ours[:, j].numpy(), theirs[:, j].numpy()).pvalue > 1e-4
    # the joint: the component structure shows up in the cross moments
    se = (ours[:, 0] * ours[:, 1]).std() * math.sqrt(2 / 20_000)
    diff = (ours[:, 0] * ours[:, 1]).mean() - (theirs[:, 0] * theirs[:, 1]).mean()
    assert diff.abs() <= Z * se


def _analytic_objective(logits, locs, scales, c):
    """E[sum_j c_j x_j^2 + x_j] for the mixture, in closed form."""
    weights = torch.softmax(logits, -1)
    second = ((locs**2 + scales**2) * c).sum(-1) + locs.sum(-1)
    return (weights * second).sum()


@pytest.mark.parametrize("which", ["ours", "pyro"])
def test_expected_gradients_match_analytic(which):
    """Both estimators are unbiased for the gradient in logits, locs and scales."""
    params = _parameters(requires_grad=True)
    c = torch.tensor([1.0, 0.5, -1.0, 2.0], dtype=torch.float64)
    target = torch.cat(
        [g.flatten() for g in torch.autograd.grad(_analytic_objective(*params, c), params)]
    )
    batches = []
    for _ in range(20):
        logits, locs, scales = params
        mixture = (
            _ours(*params) if which == "ours" else dist.MixtureOfDiagNormals(locs, scales, logits)
        )
        x = mixture.rsample((2000,))
        objective = ((x**2 * c) + x).sum(-1).mean()
        batches.append(torch.cat([g.flatten() for g in torch.autograd.grad(objective, params)]))
    batches = torch.stack(batches)
    assert ((batches.mean(0) - target).abs() <= Z * batches.std(0) / math.sqrt(20) + 1e-8).all()


def test_gradient_with_respect_to_logits_univariate():
    logits = torch.tensor([0.2, -0.5, 1.0], dtype=torch.float64, requires_grad=True)
    locs = torch.tensor([-3.0, 0.0, 2.0], dtype=torch.float64)
    scales = torch.tensor([1.0, 0.5, 2.0], dtype=torch.float64)
    exact = (torch.softmax(logits, -1) * (locs**2 + scales**2)).sum()
    (target,) = torch.autograd.grad(exact, logits)
    grads = []
    for _ in range(20):
        x = ReparameterizedMixture(
            dist.Categorical(logits=logits), dist.Normal(locs, scales)
        ).rsample((2000,))
        grads.append(torch.autograd.grad((x**2).mean(), logits)[0])
    grads = torch.stack(grads)
    assert ((grads.mean(0) - target).abs() <= Z * grads.std(0) / math.sqrt(20) + 1e-10).all()


def test_logistic_components_via_transformed_distribution():
    logits = torch.tensor([0.0, 1.0], dtype=torch.float64, requires_grad=True)
    locs = torch.tensor([-2.0, 3.0], dtype=torch.float64, requires_grad=True)
    scales = torch.tensor([0.5, 1.0], dtype=torch.float64)
    uniform = dist.Uniform(torch.zeros(2, dtype=torch.float64), torch.ones(2, dtype=torch.float64))
    logistic = dist.TransformedDistribution(
        uniform, [transforms.SigmoidTransform().inv, transforms.AffineTransform(locs, scales)]
    )
    target = torch.cat(
        torch.autograd.grad((torch.softmax(logits, -1) * locs).sum(), [logits, locs])
    )
    batches = []
    for _ in range(20):
        x = ReparameterizedMixture(dist.Categorical(logits=logits), logistic).rsample((1000,))
        batches.append(torch.cat(torch.autograd.grad(x.mean(), [logits, locs])))
    batches = torch.stack(batches)
    assert ((batches.mean(0) - target).abs() <= Z * batches.std(0) / math.sqrt(20) + 1e-10).all()


def test_vectorized_particles_and_batches():
    logits = torch.zeros(2, 3, dtype=torch.float64)
    locs = torch.randn(2, 3, 5, dtype=torch.float64, requires_grad=True)
    mixture = ReparameterizedMixture(
        dist.Categorical(logits=logits), dist.Normal(locs, 1.0).to_event(1)
    )
    x = mixture.expand([4, 2]).rsample((7,))
    assert x.shape == (7, 4, 2, 5)
    x.sum().backward()
    assert torch.isfinite(locs.grad).all()
