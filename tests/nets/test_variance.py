"""Variance layers (Neklyudov et al. 2019): the output's moments against the closed form
(mean bias, variance ``x^2 sigma^2``), the same law as explicit zero-mean weights, the bias
alone with the noise off, the ARD KL and its empirical-Bayes zero, test-time ensembling, and
the Pyro model of ``variance_lenet`` (its ELBO is the expected log-likelihood; importance
sampling is the ensemble). The generic model tests are in ``tests/models/test_suite.py``."""

from __future__ import annotations

import math

import pyro
import pyro.poutine as poutine
import pytest
import torch
from torch.distributions import Normal, kl_divergence
from torch.nn import functional as F

from pvae.evaluation.importance import log_importance_weights
from pvae.infer.objectives import ELBO
from pvae.models.registry import build_model
from pvae.models.variance_net import LAYER_NAMES
from pvae.nets.variance import ConvVariance, LinearVariance, ard_kl, ensemble_log_probs

DRAWS = 4000


def _z_scores_of_moments(samples: torch.Tensor, mean: torch.Tensor, variance: torch.Tensor):
    """z-scores of the sample mean and variance of ``samples`` ``(n, ...)`` against the
    Gaussian's ``mean`` and ``variance``: SE(mean) = sqrt(var / n), SE(var) = var sqrt(2/(n-1))."""
    n = samples.shape[0]
    samples = samples.double()
    mean, variance = mean.double(), variance.double()
    z_mean = (samples.mean(0) - mean) / (variance / n).sqrt()
    z_var = (samples.var(0) - variance) / (variance * math.sqrt(2 / (n - 1)))
    return z_mean, z_var


@pytest.mark.statistical
def test_linear_variance_output_moments_match_the_closed_form(seed):
    torch.manual_seed(seed)
    layer = LinearVariance(6, 5)
    with torch.no_grad():
        layer.bias.copy_(torch.linspace(-1, 1, 5))
    x = torch.randn(6)
    with torch.no_grad():
        out = layer(x.expand(DRAWS, 6))
    variance = (x**2) @ (layer.sigma**2).T
    z_mean, z_var = _z_scores_of_moments(out, layer.bias.detach(), variance.detach())
    # 10 z-scores of (nearly) normal statistics: |z| < 4.5 fails with probability < 1e-4
    assert z_mean.abs().max() < 4.5 and z_var.abs().max() < 4.5


@pytest.mark.statistical
def test_conv_variance_output_moments_match_the_closed_form(seed):
    torch.manual_seed(seed)
    layer = ConvVariance(2, 3, kernel_size=3)
    x = torch.randn(2, 4, 4)
    with torch.no_grad():
        out = layer(x.expand(DRAWS, 2, 4, 4))
        variance = torch.nn.functional.conv2d((x**2)[None], layer.sigma**2)[0]
    assert out.shape == (DRAWS, 3, 2, 2)
    # one output unit by hand: sum over its receptive field of x^2 sigma^2
    by_hand = ((x[:, 0:3, 1:4] ** 2) * layer.sigma[2] ** 2).sum()
    assert torch.allclose(variance[2, 0, 1], by_hand, rtol=1e-5)
    mean = layer.bias.detach()[:, None, None].expand(3, 2, 2)
    z_mean, z_var = _z_scores_of_moments(out, mean, variance)
    assert z_mean.abs().max() < 4.5 and z_var.abs().max() < 4.5


@pytest.mark.statistical
def test_local_reparameterisation_has_the_law_of_explicit_zero_mean_weights(seed):
    """x @ w^T with w = sigma * epsilon drawn per datum: the same mean and variance."""
    torch.manual_seed(seed)
    layer = LinearVariance(4, 3, bias=False)
    x = torch.randn(4)
    with torch.no_grad():
        weights = layer.sigma * torch.randn(DRAWS, 3, 4)
        explicit = (weights @ x).double()
        local = layer(x.expand(DRAWS, 4)).double()
    # difference of the variances of two independent samples, each with SE var sqrt(2/(n-1))
    variance = ((x**2) @ (layer.sigma**2).T).detach().double()
    se = variance * math.sqrt(2 * 2 / (DRAWS - 1))
    assert ((explicit.var(0) - local.var(0)).abs() / se).max() < 4.5
    assert ((explicit.mean(0) - local.mean(0)).abs() / (2 * variance / DRAWS).sqrt()).max() < 4.5


@pytest.mark.parametrize(
    "layer, x",
    [
        (LinearVariance(5, 4), torch.randn(7, 5)),
        (ConvVariance(2, 3, kernel_size=3, padding=1), torch.randn(7, 2, 5, 5)),
    ],
)
def test_with_the_noise_off_the_output_is_the_bias_alone(layer, x):
    with torch.no_grad():
        layer.bias.normal_()
    layer.stochastic = False
    out = layer(x)
    bias = layer.bias.reshape(layer.bias.shape + (1,) * (layer.event_dim - 1))
    assert torch.equal(out, bias.expand_as(out))
    assert torch.equal(layer(100 * x), out)  # whatever the input
    layer.stochastic = True
    assert not torch.equal(layer(x), out)


@pytest.mark.statistical
def test_an_output_variance_layer_cannot_beat_its_bias_in_expected_log_likelihood(seed):
    """log-softmax is concave and the logits' mean is the bias: E[log p(y)] <= log p_bias(y)."""
    torch.manual_seed(seed)
    layer = LinearVariance(8, 4)
    with torch.no_grad():
        layer.sigma.mul_(5.0)
        layer.bias.normal_()
    x = torch.randn(8)
    with torch.no_grad():
        log_p = torch.log_softmax(layer(x.expand(DRAWS, 8)), -1).double()  # (DRAWS, 4)
        at_bias = torch.log_softmax(layer.bias, -1).double()
    se = log_p.std(0) / math.sqrt(DRAWS)
    assert (log_p.mean(0) < at_bias + 4 * se).all()
    assert (log_p.mean(0) < at_bias).any()  # strictly below for some class: not vacuous


def test_noise_broadcasts_over_leading_particle_dims():
    layer = LinearVariance(5, 4)
    x = torch.randn(3, 5)
    noise = torch.randn(2, 3, 4)
    out = layer(x, noise)
    assert out.shape == (2, 3, 4)
    assert torch.allclose(out[1], layer(x, noise[1]))


def test_ard_kl_is_the_normal_kl_and_zero_at_the_empirical_bayes_prior():
    sigma = torch.tensor([0.3, -1.2, 2.0])  # the sign of sigma is irrelevant
    prior_scale = torch.tensor([1.0, 0.5, 2.0])
    expected = kl_divergence(Normal(0.0, sigma.abs()), Normal(0.0, prior_scale)).sum()
    assert torch.allclose(ard_kl(sigma, prior_scale), expected)
    assert ard_kl(sigma, sigma.abs()).abs() < 1e-7
    assert ard_kl(sigma) == 0  # lambda = |sigma|, the minimiser
    assert ard_kl(sigma, 1.0) > 0


def test_ensemble_log_probs_average_the_probabilities():
    logits = torch.randn(4, 3, 5)
    draws = iter(logits)
    log_probs = ensemble_log_probs(lambda x: next(draws), torch.zeros(3), num_samples=4)
    expected = torch.softmax(logits, -1).mean(0).log()
    assert torch.allclose(log_probs, expected, atol=1e-6)
    assert torch.allclose(log_probs.logsumexp(-1), torch.zeros(3), atol=1e-6)
    with pytest.raises(ValueError, match="num_samples"):
        ensemble_log_probs(lambda x: x, torch.zeros(3), num_samples=0)


SMALL = dict(channels=[2, 3], dense=8)


def _batch(n: int = 6):
    return torch.rand(n, 1, 28, 28), torch.randint(0, 10, (n,))


def test_variance_lenet_elbo_is_the_expected_log_likelihood():
    """Guide = prior on the whitened noise: the bound is log p(y | x, e) at the guide's e."""
    model = build_model("variance_lenet", **SMALL)
    x, y = _batch()
    guide_trace = poutine.trace(model.guide).get_trace(y, x)
    noise = {
        index: guide_trace.nodes[f"noise_{LAYER_NAMES[index]}"]["value"]
        for index in model.net.noise_shapes
    }
    assert sorted(noise) == [0, 1, 2]  # the default: the hidden layers
    expected = torch.log_softmax(model.net(x, noise), -1).gather(-1, y[:, None]).sum()
    # the ELBO runs the guide itself: replayed, both see the guide trace's noise
    value = ELBO()(
        poutine.replay(model.model, trace=guide_trace),
        poutine.replay(model.guide, trace=guide_trace),
        y,
        x,
    )
    assert torch.allclose(value.bound, expected, rtol=1e-5)


def test_variance_lenet_importance_weights_are_the_ensemble_members():
    """log w_k = log p(y | x, e_k) exactly (q = p on e): log-mean-exp is the K-ensemble."""
    model = build_model("variance_lenet", **SMALL).eval()
    x, y = _batch()
    pyro.set_rng_seed(3)
    log_w = log_importance_weights(model.model, model.guide, y, 4, x)
    assert log_w.shape == (4, 6)
    assert (log_w <= 0).all()  # log-probabilities of a label
    plain = build_model("variance_lenet", **SMALL, variance_layers=[]).eval()
    log_w = log_importance_weights(plain.model, plain.guide, y, 3, x)
    exact = torch.log_softmax(plain.net(x), -1).gather(-1, y[:, None])[:, 0]
    assert torch.allclose(log_w, exact.expand(3, 6), atol=1e-5)


def test_variance_lenet_with_the_noise_off_predicts_the_same_for_every_image():
    model = build_model("variance_lenet", **SMALL).eval()
    x, _ = _batch()
    with model.noise_off():
        log_probs = model.predict_log_probs(x)
    assert torch.allclose(log_probs, log_probs[:1].expand_as(log_probs))
    assert not torch.allclose(model.predict_log_probs(x), log_probs)


def test_variance_lenet_rejects_bad_options_and_labels():
    with pytest.raises(ValueError, match="variance_layers"):
        build_model("variance_lenet", variance_layers=[4])
    with pytest.raises(ValueError, match="variance_layers"):
        build_model("variance_lenet", variance_layers=[1, 1])
    model = build_model("variance_lenet", **SMALL)
    x, y = _batch()
    with pytest.raises(ValueError, match="labels"):
        model.model(y + 10, x)
    with pytest.raises(ValueError, match="labelled"):
        model.batch_args((x, torch.full_like(y, -1)))


def _authors_sgvlb(net, x, y, noise, num_data):
    """The authors' training loss (``lenet5-vn.py --var1 --var2 --var3`` with ``SGVLB`` of
    github.com/da-molchanov/variance-networks, transcribed): conv-BN-ReLU-pool twice, dense-BN-
    ReLU, the output layer without a bias; each variance layer
    ``eps * sqrt(1e-16 + conv(x^2, sigma^2))``, no bias; BN with batch statistics; the loss
    ``cross_entropy(log_softmax(logits)) * num_data`` (mean over the batch; no KL term)."""
    h = x
    for index in range(3):
        layer, norm = net.weights[index], net.norms[index]
        if index == 2:
            h = h.reshape(h.shape[0], -1)
            variance = F.linear(h * h, layer.sigma * layer.sigma)
        else:
            variance = F.conv2d(h * h, layer.sigma * layer.sigma)
        h = noise[index] * torch.sqrt(1e-16 + variance)
        h = F.batch_norm(h, None, None, norm.weight, norm.bias, training=True)
        h = torch.relu(h)
        if index < 2:
            h = F.max_pool2d(h, 2)
    logits = F.linear(h, net.weights[3].weight)
    return F.cross_entropy(F.log_softmax(logits, 1), y) * num_data


def test_variance_lenet_loss_and_gradients_are_the_authors_sgvlb():
    """With the same parameters and noise, the loss ``fit`` minimises (the negative ELBO, the
    data plate scaled by N / B) and its gradients equal the authors' SGVLB: the network, the
    bound and its scale are theirs (benchmarks/results/variance_layers.md, the side-by-side
    run). Our output layer has a bias where theirs has none: zeroed here."""
    model = build_model("variance_lenet", **SMALL)
    model.train()
    with torch.no_grad():
        model.net.weights[3].bias.zero_()
        for norm in model.net.norms:  # away from the (1, 0) initialisation, to be checked
            norm.weight.uniform_(0.5, 1.5)
            norm.bias.uniform_(-0.5, 0.5)
    x, y = _batch(8)
    num_data = 1000
    guide_trace = poutine.trace(model.guide).get_trace(y, x)
    noise = {
        index: guide_trace.nodes[f"noise_{LAYER_NAMES[index]}"]["value"]
        for index in model.net.noise_shapes
    }
    value = ELBO()(
        poutine.replay(model.model, trace=guide_trace),
        poutine.replay(model.guide, trace=guide_trace),
        y,
        x,
        num_data=num_data,
    )
    params = [p for name, p in model.named_parameters() if name != "net.weights.3.bias"]
    ours = torch.autograd.grad(value.loss, params)
    expected = _authors_sgvlb(model.net, x, y, noise, num_data)
    theirs = torch.autograd.grad(expected, params)
    assert torch.allclose(value.loss, expected, rtol=1e-5)
    for mine, reference in zip(ours, theirs, strict=True):
        assert reference.abs().max() > 0
        assert torch.allclose(mine, reference, rtol=1e-4, atol=1e-6 * reference.abs().max())
