"""The vMF's compiled CPU kernels (``pvae.distributions._vmf_kernels``) against the array code
they replace on CPU, on the same inputs; the sampler's law is tested in test_spherical.py on
each path."""

import subprocess
import sys

import numpy as np
import pytest
import torch

import pvae.distributions.von_mises_fisher as vmf_module
from pvae.distributions import VonMisesFisher
from pvae.distributions.bessel import _debye_monomial_table, _monomial_sums

KERNELS = vmf_module._kernels()


def test_numba_is_present_and_not_imported_with_pvae():
    """numba is a dependency (the kernels load), and importing pvae does not import it: the
    kernels load on the first CPU draw."""
    assert KERNELS is not None
    code = (
        "import sys, torch, pvae, pvae.distributions, pvae.models;"
        "assert 'numba' not in sys.modules, 'numba imported with pvae';"
        "from pvae.distributions import VonMisesFisher;"
        "q = VonMisesFisher(torch.tensor([0.0, 1.0, 0.0, 0.0]), 2.0);"
        "q.rsample((3,));"
        "assert 'numba' in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def _inputs(shape, d, dtype, seed):
    generator = torch.Generator().manual_seed(seed)
    loc = torch.randn(*shape, d, generator=generator, dtype=torch.float64)
    loc = loc / loc.norm(dim=-1, keepdim=True)
    loc.view(-1, d)[0] *= -1.0  # one loc_1 < 0 at least
    loc.view(-1, d)[1] *= 1.5  # and one non-unit loc (validation off)
    y = 2 * torch.rand(shape, generator=generator, dtype=torch.float64)
    gaussian = torch.randn(*shape, d - 1, generator=generator)
    return y, gaussian, loc.to(dtype)


def _gradients(kind, shape, d, dtype, seed):
    generator = torch.Generator().manual_seed(seed + 100)
    if kind == "dense":
        return torch.randn(*shape, d, generator=generator, dtype=torch.float64).to(dtype)
    if kind == "row constant":  # as from x.sum(): stride 0 along the last dim
        return (
            torch.randn(*shape, 1, generator=generator, dtype=torch.float64)
            .to(dtype)
            .expand(*shape, d)
        )
    return None


@pytest.mark.parametrize("d", [2, 5, 64])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("shape", [(7,), (2, 3)])
@pytest.mark.parametrize("grad", ["dense", "row constant", "none"])
@pytest.mark.parametrize("with_h", [True, False])
def test_reflection_kernels_match_the_array_code(d, dtype, shape, grad, with_h):
    """x, h = |x - loc|^2 / 2 and the backward (dL/dy, dL/dloc) of ``_SampleAndDistance``:
    compiled kernels against ``_reflect`` / ``_reflect_backward`` (numpy, float32 Gaussians
    cast to loc's dtype as that path does), for float64 and float32 loc, batch shapes of one
    and two dims, dense, row-constant and absent dL/dx, with and without dL/dh. In float64
    to 1e-14; in float32 the kernel sums in float64 where the array code sums in float32,
    so to float32 rounding."""
    y, gaussian, loc = _inputs(shape, d, dtype, seed=d)
    tol = dict(rtol=1e-13, atol=1e-14) if dtype == torch.float64 else dict(rtol=2e-6, atol=2e-6)
    x, scalars, h = vmf_module._reflect_compiled(KERNELS, y, gaussian, loc)
    x_ref, s = vmf_module._reflect(y.numpy(), gaussian.to(dtype), loc)
    h_ref = y.numpy() + (s.loc_sq - 1) * (s.q - 2 * s.p) / (2 * s.q)
    assert x.dtype == dtype and x.shape == loc.shape and h.shape == shape
    torch.testing.assert_close(x, x_ref, **tol)
    torch.testing.assert_close(h, torch.from_numpy(np.asarray(h_ref)), **tol)

    g = _gradients(grad, shape, d, dtype, seed=d)
    g_h = torch.linspace(-1, 2, int(np.prod(shape)), dtype=torch.float64).reshape(shape)
    g_h = g_h if with_h else None
    if g is None and g_h is None:
        return
    grad_y, grad_loc = vmf_module._reflect_backward_compiled(
        KERNELS, scalars, gaussian, loc, x, g, g_h, True
    )
    ref_y, ref_loc = vmf_module._reflect_backward(
        s, gaussian.to(dtype), loc, x_ref, g, None if g_h is None else g_h.numpy()
    )
    np.testing.assert_allclose(grad_y.reshape(shape), np.asarray(ref_y), **tol)
    assert grad_loc.dtype == dtype and grad_loc.shape == loc.shape
    torch.testing.assert_close(grad_loc, ref_loc, **tol)
    grad_y_only, none = vmf_module._reflect_backward_compiled(
        KERNELS, scalars, gaussian, loc, x, g, g_h, False
    )
    assert none is None
    np.testing.assert_array_equal(grad_y_only, grad_y)


def test_reflection_kernel_reads_an_expanded_loc():
    """A loc shared by the whole batch (stride 0 over it, as ``rsample((n,))`` expands it)."""
    d = 6
    y, gaussian, loc = _inputs((5,), d, torch.float64, seed=1)
    shared = loc[2].expand(5, d)
    x, *_ = vmf_module._reflect_compiled(KERNELS, y, gaussian, shared)
    x_ref, _ = vmf_module._reflect(y.numpy(), gaussian.double(), shared.contiguous())
    torch.testing.assert_close(x, x_ref, rtol=1e-14, atol=1e-15)


@pytest.mark.parametrize("order", [10.0, 31.0, 255.0, 1023.0])
def test_compiled_debye_sums_match_the_monomial_sums(order):
    """Horner's rule against ``_monomial_sums`` (powers by doubling): both round to a few eps
    of ``sum_m |a_m t^m|``."""
    coefs = _debye_monomial_table(order, torch.float64, None)
    t = np.random.default_rng(0).uniform(0, 1, size=(2, 500))
    t[:, :2] = [[0.0, 1.0], [0.0, 1.0]]
    sums = np.empty_like(t)
    KERNELS.debye_sums(coefs, t, sums)
    reference = _monomial_sums(coefs, t)
    scale = (np.abs(coefs)[:, None, :] * t[:, :, None] ** np.arange(coefs.shape[1])).sum(-1)
    assert (np.abs(sums - reference) <= 1e-15 * scale).all()


def test_compiled_draws_follow_torch_manual_seed():
    """The compiled sampler draws from a numpy Generator seeded by torch's generator: one
    seed, one sample; another seed, another sample."""
    loc = torch.nn.functional.normalize(torch.randn(16, 10, dtype=torch.float64), dim=-1)
    q = VonMisesFisher(loc, torch.logspace(-1, 4, 16, dtype=torch.float64))
    torch.manual_seed(7)
    first = q.rsample((3,))
    torch.manual_seed(7)
    again = q.rsample((3,))
    torch.manual_seed(8)
    other = q.rsample((3,))
    torch.testing.assert_close(first, again, rtol=0, atol=0)
    assert not torch.allclose(first, other)


def test_compiled_sampler_gives_a_clear_error_for_a_nan_concentration():
    """With validation off a NaN concentration is never accepted: an error, not NaN draws."""
    q = VonMisesFisher(
        torch.tensor([1.0, 0.0, 0.0, 0.0]), torch.tensor(float("nan")), validate_args=False
    )
    with pytest.raises(RuntimeError, match="still rejected"):
        q.rsample((2,))


def test_without_numba_the_array_code_runs_with_a_warning(monkeypatch):
    """Where the kernels cannot be imported (numba missing or unusable), ``_kernels`` warns
    once and returns None, and the distribution still samples (by the array code)."""
    import pvae.distributions as package

    monkeypatch.delattr(package, "_vmf_kernels", raising=False)
    monkeypatch.setitem(sys.modules, "pvae.distributions._vmf_kernels", None)
    with pytest.warns(RuntimeWarning, match="compiled CPU kernels are unavailable"):
        assert vmf_module._kernels.__wrapped__() is None
    monkeypatch.setattr(vmf_module, "_kernels", vmf_module._kernels.__wrapped__)
    loc = torch.tensor([0.0, 0.6, 0.8, 0.0, 0.0])
    with pytest.warns(RuntimeWarning):
        x = VonMisesFisher(loc, 5.0).rsample((4,))
    assert x.shape == (4, 5) and torch.allclose(x.norm(dim=-1), torch.ones(4))
