"""The von Mises-Fisher distribution on the unit sphere ``S^(d-1)``."""

import functools
import math
import warnings

import numpy as np
import torch
from torch.distributions import register_kl

from pvae.distributions.bessel import (
    _DEBYE_MIN_ORDER,
    _log_iv_and_ratio,
    _log_iv_and_ratio_static,
    bessel_iv_ratio,
    log_bessel_iv,
)
from pvae.distributions.hyperspherical_uniform import HypersphericalUniform, log_sphere_area
from pvae.distributions.spherical import SphericalLocConcentration

_MAX_REJECTION_ROUNDS = 1000


@functools.lru_cache(maxsize=8)
def _gauss_legendre_unit(n: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Gauss-Legendre nodes and weights on [0, 1], float64."""
    nodes, weights = np.polynomial.legendre.leggauss(n)
    nodes = torch.as_tensor((nodes + 1) / 2, dtype=torch.float64, device=device)
    weights = torch.as_tensor(weights / 2, dtype=torch.float64, device=device)
    return nodes, weights


def _log_normalizer_plus_kappa(kappa: torch.Tensor, d: int) -> torch.Tensor:
    """``log C_d(kappa) + kappa`` in float64, finite from kappa = 1e-300 to 1e300-ish.

    ``log C_d = (d/2 - 1) log kappa - (d/2) log(2 pi) - log I_{d/2-1}(kappa)``; adding ``kappa``
    keeps the value O(log kappa) when kappa is huge, so that float32 callers keep precision.
    """
    kappa = kappa.double()
    if d == 3:
        # I_{1/2}(k) = sqrt(2 / (pi k)) sinh k: log C_3 + k = log(2 k / (1 - exp(-2 k))) - log 4 pi
        return torch.log(2 * kappa / -torch.expm1(-2 * kappa)) - math.log(4 * math.pi)
    nu = d / 2 - 1
    return (
        nu * torch.log(kappa) - (d / 2) * math.log(2 * math.pi) - (log_bessel_iv(nu, kappa) - kappa)
    )


def _normalizer_terms(kappa: torch.Tensor, d: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(log C_d(kappa) + kappa, 1 - A_d(kappa))`` in float64 without gradient, from one
    evaluation of the Bessel functions; ``1 - A`` is the derivative of the first in kappa."""
    kappa = _float64(kappa.detach())
    nu = d / 2 - 1
    if nu >= _DEBYE_MIN_ORDER:
        xp = _namespace(kappa)
        k = _as(kappa, xp)
        kernels = _kernels() if xp is np else None
        sums = None if kernels is None else kernels.debye_sums
        log_iv, ratio = _log_iv_and_ratio_static(nu, k, sums)
        log_norm = nu * xp.log(k) - (d / 2) * math.log(2 * math.pi) - (log_iv - k)
        return _tensor(log_norm), _tensor(1 - ratio)
    with torch.no_grad():
        log_iv, ratio = _log_iv_and_ratio(torch.tensor(nu, dtype=kappa.dtype), kappa, nu)
        log_norm = nu * torch.log(kappa) - (d / 2) * math.log(2 * math.pi) - (log_iv - kappa)
        return log_norm, 1 - ratio


def _sample_one_minus_w_d3(kappa: torch.Tensor) -> torch.Tensor:
    """Exact inverse-CDF sample of ``1 - w`` for d = 3, differentiable in kappa (float64)."""
    u = torch.rand_like(kappa)
    # w = 1 + log(u + (1 - u) exp(-2 kappa)) / kappa, written with log1p/expm1 for tiny kappa.
    return -torch.log1p((1 - u) * torch.expm1(-2 * kappa)) / kappa


def _namespace(t: torch.Tensor):
    """The array library for the per-sample scalar computations (sampler, quadrature,
    normalizer) on ``t``'s device: numpy for CPU tensors, whose per-call overhead on these
    small arrays is a fraction of torch's (a few hundred calls per ``rsample``), torch
    otherwise. The code below uses only what both spell the same way; random draws always
    come from torch's generator, so ``torch.manual_seed`` fixes the samples either way."""
    return np if t.device.type == "cpu" else torch


def _as(t: torch.Tensor, xp):
    return t.detach().numpy() if xp is np else t.detach()


def _tensor(a) -> torch.Tensor:
    # numpy turns 0-d results into scalars (np.generic)
    return torch.from_numpy(np.asarray(a)) if isinstance(a, np.ndarray | np.generic) else a


def _float64(t: torch.Tensor) -> torch.Tensor:
    return t if t.dtype == torch.float64 else t.double()


def _column(a, dtype: torch.dtype) -> torch.Tensor:
    """A per-sample array (numpy or tensor) as a (..., 1) tensor of ``dtype``."""
    if isinstance(a, np.ndarray):  # one call instead of from_numpy + unsqueeze
        return _cast(torch.from_numpy(a[..., None]), dtype)
    return _cast(_tensor(a), dtype).unsqueeze(-1)


def _cast(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return t if t.dtype == dtype else t.to(dtype)


def _clip_below(a, low: float, xp):
    # np.clip costs ~10 us of Python per call; np.maximum ~1 us
    return np.maximum(a, low) if xp is np else torch.clamp(a, min=low)


def _flatnonzero(a, xp):
    return np.flatnonzero(a) if xp is np else torch.nonzero(a).squeeze(-1)


def _wood_constants(kappa, d: int) -> tuple:
    """Per-element constants of Wood's envelope: ``kappa``, ``b``, ``r = x0 / (1 - x0)`` and
    ``K = kappa (1 - x0) - (d - 1) log1p(x0)``, with
    ``b = (d-1) / (2 kappa + sqrt(4 kappa^2 + (d-1)^2))`` and ``x0 = (1 - b) / (1 + b)``
    (``1 - x0 = 2 b / (1 + b)`` without cancellation). numpy arrays or tensors."""
    xp = np if isinstance(kappa, np.ndarray) else torch
    m1 = d - 1.0
    b = m1 / (2 * kappa + xp.sqrt(4 * kappa * kappa + m1 * m1))
    one_plus_b = 1 + b
    k = kappa * (2 * b / one_plus_b) - m1 * xp.log1p((1 - b) / one_plus_b)
    return kappa, b, (1 - b) / (2 * b), k


@functools.lru_cache(maxsize=8)
def _gamma_concentration(shape: tuple, d: int, device) -> torch.Tensor:
    """The constant (d - 1) / 2 of the gamma draws (read-only), built once per shape."""
    return torch.full(shape, (d - 1) / 2, dtype=torch.float64, device=device)


def _wood_propose(constants: tuple, d: int, proposals: int, device):
    """``proposals`` proposals of Wood's sampler per element for ``y = 1 - w``:
    (proposals, accepted), each (n, proposals), from constants of shape (n, 1).

    ``z ~ Beta(a, a)``, ``a = (d-1)/2``, from one gamma and one normal draw instead of two
    gammas (torch's gamma sampler costs 2.4 normal draws): with ``V = 2 G``, ``G ~ Gamma(a)``
    (chi-square with 2a degrees of freedom), ``Z ~ N(0, 1)`` and ``S = sqrt(V + Z^2)``,
    ``T = Z / sqrt(V / 2a)`` is Student's t with 2a degrees of freedom and
    ``z = (1 + Z / S) / 2`` is Beta(a, a) [Johnson, Kotz & Balakrishnan, *Continuous
    Univariate Distributions* 2, ch. 28]. Then ``rho = z / (1 - z) = (S + Z)^2 / V = V / (S - Z)^2``
    (the form without cancellation by the sign of Z) and
    ``y = 2 b z / (1 - (1 - b) z) = 2 b rho / (1 + b rho)``. Accepted when
    ``log u <= kappa w + (d-1) log(1 - x0 w) - kappa x0 - (d-1) log(1 - x0^2)``, i.e.
    ``log u + kappa y - (d-1) log1p(r y) <= K`` with ``w = 1 - y``.
    """
    kappa, b, r, k = constants
    xp = np if isinstance(kappa, np.ndarray) else torch
    shape = (kappa.shape[0], proposals)
    v = 2 * _as(torch._standard_gamma(_gamma_concentration(shape, d, device)), xp)
    z = _as(torch.randn(shape, dtype=torch.float64, device=device), xp)
    u = _as(torch.rand(shape, dtype=torch.float64, device=device), xp)
    s = xp.sqrt(v + z * z)
    rho = xp.where(z >= 0, (s + z) ** 2 / v, v / (s - z) ** 2)
    b_rho = b * rho
    proposal = 2 * b_rho / (1 + b_rho)
    excess = xp.log(u) + kappa * proposal - (d - 1) * xp.log1p(r * proposal)
    return proposal, excess <= k


def _gamma_propose(constants: tuple, d: int, proposals: int, device):
    """``proposals`` proposals per element for ``y = 1 - w`` from ``Gamma((d-1)/2, kappa)``
    (d >= 4), as ``_wood_propose``: (proposals, accepted), each (n, proposals).

    The density of y is proportional to ``exp(-kappa y) y^m (2 - y)^m`` on (0, 2) with
    ``m = (d - 3)/2``; the gamma density ``exp(-kappa y) y^m`` times ``2^m`` bounds it, so a
    proposal is accepted with probability ``(1 - y/2)^m`` (0 for y >= 2): an exact sampler
    whose acceptance is ``E[(1 - y/2)^m] ~ exp(-m (m + 1) / (2 kappa))`` (0.95 at d = 64,
    kappa = 1e4, where Wood's is 0.71), with one gamma and one uniform draw per proposal
    (Wood's: one gamma, one normal, one uniform)."""
    kappa = constants[0]
    xp = np if isinstance(kappa, np.ndarray) else torch
    shape = (kappa.shape[0], proposals)
    proposal = _as(torch._standard_gamma(_gamma_concentration(shape, d, device)), xp) / kappa
    u = _as(torch.rand(shape, dtype=torch.float64, device=device), xp)
    half_gap = 1 - 0.5 * proposal  # 1 - y/2, <= 0 outside the support
    log_ratio = (0.5 * (d - 3)) * xp.log(_clip_below(half_gap, _TINY, xp))
    return proposal, (half_gap > 0) & (xp.log(u) <= log_ratio)


_TINY = float(np.finfo(np.float64).tiny)

# The gamma proposal replaces Wood's for kappa > _GAMMA_PROPOSAL_MIN * m (m + 1), where its
# acceptance (about exp(-m (m + 1) / (2 kappa))) is above ~0.82 and so above Wood's (>= ~0.7
# at large kappa): kappa > 2,400 at d = 64, > 160,000 at d = 512.
_GAMMA_PROPOSAL_MIN = 2.5


def _gamma_proposal_threshold(d: int) -> float:
    m = (d - 3) / 2
    return _GAMMA_PROPOSAL_MIN * m * (m + 1) if d >= 4 else math.inf


def _first_accepted(constants: tuple, d: int, proposals: int, device, propose=None):
    """``proposals`` independent rounds of a rejection sampler (``propose``, default Wood's)
    at once per element: (the first accepted proposal, whether any was), i.e. the outcome
    of that many sequential rounds."""
    proposal, accept = (propose or _wood_propose)(constants, d, proposals, device)
    if proposals == 1:
        return proposal[:, 0], accept[:, 0]
    first = (accept * 1).argmax(-1)  # first True (0 if none)
    rows = (np if isinstance(accept, np.ndarray) else torch).arange(accept.shape[0])
    return proposal[rows, first], accept.any(-1)


# One proposal per element first: Wood's acceptance is often near 1 (0.99988 at d = 64,
# kappa = 1) and >= ~0.7 otherwise (0.71 at d = 64 and 512, kappa = 1e4). The still-pending
# elements then get as many proposals each as leave an expected _PENDING_TARGET of them
# pending at the acceptance observed in the first round (2 to 16), and any left after that
# 16 each: 1-3 rounds, i.e. host synchronisations. (A target of 1e-3 instead of 0.5 drew
# twice the proposals at kappa = 1e4 and measured 0.4 ms slower at d = 64.)
_PROPOSALS_FIRST_ROUND = 1
_PROPOSALS_LATER_ROUNDS = (2, 16)  # the fewest and the most per element and round
_PENDING_TARGET = 0.5


def _later_round_proposals(pending: int, acceptance: float) -> int:
    """Proposals per pending element for an expected ``_PENDING_TARGET`` left pending."""
    low, high = _PROPOSALS_LATER_ROUNDS
    if acceptance <= 0.0:
        return high
    if acceptance >= 1.0:
        return low
    needed = math.log(_PENDING_TARGET / pending) / math.log1p(-acceptance)
    return int(min(max(math.ceil(needed), low), high))


def _sample_one_minus_w_wood(kappa: torch.Tensor, d: int, gamma_proposals: bool = True):
    """Wood's (1994) rejection sampler for ``y = 1 - w``, vectorized over elements, float64;
    for concentrations above ``_gamma_proposal_threshold(d)`` the rejection sampler with
    gamma proposals of ``_gamma_propose`` instead (``gamma_proposals=False``: Wood's for all).

    Written in terms of ``y`` so that huge concentrations (``y ~ d / kappa``) keep relative
    precision. Each round draws one or more proposals per still-pending element at once
    (``_PROPOSALS_FIRST_ROUND``, then ``_later_round_proposals``) and keeps the first
    accepted one: an element's proposals are i.i.d. and independent of how many are drawn
    per round (which depends only on earlier rounds' outcomes), so this is the law of
    proposing one at a time. Raises after ``_MAX_REJECTION_ROUNDS`` rounds instead of
    returning unaccepted proposals. On CPU with numba, ``_sample_one_minus_w_compiled``:
    the same proposals and acceptance tests, one element at a time in a compiled loop.
    """
    threshold = _gamma_proposal_threshold(d) if gamma_proposals else math.inf
    kernels = _kernels() if kappa.device.type == "cpu" else None
    if kernels is not None:
        return _sample_one_minus_w_compiled(kernels, kappa, d, threshold)
    xp = _namespace(kappa)
    kappa_column = _as(_float64(kappa).reshape(-1, 1), xp)
    if threshold < math.inf:
        tight = kappa_column[:, 0] > threshold
        if bool(tight.all()):
            return _tensor(_rejection_sample(kappa_column, d, _gamma_propose)).reshape(kappa.shape)
        if bool(tight.any()):
            y = _rejection_sample(kappa_column, d, _wood_propose, rows=_flatnonzero(~tight, xp))
            rows = _flatnonzero(tight, xp)
            y[rows] = _rejection_sample(kappa_column[rows], d, _gamma_propose)
            return _tensor(y).reshape(kappa.shape)
    return _tensor(_rejection_sample(kappa_column, d, _wood_propose)).reshape(kappa.shape)


@functools.cache
def _kernels():
    """The compiled CPU kernels (``pvae.distributions._vmf_kernels``), imported on first use;
    None, with a warning, where numba cannot be imported or cannot cache its compiled code
    (the array code then runs on CPU too: same results, ~1.4-1.5x the time)."""
    try:
        from pvae.distributions import _vmf_kernels
    except (ImportError, RuntimeError) as error:
        warnings.warn(
            f"VonMisesFisher: the compiled CPU kernels are unavailable ({error}); using the "
            "slower array code. Install numba (a dependency of pvae), or set NUMBA_CACHE_DIR "
            "to a writable directory if numba could not cache its compiled code.",
            RuntimeWarning,
            stacklevel=2,
        )
        return None
    return _vmf_kernels


def _numpy_generator() -> np.random.Generator:
    """A numpy Generator (SFC64) seeded by one draw from torch's default generator, so that
    ``torch.manual_seed`` fixes what it draws as it fixes torch's own draws."""
    seed = int(torch.empty((), dtype=torch.int64).random_())
    return np.random.Generator(np.random.SFC64(seed))


def _sample_one_minus_w_compiled(kernels, kappa: torch.Tensor, d: int, threshold: float):
    """``_sample_one_minus_w_wood`` by ``kernels.sample_one_minus_w``: per element, Wood's
    proposals (gamma proposals above ``threshold``) until one is accepted, in a compiled
    loop, from ``_numpy_generator()``; float64, kappa's shape."""
    kappa64 = np.ascontiguousarray(_as(_float64(kappa), np).reshape(-1))
    _, b, r, bound = _wood_constants(kappa64, d)
    y = np.empty_like(kappa64)
    failed = kernels.sample_one_minus_w(
        kappa64, b, r, bound, d, threshold, 16 * _MAX_REJECTION_ROUNDS, _numpy_generator(), y
    )
    if failed:
        raise RuntimeError(
            f"VonMisesFisher.rsample: {failed} elements still rejected after "
            f"{16 * _MAX_REJECTION_ROUNDS} proposals of the rejection sampler; check the "
            "concentration values."
        )
    return torch.from_numpy(y).reshape(kappa.shape)


def _rejection_sample(kappa_column, d: int, propose, rows=None):
    """The rounds of ``_sample_one_minus_w_wood`` with one proposal function, for the
    elements ``rows`` of ``kappa_column`` (all if None; the others are left as zeros in
    the (n,) array returned)."""
    xp = np if isinstance(kappa_column, np.ndarray) else torch
    device = _device_of(kappa_column)
    if rows is not None:
        y_all = xp.zeros(kappa_column.shape[0], dtype=kappa_column.dtype)
        if xp is torch:
            y_all = y_all.to(device)
        y_all[rows] = _rejection_sample(kappa_column[rows], d, propose)
        return y_all
    constants = _wood_constants(kappa_column, d) if propose is _wood_propose else (kappa_column,)
    n = kappa_column.shape[0]
    y, pending, acceptance = None, None, 0.0
    for round_ in range(_MAX_REJECTION_ROUNDS):
        if pending is None:
            y, accepted = _first_accepted(constants, d, _PROPOSALS_FIRST_ROUND, device, propose)
            pending = _flatnonzero(~accepted, xp)
            acceptance = 1 - pending.shape[0] / max(n * _PROPOSALS_FIRST_ROUND, 1)
        else:
            proposals = (
                _later_round_proposals(pending.shape[0], acceptance)
                if round_ == 1
                else _PROPOSALS_LATER_ROUNDS[1]
            )
            chosen, accepted = _first_accepted(
                tuple(c[pending] for c in constants), d, proposals, device, propose
            )
            y[pending[accepted]] = chosen[accepted]
            pending = pending[~accepted]
        if pending.shape[0] == 0:
            return y
    left = n if pending is None else pending.shape[0]
    raise RuntimeError(
        f"VonMisesFisher.rsample: {left} elements still rejected after "
        f"{_MAX_REJECTION_ROUNDS} rounds of the rejection sampler; check the concentration "
        "values."
    )


def wood_acceptance_rate(kappa: torch.Tensor, d: int, num_proposals: int = 10_000) -> torch.Tensor:
    """Monte Carlo estimate of the acceptance probability of Wood's sampler (diagnostics)."""
    kappa = torch.as_tensor(kappa, dtype=torch.float64).reshape(-1, 1)
    _, accept = _wood_propose(_wood_constants(kappa, d), d, num_proposals, kappa.device)
    return accept.double().mean(-1).reshape(kappa.shape[:-1] if kappa.numel() != 1 else ())


def _quadrature_nodes(d: int) -> int:
    """Gauss-Legendre nodes of the implicit gradient for dimension d. Worst relative error of
    dw/dkappa against 400-600 nodes, over 2,000-4,000 draws at each kappa in 1e-3 .. 1e6:
    32 nodes 9e-10 at d = 64 (but 6e-9 at d = 80, 1e-6 at d = 96, 9e-6 at d = 128); 64 nodes
    1.5e-11 at d = 512 (1e-9 at d = 768, 6e-8 at d = 1024); 96 nodes 7e-12 at d = 1024;
    128 nodes 4e-11 at d = 2048."""
    if d <= 64:
        return 32
    if d <= 512:
        return 64
    return 96 if d <= 1024 else 128


@functools.lru_cache(maxsize=16)
def _quadrature_table(d: int, device: torch.device | None):
    """Per-node constants of the implicit-gradient quadrature (float64 tensors, or numpy
    arrays for ``device=None``): (1 - tau^2, log of ``weight * tau^(d-2)``, the (m, 2) matrix
    [1, tau^2])."""
    tau, weights = _gauss_legendre_unit(_quadrature_nodes(d), device or _CPU)
    tau2 = tau * tau
    log_base = torch.log(weights) + (d - 2) * torch.log(tau)
    moments = torch.stack([torch.ones_like(tau2), tau2], -1)
    table = (1 - tau2, log_base, moments)
    return tuple(t.numpy() for t in table) if device is None else table


def _implicit_dw_dkappa(
    y: torch.Tensor, kappa: torch.Tensor, d: int, one_minus_mean: torch.Tensor | None = None
) -> torch.Tensor:
    """``dw/dkappa = -(dF/dkappa) / p(w)`` for the marginal of ``w = <loc, x>`` (float64).

    With ``p(s) ∝ exp(kappa s) (1 - s^2)^((d-3)/2)`` and ``A = E[s] = A_d(kappa)``,
    ``dF(w)/dkappa = int_{-1}^{w} (s - A) p(s) ds = -int_{w}^{1} (s - A) p(s) ds``. We integrate
    over the side nearer to w (distance ``delta <= 1``) with ``s = ±(1 - delta tau^2)``, which
    removes the endpoint singularity ``(1 - s^2)^((d-3)/2)``, by Gauss-Legendre in ``tau``
    (``_quadrature_nodes(d)``: 32 nodes for d <= 64, 64 for d <= 512, 96 for d <= 1024, 128
    above), with ``p(s) / p(w)`` formed in log space: 1e-9 relative or better up to d = 2048
    and kappa from 1e-3 to 1e6 against a 400-600 node reference (until issue 23's third pass
    d <= 128 took 32 nodes, which erred up to 1e-5 relative at d = 96-128).

    For d >= 4, draws far below the mean (slope ``lambda`` of ``log p`` at w at least
    ``_TAIL_MIN_SLOPE_SDS`` = 2 times ``sqrt(-(log p)'')`` there, and
    ``lambda (1 + w) >= _TAIL_MIN_DECAY`` = 40: ``_lower_tail_draws``, 2-5% of the draws at
    d = 64-512, kappa >= 100) take ``_implicit_dw_dkappa_lower_tail``, Gauss-Laguerre over the
    tail side [-1, w]: for them the nearer side [w, 1] holds the mode, its terms cancel, and
    the fixed nodes do not resolve its peak (against mpmath, before: 1e-10 relative at 4 s.d.
    below the mean, 1.5e-6 at 6, 0.02 at 8 at d = 64, kappa = 1e3; 0.8 at 8 s.d. at d = 512).
    Now, against mpmath at 274 draws (d = 5 .. 2048, kappa = 1 .. 1e6, w from 14 s.d. below
    the mean to 6 above): worst 3e-12 relative up to kappa = 1e4 (lower-tail draws 5e-13, the
    rounding of ``1 - A`` at d = 16; 2e-14 at d >= 64), 2e-10 at kappa = 1e6, where
    ``1 - A`` itself is rounded to 7e-11 (d = 5).

    ``sum_j e_j (s_j - A)`` is split as ``(1 - A - 2 [bottom]) sum_j e_j - sign delta sum_j e_j
    tau_j^2``: one exp over the (samples, nodes) grid and one matrix product. Same value as
    the per-node form it replaced (tests/distributions/test_spherical.py compares them on the
    same draws). Everything runs in ``_namespace``, the (samples, nodes) grid included (with
    numpy 2.4's SIMD exp and log1p, 35 and 42 us on a (1024, 32) float64 grid on CPU, torch's
    take 80-90 us; with numpy 1.x it was the other way round). ``one_minus_mean``:
    ``1 - A_d(kappa)`` if already computed.
    """
    if one_minus_mean is None:
        one_minus_mean = 1 - bessel_iv_ratio(d / 2 - 1, kappa.detach().double())
    xp = _namespace(y)
    kernels = _kernels() if xp is np else None
    if kernels is not None:
        return _implicit_dw_dkappa_compiled(kernels, y, kappa, d, one_minus_mean)
    y, kappa, one_minus_mean = (
        _as(_expand(_float64(t), y.shape), xp) for t in (y, kappa, one_minus_mean)
    )
    one_minus_tau2, log_base, moments = _quadrature_table(d, None if xp is np else y.device)
    bottom = y > 1
    delta = xp.where(bottom, 2 - y, y)
    sign = 1 - 2.0 * bottom
    # log p(s) / p(w) - log(2 delta) = kappa sign delta (1 - tau^2) + (d - 2) log tau
    #   + (d - 3)/2 log1p(delta / (2 - delta) (1 - tau^2))
    if xp is np:  # in place on the (..., nodes) grid
        log_ratio = (kappa * sign * delta)[..., None] * one_minus_tau2
        log_ratio += log_base
        if d != 3:
            ratio = (delta / (2 - delta))[..., None] * one_minus_tau2
            np.log1p(ratio, out=ratio)
            ratio *= 0.5 * (d - 3)
            log_ratio += ratio
        sums = np.exp(log_ratio, out=log_ratio) @ moments  # sum_j e_j, sum_j e_j tau_j^2
    else:
        log_ratio = torch.addcmul(log_base, (kappa * sign * delta)[..., None], one_minus_tau2)
        if d != 3:
            ratio = (delta / (2 - delta))[..., None] * one_minus_tau2
            log_ratio.add_(ratio.log1p_(), alpha=0.5 * (d - 3))
        sums = log_ratio.exp_() @ moments
    integral = (one_minus_mean - 2.0 * bottom) * sums[..., 0] - sign * delta * sums[..., 1]
    dw_dkappa = sign * 2 * delta * integral
    # the lower-tail rule needs a log-concave p: not d = 2 ((1 - s^2)^(-1/2)); d = 3 draws w
    # exactly (rsample differentiates the inverse CDF) and keeps the nearer-side rule here
    if d > 3:
        tail = _lower_tail_draws(y, kappa, d, xp)
        if bool(tail.any()):
            # flat copies: numpy turns 0-d results into scalars, which take no item assignment
            rows = _flatnonzero(tail.reshape(-1), xp)
            flat = np.array(dw_dkappa).reshape(-1) if xp is np else dw_dkappa.reshape(-1).clone()
            flat[rows] = _implicit_dw_dkappa_lower_tail(
                *(a.reshape(-1)[rows] for a in (y, kappa, one_minus_mean)), d, xp
            )
            dw_dkappa = flat.reshape(y.shape)
    return _tensor(dw_dkappa)


def _implicit_dw_dkappa_compiled(kernels, y, kappa, d: int, one_minus_mean) -> torch.Tensor:
    """``_implicit_dw_dkappa`` on CPU with the compiled kernels: the exponents of the
    (samples, nodes) grid in one pass, numpy's SIMD exp, then per sample the factor
    ``(1 + r (1 - tau^2))^m`` by repeated squaring (instead of a log1p per node) and the node
    sums in one pass; the lower-tail draws as in the array code.
    Same values to rounding (tests/distributions/test_vmf_kernels.py)."""
    shape = y.shape
    y, kappa, one_minus_mean = (
        np.ascontiguousarray(_as(_expand(_float64(t), shape), np).reshape(-1))
        for t in (y, kappa, one_minus_mean)
    )
    one_minus_tau2, log_base, _ = _quadrature_table(d, None)
    grid = np.empty((y.shape[0], one_minus_tau2.shape[0]))
    kernels.implicit_exponents(y, kappa, one_minus_tau2, log_base, grid)
    np.exp(grid, out=grid)
    dw_dkappa = np.empty_like(y)
    kernels.implicit_sums(y, one_minus_mean, one_minus_tau2, d, grid, dw_dkappa)
    tail = _lower_tail_draws(y, kappa, d, np) if d > 3 else np.zeros(y.shape, dtype=bool)
    if tail.any():
        rows = np.flatnonzero(tail)
        dw_dkappa[rows] = _implicit_dw_dkappa_lower_tail(
            y[rows], kappa[rows], one_minus_mean[rows], d, np
        )
    return torch.from_numpy(dw_dkappa).reshape(shape)


# ``_implicit_dw_dkappa`` takes the lower-tail rule for draws whose slope of log p at w is at
# least this many standard deviations of the local curvature (measured: Gauss-Laguerre with
# 32 nodes errs <= 2e-14 from 2 up, 1e-9 at 1, 1e-5 at 0.5; the nearer-side rule <= 3e-12
# up to 3, 1e-10 at 4, 2e-9 at 5, 1e-6 at 6, 1 at 8) ...
_TAIL_MIN_SLOPE_SDS = 2.0
# ... and whose ``slope * (1 + w)`` (the Laguerre variable at s = -1, where the density ends)
# is at least this: the nodes beyond it are clipped there, an error below exp(-40) relative.
_TAIL_MIN_DECAY = 40.0
_TAIL_NODES = 32


def _lower_tail_draws(y, kappa, d: int, xp):
    """The draws of ``_implicit_dw_dkappa`` that take ``_implicit_dw_dkappa_lower_tail``: slope
    ``lambda = kappa - (d - 3) w / (1 - w^2)`` of log p at w = 1 - y at least
    ``_TAIL_MIN_SLOPE_SDS / sqrt(c)``, with ``c = (d - 3) (1 + w^2) / (1 - w^2)^2`` the
    curvature of -log p there, and ``lambda (1 + w) >= _TAIL_MIN_DECAY``. Written with
    ``q = lambda (1 - w^2)``, which needs no division."""
    w = 1 - y
    w2 = w * w
    q = kappa * (1 - w2) - (d - 3) * w
    bound = (_TAIL_MIN_SLOPE_SDS**2 * (d - 3)) * (1 + w2)
    return (q >= _TAIL_MIN_DECAY * y) & (q * q >= bound)


@functools.lru_cache(maxsize=4)
def _gauss_laguerre(n: int, device: torch.device | None):
    """Gauss-Laguerre nodes and the (n, 2) matrix [weights, weights * nodes], float64: numpy
    arrays for ``device=None``, tensors otherwise."""
    nodes, weights = np.polynomial.laguerre.laggauss(n)
    matrix = np.stack([weights, weights * nodes], -1)
    if device is None:
        return nodes, matrix
    return tuple(torch.as_tensor(a, dtype=torch.float64, device=device) for a in (nodes, matrix))


def _implicit_dw_dkappa_lower_tail(y, kappa, one_minus_mean, d: int, xp):
    """dw/dkappa for draws far below the mean (see ``_implicit_dw_dkappa``), from the tail
    side: ``int_{-1}^{w} (A - s) p(s) / p(w) ds``, all terms positive. With
    ``t = w - s = x / lambda`` (``lambda > 0`` the slope of log p at w),
    ``p(w - t) / p(w) = exp(-x + g(t))``, ``g(t) = m (phi(t / (1 - w)) + phi(-t / (1 + w)))``,
    ``phi(u) = log1p(u) - u <= 0``, ``m = (d - 3) / 2``: log-concavity leaves a flat factor
    ``exp(g) <= 1`` (about ``exp(-x^2 / (2 z^2))``, z the slope in standard deviations) under
    the Laguerre weight ``exp(-x)``; Gauss-Laguerre in x:
    ``(1 / lambda) sum_j W_j (A - w + x_j / lambda) exp(g(x_j / lambda))``. 1-d ``xp``
    arrays in and out; the (draws, nodes) grid in ``xp`` too (a few percent of the draws:
    numpy's per-call cost is what counts on CPU)."""
    nodes, matrix = _gauss_laguerre(_TAIL_NODES, None if xp is np else _device_of(y))
    # g = m (log1p(alpha t - beta t^2) - alpha t), alpha = 2 w / (1 - w^2), beta = 1 / (1 - w^2)
    # (one log1p), alpha and beta scaled here to x = lambda t. The argument of log1p reaches -1
    # at s = -1: nodes past it are clipped rather than dropped, as their weights are below
    # exp(-_TAIL_MIN_DECAY) and exp(g) <= 1.
    one_minus_w2 = y * (2 - y)
    inv_slope = 1 / (kappa - (d - 3) * (1 - y) / one_minus_w2)
    alpha = (2 * (1 - y) / one_minus_w2 * inv_slope)[:, None]
    beta = (inv_slope * inv_slope / one_minus_w2)[:, None]
    argument = (alpha - beta * nodes) * nodes
    argument = _clip_below(argument, -1 + 2.0**-52, xp)
    half_m = 0.5 * (d - 3)
    factor = xp.exp(half_m * xp.log1p(argument) - (half_m * alpha) * nodes)
    sums = factor @ matrix  # sum_j W_j exp(g_j), sum_j W_j x_j exp(g_j)
    # A - w = y - (1 - A): exact when A is near 1
    return ((y - one_minus_mean) * sums[:, 0] + sums[:, 1] * inv_slope) * inv_slope


def _device_of(a) -> torch.device:
    return a.device if isinstance(a, torch.Tensor) else _CPU


_CPU = torch.device("cpu")


class _Reflection:
    """The per-sample scalars of ``_reflect`` (``_namespace`` arrays, float64), for the
    backward."""

    __slots__ = (
        "xp", "sign", "w", "sin", "alpha", "q", "p", "loc_v", "loc_g", "loc_sq", "loc_1", "u1",
        "inv_norm", "norm2",
    )  # fmt: skip

    def __init__(self, **scalars):
        for name, value in scalars.items():
            setattr(self, name, value)


def _numpy_float64(xp, *tensors: torch.Tensor) -> bool:
    return xp is np and all(t.dtype == torch.float64 for t in tensors)


def _einsum_rowdot(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.einsum("...i,...i->...", a, b)


# Dot products over the last axis of float64 numpy arrays: numpy's fused loops write no (n, d)
# product (torch's vecdot does). ``np.vecdot`` (numpy >= 2): 23 us on contiguous (1024, 64)
# arrays against 32 us for einsum (numpy 1.x) and 36 us for torch's vecdot.
_rowdot = getattr(np, "vecdot", _einsum_rowdot)


def _reflect(
    y, gaussian: torch.Tensor, loc: torch.Tensor, loc_sq=None
) -> tuple[torch.Tensor, _Reflection]:
    """``x = Q [w; sqrt(1 - w^2) g / |g|]`` (see ``_ReflectFromE1``) and its scalars. Passes
    over the (n, d) arrays in torch, the per-sample scalars in ``_namespace``; ``y``: a
    tensor of any floating dtype, or a float64 numpy array. ``loc_sq``: ``|loc|^2`` per
    sample as a float64 numpy array if known (the parameter check computes ``|loc|``)."""
    # squared norms by vector_norm (a fused reduction; vecdot writes the product first)
    xp = _namespace(loc)
    if _numpy_float64(xp, loc, gaussian):
        loc_n, gaussian_n = _as(loc, np), _as(gaussian, np)
        norm2 = _rowdot(gaussian_n, gaussian_n)
        loc_g = _rowdot(loc_n[..., 1:], gaussian_n)
        loc_sq = _rowdot(loc_n, loc_n) if loc_sq is None else loc_sq
        loc_1 = loc_n[..., 0]
    else:
        sums = torch.stack(
            [
                torch.linalg.vecdot(gaussian, gaussian),
                torch.linalg.vecdot(loc[..., 1:], gaussian),
                torch.linalg.vecdot(loc, loc),
                loc[..., 0],
            ]
        )
        norm2, loc_g, loc_sq, loc_1 = _as(sums.double(), xp)
    norm = xp.sqrt(norm2)
    y = _as(y.double(), xp) if isinstance(y, torch.Tensor) else y
    sign = 1 - 2.0 * (loc_1 < 0)
    inv_norm = 1 / norm
    w = 1 - y
    sin = xp.sqrt(_clip_below(y * (2 - y), 0.0, xp))
    loc_v = loc_g * inv_norm  # loc_{2:}.v
    abs_loc_1 = xp.abs(loc_1)
    u1 = abs_loc_1 + 1  # u_1 = sign loc_1 + 1
    q = loc_sq + 2 * abs_loc_1 + 1  # |u|^2
    p = u1 * w + sign * sin * loc_v  # u.x0
    alpha = 2 * p / q
    # x = alpha loc + sign (alpha - w) e1 - sign sin v
    x = loc * _column(alpha, loc.dtype)
    # select/narrow views: x[..., 0] += ... costs a getitem, an add and a setitem copy
    x.select(-1, 0).add_(_cast(_tensor(sign * (alpha - w)), loc.dtype))
    x.narrow(-1, 1, x.shape[-1] - 1).addcmul_(gaussian, _column(-sign * sin * inv_norm, loc.dtype))
    scalars = _Reflection(
        xp=xp, sign=sign, w=w, sin=sin, alpha=alpha, q=q, p=p, loc_v=loc_v, loc_g=loc_g,
        loc_sq=loc_sq, loc_1=loc_1, u1=u1, inv_norm=inv_norm, norm2=norm2,
    )  # fmt: skip
    return x, scalars


def _add_scaled(out: torch.Tensor, grad: torch.Tensor, column: torch.Tensor) -> torch.Tensor:
    """``out += grad * column`` in place. A gradient constant along the last dim (expanded,
    e.g. from ``x.sum()``) adds one column: torch's addcmul on a stride-0 operand takes a
    scalar loop (3 times the time)."""
    if grad.stride(-1) == 0:
        return out.add_(grad[..., :1] * column)
    return out.addcmul_(grad, column)


def _reflect_backward(
    s: _Reflection,
    gaussian: torch.Tensor,
    loc: torch.Tensor,
    x: torch.Tensor,
    grad: torch.Tensor | None,
    grad_h=None,
    need_loc: bool = True,
):
    """(dL/dy as a ``_namespace`` array, dL/dloc or None) for the incoming gradient ``grad``
    of x (None: zero) and ``grad_h`` (a float64 ``_namespace`` array or None) of
    ``h = |x - loc|^2 / 2``.

    With ``g_x`` the total gradient of x, ``sign = ±1`` the sign of ``loc_1``,
    ``v = g / |g|``, ``u = sign loc + e1``, ``x0 = [w; s v]``, ``q = u.u``, ``alpha = 2 u.x0 / q``:
    ``x = sign (alpha u - x0)``; ``dL/dloc = alpha g_x - (2 (g_x.u) / q) sign x`` and
    ``dL/dw = sign (alpha' (g_x.u) - g_x.x0')`` with ``x0' = [1; -(w / s) v]``,
    ``alpha' = 2 u.x0' / q``. ``h`` adds ``grad_h (x - loc)`` to ``g_x`` and
    ``-grad_h (x - loc)`` to ``dL/dloc``: its dot products with loc, e1 and g follow from
    the scalars of the forward (``x.loc = w + (|loc|^2 - 1) u.x0 / q``), so h costs no pass
    over the (n, d) arrays beyond one more term in dL/dloc.
    """
    xp = s.xp
    if grad is not None and _numpy_float64(xp, grad, loc, gaussian):
        grad_n = _as(grad, np)
        g_loc = _rowdot(grad_n, _as(loc, np))
        g_g = _rowdot(grad_n[..., 1:], _as(gaussian, np))
        g_1 = grad_n[..., 0]
    elif grad is not None:
        sums = torch.stack(
            [
                torch.linalg.vecdot(grad, loc),
                torch.linalg.vecdot(grad[..., 1:], gaussian),
                grad[..., 0],
            ]
        )
        g_loc, g_g, g_1 = _as(sums.double(), xp)
    else:
        g_loc = g_g = g_1 = 0.0
    if grad_h is not None:
        x_loc = s.w + (s.loc_sq - 1) * s.p / s.q
        x_1 = s.alpha * s.loc_1 + s.sign * (s.alpha - s.w)
        x_g = s.alpha * s.loc_g - s.sign * s.sin * s.inv_norm * s.norm2
        g_loc = g_loc + grad_h * (x_loc - s.loc_sq)
        g_g = g_g + grad_h * (x_g - s.loc_g)
        g_1 = g_1 + grad_h * (x_1 - s.loc_1)
    g_u = s.sign * g_loc + g_1  # g.u
    ds = -s.w / _clip_below(s.sin, np.finfo(np.float64).tiny, xp)  # d sin / dw
    u_dx0 = s.u1 + ds * s.sign * s.loc_v
    g_dx0 = g_1 + ds * g_g * s.inv_norm
    grad_y = -s.sign * (2 * u_dx0 / s.q * g_u - g_dx0)
    if not need_loc:
        return grad_y, None
    coef_x = -2 * s.sign * g_u / s.q
    if grad_h is None:
        grad_loc = x * _column(coef_x, loc.dtype)
        return grad_y, _add_scaled(grad_loc, grad, _column(s.alpha, loc.dtype))
    # alpha g_x + coef_x x - grad_h (x - loc), with g_x = grad + grad_h (x - loc)
    grad_loc = x * _column(coef_x + (s.alpha - 1) * grad_h, loc.dtype)
    grad_loc.addcmul_(loc, _column((1 - s.alpha) * grad_h, loc.dtype))
    if grad is not None:
        _add_scaled(grad_loc, grad, _column(s.alpha, loc.dtype))
    return grad_y, grad_loc


class _ReflectFromE1(torch.autograd.Function):
    """``x = Q [w; sqrt(1 - w^2) g / |g|]`` with Q the reflection of ``_householder_from_e1``
    and ``w = 1 - y``, with a hand-written backward (fewer passes over the (n, d) arrays;
    see ``_reflect_backward``). Optionally ``kappa`` and ``dy/dkappa`` (the implicit
    gradient): then the gradient of ``kappa`` is ``dL/dy dy/dkappa`` (a sampled ``y`` that
    does not itself carry a graph).

    ``g`` (any nonzero vectors of size d - 1) is normalized inside through the scalar
    ``1 / |g|`` rather than by a pass over ``g``.
    """

    @staticmethod
    def forward(ctx, y, gaussian, loc, kappa, dy_dkappa):
        x, ctx.scalars = _reflect(y, gaussian, loc)
        ctx.save_for_backward(gaussian, loc, x, dy_dkappa)
        return x

    @staticmethod
    def backward(ctx, grad):
        gaussian, loc, x, dy_dkappa = ctx.saved_tensors
        grad_y, grad_loc = _reflect_backward(
            ctx.scalars, gaussian, loc, x, grad, need_loc=ctx.needs_input_grad[2]
        )
        grad_y = _tensor(grad_y)
        grad_kappa = None
        if ctx.needs_input_grad[3]:
            grad_kappa = (grad_y * dy_dkappa).to(grad.dtype)
        grad_y = grad_y.to(grad.dtype) if ctx.needs_input_grad[0] else None
        return grad_y, None, grad_loc, grad_kappa, None


_COMPILED_DTYPES = (torch.float32, torch.float64)


def _compiled_reflection(loc: torch.Tensor, gaussian_dtype: torch.dtype):
    """The compiled kernels if the reflection of ``loc`` and Gaussians of ``gaussian_dtype``
    takes them (CPU, float32 or float64, numba present), else None."""
    if loc.device.type != "cpu" or loc.dtype not in _COMPILED_DTYPES:
        return None
    if gaussian_dtype not in _COMPILED_DTYPES:
        return None
    return _kernels()


def _rows(t: torch.Tensor) -> np.ndarray:
    """``t`` as an (n, last) numpy array (a view where torch can reshape without copying)."""
    return t.detach().reshape(-1, t.shape[-1]).numpy()


def _reflect_compiled(kernels, y, gaussian, loc, loc_sq=None):
    """(x, per-sample scalars, h) of ``_SampleAndDistance``'s forward by the compiled
    ``reflect_forward``: x in loc's dtype and shape, h float64 in the batch shape."""
    loc_rows = _rows(loc)
    y = np.ascontiguousarray(_as(_float64(y), np).reshape(-1)) if isinstance(y, torch.Tensor) else y
    x = torch.empty(loc.shape, dtype=loc.dtype)
    scalars = np.empty((loc_rows.shape[0], kernels.SCALARS))
    h = np.empty(loc_rows.shape[0])
    known = _EMPTY if loc_sq is None else np.ascontiguousarray(loc_sq, dtype=np.float64).reshape(-1)
    kernels.reflect_forward(y.reshape(-1), _rows(gaussian), loc_rows, known, _rows(x), scalars, h)
    return x, scalars, torch.from_numpy(h).reshape(loc.shape[:-1])


_EMPTY = np.empty(0)


def _reflect_backward_compiled(kernels, scalars, gaussian, loc, x, grad, grad_h, need_loc):
    """(dL/dy as a flat float64 array, dL/dloc or None) of ``_SampleAndDistance`` by the
    compiled ``reflect_backward``."""
    n = scalars.shape[0]
    if grad is None:
        grad_rows = np.empty((n, 0), dtype=x.detach().numpy().dtype)
    elif grad.stride(-1) == 0:  # constant along rows (from x.sum(), say): one value per row
        grad_rows = _rows(grad[..., :1])
    else:
        grad_rows = _rows(grad)
    grad_h = _EMPTY if grad_h is None else _as(_float64(grad_h), np).reshape(-1)
    grad_y = np.empty(n)
    x_rows = _rows(x)
    grad_loc = torch.empty(loc.shape, dtype=loc.dtype) if need_loc else None
    grad_loc_rows = _rows(grad_loc) if need_loc else np.empty((0, 0), dtype=x_rows.dtype)
    kernels.reflect_backward(
        scalars, _rows(gaussian), _rows(loc), x_rows, grad_rows, grad_h, need_loc, grad_y,
        grad_loc_rows,
    )  # fmt: skip
    return grad_y, grad_loc


class _SampleAndDistance(torch.autograd.Function):
    """``rsample``'s Function: ``(x, h)`` with x as in ``_ReflectFromE1`` (from a float64
    ``y``, a sample that carries no graph) and ``h = |x - loc|^2 / 2`` in float64, which
    ``log_prob`` of this very sample uses instead of a pass over x and loc.

    ``h = y + (|loc|^2 - 1) (q - 2 u.x0) / (2 q)`` from the forward's scalars (``= y`` for a
    unit loc, without the rounding of x). The backward takes both gradients at once
    (``_reflect_backward``) and gives kappa ``dL/dy dy/dkappa``.
    """

    @staticmethod
    def forward(ctx, y, gaussian, loc, kappa, dy_dkappa, loc_sq=None):
        ctx.set_materialize_grads(False)
        ctx.compiled = _compiled_reflection(loc, gaussian.dtype)
        if ctx.compiled is not None:
            x, scalars, h = _reflect_compiled(ctx.compiled, y, gaussian, loc, loc_sq)
            ctx.scalars = scalars
            ctx.dy_dkappa = None if dy_dkappa is None else _as(dy_dkappa, np).reshape(-1)
            ctx.save_for_backward(gaussian, loc, x)
            return x, h
        xp = _namespace(y)
        y = _as(y, xp)
        x, s = _reflect(y, gaussian, loc, loc_sq)
        h = _tensor(y + (s.loc_sq - 1) * (s.q - 2 * s.p) / (2 * s.q))
        ctx.scalars = s
        ctx.dy_dkappa = None if dy_dkappa is None else _as(dy_dkappa, xp)
        ctx.save_for_backward(gaussian, loc, x)
        return x, h

    @staticmethod
    def backward(ctx, grad, grad_h):
        gaussian, loc, x = ctx.saved_tensors
        s = ctx.scalars
        if grad is None and grad_h is None:
            return None, None, None, None, None, None
        if ctx.compiled is not None:
            grad_y, grad_loc = _reflect_backward_compiled(
                ctx.compiled, s, gaussian, loc, x, grad, grad_h, ctx.needs_input_grad[2]
            )
            grad_kappa = None
            if ctx.needs_input_grad[3]:
                grad_kappa = torch.from_numpy(grad_y * ctx.dy_dkappa)
                grad_kappa = _cast(grad_kappa, loc.dtype).reshape(loc.shape[:-1])
            return None, None, grad_loc, grad_kappa, None, None
        grad_h = None if grad_h is None else _as(grad_h, s.xp)
        grad_y, grad_loc = _reflect_backward(
            s, gaussian, loc, x, grad, grad_h, need_loc=ctx.needs_input_grad[2]
        )
        grad_kappa = None
        if ctx.needs_input_grad[3]:
            grad_kappa = _cast(_tensor(grad_y * ctx.dy_dkappa), loc.dtype)
        return None, None, grad_loc, grad_kappa, None, None


class _LogDensityOfSample(torch.autograd.Function):
    """``log C + kappa - kappa h`` given ``h = |x - loc|^2 / 2`` (float64, from
    ``_SampleAndDistance``), the cached ``log C + kappa`` and ``1 - A``, in kappa's dtype:
    ``dL/dh = -g kappa``, ``dL/dkappa = g (1 - A - h)``."""

    @staticmethod
    def forward(ctx, h, kappa, log_norm, one_minus_mean):
        xp = _namespace(h)
        h, kappa64, log_norm, one_minus_mean = (
            _as(_float64(t), xp) for t in (h, kappa, log_norm, one_minus_mean)
        )
        ctx.scalars = (xp, h, kappa64, one_minus_mean)
        return _cast(_tensor(log_norm - kappa64 * h), kappa.dtype)

    @staticmethod
    def backward(ctx, grad):
        xp, h, kappa, one_minus_mean = ctx.scalars
        grad64 = _as(_float64(grad), xp)
        grad_h = _tensor(-grad64 * kappa) if ctx.needs_input_grad[0] else None
        grad_kappa = None
        if ctx.needs_input_grad[1]:
            grad_kappa = _cast(_tensor(grad64 * (one_minus_mean - h)), grad.dtype)
        return grad_h, grad_kappa, None, None


class _HalfSquaredDistance(torch.autograd.Function):
    """``|value - loc|^2 / 2`` over the last dim, backward ``(value - loc) g`` and its
    negative (one pass each way instead of autograd's four)."""

    @staticmethod
    def forward(ctx, value, loc):
        diff = value - loc
        ctx.save_for_backward(diff)
        return 0.5 * torch.linalg.vecdot(diff, diff)

    @staticmethod
    def backward(ctx, grad):
        (diff,) = ctx.saved_tensors
        grad_value = diff * grad.unsqueeze(-1)
        grad_loc = -grad_value if ctx.needs_input_grad[1] else None
        return (grad_value if ctx.needs_input_grad[0] else None), grad_loc


class _LogDensity(torch.autograd.Function):
    """``log C + kappa - kappa |x - loc|^2 / 2`` given the cached ``log C + kappa`` and
    ``1 - A`` (its kappa derivative): ``dL/dx = -g kappa (x - loc) = -dL/dloc``,
    ``dL/dkappa = g (1 - A - |x - loc|^2 / 2)``. Inputs of one broadcast shape."""

    @staticmethod
    def forward(ctx, value, loc, kappa, log_norm, one_minus_mean):
        diff = value - loc
        half_sq_dist = 0.5 * torch.linalg.vecdot(diff, diff)
        ctx.save_for_backward(diff, kappa, half_sq_dist, one_minus_mean)
        return log_norm.to(diff.dtype) - kappa * half_sq_dist

    @staticmethod
    def backward(ctx, grad):
        diff, kappa, half_sq_dist, one_minus_mean = ctx.saved_tensors
        grad_value = diff * (-grad * kappa).unsqueeze(-1)
        grad_loc = -grad_value if ctx.needs_input_grad[1] else None
        grad_kappa = None
        if ctx.needs_input_grad[2]:
            grad_kappa = grad * (one_minus_mean.to(grad.dtype) - half_sq_dist)
        return grad_value, grad_loc, grad_kappa, None, None


def _expand(t: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """``t.expand(shape)``, or ``t`` itself when it has that shape (no autograd node)."""
    return t if t.shape == shape else t.expand(shape)


def half_squared_distance(value: torch.Tensor, loc: torch.Tensor) -> torch.Tensor:
    """``|value - loc|^2 / 2`` over the last dim, broadcasting, with a one-pass backward."""
    value, loc = torch.broadcast_tensors(value, loc)
    return _HalfSquaredDistance.apply(value, loc)


def _tangent_gaussians(shape: torch.Size, d: int, dtype, device) -> torch.Tensor:
    """Gaussian vectors of dimension d - 1 whose direction is the uniform tangent direction
    (``_ReflectFromE1`` normalizes them in ``dtype``).

    The Gaussians are drawn in float32 whatever ``dtype`` (torch's float64 normal sampler is
    4-5 times slower on CPU, the largest single cost of ``rsample`` at d >= 64) and cast: the
    direction only needs float32 resolution, and the normalization in ``dtype`` keeps unit
    norm to ``dtype``'s precision. Deviation from uniformity: torch's float32 Box-Muller caps
    each Gaussian pair's radius at sqrt(48 log 2) = 5.77 (probability 2^-24 = 6e-8 per pair),
    so the direction is uniform up to a total variation distance of at most
    (d - 1) / 2 * 6e-8 (1.5e-5 at d = 512), on a float32 lattice (relative spacing 6e-8).
    """
    return torch.randn(shape + (d - 1,), dtype=torch.float32, device=device).to(dtype)


def _householder_from_e1(x: torch.Tensor, loc: torch.Tensor) -> torch.Tensor:
    """Apply an orthogonal map Q with ``Q e1 = loc`` to ``x`` (last dim), stable for any loc.

    For ``loc_1 >= 0`` we reflect with ``u = e1 + loc`` and negate, otherwise reflect with
    ``u = e1 - loc``; either way ``|u|^2 >= 2`` so nothing divides by a small number.
    """
    sign = torch.where(loc[..., :1] >= 0, 1.0, -1.0).to(loc.dtype)
    u = sign * loc
    u = torch.cat([u[..., :1] + 1, u[..., 1:]], -1)
    scale = 2 * (u * x).sum(-1, keepdim=True) / (u * u).sum(-1, keepdim=True)
    return -sign * (x - scale * u)


class VonMisesFisher(SphericalLocConcentration):
    r"""von Mises-Fisher distribution on the unit sphere :math:`S^{d-1} \subset R^d`, [1]

    .. math:: p(x) = C_d(\kappa) \exp(\kappa \mu^T x), \quad
        C_d(\kappa) = \frac{\kappa^{d/2-1}}{(2\pi)^{d/2} I_{d/2-1}(\kappa)}.

    ``rsample`` draws ``w = <mu, x>`` by Wood's rejection sampler [2] (exact inverse CDF for
    d = 3; for ``kappa > 2.5 m (m + 1)``, ``m = (d - 3) / 2``, where Wood's acceptance falls
    to ~0.7, a rejection sampler with gamma proposals for ``1 - w`` whose acceptance is
    above ~0.82, see ``_gamma_propose``), a uniform tangent direction, and a Householder reflection of ``e1`` onto ``mu``,
    as in the hyperspherical VAE [3]. Gradients are pathwise and unbiased in both ``loc`` and
    ``concentration``: the gradient of ``w`` in ``kappa`` is the implicit reparameterization
    gradient [4] ``dw/dkappa = -(dF/dkappa)/p(w)`` (``F`` the CDF of ``w``), evaluated by
    quadrature. We deliberately do not use the rejection-sampling reparameterization with a
    score-function correction [5], nor drop that correction (which biases the gradient).

    ``log_prob``, ``mean``, ``entropy`` and the KL divergences to
    :class:`~pvae.distributions.HypersphericalUniform` and to another ``VonMisesFisher`` are
    exact (``log_bessel_iv`` / ``bessel_iv_ratio``). Internally the per-sample scalars
    (sampler, quadrature, normalizer) run in float64 and are cast back to the parameters'
    dtype; the (n, d) work runs in that dtype, and the tangent direction comes from float32
    Gaussians (uniform up to a total variation of (d - 1) / 2 * 2^-24, see
    ``_tangent_gaussians``). With float32 parameters samples match the float64 ones on the
    same draws to 2e-6 (tests/distributions/test_spherical.py). On CPU the sampler's loop,
    the reflection and its backward, and most of the quadrature run as compiled kernels
    (numba, ``pvae.distributions._vmf_kernels``; compiled on the first CPU draw of a new
    install, a few seconds, then loaded from numba's cache), the rest in numpy; Wood's
    proposals then come from a numpy Generator seeded by torch's, so ``torch.manual_seed``
    fixes the draws. On CUDA everything runs in torch.

    ``log_prob`` of the very tensor that ``rsample`` (d != 3) last returned, unmodified (as
    in an ELBO), reads ``|x - mu|^2 / 2`` from the sampler's scalars and folds its x and mu
    gradients into ``rsample``'s backward; any other tensor, a clone included, takes the
    general path (same values and gradients to ~eps (1 + kappa), tested on the same draws).

    :param torch.Tensor loc: mean direction, shape ``(..., d)``, unit norm, ``d >= 2``.
    :param torch.Tensor concentration: ``kappa > 0``, shape broadcastable with ``loc[..., 0]``.

    References:
        [1] K. V. Mardia and P. E. Jupp, *Directional Statistics*, Wiley (2000).
        [2] A. T. A. Wood, "Simulation of the von Mises Fisher distribution",
            Communications in Statistics - Simulation and Computation 23(1) (1994).
        [3] T. R. Davidson, L. Falorsi, N. De Cao, T. Kipf, J. M. Tomczak, "Hyperspherical
            Variational Auto-Encoders", UAI 2018, https://arxiv.org/abs/1804.00891
        [4] M. Figurnov, S. Mohamed, A. Mnih, "Implicit Reparameterization Gradients",
            NeurIPS 2018, https://arxiv.org/abs/1805.08498
        [5] C. A. Naesseth, F. J. R. Ruiz, S. W. Linderman, D. M. Blei, "Reparameterization
            Gradients through Acceptance-Rejection Sampling Algorithms", AISTATS 2017,
            https://arxiv.org/abs/1610.05683
    """

    _shape_hint = "; for a circle use d = 2"

    @property
    def mean(self) -> torch.Tensor:
        return self._mean_resultant_length().unsqueeze(-1) * self.loc

    def _mean_resultant_length(self) -> torch.Tensor:
        return bessel_iv_ratio(self.dim / 2 - 1, self.concentration)

    def sample(self, sample_shape=()) -> torch.Tensor:
        with torch.no_grad():
            return self.rsample(sample_shape)

    def _normalizer_terms(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(log C + kappa, 1 - A)`` for ``self.concentration`` (float64, no gradient),
        computed once per instance and concentration version: ``rsample`` and ``log_prob``
        on the same distribution (as in an ELBO) share one Bessel evaluation."""
        kappa = self.concentration
        key = (id(kappa), kappa._version)
        cached = self.__dict__.get("_normalizer_cache")
        if cached is None or cached[0] != key:
            cached = (key, *_normalizer_terms(kappa, self.dim))
            self._normalizer_cache = cached
        return cached[1], cached[2]

    def _loc_sq(self, loc: torch.Tensor):
        """``|loc|^2`` from the parameter check's ``|loc|`` (float64 numpy), if it was
        computed for this very ``loc`` (same tensor, unmodified, float64, no expand since);
        else None (``_reflect`` computes it)."""
        checked = self.__dict__.get("_checked_loc_norm")
        if checked is None or loc is not checked[0] or loc._version != checked[1]:
            return None
        norm = checked[2]
        return norm * norm if norm.dtype == np.float64 else None

    def rsample(self, sample_shape=()) -> torch.Tensor:
        shape = self._extended_shape(sample_shape)
        d = self.dim
        kappa = _expand(self.concentration, shape[:-1])
        loc = _expand(self.loc, shape)
        if d == 3:
            y = _sample_one_minus_w_d3(kappa.double())
            gaussian = _tangent_gaussians(shape[:-1], d, self.loc.dtype, self.loc.device)
            return _ReflectFromE1.apply(y.to(self.loc.dtype), gaussian, loc, None, None)
        y = _sample_one_minus_w_wood(kappa, d)
        # the compiled reflection reads the float32 Gaussians as they are
        compiled = _compiled_reflection(self.loc, torch.float32)
        gaussian_dtype = torch.float32 if compiled is not None else self.loc.dtype
        gaussian = _tangent_gaussians(shape[:-1], d, gaussian_dtype, self.loc.device)
        dy_dkappa = None
        if torch.is_grad_enabled() and kappa.requires_grad:
            one_minus_mean = _expand(self._normalizer_terms()[1], shape[:-1])
            # the implicit gradient dy/dkappa = -dw/dkappa enters in the backward
            dy_dkappa = -_implicit_dw_dkappa(y, kappa, d, one_minus_mean)
        x, half_sq_dist = _SampleAndDistance.apply(
            y, gaussian, loc, kappa, dy_dkappa, self._loc_sq(loc)
        )
        # log_prob of this very tensor reads |x - loc|^2 / 2 from here (see log_prob)
        self._own_sample = (x, x._version, self.loc._version, half_sq_dist)
        return x

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        # kappa <mu, x> = kappa - kappa |x - mu|^2 / 2 for unit vectors; the second form keeps
        # precision when x is close to mu and kappa is large.
        kappa = self.concentration
        own = self.__dict__.get("_own_sample")
        if (
            own is not None
            and value is own[0]
            and value._version == own[1]
            and self.loc._version == own[2]
        ):
            # This distribution's own (unmodified) sample, as in an ELBO: on the sphere by
            # construction (no support check), |x - loc|^2 / 2 known from rsample, and the
            # gradients in x and loc folded into rsample's backward (no pass over x).
            half_sq_dist = own[3]
            log_norm, one_minus_mean = self._normalizer_terms()
            shape = half_sq_dist.shape
            return _LogDensityOfSample.apply(
                half_sq_dist,
                _expand(kappa, shape),
                _expand(log_norm, shape),
                _expand(one_minus_mean, shape),
            )
        if self._validate_args:
            self._validate_sample(value)
        if self.dim == 3:  # closed form, differentiable
            half_sq_dist = half_squared_distance(value, self.loc)
            log_norm = _log_normalizer_plus_kappa(kappa, 3)
            return log_norm.to(half_sq_dist.dtype) - kappa * half_sq_dist
        log_norm, one_minus_mean = self._normalizer_terms()
        value, loc = torch.broadcast_tensors(value, self.loc)
        shape = value.shape[:-1]
        return _LogDensity.apply(
            value,
            loc,
            kappa.expand(shape),
            log_norm.expand(shape),
            one_minus_mean.expand(shape),
        )

    def entropy(self) -> torch.Tensor:
        return _entropy64(self.concentration, self.dim).to(self.concentration.dtype)


def _entropy64(kappa: torch.Tensor, d: int) -> torch.Tensor:
    """H = -log C - kappa A = -(log C + kappa) + kappa (1 - A), in float64."""
    kappa = kappa.double()
    one_minus_mean = 1 - bessel_iv_ratio(d / 2 - 1, kappa)
    return -_log_normalizer_plus_kappa(kappa, d) + kappa * one_minus_mean


@register_kl(VonMisesFisher, VonMisesFisher)
def _kl_vmf_vmf(p: VonMisesFisher, q: VonMisesFisher) -> torch.Tensor:
    if p.dim != q.dim:
        raise ValueError(f"kl_divergence: dimensions differ ({p.dim} vs {q.dim}).")
    # E_p[log p - log q] = -H(p) - (log C_q + kappa_q) + kappa_q (1 - A_p <mu_p, mu_q>), with
    # 1 - A cos = (1 - A) + A |mu_p - mu_q|^2 / 2 to keep precision for close directions.
    kappa_q = q.concentration.double()
    mean_p = bessel_iv_ratio(p.dim / 2 - 1, p.concentration.double())
    half_sq_dist = 0.5 * ((p.loc - q.loc) ** 2).sum(-1).double()
    one_minus_cos_mean = (1 - mean_p) + mean_p * half_sq_dist
    kl = (
        -_entropy64(p.concentration, p.dim)
        - _log_normalizer_plus_kappa(kappa_q, q.dim)
        + kappa_q * one_minus_cos_mean
    )
    return kl.to(p.concentration.dtype)


@register_kl(VonMisesFisher, HypersphericalUniform)
def _kl_vmf_uniform(p: VonMisesFisher, q: HypersphericalUniform) -> torch.Tensor:
    if p.dim != q.dim:
        raise ValueError(f"kl_divergence: dimensions differ ({p.dim} vs {q.dim}).")
    kl = -_entropy64(p.concentration, p.dim) + log_sphere_area(p.dim)
    return kl.to(p.concentration.dtype).expand(torch.broadcast_shapes(p.batch_shape, q.batch_shape))
