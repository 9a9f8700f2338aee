"""Tests specific to the spherical families (VonMisesFisher, PowerSpherical).

Monte Carlo tolerances: Z = 5 standard errors, estimated from the same samples (see
test_generic.py); gradient standard errors from 50 independent batches (a correct estimator
fails one check with probability about 8e-6; with 10 batches it would be 7e-4).
"""

import functools
import math

import mpmath
import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import scipy.stats
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pyro.distributions import constraints
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


def _torch_namespace(monkeypatch):
    """Force the torch code path of the per-sample scalar computations (the one CUDA takes):
    torch arrays, no compiled kernels."""
    monkeypatch.setattr(vmf_module, "_namespace", lambda t: torch)
    monkeypatch.setattr(vmf_module, "_kernels", lambda: None)


def _use_path(path: str, monkeypatch) -> None:
    """CPU code paths of the vMF: "compiled" (numba kernels, the default), "numpy" (the array
    code in numpy, as without numba) or "torch" (the array code in torch, as on CUDA)."""
    if path == "torch":
        _torch_namespace(monkeypatch)
    elif path == "numpy":
        monkeypatch.setattr(vmf_module, "_kernels", lambda: None)
    else:
        assert vmf_module._kernels() is not None  # numba is a dependency


PATHS = ["compiled", "numpy", "torch"]
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
    for d in [3, 10, 128]:
        for kappa in [1e-4, 1.0, 1e3, 1e6]:
            with mpmath.workdps(50):  # scoped: other tests keep mpmath's default precision
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


@pytest.mark.parametrize("path", PATHS)
def test_rejection_cap_raises(path, monkeypatch):
    _use_path(path, monkeypatch)
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


# --- fast paths against the slow exact forms they replaced, on the same draws ---


def _reference_dw_dkappa(y, kappa, d):
    """The per-node quadrature that ``_implicit_dw_dkappa`` replaced (pvae before issue 23)."""
    value, _ = _reference_dw_dkappa_and_scale(y, kappa, d)
    return value


def _reference_dw_dkappa_and_scale(y, kappa, d, nodes=None):
    """The per-node quadrature and the sum of the absolute values of its terms (the size of
    the rounding errors of any summation order, where the terms cancel); ``nodes``
    Gauss-Legendre nodes (default 32 for d <= 128, else 64)."""
    nodes = nodes if nodes is not None else (32 if d <= 128 else 64)
    tau, weights = vmf_module._gauss_legendre_unit(nodes, y.device)
    one_minus_mean = 1 - bessel_iv_ratio(d / 2 - 1, kappa)
    top = y <= 1
    delta = torch.where(top, y, 2 - y)
    sign = torch.where(top, 1.0, -1.0).double()
    tau2 = tau * tau
    s_minus_mean = (one_minus_mean - 2 * (~top)).unsqueeze(-1) - sign.unsqueeze(-1) * (
        delta.unsqueeze(-1) * tau2
    )
    log_ratio = (kappa * sign * delta).unsqueeze(-1) * (1 - tau2) + (
        (d - 2) * torch.log(tau) + (torch.log(2 * delta)).unsqueeze(-1)
    )
    if d != 3:
        log_ratio = log_ratio + 0.5 * (d - 3) * torch.log1p(
            (delta / (2 - delta)).unsqueeze(-1) * (1 - tau2)
        )
    terms = torch.exp(log_ratio) * s_minus_mean * weights
    return sign * terms.sum(-1), terms.abs().sum(-1)


@pytest.mark.parametrize("d", [5, 64, 512])
@pytest.mark.parametrize("kappa", [0.3, 4.0, 100.0, 1e4])
@pytest.mark.parametrize("path", PATHS)
def test_implicit_gradient_matches_per_node_quadrature(d, kappa, path, monkeypatch):
    _use_path(path, monkeypatch)
    torch.manual_seed(0)
    kappas = torch.full((500,), kappa, dtype=torch.float64)
    y = vmf_module._sample_one_minus_w_wood(kappas, d)
    fast = vmf_module._implicit_dw_dkappa(y, kappas, d)
    reference, scale = _reference_dw_dkappa_and_scale(y, kappas, d)
    # Relative to the terms' absolute sum, not to the value: where w is near A the terms
    # cancel and the split sum and the per-node sum round differently (measured <= 2e-14
    # of the scale over 30 seeds; a plain rtol of 1e-12 failed 9 of 20 seeds at d = 512,
    # kappa = 100 before issue 23's changes as well).
    assert ((fast - reference).abs() <= 1e-12 * scale).all()


@pytest.mark.parametrize("d", [2, 3, 4, 5, 64, 512, 2048])
@pytest.mark.parametrize("kappa", [0.3, 100.0, 1e4, 1e6])
def test_compiled_implicit_gradient_matches_the_array_code(d, kappa, monkeypatch):
    """dw/dkappa by the compiled kernels (the factor ``(1 + r t)^m`` by repeated squaring,
    one exp per node) against the numpy array code (a log1p and an exp per node) on the same
    draws, lower-tail draws included, and at kappa <= 100 both sides of the sphere (50 draws
    of y uniform on (0, 2); at larger kappa such draws overflow either code's exp, outside
    the range the tail tests validate): within 1e-12 of the terms' absolute sum, as the
    per-node test above (the factor's relative rounding grows like m eps: 2e-13 at
    d = 2048)."""
    kappas = torch.full((400,), kappa, dtype=torch.float64)
    torch.manual_seed(1)
    y = vmf_module._sample_one_minus_w_wood(kappas, d)
    if kappa <= 100:
        y[:50] = 2 * torch.rand(50, dtype=torch.float64)
    compiled = vmf_module._implicit_dw_dkappa(y, kappas, d)
    _use_path("numpy", monkeypatch)
    reference = vmf_module._implicit_dw_dkappa(y, kappas, d)
    _, scale = _reference_dw_dkappa_and_scale(y, kappas, d, vmf_module._quadrature_nodes(d))
    tail = vmf_module._lower_tail_draws(y.numpy(), kappas.numpy(), d, np) if d > 3 else False
    scale = torch.where(torch.as_tensor(tail), reference.abs(), scale)
    assert torch.isfinite(reference).all() and torch.isfinite(compiled).all()
    assert ((compiled - reference).abs() <= 1e-12 * scale).all(), (
        (compiled - reference).abs() / scale
    ).max()


@pytest.mark.parametrize("d", [2, 5, 64])
def test_reflection_matches_householder_and_its_gradient(d):
    """``_ReflectFromE1`` (hand-written backward, normalizes the Gaussians itself) against the
    autograd composition it replaced, including non-unit loc and loc_1 < 0."""
    generator = torch.Generator().manual_seed(d)
    loc = torch.randn(9, d, generator=generator, dtype=torch.float64)
    loc[0] = -loc[0]
    y = 0.05 + 1.9 * torch.rand(9, generator=generator, dtype=torch.float64)
    gaussian = torch.randn(9, d - 1, generator=generator, dtype=torch.float64)

    def reference(y, loc):
        v = gaussian / gaussian.norm(dim=-1, keepdim=True)
        x0 = torch.cat([(1 - y).unsqueeze(-1), torch.sqrt(y * (2 - y)).unsqueeze(-1) * v], -1)
        return vmf_module._householder_from_e1(x0, loc)

    torch.testing.assert_close(
        vmf_module._ReflectFromE1.apply(y, gaussian, loc, None, None),
        reference(y, loc),
        rtol=0,
        atol=1e-15,
    )
    y, loc = y.requires_grad_(), loc.requires_grad_()
    assert torch.autograd.gradcheck(
        lambda y, loc: vmf_module._ReflectFromE1.apply(y, gaussian, loc, None, None), (y, loc)
    )


@pytest.mark.parametrize("d", [3, 5, 64, 512])
def test_log_prob_concentration_gradient_matches_bessel_autograd(d):
    """log_prob's kappa gradient (the cached 1 - A) against autograd through log_bessel_iv."""
    kappa = torch.tensor([1e-3, 0.7, 30.0, 2e3, 1e6], dtype=torch.float64, requires_grad=True)
    loc = _unit(d).expand(5, d)
    x = VonMisesFisher(loc, 2.0).sample((3,))
    (ours,) = torch.autograd.grad(VonMisesFisher(loc, kappa).log_prob(x).sum(), kappa)
    reference = vmf_module._log_normalizer_plus_kappa(kappa, d) - kappa * 0.5 * (
        (x - loc) ** 2
    ).sum(-1)
    (expected,) = torch.autograd.grad(reference.sum(), kappa)
    # the reference forms nu / kappa - (A + nu / kappa): ~eps nu / kappa absolute (1e-10 at
    # d = 512, kappa = 1e-3); ours forms 1 - A directly
    torch.testing.assert_close(ours, expected, rtol=1e-10, atol=1e-9)
    torch.testing.assert_close(
        VonMisesFisher(loc, kappa).log_prob(x), reference, rtol=1e-12, atol=1e-9
    )


@pytest.mark.parametrize("d", [3, 10, 64, 512])
@pytest.mark.parametrize("path", ["numpy", "torch"])
def test_compiled_and_array_paths_agree_on_the_same_draws(d, path, monkeypatch):
    """CPU tensors run the compiled kernels (numba), CUDA ones the array code in torch, and
    without numba the array code runs in numpy. Given the same draws of y = 1 - w (here all
    from the numpy array sampler: the compiled sampler draws from a numpy Generator seeded
    by torch, the array one from torch directly) and one seed for the tangent Gaussians,
    they give the same samples, log densities and gradients."""
    loc = _unit(d).expand(64, d).clone().requires_grad_()
    kappa = torch.logspace(-2, 5, 64, dtype=torch.float64).requires_grad_()
    array_sampler = vmf_module._sample_one_minus_w_wood

    def sample_without_kernels(kappa, d, gamma_proposals=True):
        with monkeypatch.context() as patch:
            patch.setattr(vmf_module, "_kernels", lambda: None)
            patch.setattr(vmf_module, "_namespace", lambda t: np)
            return array_sampler(kappa, d, gamma_proposals)

    monkeypatch.setattr(vmf_module, "_sample_one_minus_w_wood", sample_without_kernels)

    def run():
        torch.manual_seed(3)
        q = VonMisesFisher(loc, kappa)
        x = q.rsample((4,))
        loss = (x * torch.arange(d, dtype=torch.float64)).sum() + q.log_prob(x).sum()
        return (x, q.log_prob(x), *torch.autograd.grad(loss, [loc, kappa]))

    compiled = run()
    _use_path(path, monkeypatch)
    for ours, reference in zip(compiled, run(), strict=True):
        torch.testing.assert_close(ours, reference, rtol=1e-11, atol=1e-11)


@pytest.mark.parametrize("d", [3, 10, 64, 512])
def test_float32_path_matches_float64_on_the_same_draws(d):
    """float32 parameters: the (n, d) work runs in float32, the per-sample scalars (Wood's
    sampler, quadrature, normalizer) in float64, and the tangent Gaussians are float32 for
    both dtypes, so one seed gives the same draws. Accuracy reached in float32: samples
    within 2e-6 of the float64 ones (absolute, unit vectors), log_prob within 1e-6 relative
    (plus 1e-3 absolute at kappa = 1e5, where log C alone is ~1e5 times larger), the loc
    gradient within 1e-4 and the kappa gradient within 1e-3 relative."""

    def run(dtype):
        torch.manual_seed(5)
        loc = _unit(d).to(dtype).expand(32, d).clone().requires_grad_()
        kappa = torch.logspace(-2, 5, 32, dtype=torch.float64).to(dtype).requires_grad_()
        q = VonMisesFisher(loc, kappa)
        x = q.rsample((8,))
        log_prob = q.log_prob(x)
        loss = (x * torch.linspace(-1, 1, d, dtype=dtype)).sum() + log_prob.sum()
        return x, log_prob, *torch.autograd.grad(loss, [loc, kappa])

    x32, lp32, gl32, gk32 = run(torch.float32)
    x64, lp64, gl64, gk64 = run(torch.float64)
    assert x32.dtype == lp32.dtype == gl32.dtype == gk32.dtype == torch.float32
    torch.testing.assert_close(x32.double(), x64, rtol=0, atol=2e-6)
    torch.testing.assert_close(lp32.double(), lp64, rtol=1e-6, atol=1e-3)
    torch.testing.assert_close(gl32.double(), gl64, rtol=1e-4, atol=1e-4 * gl64.abs().max().item())
    torch.testing.assert_close(gk32.double(), gk64, rtol=1e-3, atol=1e-3 * gk64.abs().max().item())


@pytest.mark.statistical
@pytest.mark.parametrize("d", [64, 512])
@pytest.mark.parametrize("kappa", [1.0, 100.0, 1e4])
@pytest.mark.parametrize("path", PATHS)
def test_batched_wood_sampler_moments(d, kappa, path, monkeypatch):
    """E[w] = A_d(kappa) and E[w^2] = 1 - (d - 1) A / kappa, where the rejection step matters
    most (acceptance 0.71 at kappa = 1e4), on each path: the compiled loop (one proposal at a
    time) and the array code (several proposals per element and round, first accepted
    kept)."""
    _use_path(path, monkeypatch)
    kappas = torch.full((40_000,), kappa, dtype=torch.float64)
    w = 1 - vmf_module._sample_one_minus_w_wood(kappas, d)
    a = bessel_iv_ratio(d / 2 - 1, torch.tensor(kappa, dtype=torch.float64))
    second = 1 - (d - 1) * a / kappa
    assert (w.mean() - a).abs() <= Z * w.std() / 200
    assert ((w * w).mean() - second).abs() <= Z * (w * w).std() / 200


@pytest.mark.parametrize("compiled", [True, False], ids=["compiled", "arrays"])
@pytest.mark.parametrize("d", [2, 5, 64])
def test_sample_and_distance_matches_reflection_and_its_gradient(d, compiled, monkeypatch):
    """``_SampleAndDistance`` (x and h = |x - loc|^2 / 2 from the forward's scalars, both
    gradients in one backward; compiled kernels or array code) against ``_ReflectFromE1``
    and the direct h, including non-unit loc and loc_1 < 0; gradcheck in loc through x and
    h together."""
    if not compiled:
        monkeypatch.setattr(vmf_module, "_kernels", lambda: None)
    else:  # numba is a dependency: CPU float32/float64 draws take the kernels
        assert vmf_module._kernels() is not None
    generator = torch.Generator().manual_seed(d)
    loc = torch.randn(9, d, generator=generator, dtype=torch.float64)
    loc[0] = -loc[0]
    y = 0.05 + 1.9 * torch.rand(9, generator=generator, dtype=torch.float64)
    gaussian = torch.randn(9, d - 1, generator=generator, dtype=torch.float64)
    x, h = vmf_module._SampleAndDistance.apply(y, gaussian, loc, None, None)
    # same formulas; the compiled kernel sums its dot products in another order (rounding)
    torch.testing.assert_close(
        x, vmf_module._ReflectFromE1.apply(y, gaussian, loc, None, None), rtol=1e-14, atol=1e-14
    )
    torch.testing.assert_close(h, 0.5 * ((x - loc) ** 2).sum(-1), rtol=1e-13, atol=1e-14)
    a = torch.linspace(-1, 2, d, dtype=torch.float64)

    def outputs(loc):
        x, h = vmf_module._SampleAndDistance.apply(y, gaussian, loc, None, None)
        return x @ a, h

    assert torch.autograd.gradcheck(outputs, (loc.clone().requires_grad_(),))


@pytest.mark.parametrize("d", [5, 64])
@pytest.mark.parametrize("modify", [False, True])
def test_rsample_reuses_checked_loc_norm_only_for_that_loc(d, modify):
    """With validation on, rsample takes |loc|^2 from the parameter check's |loc|; it must
    give the draws, log_prob and gradients of an unvalidated distribution on the same loc
    (to rounding), also after loc was changed in place since the check (then the check's
    norm is stale: |loc| off by 1e-6 would move x by ~1e-6 and log_prob by ~kappa 1e-6)."""
    loc0 = _unit(d).expand(16, d).clone()
    kappa0 = torch.logspace(-1, 3, 16, dtype=torch.float64)

    def run(validate):
        loc, kappa = loc0.clone().requires_grad_(), kappa0.clone().requires_grad_()
        q = VonMisesFisher(loc, kappa, validate_args=validate)
        if modify:
            with torch.no_grad():
                loc.mul_(1 + 1e-6)  # bumps loc's version
        torch.manual_seed(3)
        x = q.rsample()
        log_prob = q.log_prob(x)
        loss = (x * torch.linspace(-1, 1, d, dtype=torch.float64)).sum() + log_prob.sum()
        return x, log_prob, *torch.autograd.grad(loss, [loc, kappa])

    for ours, reference in zip(run(True), run(False), strict=True):
        torch.testing.assert_close(ours, reference, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("d", [5, 64, 512])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("unit_loc", [True, False])
def test_log_prob_of_own_sample_matches_general_path(d, dtype, unit_loc):
    """``log_prob`` of the tensor that ``rsample`` just returned reads |x - loc|^2 / 2 from
    rsample and folds its x and loc gradients into rsample's backward; on the same draws it
    matches the general path (a clone of x is not the own sample): values, and gradients in
    loc and kappa of a loss through both x and log_prob. Non-unit loc with validation off."""
    loc0 = _unit(d, dtype=torch.float64).expand(32, d).clone()
    if not unit_loc:
        loc0 = loc0 * torch.linspace(0.5, 2.0, 32, dtype=torch.float64)[:, None]
    loc0 = loc0.to(dtype)
    kappa0 = torch.logspace(-2, 5, 32, dtype=torch.float64).to(dtype)
    a = torch.linspace(-1, 1, d, dtype=dtype)

    def run(own):
        torch.manual_seed(11)
        loc, kappa = loc0.clone().requires_grad_(), kappa0.clone().requires_grad_()
        q = VonMisesFisher(loc, kappa, validate_args=unit_loc)
        x = q.rsample((4,))
        log_prob = q.log_prob(x if own else x.clone())
        loss = (x * a).sum() + log_prob.sum()
        return x, log_prob, *torch.autograd.grad(loss, [loc, kappa])

    x, lp, grad_loc, grad_kappa = run(own=True)
    x_ref, lp_ref, grad_loc_ref, grad_kappa_ref = run(own=False)
    assert lp.dtype == grad_loc.dtype == grad_kappa.dtype == dtype
    torch.testing.assert_close(x, x_ref, rtol=0, atol=0)
    # The general path rounds x - loc in dtype before multiplying by kappa: errors of
    # ~eps (1 + kappa) (1 + |value|) (measured up to 3.5 of those units over these cases).
    eps = torch.finfo(dtype).eps
    kappa = kappa0.double()
    for ours, reference, row_kappa in (
        (lp, lp_ref, kappa),
        (grad_loc, grad_loc_ref, kappa[:, None]),
        (grad_kappa, grad_kappa_ref, kappa),
    ):
        error = (ours - reference).double().abs()
        bound = 20 * eps * (1 + row_kappa) * (1 + reference.double().abs())
        assert (error <= bound).all(), (error / bound).max()


def test_log_prob_of_modified_own_sample_takes_general_path():
    """An in-place change of the sample (or of loc) after rsample is seen."""
    q = VonMisesFisher(_unit(6).expand(3, 6).clone(), torch.tensor([1.0, 10.0, 100.0]))
    x = q.sample((2,))
    with torch.no_grad():
        x[0, 0] = -x[0, 0]
        x[0, 0] = -x[0, 0]  # same values, new version: general path, same result
    torch.testing.assert_close(q.log_prob(x), q.log_prob(x.clone()), rtol=1e-12, atol=1e-12)
    y = q.sample()
    with torch.no_grad():
        y.copy_(q.loc)  # now the mode
    torch.testing.assert_close(q.log_prob(y), q.log_prob(q.loc), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("cls", SPHERICAL)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fast_parameter_checks_agree_with_the_constraints(cls, dtype):
    """The numpy checks of SphericalLocConcentration raise exactly when the constraints'
    own ``check`` fails, at the sphere's tolerance boundary and for non-finite values."""
    d = 16
    tolerance = 10 * torch.finfo(dtype).eps * d**0.5
    base = _unit(d, dtype=torch.float64)
    for scale in (1.0, 1 + 0.5 * tolerance, 1 + 2 * tolerance, 1 - 2 * tolerance, float("nan")):
        for kappa in (1e-30, 1.0, 1e30, 0.0, -1.0, float("inf"), float("nan")):
            loc = (scale * base).to(dtype).expand(3, d)
            concentration = torch.tensor([1.0, kappa, 2.0], dtype=dtype)
            expected = bool(
                constraints.sphere.check(loc).all()
                and cls.arg_constraints["concentration"].check(concentration).all()
            )
            try:
                cls(loc, concentration, validate_args=True)
                valid = True
            except ValueError:
                valid = False
            assert valid == expected, (scale, kappa)


@pytest.mark.parametrize("d", [5, 64])
def test_rsample_backward_with_an_expanded_gradient(d):
    """x.sum() sends rsample's backward a stride-0 gradient (its own code path): same
    gradients as a materialized one on the same draws."""
    loc0 = _unit(d).expand(16, d).clone()
    kappa0 = torch.logspace(-2, 5, 16, dtype=torch.float64)

    def run(expanded):
        torch.manual_seed(2)
        loc, kappa = loc0.clone().requires_grad_(), kappa0.clone().requires_grad_()
        q = VonMisesFisher(loc, kappa)
        x = q.rsample((3,))
        linear = x.sum() if expanded else (x * torch.ones_like(x)).sum()
        return torch.autograd.grad(linear + q.log_prob(x).sum(), [loc, kappa])

    for ours, reference in zip(run(True), run(False), strict=True):
        torch.testing.assert_close(ours, reference, rtol=1e-12, atol=1e-12)


@pytest.mark.statistical
def test_wood_sampler_moments_over_many_rounds(monkeypatch):
    """Rounds after the second (16 proposals per pending element) keep the law: with a
    pending target of 1e3 the second round draws only 2 proposals each, so most pending
    elements reach later rounds. (The array code's rounds: numpy, as without numba.)"""
    _use_path("numpy", monkeypatch)
    monkeypatch.setattr(vmf_module, "_PENDING_TARGET", 1e3)
    d, kappa = 64, 1e4
    kappas = torch.full((40_000,), kappa, dtype=torch.float64)
    w = 1 - vmf_module._sample_one_minus_w_wood(kappas, d)
    a = bessel_iv_ratio(d / 2 - 1, torch.tensor(kappa, dtype=torch.float64))
    second = 1 - (d - 1) * a / kappa
    assert (w.mean() - a).abs() <= Z * w.std() / 200
    assert ((w * w).mean() - second).abs() <= Z * (w * w).std() / 200


@pytest.mark.statistical
@pytest.mark.parametrize(("d", "kappa"), [(4, 2.0), (10, 40.0), (64, 2500.0), (64, 1e4)])
@pytest.mark.parametrize("path", ["compiled", "numpy"])
def test_gamma_proposal_sampler_matches_wood_and_exact_moments(d, kappa, path, monkeypatch):
    """Above ``_gamma_proposal_threshold(d)`` (kappa 1.9 at d = 4, 39 at d = 10, 2,400 at
    d = 64; the rows sit at or near it, where its rejection step matters most) y = 1 - w
    comes from gamma proposals: E[w] = A_d(kappa), E[w^2] = 1 - (d - 1) A / kappa, and the
    law of Wood's sampler (two-sample Kolmogorov-Smirnov on 20,000 draws each)."""
    _use_path(path, monkeypatch)
    assert kappa > vmf_module._gamma_proposal_threshold(d)
    kappas = torch.full((20_000,), kappa, dtype=torch.float64)
    w = 1 - vmf_module._sample_one_minus_w_wood(kappas, d)
    w_wood = 1 - vmf_module._sample_one_minus_w_wood(kappas, d, gamma_proposals=False)
    a = bessel_iv_ratio(d / 2 - 1, torch.tensor(kappa, dtype=torch.float64))
    second = 1 - (d - 1) * a / kappa
    n = math.sqrt(w.numel())
    assert (w.mean() - a).abs() <= Z * w.std() / n
    assert ((w * w).mean() - second).abs() <= Z * (w * w).std() / n
    assert scipy.stats.ks_2samp(w.numpy(), w_wood.numpy()).pvalue > 1e-5


def test_mixed_batch_takes_both_samplers_elementwise():
    """A batch with concentrations on both sides of the threshold: each element keeps its
    own kappa's law (the two halves' means match A_d of their kappa)."""
    d = 64
    kappas = torch.cat([torch.full((20_000,), 100.0), torch.full((20_000,), 1e4)]).double()
    w = 1 - vmf_module._sample_one_minus_w_wood(kappas, d)
    for half, kappa in zip(w.split(20_000), (100.0, 1e4), strict=True):
        a = bessel_iv_ratio(d / 2 - 1, torch.tensor(kappa, dtype=torch.float64))
        assert (half.mean() - a).abs() <= Z * half.std() / math.sqrt(half.numel())


@pytest.mark.statistical
def test_wood_sampler_moments_at_low_acceptance_without_gamma_proposals():
    """Wood's own sampler where its acceptance is lowest (0.71 at d = 64, kappa = 1e4), now
    that the default takes gamma proposals there."""
    d, kappa = 64, 1e4
    kappas = torch.full((40_000,), kappa, dtype=torch.float64)
    w = 1 - vmf_module._sample_one_minus_w_wood(kappas, d, gamma_proposals=False)
    a = bessel_iv_ratio(d / 2 - 1, torch.tensor(kappa, dtype=torch.float64))
    second = 1 - (d - 1) * a / kappa
    assert (w.mean() - a).abs() <= Z * w.std() / 200
    assert ((w * w).mean() - second).abs() <= Z * (w * w).std() / 200


@pytest.mark.parametrize("d", [5, 64])
@pytest.mark.parametrize("kappa", [1.0, 1e4])
def test_vmf_empty_batch(d, kappa):
    """An empty batch samples an empty tensor (the rejection rounds used to divide by 0)."""
    loc = _unit(d).expand(0, d)
    q = VonMisesFisher(loc, torch.full((0,), kappa, dtype=torch.float64))
    assert q.rsample((3,)).shape == (3, 0, d)


def _dw_dkappa_with_nodes(y, kappa, d, nodes):
    """``_reference_dw_dkappa_and_scale``'s quadrature with ``nodes`` Gauss-Legendre nodes."""
    return _reference_dw_dkappa_and_scale(y, kappa, d, nodes)[0]


@pytest.mark.parametrize("d", [5, 64, 96, 128, 512, 1024])
@pytest.mark.parametrize("kappa", [0.3, 100.0, 1e3, 1e4])
def test_implicit_gradient_quadrature_error_against_many_nodes(d, kappa):
    """dw/dkappa with ``_quadrature_nodes(d)`` nodes against 600 nodes on the same draws:
    within 1e-10 of the terms' absolute sum (worst measured 2.3e-12 over seeds 0-2; the 32
    nodes that d = 65-128 took before erred up to 5e-9 of it at d = 128). Relative to the
    terms, not the value: see ``_implicit_dw_dkappa`` on draws far below the mean."""
    kappas = torch.full((500,), kappa, dtype=torch.float64)
    y = vmf_module._sample_one_minus_w_wood(kappas, d)
    fast = vmf_module._implicit_dw_dkappa(y, kappas, d)
    reference = _dw_dkappa_with_nodes(y, kappas, d, 600)
    _, scale = _reference_dw_dkappa_and_scale(y, kappas, d)
    assert ((fast - reference).abs() <= 1e-10 * scale).all()


@functools.cache
def _tail_draws_and_mpmath_dw_dkappa(d, kappa):
    """w = A + k sd for k in (-8, -6, -5, -4, 4, 5, 6) (those inside (-1, 1); A and sd the mean
    and standard deviation of w) and dw/dkappa there by mpmath at 40 digits, integrating the side
    of w away from the mean, where (A - s) p(s) or (s - A) p(s) keeps one sign (no cancellation),
    split at geometric distances from w so that its peak at w is resolved."""
    with mpmath.workdps(40):
        k, m = mpmath.mpf(kappa), mpmath.mpf(d - 3) / 2
        mean = mpmath.besseli(mpmath.mpf(d) / 2, k) / mpmath.besseli(mpmath.mpf(d) / 2 - 1, k)
        sd = mpmath.sqrt(1 - mean * mean - (d - 1) * mean / k)
        draws, references = [], []
        for sds in (-8, -6, -5, -4, 4, 5, 6):
            w = float(mean + sds * sd)
            if not -1 < w < 1:
                continue
            w_mp = mpmath.mpf(w)

            def ratio(s, w_mp=w_mp):  # p(s) / p(w)
                log_ratio = k * (s - w_mp) + m * (mpmath.log1p(-s * s) - mpmath.log1p(-(w_mp**2)))
                return mpmath.exp(log_ratio)

            below = w_mp < mean
            side = -1 if below else 1
            points = [w_mp + side * 2.0**j / (10 * d + kappa) for j in range(60)]
            points = [w_mp] + [p for p in points if -1 < p < 1] + [mpmath.mpf(side)]
            integrand = lambda s, side=side: side * (s - mean) * ratio(s)  # noqa: E731
            value = mpmath.quad(integrand, sorted(points))
            draws.append(w)
            references.append(float(value))
        return draws, references


@pytest.mark.parametrize("d", [64, 512])
@pytest.mark.parametrize("kappa", [100.0, 1e3, 1e4])
@pytest.mark.parametrize("path", PATHS)
def test_implicit_gradient_in_the_tails_against_mpmath(d, kappa, path, monkeypatch):
    """dw/dkappa at draws 4-8 standard deviations either side of the mean, against mpmath,
    within 1e-12 relative (worst measured 8e-14, above the mean; 7e-15 below, where the
    lower-tail rule takes the draws). Before that rule the nearer-side quadrature, whose terms
    cancel below the mean, erred up to 1e-10 at 4 s.d., 3e-6 at 6 and 0.8 at 8 (all 12 cases
    failed). One batch of mixed routes, shape (1, n), and one 0-d call."""
    _use_path(path, monkeypatch)
    draws, references = _tail_draws_and_mpmath_dw_dkappa(d, kappa)
    assert len(draws) >= 5
    y = 1 - torch.tensor([draws], dtype=torch.float64)
    kappas = torch.full_like(y, kappa)
    fast = vmf_module._implicit_dw_dkappa(y, kappas, d)
    assert fast.shape == y.shape
    reference = torch.tensor([references], dtype=torch.float64)
    assert ((fast - reference).abs() <= 1e-12 * reference.abs()).all(), fast / reference - 1
    one = vmf_module._implicit_dw_dkappa(y[0, 0], kappas[0, 0], d)  # 0-d: the lowest draw
    assert abs(float(one) / references[0] - 1) <= 1e-12
