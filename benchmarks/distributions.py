"""Benchmark: pvae.distributions samplers against same-run baselines.

1. VonMisesFisher ``rsample + log_prob + backward`` (batch 1024) at d in {3, 64, 512} x
   kappa in {1, 100, 1e4}, against
   - a naive S-VAE-style implementation (Davidson et al. 2018, public code): scipy ``ive`` on the
     host via numpy for the normalizer, a Python ``while`` loop that re-proposes the whole batch
     until every element has been accepted, gradients through the accepted proposal only
     (the biased estimator that drops the rejection correction);
   - PowerSpherical (De Cao & Aziz 2020), rejection-free.
   Also Wood's acceptance rate (one proposal round) per setting.
2. ReparameterizedMixture vs Pyro's MixtureOfDiagNormals on the same mixture: time, and the
   bias of the gradient in the mixing logits (Monte Carlo mean of the gradient of
   E[sum_j c_j x_j^2 + x_j] over ``--bias-batches`` batches of 2000 draws, against the analytic
   gradient; z = (mean - analytic) / s.e.).

Writes ``benchmarks/results/distributions.md``. Run with one thread:
``.venv/bin/python benchmarks/distributions.py``.
"""

import argparse
import math
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import pyro.distributions as dist
import scipy.special
import torch

import pvae.distributions.von_mises_fisher as vmf_module
from pvae.distributions import PowerSpherical, ReparameterizedMixture, VonMisesFisher
from pvae.distributions.von_mises_fisher import wood_acceptance_rate

RESULTS = Path(__file__).resolve().parent / "results" / "distributions.md"


class _ScipyLogIve(torch.autograd.Function):
    """log ive(v, x) on the host with scipy, as in the public S-VAE code."""

    @staticmethod
    def forward(ctx, v, x):
        ctx.v = v
        ctx.save_for_backward(x)
        out = scipy.special.ive(v, x.detach().cpu().numpy())
        with np.errstate(divide="ignore"):  # ive underflows to 0 for large v / small x
            return torch.as_tensor(np.log(out), dtype=x.dtype, device=x.device)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        xn = x.detach().cpu().numpy()
        v = ctx.v
        # d/dx log ive(v, x) = ive(v - 1, x) / ive(v, x) - (v + x) / x ... as S-VAE
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = scipy.special.ive(v - 1, xn) / scipy.special.ive(v, xn) - (v + xn) / xn
        return None, grad * torch.as_tensor(ratio, dtype=x.dtype, device=x.device)


def naive_vmf_rsample_log_prob(loc, kappa, d):
    """S-VAE style: whole-batch re-proposal loop; gradient through the accepted proposal."""
    n = loc.shape[0]
    m1 = d - 1
    b = m1 / (2 * kappa + torch.sqrt(4 * kappa**2 + m1**2))
    x0 = (1 - b) / (1 + b)
    c = kappa * x0 + m1 * torch.log(1 - x0**2)
    w = torch.zeros_like(kappa)
    mask = torch.ones(n, dtype=torch.bool)
    beta = torch.distributions.Beta(torch.tensor(m1 / 2.0), torch.tensor(m1 / 2.0))
    while bool(mask.any()):  # host round trip per round, whole batch re-proposed
        e = beta.sample((n,)).to(kappa.dtype)
        u = torch.rand(n, dtype=kappa.dtype)
        w_ = (1 - (1 + b) * e) / (1 - (1 - b) * e)
        accept = kappa * w_ + m1 * torch.log(1 - x0 * w_) - c >= torch.log(u)
        take = mask & accept
        w = torch.where(take, w_, w)
        mask = mask & ~accept
    v = torch.randn(n, d - 1, dtype=kappa.dtype)
    v = v / v.norm(dim=-1, keepdim=True)
    x = torch.cat([w.unsqueeze(-1), torch.sqrt(1 - w**2).clamp_min(1e-10).unsqueeze(-1) * v], -1)
    e1 = torch.zeros_like(loc)
    e1[:, 0] = 1
    u = e1 - loc
    u = u / (u.norm(dim=-1, keepdim=True) + 1e-5)
    z = x - 2 * (x * u).sum(-1, keepdim=True) * u
    nu = d / 2 - 1
    log_c = (
        nu * torch.log(kappa)
        - (d / 2) * math.log(2 * math.pi)
        - (_ScipyLogIve.apply(nu, kappa) + kappa)
    )
    return z, log_c + kappa * (z * loc).sum(-1)


def _time(fns, repeats: int) -> list[float]:
    """Median process CPU time (ms) of each fn() over ``repeats`` interleaved rounds (one call
    of each per round, after one warm-up call of each): robust to other jobs on the machine
    (the process runs one thread), and the ratios compare calls made under the same load.
    Round r starts with fn number r (mod their number), so that no method always runs right
    after the same other one (caches and the allocator's state are left by the previous
    call)."""
    for fn in fns:
        fn()
    times = [[] for _ in fns]
    for round_ in range(repeats):
        for i in range(len(fns)):
            j = (round_ + i) % len(fns)
            start = time.process_time()
            fns[j]()
            times[j].append(time.process_time() - start)
    return [1e3 * statistics.median(spent) for spent in times]


def _sphere_step(make, loc0, kappa0):
    def step():
        loc = loc0.clone().requires_grad_()
        kappa = kappa0.clone().requires_grad_()
        q = make(loc, kappa)
        x = q.rsample()
        (x.sum() + q.log_prob(x).sum()).backward()

    return step


def _array_code_step(loc0, kappa0):
    """pvae's vMF step with its compiled kernels switched off: the array code (numpy on CPU)
    that runs without numba, the same-process baseline of the kernels."""
    step = _sphere_step(VonMisesFisher, loc0, kappa0)

    def array_step():
        kernels = vmf_module._kernels
        vmf_module._kernels = lambda: None
        try:
            step()
        finally:
            vmf_module._kernels = kernels

    return array_step


def _naive_step(loc0, kappa0, d, finite: list):
    def step():
        loc = loc0.clone().requires_grad_()
        kappa = kappa0.clone().requires_grad_()
        x, log_prob = naive_vmf_rsample_log_prob(loc, kappa, d)
        (x.sum() + log_prob.sum()).backward()
        finite.append(bool(torch.isfinite(log_prob).all() and torch.isfinite(kappa.grad).all()))

    return step


ANISOTROPIC = (1.0, 0.5, -1.0, 2.0)
ISOTROPIC = (1.0, 1.0, 1.0, 1.0)


def _test_mixture(min_scale: float):
    """tests/distributions/test_mixture.py's mixture: K = 3, D = 4, scales in [min, min + 1]."""
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(3, generator=generator, dtype=torch.float64)
    locs = 2 * torch.randn(3, 4, generator=generator, dtype=torch.float64)
    scales = min_scale + torch.rand(3, 4, generator=generator, dtype=torch.float64)
    return logits, locs, scales


def _line_mixture(offset: float):
    """Unit scales, means a_k u on one line through the origin, shifted by ``offset`` w (w
    perpendicular to u)."""
    logits = _test_mixture(0.5)[0]
    u = torch.tensor([1.0, -0.5, 0.3, 0.8], dtype=torch.float64)
    u = u / u.norm()
    w = torch.tensor([0.5, 1.0, 0.0, 0.0], dtype=torch.float64)
    w = w - (w @ u) * u
    locs = torch.tensor([-2.0, 0.5, 2.5], dtype=torch.float64)[:, None] * u + offset * w
    return logits, locs, torch.ones(3, 4, dtype=torch.float64)


def _gradient_bias(kind: str, params, c: torch.Tensor, batches: int, size: int = 2000):
    """(analytic gradient, Monte Carlo mean, s.e.) of E[sum_j c_j x_j^2 + x_j], all parameters
    flattened (logits, locs, scales)."""
    params = [t.clone().requires_grad_() for t in params]
    logits, locs, scales = params
    weights = torch.softmax(logits, -1)
    exact = (weights * (((locs**2 + scales**2) * c).sum(-1) + locs.sum(-1))).sum()
    target = torch.cat([g.flatten() for g in torch.autograd.grad(exact, params)])
    draws = []
    for _ in range(batches):
        if kind == "pvae":
            mixture = ReparameterizedMixture(
                dist.Categorical(logits=logits), dist.Normal(locs, scales).to_event(1)
            )
        else:
            mixture = dist.MixtureOfDiagNormals(locs, scales, logits)
        x = mixture.rsample((size,))
        objective = ((x**2 * c) + x).sum(-1).mean()
        draws.append(torch.cat([g.flatten() for g in torch.autograd.grad(objective, params)]))
    draws = torch.stack(draws)
    return target, draws.mean(0), draws.std(0) / math.sqrt(batches)


def mixture_bias_rows(batches: int) -> list[str]:
    rows = [
        "| mixture | cost c | gradient | analytic | pvae mean ± s.e. | pvae z "
        "| Pyro mean ± s.e. | Pyro z |",
        "|---|---|---|---|---|---|---|---|",
    ]
    cases = [
        ("test mixture, scales 0.5-1.5", _test_mixture(0.5), ANISOTROPIC),
        ("test mixture, scales 1-2", _test_mixture(1.0), ANISOTROPIC),
        ("test mixture, scales 0.5-1.5", _test_mixture(0.5), ISOTROPIC),
        ("test mixture, scales 1-2", _test_mixture(1.0), ISOTROPIC),
        ("means on a line through 0, unit scales", _line_mixture(0.0), ANISOTROPIC),
        ("same line shifted off 0 by 2 w", _line_mixture(2.0), ANISOTROPIC),
    ]
    for name, params, c in cases:
        c = torch.tensor(c, dtype=torch.float64)
        target, ours, ours_se = _gradient_bias("pvae", params, c, batches)
        _, theirs, theirs_se = _gradient_bias("pyro", params, c, batches)
        z_ours, z_theirs = (ours - target) / ours_se, (theirs - target) / theirs_se
        cost = "(" + ", ".join(f"{v:g}" for v in c.tolist()) + ")"
        for k in range(3):
            rows.append(
                f"| {name} | {cost} | logit {k} | {target[k]:+.4f} | {ours[k]:+.4f} ± "
                f"{ours_se[k]:.4f} | {z_ours[k]:+.1f} | {theirs[k]:+.4f} ± {theirs_se[k]:.4f} | "
                f"{z_theirs[k]:+.1f} |"
            )
            print(rows[-1], flush=True)
        rows.append(
            f"| {name} | {cost} | locs, scales (24) | | | max abs {z_ours[3:].abs().max():.1f} "
            f"| | max abs {z_theirs[3:].abs().max():.1f} |"
        )
        print(rows[-1], flush=True)
    return rows


def float32_rows(batch: int, repeats: int) -> list[str]:
    """pvae's float32 path against its float64 path, same step as the tables above."""
    rows = [
        "| distribution | float64 (ms) | float32 (ms) | float32 / float64 |",
        "|---|---|---|---|",
    ]

    def row(label: str, steps: list) -> None:
        double, single = _time(steps, repeats)
        rows.append(f"| {label} | {double:.2f} | {single:.2f} | {single / double:.2f} |")
        print(rows[-1], flush=True)

    for d in (64, 512):
        loc = torch.nn.functional.normalize(torch.randn(batch, d, dtype=torch.float64), dim=-1)
        kappa = torch.full((batch,), 100.0, dtype=torch.float64)
        steps = [
            _sphere_step(VonMisesFisher, loc.to(dtype), kappa.to(dtype))
            for dtype in (torch.float64, torch.float32)
        ]
        row(f"VonMisesFisher d={d}, kappa=100, batch {batch}", steps)
    logits0 = torch.randn(4, dtype=torch.float64)
    locs0 = torch.randn(4, 64, dtype=torch.float64)
    scales0 = 0.5 + torch.rand(4, 64, dtype=torch.float64)
    steps = [
        _mixture_step("ours", logits0.to(dtype), locs0.to(dtype), scales0.to(dtype), batch)
        for dtype in (torch.float64, torch.float32)
    ]
    row(f"ReparameterizedMixture K=4, D=64, batch {batch}", steps)
    return rows


def _mixture_step(kind, logits0, locs0, scales0, batch):
    def step():
        logits, locs, scales = (t.clone().requires_grad_() for t in (logits0, locs0, scales0))
        if kind == "ours":
            mixture = ReparameterizedMixture(
                dist.Categorical(logits=logits), dist.Normal(locs, scales).to_event(1)
            )
        else:
            mixture = dist.MixtureOfDiagNormals(locs, scales, logits)
        x = mixture.rsample((batch,))
        (x.pow(2).sum() + mixture.log_prob(x).sum()).backward()

    return step


def _goal_lines(vmf_ratios, mixture_ratios) -> list[str]:
    """Issue 23's goals, judged on this run's ratios."""

    def verdict(ok: bool) -> str:
        return "met" if ok else "**not met**"

    lines = ["Issue 23's goals on this run:"]
    for d in (64, 512):
        ratios = [r for dim, _, r, _ in vmf_ratios if dim == d]
        if ratios:
            listed = " / ".join(f"{r:.2f}" for r in ratios)
            lines.append(
                f"- vMF at d = {d}, >= 3x faster than naive at kappa 1 / 100 / 1e4: {listed} "
                f"({verdict(min(ratios) >= 3)})"
            )
    if vmf_ratios:
        worst = max(r for *_, r in vmf_ratios)
        lines.append(
            f"- vMF no slower than PowerSpherical at any row: vMF / PowerSpherical <= "
            f"{worst:.2f} ({verdict(worst <= 1)})"
        )
    if mixture_ratios:
        listed = " / ".join(f"{r:.2f}" for r in mixture_ratios)
        lines.append(
            f"- ReparameterizedMixture at most 1.0x MixtureOfDiagNormals: {listed} "
            f"({verdict(max(mixture_ratios) <= 1.0)})"
        )
    return lines


def main(args: argparse.Namespace) -> str:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    batch, repeats = args.batch, args.repeats
    vmf_ratios = []  # (d, kappa, naive / pvae, pvae / PowerSpherical)
    rows = [
        "| d | kappa | pvae vMF (ms) | naive S-VAE-style (ms) | naive / pvae | PowerSpherical (ms) "
        "| vMF / PowerSpherical | pvae without numba (ms) | without / with | Wood acceptance |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for d in args.dims if args.only != "mixture" else ():
        for kappa_value in (1.0, 100.0, 1e4):
            loc = torch.nn.functional.normalize(torch.randn(batch, d, dtype=torch.float64), dim=-1)
            kappa = torch.full((batch,), kappa_value, dtype=torch.float64)
            finite = []
            ours, naive, power, arrays = _time(
                [
                    _sphere_step(VonMisesFisher, loc, kappa),
                    _naive_step(loc, kappa, d, finite),
                    _sphere_step(PowerSpherical, loc, kappa),
                    _array_code_step(loc, kappa),
                ],
                repeats,
            )
            naive_note = "" if all(finite) else " (non-finite)"
            if d == 3:
                acceptance = "n/a (exact inverse CDF)"
            else:
                acceptance = f"{wood_acceptance_rate(torch.tensor(kappa_value), d).item():.3f}"
            vmf_ratios.append((d, kappa_value, naive / ours, ours / power))
            rows.append(
                f"| {d} | {kappa_value:g} | {ours:.2f} | {naive:.2f}{naive_note} | {naive / ours:.2f} | "
                f"{power:.2f} | {ours / power:.2f} | {arrays:.2f} | {arrays / ours:.2f} | "
                f"{acceptance} |"
            )
            print(rows[-1], flush=True)

    mixture_ratios = []
    mixture_rows = [
        "| mixture (K components, D dims, batch) | pvae ReparameterizedMixture (ms) "
        "| Pyro MixtureOfDiagNormals (ms) | pvae / Pyro |",
        "|---|---|---|---|",
    ]
    for num_components, dims in ((8, 16), (4, 64)) if args.only != "vmf" else ():
        logits0 = torch.randn(num_components, dtype=torch.float64)
        locs0 = torch.randn(num_components, dims, dtype=torch.float64)
        scales0 = 0.5 + torch.rand(num_components, dims, dtype=torch.float64)

        ours, theirs = _time(
            [
                _mixture_step("ours", logits0, locs0, scales0, batch),
                _mixture_step("pyro", logits0, locs0, scales0, batch),
            ],
            repeats,
        )
        mixture_ratios.append(ours / theirs)
        mixture_rows.append(
            f"| K={num_components}, D={dims}, batch {batch} | {ours:.2f} | {theirs:.2f} | "
            f"{ours / theirs:.2f} |"
        )
        print(mixture_rows[-1], flush=True)

    torch.manual_seed(0)
    single_rows = float32_rows(batch, repeats) if args.only is None else []
    torch.manual_seed(0)
    bias_rows = mixture_bias_rows(args.bias_batches) if args.only is None else []

    command = "OMP_NUM_THREADS=1 .venv/bin/python benchmarks/distributions.py" + (
        " " + " ".join(sys.argv[1:]) if sys.argv[1:] else ""
    )
    report = "\n".join(
        [
            "# pvae.distributions benchmark",
            "",
            f"Command: `{command}` (torch {torch.__version__}, 1 thread, CPU, float64). Times: "
            f"median over {repeats} interleaved rounds (one call of each method per round, "
            "after a warm-up) of the process CPU time, so the methods of a row are measured "
            "under the same load; the 2-core machine may be shared with other jobs, which "
            "inflates all milliseconds and adds about +-20% between runs: compare the ratios.",
            "",
            f"Time for `rsample` + `log_prob` + `backward` of a batch of {batch} samples, one "
            "(loc, kappa) per sample, Pyro's argument validation on (its default). Naive: scipy "
            "`ive` on the host for the normalizer, a Python loop re-proposing the whole batch "
            "until all accepted, gradient through the accepted proposal (biased: no rejection "
            "correction). pvae (issue 23): on CPU compiled kernels (numba, "
            "`pvae/distributions/_vmf_kernels.py`) for Wood's sampler (per element, proposals "
            "until one is accepted, from a numpy Generator seeded by torch's; its Beta "
            "proposals from one gamma and one normal draw, Student's t construction; above "
            "kappa = 2.5 m (m + 1), m = (d - 3) / 2 (2,400 at d = 64, 160,000 at d = 512), "
            "Gamma((d - 1)/2, kappa) proposals for 1 - w accepted with probability "
            "(1 - (1 - w)/2)^m: acceptance 0.95 at d = 64, kappa = 1e4, where Wood's is 0.71), "
            "for the reflection and its hand-written backward (one pass over the (n, d) arrays "
            "each way), for the Debye polynomial of the normalizer (Horner) and for the "
            "implicit gradient for kappa (32-node Gauss-Legendre per sample for d <= 64, 64 for "
            "d <= 512: grid exponents and node sums compiled, numpy's SIMD exp in between, the "
            "factor (1 + r t)^m by repeated squaring); one Bessel evaluation per distribution "
            "shared by `rsample` and `log_prob`, `log_prob` of the sample `rsample` just "
            "returned read from rsample's scalars with its x and loc gradients folded into "
            "rsample's backward (no pass over x), parameter checks in numpy, tangent Gaussians "
            "drawn in float32 by torch (see VonMisesFisher's docstring); exact inverse CDF for "
            "d = 3. pvae without numba: the same step with the kernels switched off (the array "
            "code, numpy on CPU; what runs on CUDA in torch), in the same rounds. PowerSpherical: "
            "torch Beta and autograd (it shares the numpy parameter checks). Wood acceptance: "
            "probability that one proposal of Wood's sampler is accepted (at d = 64, "
            'kappa = 1e4 pvae takes the gamma proposals instead). "(non-finite)": the naive log_prob or '
            "kappa gradient had inf/NaN (scipy's ive underflows for large orders).",
            "",
            *rows,
            "",
            *_goal_lines(vmf_ratios, mixture_ratios),
            "",
            f"Mixture `rsample((batch,))` + `log_prob` + `backward`, batch {batch}, same "
            "timing. pvae: responsibilities of all coordinates at once, the exact vector-"
            "Jacobian product of the coordinate loop (a back substitution of three small "
            "operations per coordinate in the backward, in numpy on CPU), closed-form normal "
            "terms, only the chosen component sampled, `log_prob` of the sample `rsample` "
            "just returned from rsample's component log-densities and scores (issue 23). "
            "The ratio depends on the allocator's state: Pyro's step allocates more fresh "
            "(n, K, D) arrays and pays more page faults when glibc returns memory to the "
            "system between calls, so the same code measured pvae / Pyro 0.54-0.58 with the "
            "default malloc settings and 0.84-0.92 with MALLOC_MMAP_THRESHOLD_ and "
            "MALLOC_TRIM_THRESHOLD_ set high (no page faults: compute only) in one A/B "
            "session (K = 4, D = 64).",
            "",
            *mixture_rows,
            "",
            *(
                [
                    "## float32",
                    "",
                    "pvae's float32 path against its float64 path (same step and timing; "
                    "VonMisesFisher: the (n, d) work in float32, the per-sample scalars in "
                    "float64; the mixture: everything in float32). Accuracy on the same draws "
                    "(tests): VonMisesFisher samples within 2e-6, log_prob 1e-6 relative, "
                    "loc / kappa gradients 1e-4 / 1e-3 relative; ReparameterizedMixture "
                    "log_prob 2.5e-7 relative, gradients 1e-5 of the largest entry.",
                    "",
                    *single_rows,
                    "",
                ]
                if single_rows
                else []
            ),
            "## Mixture gradients: bias in the mixing logits",
            "",
            f"Gradient of E[sum_j c_j x_j^2 + x_j] (K = 3 components, D = 4) from {args.bias_batches} "
            f"batches of 2000 draws ({2 * args.bias_batches / 1000:g}M per estimator and row), "
            "against the analytic gradient; s.e. from the spread of the batch means; "
            "z = (mean - analytic) / s.e. The test mixture is the one of "
            "tests/distributions/test_mixture.py. Pyro documents its gradient as the pathwise "
            "derivative of Jankowiak & Karaletsos (arXiv:1806.01856), i.e. unbiased; its logit "
            "gradient is not. Its velocity field for the logits moves mass between components "
            "c and d as if both were centred on the line through the origin parallel to "
            "mu_c - mu_d (it uses the part of x perpendicular to that line, not of x - mu_c). "
            "The rows show the consequences: unbiased when all means lie on one line through "
            "the origin, or for a cost that does not see the perpendicular offset (isotropic "
            "c: sum_j x_j^2 + x_j, the kind of cost in Pyro's own test); biased by many s.e. "
            "otherwise. Its locs and scales gradients are unbiased. With scales 0.5-1.5 its "
            "logit gradient is also heavy-tailed (s.e. 6-25 times pvae's, and unstable between "
            "repeats), so the isotropic row's z of about 3 there neither shows nor excludes a "
            "small bias; with scales 1-2 it is light-tailed and the isotropic row agrees. "
            "pvae's ReparameterizedMixture is unbiased in every row.",
            "",
            *bias_rows,
            "",
        ]
    )
    if not args.no_write:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(report)
        print(f"wrote {RESULTS}")
    return report


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=11)
    parser.add_argument(
        "--bias-batches", type=int, default=1000, help="batches of 2000 draws per bias estimate"
    )
    parser.add_argument("--no-write", action="store_true", help="print only")
    parser.add_argument("--dims", type=int, nargs="+", default=[3, 64, 512])
    parser.add_argument("--only", choices=["vmf", "mixture"], help="one timing table, no bias rows")
    main(parser.parse_args())
