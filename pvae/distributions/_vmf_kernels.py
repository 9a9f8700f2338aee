"""Compiled CPU kernels of :class:`~pvae.distributions.VonMisesFisher` (numba).

Each kernel fuses, per sample, what the array code of ``von_mises_fisher.py`` does in many
passes: Wood's rejection loop (tens of small numpy calls per round, each costing more in
dispatch than in arithmetic at batch 1,024), the row passes of the reflection and its backward
(one pass over the (n, d) arrays each way), the Debye polynomial of the normalizer, and the
(samples, nodes) grid of the implicit gradient around one numpy ``exp``. Transcendental
functions over many elements stay in numpy, whose SIMD versions are several times faster than
the scalar ones a compiled loop calls (the normalizer's, the grid's exp). Same formulas as the
array code, which stays as the GPU path and as the fallback without numba; the tests compare
the two on the same inputs.

Imported on the first CPU ``rsample`` / ``log_prob`` (``von_mises_fisher._kernels``), not with
``pvae``; compiled functions are cached on disk by numba (``cache=True``).
"""

import math

import numba
import numpy as np

# Reassociation lets LLVM vectorize the row reductions (sums in another order: rounding
# only); no finite-math assumption, so NaN and inf propagate as in numpy.
_FAST = {"reassoc", "contract"}
_jit = numba.njit(cache=True, nogil=True, fastmath=_FAST)

_TINY = float(np.finfo(np.float64).tiny)

# Columns of the (n, 12) float64 array of per-sample scalars that the forward reflection
# leaves for the backward (names as in ``von_mises_fisher._Reflection``).
SIGN, W, SIN, ALPHA, Q, P, LOC_V, LOC_G, LOC_SQ, LOC_1, INV_NORM, NORM2 = range(12)
SCALARS = 12


@_jit
def reflect_forward(y, gaussian, loc, loc_sq_known, x, scalars, half_sq_dist):
    """``x = Q [w; sqrt(1 - w^2) g / |g|]`` row by row (``von_mises_fisher._reflect``), with
    ``h = |x - loc|^2 / 2`` from its scalars (``_SampleAndDistance``). ``loc_sq_known``:
    ``|loc|^2`` per row, or an empty array. Dot products accumulate in float64 whatever the
    dtype of ``gaussian`` and ``loc``; x is written in x's dtype."""
    n, d = loc.shape
    have_loc_sq = loc_sq_known.shape[0] == n
    for i in range(n):
        norm2 = 0.0
        loc_g = 0.0
        for j in range(d - 1):
            g = np.float64(gaussian[i, j])
            norm2 += g * g
            loc_g += np.float64(loc[i, j + 1]) * g
        if have_loc_sq:
            loc_sq = loc_sq_known[i]
        else:
            loc_sq = 0.0
            for j in range(d):
                value = np.float64(loc[i, j])
                loc_sq += value * value
        loc_1 = np.float64(loc[i, 0])
        sign = -1.0 if loc_1 < 0 else 1.0
        inv_norm = 1.0 / math.sqrt(norm2)
        y_i = y[i]
        w = 1.0 - y_i
        sin = math.sqrt(max(y_i * (2.0 - y_i), 0.0))
        loc_v = loc_g * inv_norm
        abs_loc_1 = abs(loc_1)
        q = loc_sq + 2.0 * abs_loc_1 + 1.0  # |u|^2
        p = (abs_loc_1 + 1.0) * w + sign * sin * loc_v  # u.x0
        alpha = 2.0 * p / q
        # x = alpha loc + sign (alpha - w) e1 - sign sin v
        tangent = -sign * sin * inv_norm
        x[i, 0] = alpha * loc_1 + sign * (alpha - w)
        for j in range(1, d):
            x[i, j] = alpha * loc[i, j] + tangent * gaussian[i, j - 1]
        half_sq_dist[i] = y_i + (loc_sq - 1.0) * (q - 2.0 * p) / (2.0 * q)
        # in the order of the column indices SIGN .. NORM2
        values = (sign, w, sin, alpha, q, p, loc_v, loc_g, loc_sq, loc_1, inv_norm, norm2)
        for k in range(SCALARS):
            scalars[i, k] = values[k]


@_jit
def reflect_backward(scalars, gaussian, loc, x, grad, grad_h, need_loc, grad_y, grad_loc):
    """``von_mises_fisher._reflect_backward`` row by row: ``grad_y`` (dL/dy) and, if
    ``need_loc``, ``grad_loc`` (dL/dloc, in its dtype). ``grad``: dL/dx, an (n, 1) array for
    a dL/dx constant along each row (e.g. from ``x.sum()``), or an (n, 0) array for none;
    ``grad_h``: dL/dh per row, or an empty array for none."""
    n, d = loc.shape
    have_grad = grad.shape[1] == d
    row_grad = grad.shape[1] == 1
    have_h = grad_h.shape[0] == n
    for i in range(n):
        row = scalars[i]
        sign, w, sin, alpha, q = row[SIGN], row[W], row[SIN], row[ALPHA], row[Q]
        loc_1, inv_norm = row[LOC_1], row[INV_NORM]
        g_loc = 0.0
        g_g = 0.0
        g_1 = 0.0
        if have_grad:
            g_1 = np.float64(grad[i, 0])
            g_loc = g_1 * loc_1
            for j in range(1, d):
                value = np.float64(grad[i, j])
                g_loc += value * np.float64(loc[i, j])
                g_g += value * np.float64(gaussian[i, j - 1])
        elif row_grad:
            g_1 = np.float64(grad[i, 0])
            for j in range(1, d):
                g_loc += np.float64(loc[i, j])
                g_g += np.float64(gaussian[i, j - 1])
            g_loc = g_1 * (g_loc + loc_1)
            g_g *= g_1
        g_h = 0.0
        if have_h:
            g_h = grad_h[i]
            loc_sq, p, loc_g = row[LOC_SQ], row[P], row[LOC_G]
            x_loc = w + (loc_sq - 1.0) * p / q
            x_1 = alpha * loc_1 + sign * (alpha - w)
            x_g = alpha * loc_g - sign * sin * inv_norm * row[NORM2]
            g_loc += g_h * (x_loc - loc_sq)
            g_g += g_h * (x_g - loc_g)
            g_1 += g_h * (x_1 - loc_1)
        g_u = sign * g_loc + g_1  # g.u
        d_sin = -w / max(sin, _TINY)  # d sin / dw
        u_dx0 = abs(loc_1) + 1.0 + d_sin * sign * row[LOC_V]
        g_dx0 = g_1 + d_sin * g_g * inv_norm
        grad_y[i] = -sign * (2.0 * u_dx0 / q * g_u - g_dx0)
        if need_loc:
            # alpha g_x + coef_x x - g_h (x - loc), with g_x = grad + g_h (x - loc)
            coef_x = -2.0 * sign * g_u / q + (alpha - 1.0) * g_h
            coef_loc = (1.0 - alpha) * g_h
            if have_grad:
                for j in range(d):
                    grad_loc[i, j] = coef_x * x[i, j] + coef_loc * loc[i, j] + alpha * grad[i, j]
            elif row_grad:
                constant = alpha * np.float64(grad[i, 0])
                for j in range(d):
                    grad_loc[i, j] = coef_x * x[i, j] + coef_loc * loc[i, j] + constant
            else:
                for j in range(d):
                    grad_loc[i, j] = coef_x * x[i, j] + coef_loc * loc[i, j]


@_jit
def sample_one_minus_w(kappa, b, r, bound, d, gamma_threshold, max_proposals, generator, y):
    """Rejection sampling of ``y = 1 - w`` per element (``von_mises_fisher``'s
    ``_wood_propose`` for ``kappa <= gamma_threshold``, with Wood's constants ``b``, ``r`` and
    ``bound`` = K of ``_wood_constants``; ``_gamma_propose`` above), proposing one at a time
    until accepted, from ``generator`` (a numpy Generator). Returns the number of elements
    left unaccepted after ``max_proposals`` proposals (their y is NaN)."""
    m1 = d - 1.0
    shape = 0.5 * m1  # of the gamma draws
    half_m = 0.5 * (d - 3.0)
    failed = 0
    for i in range(kappa.shape[0]):
        k = kappa[i]
        y[i] = np.nan
        if k > gamma_threshold:
            for _ in range(max_proposals):
                proposal = generator.standard_gamma(shape) / k
                u = generator.random()
                half_gap = 1.0 - 0.5 * proposal
                if half_gap > 0 and math.log(u) <= half_m * math.log(max(half_gap, _TINY)):
                    y[i] = proposal
                    break
        else:
            b_i, r_i, bound_i = b[i], r[i], bound[i]
            for _ in range(max_proposals):
                v = 2.0 * generator.standard_gamma(shape)
                z = generator.standard_normal()
                u = generator.random()
                s = math.sqrt(v + z * z)
                rho = (s + z) ** 2 / v if z >= 0 else v / (s - z) ** 2
                b_rho = b_i * rho
                proposal = 2.0 * b_rho / (1.0 + b_rho)
                if math.log(u) + k * proposal - m1 * math.log1p(r_i * proposal) <= bound_i:
                    y[i] = proposal
                    break
        if math.isnan(y[i]):
            failed += 1
    return failed


@_jit
def implicit_exponents(y, kappa, one_minus_tau2, log_base, grid):
    """First half of ``von_mises_fisher._implicit_dw_dkappa`` on the (n, nodes) ``grid``:
    ``kappa sign delta (1 - tau_j^2) + log(weight_j tau_j^(d-2))``, with ``delta = y`` and
    ``sign = 1`` (or ``2 - y`` and -1 for ``y > 1``); numpy then exponentiates the grid."""
    n, nodes = grid.shape
    for i in range(n):
        y_i = y[i]
        slope = kappa[i] * (y_i if y_i <= 1.0 else y_i - 2.0)  # kappa sign delta
        for j in range(nodes):
            grid[i, j] = slope * one_minus_tau2[j] + log_base[j]


@_jit
def implicit_sums(y, one_minus_mean, one_minus_tau2, d, grid, dw_dkappa):
    """Second half: with ``grid`` holding ``exp(kappa sign delta (1 - tau^2)) weight
    tau^(d-2)``, the factor ``(1 + r (1 - tau^2))^m`` (``r = delta / (2 - delta)``,
    ``m = (d - 3) / 2``) by repeated squaring (no log1p/exp per node), the two node sums and
    ``dw/dkappa``."""
    n, nodes = grid.shape
    power = d - 3  # (1 + r t)^(power / 2)
    whole = abs(power) // 2
    half = abs(power) % 2 == 1
    base = np.empty(nodes)
    factor = np.empty(nodes)
    for i in range(n):
        y_i = y[i]
        bottom = y_i > 1.0
        delta = 2.0 - y_i if bottom else y_i
        sign = -1.0 if bottom else 1.0
        ratio = delta / (2.0 - delta)
        for j in range(nodes):
            base[j] = 1.0 + ratio * one_minus_tau2[j]
        if half:
            for j in range(nodes):
                factor[j] = math.sqrt(base[j])
        else:
            for j in range(nodes):
                factor[j] = 1.0
        e = whole
        while e > 0:
            if e & 1:
                for j in range(nodes):
                    factor[j] *= base[j]
            e >>= 1
            if e > 0:
                for j in range(nodes):
                    base[j] *= base[j]
        if power < 0:  # d = 2: m = -1/2
            for j in range(nodes):
                factor[j] = 1.0 / factor[j]
        sum0 = 0.0
        sum_tau2 = 0.0
        for j in range(nodes):
            e_j = grid[i, j] * factor[j]
            sum0 += e_j
            sum_tau2 += e_j * (1.0 - one_minus_tau2[j])
        bottom_term = 2.0 if bottom else 0.0
        integral = (one_minus_mean[i] - bottom_term) * sum0 - sign * delta * sum_tau2
        dw_dkappa[i] = sign * 2.0 * delta * integral


@_jit
def debye_sums(coefs, t, sums):
    """``sums[k, i] = sum_m coefs[k, m] t[k, i]^m`` by Horner's rule (``bessel._monomial_sums``
    without the (2, degree + 1, n) array of powers)."""
    degree = coefs.shape[1] - 1
    for k in range(t.shape[0]):
        for i in range(t.shape[1]):
            t_i = t[k, i]
            total = coefs[k, degree]
            for m in range(degree - 1, -1, -1):
                total = total * t_i + coefs[k, m]
            sums[k, i] = total
