"""Generic tests that every pvae distribution passes (one ``Fixture`` in conftest.py each).

Monte Carlo comparisons use a tolerance of ``Z = 5`` standard errors of the estimator (the
standard error estimated from the same samples): a correct implementation fails one such check
with probability about 6e-7 when the standard error comes from thousands of samples, and
about 2.5e-6 when it comes from the spread of 100 independent batches (Student's t with 99
degrees of freedom; 20 batches would give 8e-5). The whole suite (a few hundred checks) thus
fails by chance with probability below 1e-3 at any seed. These tests are marked
``statistical``; their seed is ``PVAE_TEST_SEED`` (tests/conftest.py).
"""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.distributions import constraints
from pyro.infer import RenyiELBO, Trace_ELBO, TraceMeanField_ELBO
from torch.distributions import kl_divergence

from pvae.distributions import HypersphericalUniform, log_sphere_area

Z = 5.0


def _flat_grad(output, leaves: dict, arg_constraints: dict):
    """Gradients as one vector; for unit-norm parameters only the tangent part is meaningful
    (samples are only defined on the sphere), so radial parts are projected out."""
    grads = torch.autograd.grad(output, list(leaves.values()), allow_unused=True)
    flat = []
    for (key, x), g in zip(leaves.items(), grads, strict=True):
        g = torch.zeros_like(x) if g is None else g
        if arg_constraints.get(key) is constraints.sphere:
            g = g - (g * x).sum(-1, keepdim=True) * x
        flat.append(g.flatten())
    return torch.cat(flat)


def _within(estimate, target, standard_error, slack=1e-9):
    estimate, target = torch.as_tensor(estimate), torch.as_tensor(target)
    bound = Z * torch.as_tensor(standard_error) + slack
    assert ((estimate - target).abs() <= bound).all(), (estimate, target, bound)


@pytest.mark.parametrize("sample_shape", [(), (3,), (2, 4)])
def test_shapes(fixture, sample_shape):
    sample_shape = torch.Size(sample_shape)
    for i in range(len(fixture.examples)):
        d, _ = fixture.make(i)
        full = sample_shape + d.batch_shape + d.event_shape
        assert d.sample(sample_shape).shape == full
        x = d.rsample(sample_shape)
        assert x.shape == full
        assert d.log_prob(x).shape == sample_shape + d.batch_shape
        expanded = d.expand([5] + list(d.batch_shape))  # a pyro.plate passes a list
        assert type(expanded) is type(d)
        assert expanded.batch_shape == (5,) + d.batch_shape
        y = expanded.rsample(sample_shape)
        assert y.shape == sample_shape + (5,) + d.batch_shape + d.event_shape
        assert expanded.log_prob(y).shape == sample_shape + (5,) + d.batch_shape


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_support(fixture, dtype):
    for i in range(len(fixture.examples)):
        d, _ = fixture.make(i, dtype=dtype)
        x = d.rsample((200,))
        assert x.dtype == dtype
        assert d.support.check(x).all()
        if fixture.on_sphere:
            assert (torch.linalg.vector_norm(x, dim=-1) - 1).abs().max() < 1e-6
        assert torch.isfinite(d.log_prob(x)).all()


def _sphere_integral(d, dim):
    """(estimate, standard error) of the integral of exp(log_prob) over the sphere."""
    batch_dims = (1,) * len(d.batch_shape)
    if dim == 2:
        angle = torch.arange(4096, dtype=torch.float64) * (2 * math.pi / 4096)
        x = torch.stack([angle.cos(), angle.sin()], -1)
        p = d.log_prob(x.view(-1, *batch_dims, 2)).exp()
        return p.mean(0) * 2 * math.pi, 0.0
    if dim == 3:
        import numpy as np

        t, wt = (torch.as_tensor(a) for a in np.polynomial.legendre.leggauss(400))
        phi = torch.arange(256, dtype=torch.float64) * (2 * math.pi / 256)
        s = torch.sqrt(1 - t * t)[:, None]
        x = torch.stack([t[:, None].expand(-1, 256), s * phi.cos(), s * phi.sin()], -1)
        p = d.log_prob(x.reshape(-1, *batch_dims, 3)).exp().reshape((400, 256) + d.batch_shape)
        weights = (wt * 2 * math.pi / 256).reshape((400,) + (1,) * (1 + len(d.batch_shape)))
        return (p * weights).sum((0, 1)), 0.0
    # Importance sampling with the uniform proposal.
    x = HypersphericalUniform(dim, dtype=torch.float64).sample((200_000,))
    ratio = (d.log_prob(x.view(-1, *batch_dims, dim)) + log_sphere_area(dim)).exp()
    return ratio.mean(0), ratio.std(0) / math.sqrt(ratio.size(0))


def _real_integral(d):
    batch_dims = (1,) * len(d.batch_shape)
    if not d.event_shape:
        grid = torch.linspace(-40, 40, 40001, dtype=torch.float64)
        p = d.log_prob(grid.view(-1, *batch_dims)).exp()
        return torch.trapezoid(p, grid, dim=0), 0.0
    proposal = dist.Normal(torch.zeros(d.event_shape, dtype=torch.float64), 4.0).to_event(1)
    x = proposal.sample((200_000,))
    ratio = (
        d.log_prob(x.view(-1, *batch_dims, *d.event_shape))
        - proposal.log_prob(x).view(-1, *batch_dims)
    ).exp()
    return ratio.mean(0), ratio.std(0) / math.sqrt(ratio.size(0))


@pytest.mark.statistical
def test_log_prob_normalizes(fixture):
    for i in fixture.normalization_examples:
        d, _ = fixture.make(i)
        if fixture.on_sphere:
            estimate, se = _sphere_integral(d, d.event_shape[0])
        else:
            estimate, se = _real_integral(d)
        # quadrature: exact to ~1e-8 for these smooth densities; importance sampling: Z SEs
        _within(estimate, torch.ones_like(estimate), se, slack=1e-6)


@pytest.mark.statistical
def test_sample_mean(fixture):
    for i in range(len(fixture.examples)):
        d, _ = fixture.make(i)
        x = d.sample((20_000,))
        _within(x.mean(0), d.mean, x.std(0) / math.sqrt(x.size(0)), slack=1e-12)


@pytest.mark.statistical
def test_pathwise_gradient_of_mean(fixture):
    """grad of the Monte Carlo mean of <a, x> vs grad of <a, E[x]> (analytic mean)."""
    generator = torch.Generator().manual_seed(1)
    for i in range(len(fixture.examples)):
        d, leaves = fixture.make(i, requires_grad=True)
        if not leaves:
            continue
        a = torch.randn(d.event_shape, generator=generator, dtype=torch.float64)
        target = _flat_grad((d.mean * a).sum(), leaves, d.arg_constraints)
        batches = []
        for _ in range(100):  # 100 independent batches give the estimator's standard error
            # rebuilt per batch: distributions such as Categorical(logits) precompute at init,
            # so their graph can be backpropagated through once
            d = fixture.build(**{**fixture.examples[i], **leaves})
            x = d.rsample((200,))
            batches.append(_flat_grad((x * a).sum() / 200, leaves, d.arg_constraints))
        batches = torch.stack(batches)
        _within(batches.mean(0), target, batches.std(0) / math.sqrt(100), slack=1e-7)


@pytest.mark.statistical
def test_entropy_monte_carlo(fixture):
    for i in range(len(fixture.examples)):
        d, _ = fixture.make(i)
        neg_lp = -d.log_prob(d.sample((20_000,)))
        _within(neg_lp.mean(0), d.entropy(), neg_lp.std(0) / math.sqrt(20_000), slack=1e-10)


@pytest.mark.statistical
def test_kl_to_uniform_monte_carlo(fixture):
    for i in range(len(fixture.examples)):
        d, _ = fixture.make(i)
        prior = HypersphericalUniform(d.event_shape[0], dtype=torch.float64)
        x = d.sample((20_000,))
        log_ratio = d.log_prob(x) - prior.log_prob(x)
        kl = kl_divergence(d, prior)
        assert kl.shape == d.batch_shape
        _within(log_ratio.mean(0), kl, log_ratio.std(0) / math.sqrt(20_000), slack=1e-10)


def test_bad_examples_raise(fixture):
    for params in fixture.bad_examples:
        with pytest.raises(ValueError):
            fixture.build(**params, validate_args=True)
        with pyro.validation_enabled(True), pytest.raises(ValueError):
            fixture.build(**params)  # validate_args=None follows Pyro's global switch


def _model_guide(fixture, to_event: bool):
    prior, _ = fixture.make(0)
    n_event_dims = len(prior.event_shape)
    data = torch.zeros(3, dtype=torch.float64)

    def guide_dist():
        # guide parameters are pyro.params so that every objective's loss_and_grads reaches them
        params = {
            key: pyro.param(f"guide_{key}", value.clone())
            if isinstance(value, torch.Tensor) and key != "like"
            else value
            for key, value in fixture.examples[0].items()
        }
        return fixture.build(**params)

    def likelihood(z):
        return dist.Normal(z.sum(-1) if n_event_dims else z, 1.0)

    if to_event:

        def model():
            z = pyro.sample("z", prior.expand([3]).to_event(1))
            pyro.sample("obs", likelihood(z).to_event(1), obs=data)

        def guide():
            pyro.sample("z", guide_dist().expand([3]).to_event(1))

    else:

        def model():
            with pyro.plate("data", 3):
                z = pyro.sample("z", prior.expand([3]))
                pyro.sample("obs", likelihood(z), obs=data)

        def guide():
            with pyro.plate("data", 3):
                pyro.sample("z", guide_dist().expand([3]))

    return model, guide


@pytest.mark.parametrize("to_event", [False, True], ids=["plate", "to_event"])
@pytest.mark.parametrize(
    "objective",
    [
        Trace_ELBO(),
        TraceMeanField_ELBO(),
        Trace_ELBO(num_particles=4, vectorize_particles=True),
        RenyiELBO(alpha=0.0, num_particles=4, vectorize_particles=True),  # IWAE bound
    ],
    ids=["Trace", "TraceMeanField", "Trace-vectorized", "IWAE"],
)
def test_pyro_inference(fixture, objective, to_event):
    model, guide = _model_guide(fixture, to_event)
    loss = objective.loss_and_grads(model, guide)
    assert math.isfinite(loss)
    for name, value in pyro.get_param_store().named_parameters():
        assert value.grad is not None and torch.isfinite(value.grad).all(), name
