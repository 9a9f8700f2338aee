"""Diagnostics benchmark: how far apart are ELBO, IWAE-K and AIS on a small MNIST VAE?

Trains a small VAE (784-H-D, ELBO, Adam) on dynamically binarized MNIST, then on statically
binarized test images prints

- the bound ladder: ELBO, IWAE-K for K in 1..1000 (one pool of guide samples) and AIS from the
  prior (the same-run reference the bounds are compared against, with paired standard errors);
- BDMC lower/upper bounds and their gap on data simulated from the trained model (how
  accurate AIS with this many steps is);
- the share of test images with PSIS k-hat > 0.7, the mean relative ESS, active units and the
  aggregate-posterior mutual information;

and writes the table with the exact command to ``benchmarks/results/diagnostics.md``.

Example::

    .venv/bin/python benchmarks/diagnostics.py             # a few minutes on 2 CPU cores
    .venv/bin/python benchmarks/diagnostics.py --smoke     # seconds, numbers meaningless

References:
    [1] Burda, Grosse, Salakhutdinov. Importance Weighted Autoencoders. arXiv:1509.00519
    [2] Wu, Burda, Salakhutdinov, Grosse. On the Quantitative Analysis of Decoder-Based
        Generative Models. ICLR 2017. arXiv:1611.04273
    [3] Grosse, Ghahramani, Adams. Sandwiching the marginal likelihood using bidirectional
        Monte Carlo. arXiv:1511.02543
"""

from __future__ import annotations

import argparse
import math
import shlex
import sys
import time
from pathlib import Path

import pyro
import torch

RESULTS = Path(__file__).resolve().parent / "results" / "diagnostics.md"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--train-size", type=int, default=20_000)
    parser.add_argument("--steps", type=int, default=3_000, help="Adam steps, batch 100")
    parser.add_argument("--latent-dim", type=int, default=16)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--test-size", type=int, default=100)
    parser.add_argument("--num-samples", type=int, default=1_000, help="guide samples/image")
    parser.add_argument("--ais-steps", type=int, default=1_000)
    parser.add_argument("--ais-chains", type=int, default=8)
    parser.add_argument("--bdmc-data", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--ais-sizes",
        default="3,8,1000;20,100,3000",
        help="latent-Gaussian models for the AIS comparison: 'd,D,T' separated by ';'",
    )
    parser.add_argument("--ais-seeds", type=int, default=3)
    parser.add_argument("--ais-only", action="store_true", help="only the AIS comparison")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, for the test suite")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if args.smoke:
        args.train_size, args.steps, args.test_size = 500, 10, 8
        args.num_samples, args.ais_steps, args.ais_chains, args.bdmc_data = 60, 5, 2, 2
        args.ais_sizes, args.ais_seeds = "2,3,20", 1
    args.ais_sizes = [tuple(int(v) for v in size.split(",")) for size in args.ais_sizes.split(";")]
    return args


def train_vae(args: argparse.Namespace):
    from pvae.data import load_dataset
    from pvae.infer.objectives import ELBO
    from pvae.models import VAE

    train = load_dataset(
        "mnist", "train", size=args.train_size, size_seed=args.seed, progress=False
    )
    vae = VAE(latent_dim=args.latent_dim, hidden=(args.hidden,))
    vae.initialize(train.model_options())
    objective = ELBO()
    optimizer = torch.optim.Adam(vae.parameters(), lr=1e-3)
    generator = torch.Generator().manual_seed(args.seed)
    step = 0
    scale = len(train) / 100
    while step < args.steps:
        for x, _ in train.batches(100, generator=generator, drop_last=True):
            value = objective(vae.model, vae.guide, x, scale=scale)
            optimizer.zero_grad()
            value.loss.backward()
            optimizer.step()
            step += 1
            if step >= args.steps:
                break
    vae.eval()
    return vae


# -- AIS against a plain torch reference on latent-Gaussian models with exact marginals -------
class LatentGaussian:
    """z ~ N(0, I_d), x | z ~ N(W z + b, s^2 I_D), W and b standard normal (drawn with
    ``seed``): log p(x) = log N(x; b, W W^T + s^2 I) and the posterior are exact."""

    def __init__(self, d: int, big_d: int, s: float = 0.5, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.W = torch.randn(big_d, d, generator=g)
        self.b = torch.randn(big_d, generator=g)
        self.s, self.d = s, d
        self.seed = seed

    def model(self, x: torch.Tensor) -> None:
        import pyro.distributions as dist

        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(torch.zeros(self.d), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(z @ self.W.T + self.b, self.s).to_event(1), obs=x)

    def wide_guide(self, x: torch.Tensor) -> None:
        """The exact posterior's mean with twice its standard deviations (diagonal)."""
        import pyro.distributions as dist

        cov = torch.linalg.inv(torch.eye(self.d) + self.W.T @ self.W / self.s**2)
        mu = (x - self.b) @ self.W @ cov / self.s**2
        scale = 2.0 * cov.diagonal().sqrt()
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(mu, scale.expand_as(mu)).to_event(1))

    def marginal(self) -> torch.distributions.MultivariateNormal:
        cov = self.W @ self.W.T + self.s**2 * torch.eye(self.W.shape[0])
        return torch.distributions.MultivariateNormal(self.b, cov)

    def data(self, n: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(1000 + self.seed)
        eps = torch.randn(n, self.W.shape[0], generator=g)
        return self.b + eps @ torch.linalg.cholesky(self.marginal().covariance_matrix).T


def reference_ais(
    m: LatentGaussian,
    x: torch.Tensor,
    num_steps: int,
    num_chains: int,
    leapfrog_steps: int = 10,
    jitter: float = 0.5,
    target_accept: float = 0.65,
) -> torch.Tensor:
    """Plain torch AIS from the prior with the closed-form density (autograd gradients),
    the sigmoid schedule, HMC with a per-chain, per-transition step size U(0.5, 1.5) times a
    per-datum step size adapted *during* the run by Wu et al.'s rule (x1.02 / x0.98 on a
    moving average of the acceptance toward ``target_accept``, from 0.05, clipped to [1e-4,
    0.5]); the gradient at the
    current point is reused across temperatures, as in pvae. Returns log weights ``(K, N)``."""
    from pvae.evaluation.ais import annealing_schedule

    w, b, s = m.W, m.b, m.s

    def density(z: torch.Tensor):
        with torch.enable_grad():
            z = z.detach().requires_grad_(True)
            log_prior = -0.5 * (z * z).sum(-1) - 0.5 * m.d * math.log(2 * math.pi)
            r = (x - z @ w.T - b) / s
            log_lik = -0.5 * (r * r).sum(-1) - x.shape[-1] * math.log(s * math.sqrt(2 * math.pi))
            log_joint = log_prior + log_lik
            (g_joint,) = torch.autograd.grad(log_joint.sum(), z, retain_graph=True)
            (g_prior,) = torch.autograd.grad(log_prior.sum(), z)
        return log_prior.detach(), log_joint.detach(), g_prior, g_joint

    k, n = num_chains, x.shape[0]
    betas = annealing_schedule(num_steps).tolist()
    z = torch.randn(k, n, m.d)
    lp, lj, gp, gj = density(z)
    log_w = torch.zeros(k, n, dtype=torch.float64)
    eps = torch.full((n,), 0.05)
    avg = torch.full((n,), target_accept)
    for t in range(1, num_steps + 1):
        log_w += (betas[t] - betas[t - 1]) * (lj - lp).double()
        if t == num_steps:
            break
        beta = betas[t]
        a = 1.0 - beta
        size = eps[None, :, None] * (1.0 + jitter * (2.0 * torch.rand(k, n, 1) - 1.0))
        p0 = torch.randn_like(z)
        p = p0 + 0.5 * size * (a * gp + beta * gj)
        q = z
        for i in range(leapfrog_steps):
            q = q + size * p
            nlp, nlj, ngp, ngj = density(q)
            p = p + (0.5 if i == leapfrog_steps - 1 else 1.0) * size * (a * ngp + beta * ngj)
        log_acc = (a * nlp + beta * nlj - 0.5 * (p * p).sum(-1)) - (
            a * lp + beta * lj - 0.5 * (p0 * p0).sum(-1)
        )
        log_acc = torch.nan_to_num(log_acc, nan=-math.inf).clamp(max=0.0)
        acc = torch.rand(k, n).log() < log_acc
        z = torch.where(acc[..., None], q, z)
        lp, lj = torch.where(acc, nlp, lp), torch.where(acc, nlj, lj)
        gp = torch.where(acc[..., None], ngp, gp)
        gj = torch.where(acc[..., None], ngj, gj)
        avg = 0.9 * avg + 0.1 * log_acc.exp().mean(0)
        eps = (eps * torch.where(avg > target_accept, 1.02, 0.98)).clamp(1e-4, 0.5)
    return log_w


def ais_comparison(
    sizes: list[tuple[int, int, int]], seeds: list[int], num_data: int, num_chains: int
) -> list[dict]:
    """pvae's AIS (from the prior and from a guide twice too wide) against
    :func:`reference_ais`, same steps, chains and data, on :class:`LatentGaussian` models
    ``(d, D, T)``; one row per (model, T, method) with errors averaged over ``seeds``."""
    from pvae.evaluation.ais import ais_log_likelihood

    rows = []
    # One-off per process: the first traced run imports torch's tracing machinery.
    m = LatentGaussian(2, 4)
    ais_log_likelihood(m.model, m.data(2), num_steps=2, num_chains=2, trace=True)
    reference = "reference (plain torch, prior, target 0.65)"
    for index, (d, big_d, steps) in enumerate(sizes):
        stats: dict[str, dict[str, list]] = {}
        for seed in seeds:
            m = LatentGaussian(d, big_d, seed=seed)
            x = m.data(num_data)
            exact = m.marginal().log_prob(x).double()
            # (name, pvae or the reference, start from the guide, target acceptance, schedule)
            methods = [
                (reference, False, False, 0.65, "sigmoid"),
                ("pvae (prior)", True, False, 0.8, "adaptive"),
                ("pvae (guide, 2x too wide)", True, True, 0.8, "adaptive"),
                ("pvae (prior), sigmoid schedule", True, False, 0.8, "sigmoid"),
            ]
            if index == 0:  # what the target acceptance does, on the first model only
                methods += [
                    ("reference, target 0.8", False, False, 0.8, "sigmoid"),
                    ("pvae (prior), target 0.65", True, False, 0.65, "adaptive"),
                ]
            for name, ours, from_guide, target, schedule in methods:
                torch.manual_seed(seed)
                start = time.perf_counter()
                if ours:
                    log_w = ais_log_likelihood(
                        m.model,
                        x,
                        num_steps=steps,
                        num_chains=num_chains,
                        guide=m.wide_guide if from_guide else None,
                        target_accept=target,
                        schedule=schedule,
                        seed=seed,
                    ).log_weights
                else:
                    log_w = reference_ais(m, x, steps, num_chains, target_accept=target)
                seconds = time.perf_counter() - start
                err = torch.logsumexp(log_w, 0) - math.log(log_w.shape[0]) - exact
                entry = stats.setdefault(name, {"abs": [], "signed": [], "var": [], "s": []})
                entry["abs"].append(float(err.abs().mean()))
                entry["signed"].append(float(err.mean()))
                entry["var"].append(float(log_w.var(0).mean()))
                entry["s"].append(seconds)
        ref_s = sum(stats[reference]["s"])
        for name, entry in stats.items():
            rows.append(
                {
                    "model": f"z in R^{d}, x in R^{big_d}",
                    "T": steps,
                    "method": name,
                    "abs_error": sum(entry["abs"]) / len(seeds),
                    "signed_error": sum(entry["signed"]) / len(seeds),
                    "log_weight_var": sum(entry["var"]) / len(seeds),
                    "seconds": sum(entry["s"]),
                    "ratio": sum(entry["s"]) / ref_s,
                }
            )
    return rows


def comparison_section(rows: list[dict], sizes: list, seeds: list[int]) -> str:
    """The AIS-against-reference section of the results file."""
    return "\n".join(
        [
            "## AIS against a plain torch reference (exact marginals)",
            "",
            f"Latent-Gaussian models z ~ N(0, I_d), x | z ~ N(W z + b, 0.5^2 I_D), W and b "
            f"standard normal, 20 data from the marginal per seed, seeds {seeds} (model, data "
            "and chains all drawn per seed); 16 chains per datum, HMC with 10 leapfrog steps, "
            "1 thread. Mean abs error: mean over data and seeds of "
            "|log mean_k w_k - log p(x)|. pvae: `ais_log_likelihood` defaults: the pilot run's "
            "schedule (equal steps of thermodynamic length, from the pilot's variance of the "
            "log-weight increments; 'sigmoid schedule' is the sigmoid instead), its step "
            "sizes replayed and jittered, the traced density; its time includes the pilot run "
            "(T / 10 temperatures, at most 200) and the tracing. Reference: `reference_ais` in "
            "this file, plain torch with the closed-form density and autograd, the sigmoid "
            "schedule, jittered step sizes adapted "
            "during the run by Wu et al.'s rule, gradients reused across temperatures (the "
            "same number of gradients as pvae's main run). Guide: the exact posterior mean "
            "with twice its standard deviations. Seconds are wall time on a shared, busy "
            "2-core machine (reference and pvae interleaved per seed, so load affects both); "
            "the first traced run in a process also pays a one-off import, done before timing.",
            "",
            comparison_table(rows),
        ]
    )


def comparison_table(rows: list[dict]) -> str:
    lines = [
        "| model | T | method | mean abs error (nats) | mean error | var of log w | "
        "seconds | time / reference |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['T']} | {r['method']} | {r['abs_error']:.3f} | "
            f"{r['signed_error']:+.3f} | {r['log_weight_var']:.3f} | {r['seconds']:.1f} | "
            f"{r['ratio']:.2f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    pyro.set_rng_seed(args.seed)
    from pvae.data import load_dataset
    from pvae.diagnostics import importance_diagnostics
    from pvae.evaluation import (
        active_units,
        ais_log_likelihood,
        bdmc,
        bound_ladder,
        mutual_information,
    )

    seeds = list(range(args.ais_seeds))
    comparison = ais_comparison(args.ais_sizes, seeds, 20, 16)
    comparison_text = comparison_section(comparison, args.ais_sizes, seeds)
    if args.ais_only:
        print(comparison_text)
        return 0
    timings: dict[str, float] = {}
    with pyro.settings.context(module_local_params=True):
        start = time.perf_counter()
        vae = train_vae(args)
        timings["train"] = time.perf_counter() - start
        test = load_dataset(
            "mnist", "test", size=args.test_size, size_seed=args.seed, progress=False
        )
        x = test.images

        start = time.perf_counter()
        diag = importance_diagnostics(vae.model, vae.guide, x, num_samples=args.num_samples)
        timings["importance"] = time.perf_counter() - start

        start = time.perf_counter()
        ks = [k for k in (1, 10, 100, 1000) if k <= args.num_samples]
        ladder = bound_ladder(
            vae.model,
            vae.guide,
            x,
            ks=ks,
            log_weights=diag.log_weights,
            ais_steps=args.ais_steps,
            ais_chains=args.ais_chains,
            seed=args.seed,
        )
        timings["ais"] = time.perf_counter() - start

        start = time.perf_counter()
        guided = ais_log_likelihood(
            vae.model,
            x,
            num_steps=args.ais_steps,
            num_chains=args.ais_chains,
            guide=vae.guide,
            seed=args.seed,
        )
        timings["ais_from_guide"] = time.perf_counter() - start

        start = time.perf_counter()
        sandwich = bdmc(
            vae.model,
            args.bdmc_data,
            args.ais_steps,
            args.ais_chains,
            example_x=x[:1],
            seed=args.seed,
        )
        timings["bdmc"] = time.perf_counter() - start
        units = active_units(vae, x)
        mi = mutual_information(vae, x, num_samples=10)

    summary = diag.summary()
    guided_gap = guided.values - ladder.rows[-1].values
    guided_gap_se = float(guided_gap.std() / math.sqrt(guided_gap.numel()))
    gap_se = (
        float(sandwich.gap.std() / math.sqrt(sandwich.gap.numel()))
        if args.bdmc_data > 1
        else float("nan")
    )
    command = "PVAE_DATA_DIR=../shared/data .venv/bin/python benchmarks/diagnostics.py " + " ".join(
        shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:])
    )
    lines = [
        "# Diagnostics benchmark: bound ladder, AIS/BDMC, k-hat, collapse",
        "",
        f"Command: `{command.strip()}`",
        "",
        f"Model: VAE 784-{args.hidden}-{args.latent_dim} (ReLU, Bernoulli), ELBO + Adam 1e-3, "
        f"{args.steps} steps of batch 100 on {args.train_size} dynamically binarized MNIST "
        f"training images; evaluated on {args.test_size} statically binarized test images "
        f"(seed {args.seed}). AIS from the prior, {args.ais_chains} chains, "
        "HMC with 10 leapfrog steps, per-image step sizes and the annealing schedule from a "
        "pilot run (target acceptance 0.8), step sizes jittered by U(0.5, 1.5) per chain and "
        "transition.",
        "",
        "## Bound ladder (test images, nats; higher is tighter)",
        "",
        ladder.table(),
        "",
        "## Other diagnostics",
        "",
        "| quantity | value |",
        "|---|---|",
        f"| AIS from the guide (T={args.ais_steps}, {args.ais_chains} chains): mean; minus AIS "
        f"from the prior (paired se) | {float(guided.values.mean()):.3f}; "
        f"{float(guided_gap.mean()):+.3f} ({guided_gap_se:.3f}) |",
        f"| BDMC on {args.bdmc_data} simulated images, T={args.ais_steps}: lower / upper | "
        f"{sandwich.lower_mean:.2f} / {sandwich.upper_mean:.2f} |",
        f"| BDMC gap (upper - lower), mean (se) | {sandwich.gap_mean:.3f} ({gap_se:.3f}) |",
        f"| share of test images with k-hat > 0.7 (S={args.num_samples}) | "
        f"{summary['share_khat_above_0.7']:.2f} |",
        f"| share with k-hat > 0.5 | {summary['share_khat_above_0.5']:.2f} |",
        f"| mean relative ESS of the importance weights | {summary['relative_ess_mean']:.3f} |",
        f"| active units (Var_x E_q[z_u] > 0.01) | {units.count} of {args.latent_dim} |",
        f"| mutual information I(x; z), aggregate posterior (max log N = "
        f"{math.log(args.test_size):.2f}) | {mi:.2f} |",
        "",
        "Seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in timings.items()) + ".",
        "",
        comparison_text,
        "",
        "## Reference",
        "",
        "Wu et al. 2017 (arXiv:1611.04273) compare IWAE bounds with AIS for VAEs on MNIST; their "
        "reported numbers are **not verified** here (see ../shared/REFERENCES.md), so none are "
        "quoted. Their setup: AIS with up to 10,000 intermediate distributions, 16 chains, HMC "
        "with 10 leapfrog steps, BDMC on 100 simulated images.",
        "",
    ]
    text = "\n".join(lines)
    print(text)
    if not args.smoke:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
