"""Tests specific to the spherical families (VonMisesFisher, PowerSpherical).

Monte Carlo tolerances: Z = 5 standard errors, estimated from the same samples (see
test_generic.py); gradient standard errors from 50 independent batches (a correct estimator
fails one check with probability about 8e-6; with 10 batches it would be 7e-4).
"""

import math

import mpmath
import pyro
import pyro.distributions as dist
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pyro.infer import TraceMeanField_ELBO
from torch.distributions import kl_divergence

import pvae.distributions.von_mises_fisher as vmf_module
from pvae.distributions import (
    HypersphericalUniform,
    PowerSpherical,
    VonMisesFisher,
    bessel_iv_ratio,
)

Z = 5.0
SPHERICAL = [VonMisesFisher, PowerSpherical]


def _unit(d, seed=0, dtype=torch.float64):
    x = torch.randn(d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return (x / x.norm()).to(dtype)


def test_vmf_d3_matches_closed_form_and_pyro_von_mises_3d():
    loc, kappa = _unit(3), torch.tensor(7.5, dtype=torch.float64)
    x = VonMisesFisher(loc, 1.0).sample((50,))
    ours = VonMisesFisher(loc, kappa).log_prob(x)
    closed = torch.log(kappa / (4 * math.pi * torch.sinh(kappa))) + kappa * (x @ loc)
    torch.testing.assert_close(ours, closed)
    torch.testing.assert_close(ours, dist.VonMises3D(kappa * loc).log_prob(x))


def test_vmf_d2_matches_von_mises_on_the_circle():
    angle, kappa = torch.tensor(0.7, dtype=torch.float64), torch.tensor(3.0, dtype=torch.float64)
    theta = torch.linspace(-3, 3, 13, dtype=torch.float64)
    x = torch.stack([theta.cos(), theta.sin()], -1)
    loc = torch.stack([angle.cos(), angle.sin()])
    expected = torch.distributions.VonMises(angle, kappa).log_prob(theta)
    torch.testing.assert_close(VonMisesFisher(loc, kappa).log_prob(x), expected)


@pytest.mark.statistical
@pytest.mark.parametrize("d", [2, 3, 5, 10, 64])
@pytest.mark.parametrize("kappa", [0.3, 4.0, 60.0])
def test_vmf_concentration_gradient_matches_derivative_of_mean_resultant_length(d, kappa):
    """d/dkappa E[w] = A_d'(kappa) = 1 - A^2 - (d - 1) A / kappa (implicit gradient unbiased)."""
    concentration = torch.tensor(kappa, dtype=torch.float64, requires_grad=True)
    loc = _unit(d)
    grads = []
    for _ in range(50):  # 50 batches give the standard error
        w = VonMisesFisher(loc, concentration).rsample((400,)) @ loc
        (g,) = torch.autograd.grad(w.mean(), concentration)
        grads.append(g)
    grads = torch.stack(grads)
    a = bessel_iv_ratio(d / 2 - 1, torch.tensor(kappa, dtype=torch.float64))
    expected = 1 - a * a - (d - 1) * a / kappa
    assert (grads.mean() - expected).abs() <= Z * grads.std() / math.sqrt(50) + 1e-10


def _second_moment_of_w(cls, d, kappa):
    if cls is VonMisesFisher:
        return 1 - (d - 1) * bessel_iv_ratio(d / 2 - 1, kappa) / kappa
    a, b = (d - 1) / 2 + kappa, (d - 1) / 2
    ez = a / (a + b)
    ez2 = a * (a + 1) / ((a + b) * (a + b + 1))
    return 4 * ez2 - 4 * ez + 1


@pytest.mark.statistical
@pytest.mark.parametrize("cls", SPHERICAL)
def test_pathwise_gradient_of_nonlinear_function(cls):
    """E[<a, x>^2] = E[w^2] <a, mu>^2 + (1 - E[w^2]) (|a|^2 - <a, mu>^2) / (d - 1): its gradient
    in (mu, kappa) by autograd vs the pathwise Monte Carlo gradient."""
    d = 5
    raw = _unit(d, seed=3).requires_grad_()  # loc = raw / |raw| keeps loc on the sphere
    concentration = torch.tensor(3.0, dtype=torch.float64, requires_grad=True)
    a = torch.arange(1.0, d + 1, dtype=torch.float64)
    loc = raw / raw.norm()
    m2 = _second_moment_of_w(cls, d, concentration)
    cos = a @ loc
    exact = m2 * cos**2 + (1 - m2) * (a @ a - cos**2) / (d - 1)
    target = torch.cat([g.flatten() for g in torch.autograd.grad(exact, [raw, concentration])])
    batches = []
    for _ in range(50):
        x = cls(raw / raw.norm(), concentration).rsample((800,))
        grads = torch.autograd.grad(((x @ a) ** 2).mean(), [raw, concentration])
        batches.append(torch.cat([g.flatten() for g in grads]))
    batches = torch.stack(batches)
    assert ((batches.mean(0) - target).abs() <= Z * batches.std(0) / math.sqrt(50) + 1e-8).all()


@pytest.mark.statistical
def test_vmf_kl_to_vmf_monte_carlo():
    p = VonMisesFisher(_unit(4, 1), torch.tensor(6.0, dtype=torch.float64))
    q = VonMisesFisher(_unit(4, 2), torch.tensor(2.0, dtype=torch.float64))
    x = p.sample((40_000,))
    log_ratio = p.log_prob(x) - q.log_prob(x)
    assert (log_ratio.mean() - kl_divergence(p, q)).abs() <= Z * log_ratio.std() / 200
    assert kl_divergence(p, p).abs() < 1e-10


@pytest.mark.parametrize("cls", SPHERICAL)
def test_trace_mean_field_uses_closed_form_kl(cls):
    """With no likelihood, TraceMeanField_ELBO's loss is exactly KL(q || uniform prior)."""
    q = cls(_unit(6).expand(3, 6), torch.tensor([0.5, 5.0, 500.0], dtype=torch.float64))

    def model():
        with pyro.plate("data", 3):
            pyro.sample("z", HypersphericalUniform(6, like=q.loc).expand([3]))

    def guide():
        with pyro.plate("data", 3):
            pyro.sample("z", q)

    loss = TraceMeanField_ELBO().differentiable_loss(model, guide)
    prior = HypersphericalUniform(6, like=q.loc)
    torch.testing.assert_close(loss, kl_divergence(q, prior).sum())


def test_vmf_entropy_limits_against_mpmath():
    mpmath.mp.dps = 50
    for d in [3, 10, 128]:
        for kappa in [1e-4, 1.0, 1e3, 1e6]:
            nu, k = mpmath.mpf(d) / 2 - 1, mpmath.mpf(kappa)
            log_c = nu * mpmath.log(k) - (mpmath.mpf(d) / 2) * mpmath.log(2 * mpmath.pi)
            log_c -= mpmath.log(mpmath.besseli(nu, k))
            a = mpmath.besseli(nu + 1, k) / mpmath.besseli(nu, k)
            reference = float(-log_c - k * a)
            ours = VonMisesFisher(_unit(d), torch.tensor(kappa, dtype=torch.float64)).entropy()
            assert abs(ours.item() - reference) <= 1e-9 * max(1.0, abs(reference))


@pytest.mark.parametrize("cls", SPHERICAL)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("d", [2, 3, 10, 128, 1024])
def test_stability_grid(cls, dtype, d):
    """Finite samples on the sphere, log_probs, entropies, KLs and gradients for kappa from
    1e-4 to 1e6."""
    kappas = torch.tensor([1e-4, 1e-2, 1.0, 1e2, 1e4, 1e6], dtype=dtype, requires_grad=True)
    loc = _unit(d, dtype=dtype).expand(6, d).clone().requires_grad_()
    q = cls(loc, kappas)
    x = q.rsample((16,))
    assert x.dtype == dtype and torch.isfinite(x).all()
    assert (torch.linalg.vector_norm(x, dim=-1) - 1).abs().max() < 1e-6
    log_prob = q.log_prob(x)
    kl = kl_divergence(q, HypersphericalUniform(d, like=loc))
    assert torch.isfinite(log_prob).all() and torch.isfinite(kl).all() and (kl > -1e-4).all()
    assert torch.isfinite(q.entropy()).all()
    loss = (x * torch.arange(d, dtype=dtype)).sum() + log_prob.sum() + kl.sum()
    grad_loc, grad_kappa = torch.autograd.grad(loss, [loc, kappas])
    assert torch.isfinite(grad_loc).all() and torch.isfinite(grad_kappa).all()
    # log_prob(mode) >= log_prob(samples), and the concentrated cases put samples near the mode
    assert (
        q.log_prob(loc.detach())
        >= log_prob.detach().max(0).values - 1e-3 * log_prob.abs().max(0).values
    ).all()


def test_rejection_cap_raises(monkeypatch):
    monkeypatch.setattr(vmf_module, "_MAX_REJECTION_ROUNDS", 0)
    with pytest.raises(RuntimeError, match="still rejected"):
        VonMisesFisher(_unit(5), 2.0).sample((4,))


def test_validation_off_accepts_non_unit_loc_but_shape_errors_always_raise():
    with pyro.validation_enabled(False):
        VonMisesFisher(torch.tensor([2.0, 0.0, 0.0]), 1.0)
        with pytest.raises(ValueError, match="d >= 2"):
            VonMisesFisher(torch.tensor([1.0]), 1.0)
        with pytest.raises(ValueError, match="concentration"):
            VonMisesFisher(torch.eye(3)[:2], torch.ones(3))


def test_error_messages_name_the_parameter():
    with pytest.raises(ValueError, match="loc"):
        VonMisesFisher(torch.tensor([1.0, 1.0]), 1.0, validate_args=True)
    with pytest.raises(ValueError, match="concentration"):
        VonMisesFisher(torch.tensor([1.0, 0.0]), -1.0, validate_args=True)


@settings(
    max_examples=25,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    cls=st.sampled_from(SPHERICAL),
    d=st.integers(2, 40),
    log_kappa=st.floats(-3, 5),
    seed=st.integers(0, 2**16),
    batch=st.integers(1, 3),
)
def test_property_valid_parameters(cls, d, log_kappa, seed, batch):
    torch.manual_seed(seed)
    loc = torch.nn.functional.normalize(torch.randn(batch, d, dtype=torch.float64), dim=-1)
    q = cls(loc, torch.full((batch,), 10.0**log_kappa, dtype=torch.float64), validate_args=True)
    x = q.rsample((8,))
    assert x.shape == (8, batch, d)
    assert (x.norm(dim=-1) - 1).abs().max() < 1e-12
    assert torch.isfinite(q.log_prob(x)).all() and torch.isfinite(q.entropy()).all()
    assert (q.log_prob(x) <= q.log_prob(loc) + 1e-9).all()


@settings(
    max_examples=25,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    cls=st.sampled_from(SPHERICAL),
    d=st.integers(2, 40),
    scale=st.one_of(st.floats(0.0, 0.99), st.floats(1.01, 10.0)),
    kappa=st.one_of(st.floats(-10.0, 0.0), st.just(float("nan")), st.floats(0.1, 10.0)),
)
def test_property_invalid_parameters_raise(cls, d, scale, kappa):
    loc = scale * _unit(d)
    with pytest.raises(ValueError):
        cls(loc, torch.tensor(kappa, dtype=torch.float64), validate_args=True)


@pytest.mark.parametrize("cls", SPHERICAL)
@pytest.mark.parametrize("d", [3, 5])
def test_infinite_concentration_is_refused_by_validation(cls, d):
    # kappa = inf made log_prob, entropy and the kappa gradient NaN under validation.
    for kappa in (float("inf"), [1.0, float("inf")]):
        with pytest.raises(ValueError, match="concentration"):
            cls(_unit(d), torch.tensor(kappa, dtype=torch.float64), validate_args=True)
    constraint = cls.arg_constraints["concentration"]
    values = torch.tensor(
        [float("inf"), 1e300, 1e-300, 0.0, -1.0, float("nan")], dtype=torch.float64
    )
    assert constraint.check(values).tolist() == [False, True, True, False, False, False]
    # A constrained pyro.param / PyroParam is parametrized as under constraints.positive.
    transform = torch.distributions.transform_to(constraint)
    assert constraint.check(transform(torch.tensor([-50.0, 0.0, 50.0]))).all()
