"""The Stein VAE (Pu et al. 2017) beside the Gaussian VAE of the same network on MNIST, at a
small CPU budget.

Both use the registered ``vae``'s generative model (z of ``--latent-dim`` dims, an MLP decoder
with ``--hidden`` units, Bernoulli pixels); the Gaussian VAE trains its Gaussian encoder with
the ELBO, the Stein VAE trains a :class:`~pvae.infer.stein.SteinEncoder` of the same hidden
width (x and noise in, one particle out) with :class:`~pvae.infer.stein.SteinVGD`
(``--particles`` M per datum, SVGD step ``--step-size``); the importance-weighted Stein VAE
(Stein VIWAE, ``SteinVGD(importance_weighted=True)``) groups the same number of particles
into ``--particles / --iw-k`` tuples of ``--iw-k`` (the same cost per step). Same data (dynamically binarized
training images), batch, optimiser (Adam 1e-3) and epochs. Evaluation on the statically
binarized test images: the importance-sampled NLL with K = ``--eval-samples`` (the VAE's
proposal: its Gaussian encoder; the Stein VAE's: the diagonal Gaussian fitted to 100 particles
per datum, :func:`~pvae.infer.stein.fitted_gaussian_guide`, both stochastic lower bounds on
log p(x)), and PSIS k-hat of each proposal's importance weights per test datum (below 0.5: the
proposal covers the posterior well; above 0.7: unreliable). Usage::

    python benchmarks/stein_vae.py --epochs 3 --train-size 10000
    python benchmarks/stein_vae.py --epochs 3 --train-size 20000 --models stein_iw  # one row

Rows already in the results file for models not run (same command otherwise) are kept.

References:
    [1] Pu, Gan, Henao, Li, Han, Carin. VAE Learning via Stein Variational Gradient Descent.
        NeurIPS 2017. arXiv:1704.05155
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import pyro
import torch

from pvae.data import load_dataset
from pvae.diagnostics import pareto_khat
from pvae.evaluation.importance import log_importance_weights, log_likelihood
from pvae.infer.callbacks import Callback
from pvae.infer.stein import SteinEncoder, SteinVGD, fitted_gaussian_guide
from pvae.infer.train import fit
from pvae.models import build_model

RESULTS = Path(__file__).parent / "results" / "stein_vae.md"
LABELS = {
    "vae": "Gaussian VAE (ELBO)",
    "stein": "Stein VAE (SVGD)",
    "stein_iw": "Stein VIWAE (SVGD, importance weighted)",
}


class LogStats(Callback):
    """Prints the objective's per-step diagnostics (``SteinVGD.stats``: particle spread,
    move, norm, tuple ESS) of every ``every``-th step."""

    def __init__(self, objective: SteinVGD, every: int, kind: str) -> None:
        self.objective, self.every, self.kind = objective, every, kind

    def on_step_start(self, state) -> None:
        if state.step % self.every == 1 and self.objective.stats:  # the previous step's
            stats = " ".join(f"{k}={v:.3g}" for k, v in self.objective.stats.items())
            print(f"{self.kind} step {state.step - 1} of the epoch: {stats}", flush=True)


def train(kind: str, args, train_data) -> tuple[object, object, float]:
    """``(model, evaluation guide, seconds)`` of one run."""
    torch.manual_seed(args.seed)
    pyro.set_rng_seed(args.seed)
    vae = build_model("vae", latent_dim=args.latent_dim, hidden=[args.hidden])
    vae.initialize(train_data.model_options())
    start = time.perf_counter()
    with pyro.settings.context(module_local_params=True):
        if kind == "vae":
            fit(
                vae.model,
                vae.guide,
                train_data,
                epochs=args.epochs,
                batch_size=args.batch_size,
                seed=args.seed,
                progress=False,
                on_epoch_end=lambda r: print(kind, r, flush=True),
            )
            guide = vae.guide
        else:
            encoder = SteinEncoder(784, args.latent_dim, hidden=(args.hidden,))
            if kind == "stein_iw":
                objective = SteinVGD(
                    num_particles=args.particles // args.iw_k,
                    step_size=args.step_size,
                    importance_weighted=True,
                    k=args.iw_k,
                    proposal=args.iw_proposal,
                    control_variate=not args.iw_no_control_variate,
                )
            else:
                objective = SteinVGD(num_particles=args.particles, step_size=args.step_size)
            fit(
                vae.model,
                encoder.guide,
                train_data,
                objective=objective,
                callbacks=[LogStats(objective, args.log_every, kind)] if args.log_every else [],
                epochs=args.epochs,
                batch_size=args.batch_size,
                seed=args.seed,
                progress=False,
                on_epoch_end=lambda r: print(kind, r, flush=True),
            )
            guide = fitted_gaussian_guide(encoder.guide, num_particles=100)
    return vae, guide, time.perf_counter() - start


@torch.no_grad()
def evaluate(vae, guide, x: torch.Tensor, args) -> dict[str, float]:
    vae.eval()
    log_px = log_likelihood(vae.model, guide, x, num_samples=args.eval_samples, seed=args.seed)
    log_w = torch.cat(
        [
            log_importance_weights(vae.model, guide, x[i : i + 100], args.khat_samples)
            for i in range(0, len(x), 100)
        ],
        dim=1,
    )
    khat = pareto_khat(log_w)
    elbo = log_w.mean(0)
    return {
        "nll": float(-log_px.mean()),
        "nll_se": float(log_px.std() / len(log_px) ** 0.5),
        "elbo": float(elbo.mean()),
        "khat_median": float(khat.median()),
        "khat_above_0.7": float((khat > 0.7).double().mean()),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--train-size", type=int, default=10000)
    parser.add_argument("--test-size", type=int, default=1000)
    parser.add_argument("--latent-dim", type=int, default=20)
    parser.add_argument("--hidden", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--particles", type=int, default=10)
    parser.add_argument("--step-size", type=float, default=0.05)
    parser.add_argument("--iw-k", type=int, default=2, help="k of the Stein VIWAE's tuples")
    parser.add_argument(
        "--iw-proposal",
        default="kde",
        choices=["kde", "gaussian"],
        help="q of the Stein VIWAE's importance weights (SteinVGD's proposal)",
    )
    parser.add_argument(
        "--iw-no-control-variate",
        action="store_true",
        help="the Stein VIWAE's full tuple update (SteinVGD(control_variate=False))",
    )
    parser.add_argument(
        "--models", nargs="+", default=list(LABELS), choices=list(LABELS), help="rows to run"
    )
    parser.add_argument(
        "--log-every", type=int, default=0, help="print SVGD diagnostics every N steps"
    )
    parser.add_argument("--eval-samples", type=int, default=500)
    parser.add_argument("--khat-samples", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if args.iw_k < 1 or args.particles // args.iw_k < 2:
        parser.error("--particles / --iw-k must leave at least 2 tuples")
    torch.set_num_threads(args.threads)
    command = "python benchmarks/stein_vae.py " + " ".join(sys.argv[1:] if argv is None else argv)
    train_data = load_dataset(
        "mnist", "train", size=args.train_size, size_seed=args.seed, progress=False
    )
    test = load_dataset("mnist", "test", size=args.test_size, size_seed=args.seed, progress=False)
    x_test, _ = next(iter(test.batches(len(test), shuffle=False)))
    rows: dict[str, str] = {}
    if args.out.exists():  # rows of models not run this time are kept
        for line in args.out.read_text().splitlines():
            label = line.split("|")[1].strip() if line.startswith("| ") else ""
            if label in LABELS.values():
                rows[label] = line
    for kind in args.models:
        vae, guide, seconds = train(kind, args, train_data)
        r = evaluate(vae, guide, x_test, args)
        print(LABELS[kind], r, f"{seconds:.0f}s", flush=True)
        rows[LABELS[kind]] = (
            f"| {LABELS[kind]} | {r['nll']:.2f} +- {r['nll_se']:.2f} | {r['elbo']:.2f} "
            f"| {r['khat_median']:.2f} | {r['khat_above_0.7']:.2f} | {seconds:.0f} |"
        )
    lines = [
        "# Stein VAE beside the Gaussian VAE on MNIST (CPU budget)",
        "",
        f"Command: `{command}`",
        "",
        f"Setup: {args.train_size:,} dynamically binarized training images, {args.epochs} "
        f"epoch(s), batch {args.batch_size}, Adam 1e-3, seed {args.seed}, one CPU thread; "
        f"generative model: z {args.latent_dim}-d N(0, I), MLP decoder ({args.hidden} ReLU "
        f"units), Bernoulli pixels; encoders of {args.hidden} hidden units (Gaussian; Stein: x "
        f"and {args.latent_dim}-d noise in, one particle out, M = {args.particles} particles "
        f"per datum, SVGD step {args.step_size}; Stein VIWAE: the same {args.particles} "
        f"particles as {args.particles // args.iw_k} tuples of k = {args.iw_k}, q of the "
        f"weights: {args.iw_proposal}, Stein-identity control variate "
        f"{'off' if args.iw_no_control_variate else 'on'}). Test: {args.test_size:,} statically "
        f"binarized test images (drawn with seed {args.seed}); NLL importance-sampled with "
        f"K = {args.eval_samples} (Stein: proposal = the diagonal Gaussian fitted to 100 "
        "particles per datum, drawn independently of the K samples: a stochastic lower bound "
        "on log p(x) as the VAE's); ELBO and PSIS k-hat of the same proposals from "
        f"{args.khat_samples} samples per datum.",
        "",
        "| model | test NLL (nats) | ELBO of the proposal | k-hat median | share k-hat > 0.7 "
        "| train seconds |",
        "|---|---|---|---|---|---|",
    ]
    lines += [rows[label] for label in LABELS.values() if label in rows]
    text = "\n".join(lines) + "\n"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
