"""log_bessel_iv and bessel_iv_ratio against scipy (grid) and mpmath (extreme points)."""

import subprocess
import sys

import mpmath
import numpy as np
import pytest
import scipy.special
import torch

from pvae.distributions import bessel_iv_ratio, log_bessel_iv

ORDERS = np.concatenate(
    [np.linspace(0, 30, 31), [0.5, 1.5, 9.5, 9.99, 10.01], np.logspace(1.5, 3, 12)]
)
ARGUMENTS = np.logspace(-6, 6, 121)


def _relative_log_error(ours, reference):
    # relative error of log I_v where |log I_v| > 1, else absolute (= relative error of I_v)
    return np.abs(ours - reference) / np.maximum(1.0, np.abs(reference))


def test_log_bessel_iv_matches_scipy_on_grid():
    v, x = np.meshgrid(ORDERS, ARGUMENTS, indexing="ij")
    ours = log_bessel_iv(torch.tensor(v), torch.tensor(x)).numpy()
    with np.errstate(divide="ignore"):
        reference = np.log(scipy.special.ive(v, x)) + x
    usable = scipy.special.ive(v, x) > 1e-280  # scipy underflows where log I_v < ~-640
    assert usable.sum() > 0.8 * usable.size
    assert _relative_log_error(ours[usable], reference[usable]).max() < 1e-10


def test_bessel_iv_ratio_matches_scipy_on_grid():
    v, x = np.meshgrid(ORDERS, ARGUMENTS, indexing="ij")
    ours = bessel_iv_ratio(torch.tensor(v), torch.tensor(x)).numpy()
    numerator, denominator = scipy.special.ive(v + 1, x), scipy.special.ive(v, x)
    usable = (numerator > 1e-280) & (denominator > 1e-280)
    reference = np.where(usable, numerator / np.where(usable, denominator, 1.0), 1.0)
    assert (np.abs(ours - reference) / reference)[usable].max() < 1e-10


EXTREMES = [
    (0.0, 1e-6),
    (1000.0, 1e-6),  # log I ~ -15000: beyond scipy's range
    (1000.0, 1e6),
    (0.0, 1e6),
    (0.5, 1e3),
    (9.99, 50.0),  # recurrence region next to the Debye threshold
    (10.0, 12.5),
    (3.0, 29.0),
    (511.0, 1e-4),  # vMF normalizer at d = 1024, tiny kappa
    (511.0, 3e4),
    (0.0, 12.01),
    (29.5, 700.0),
]


@pytest.mark.parametrize("v,x", EXTREMES)
def test_extremes_against_mpmath(v, x):
    with mpmath.workdps(40):  # scoped: other tests keep mpmath's default precision
        i_v, i_v1 = mpmath.besseli(v, x), mpmath.besseli(v + 1, x)
        log_reference = float(mpmath.log(i_v))
        ratio_reference = i_v1 / i_v
    x64 = torch.tensor(x, dtype=torch.float64)
    ours = log_bessel_iv(v, x64).item()
    assert abs(ours - log_reference) / max(1.0, abs(log_reference)) < 1e-10
    ratio = bessel_iv_ratio(v, x64).item()
    assert abs(ratio - float(ratio_reference)) / float(ratio_reference) < 1e-10
    # 1 - ratio keeps its relative accuracy (the vMF entropy needs kappa (1 - A_d))
    one_minus = float(1 - ratio_reference)
    assert abs((1 - ratio) - one_minus) / one_minus < 1e-7


def test_float32_is_sensible():
    v, x = np.meshgrid(ORDERS, ARGUMENTS, indexing="ij")
    v32, x32 = torch.tensor(v, dtype=torch.float32), torch.tensor(x, dtype=torch.float32)
    ours = log_bessel_iv(v32, x32)
    reference = log_bessel_iv(v32.double(), x32.double())  # same (rounded) inputs
    assert ours.dtype == torch.float32
    assert torch.isfinite(ours).all()
    assert _relative_log_error(ours.double().numpy(), reference.numpy()).max() < 1e-6
    ratio = bessel_iv_ratio(
        torch.tensor(v, dtype=torch.float32), torch.tensor(x, dtype=torch.float32)
    )
    assert ratio.dtype == torch.float32 and ((ratio > 0) & (ratio <= 1)).all()


@pytest.mark.parametrize("v", [0.0, 0.5, 4.0, 9.5, 25.0, 511.0])
def test_gradients_against_finite_differences(v):
    x = torch.tensor([1e-3, 0.7, 11.0, 13.0, 45.0, 800.0, 5e4], dtype=torch.float64)
    x.requires_grad_()
    (grad_log,) = torch.autograd.grad(log_bessel_iv(v, x).sum(), x)
    (grad_ratio,) = torch.autograd.grad(bessel_iv_ratio(v, x).sum(), x)
    h = 1e-6 * x.detach()
    xp, xm = x.detach() + h, x.detach() - h
    fd_log = (log_bessel_iv(v, xp) - log_bessel_iv(v, xm)) / (2 * h)
    fd_ratio = (bessel_iv_ratio(v, xp) - bessel_iv_ratio(v, xm)) / (2 * h)
    # central differences of a function computed to ~1e-16: error ~1e-16 / h + h^2 terms
    torch.testing.assert_close(grad_log, fd_log, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(grad_ratio, fd_ratio, rtol=1e-5, atol=1e-10)


def test_broadcasting_and_batching():
    v = torch.tensor([[0.0], [2.5], [300.0]])
    x = torch.logspace(-3, 3, 7, dtype=torch.float64)
    out = log_bessel_iv(v, x)
    assert out.shape == (3, 7)
    for i in range(3):
        torch.testing.assert_close(out[i], log_bessel_iv(v[i, 0].item(), x))
    x = x.clone().requires_grad_()
    log_bessel_iv(v, x).sum().backward()  # gradient is summed over the broadcast order dim
    assert x.grad.shape == (7,)


def test_importing_distributions_does_not_import_scipy():
    code = "import sys, pvae.distributions; print('scipy' in sys.modules)"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "False"


@pytest.mark.parametrize("v", [10.0, 15.5, 31.0, 300.0])
def test_scalar_order_fast_path_agrees_with_general_path(v):
    """A Python-number order >= 10 uses Debye's expansion alone; it must agree with the
    per-element region choice."""
    x = torch.logspace(-6, 6, 97, dtype=torch.float64)
    fast, general = log_bessel_iv(v, x), log_bessel_iv(torch.tensor(v, dtype=torch.float64), x)
    # Debye with 11 terms at v = 10 is accurate to ~4e-11 (|u_11| <= 3.6); the series is exact
    torch.testing.assert_close(fast, general, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(
        bessel_iv_ratio(v, x),
        bessel_iv_ratio(torch.tensor(v, dtype=torch.float64), x),
        rtol=1e-10,
        atol=0,
    )


@pytest.mark.parametrize("v", [10.0, 31.0, 255.5, 511.0])
def test_monomial_debye_sum_matches_per_term_horner(v):
    """The static-order path sums one polynomial in t (coefficients folded with 1 / v^k; numpy
    by powers and one matrix product, torch by powers) in place of ``_debye_sum``'s per-k Horner form: same values
    to rounding, on the same arguments, for both array libraries."""
    from pvae.distributions.bessel import (
        _debye_terms,
        _log_iv_and_ratio_static,
        _log_iv_debye_parts,
        _log_ratio_debye,
    )

    x = torch.logspace(-6, 6, 121, dtype=torch.float64)
    order = torch.tensor(v, dtype=torch.float64).expand(x.shape)
    terms = _debye_terms(v)
    log_iv, r0, log_sum0 = _log_iv_debye_parts(order, x, terms)
    ratio = torch.exp(_log_ratio_debye(order, x, r0, log_sum0, terms))
    for path in (x, x.numpy()):
        fast_log_iv, fast_ratio = (torch.as_tensor(t) for t in _log_iv_and_ratio_static(v, path))
        torch.testing.assert_close(fast_log_iv, log_iv, rtol=1e-14, atol=1e-14)
        torch.testing.assert_close(fast_ratio, ratio, rtol=1e-14, atol=0)
