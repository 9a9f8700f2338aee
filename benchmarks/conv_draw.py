"""Convolutional DRAW beside pvae's VAE and IWAE on Omniglot and binarized MNIST, at a stated CPU
budget: test NLL, the rate by step and the conceptual-compression figure.

Trains each model with :func:`pvae.infer.train.fit` on a random subset of the training split
(``--train-size``, drawn with ``--seed``: Omniglot's training rows are sorted by character),
for the same epochs, batch and optimiser; then estimates the test NLL by importance sampling
(``--eval-samples`` K) on a random subset of the test split (``--eval-size``; binarized
MNIST's test rows are sorted by digit), seeded, the same images for every model.

Models: ``conv_draw`` (T steps of convolutional LSTMs, latent maps at 7x7, learned prior per
step), ``vae`` (the MLP VAE, ELBO) and the same VAE trained with the IWAE bound (K = 5).

Paper numbers (Omniglot test NLL in nats, as cited by Chen et al. 2017, VLAE, Table 3): conv
DRAW < 91.00 (Gregor et al. 2016), DRAW < 96.50, IWAE 103.38, VAE 106.31. They are on the IWAE
paper's Omniglot split (24,345 / 8,070 images), trained for days; pvae's ``omniglot`` is the
background/evaluation split (train 18,316 / valid 964 / test 13,180, evaluation alphabets
unseen in training), so only the order of the models is comparable. Usage::

    python benchmarks/conv_draw.py --train-size 6000 --epochs 3 --eval-size 300 --eval-samples 50

References:
    [1] Gregor, Besse, Rezende, Danihelka, Wierstra. Towards Conceptual Compression.
        NeurIPS 2016. arXiv:1604.08772
    [2] Chen, Kingma, Salimans, Duan, Dhariwal, Schulman, Sutskever, Abbeel. Variational Lossy
        Autoencoder. ICLR 2017. arXiv:1611.02731 (Table 3)
    [3] Burda, Grosse, Salakhutdinov. Importance Weighted Autoencoders. ICLR 2016.
        arXiv:1509.00519
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import pyro
import torch

from pvae.data import load_dataset
from pvae.evaluation import LogLikelihood, log_likelihood
from pvae.infer.train import TrainConfig, fit
from pvae.models import build_model
from pvae.models.conv_draw import compression_rows, plot_compression

RESULTS = Path(__file__).parent / "results" / "conv_draw.md"
#: Omniglot test NLL (nats) cited in Chen et al. 2017, Table 3 (IWAE paper's split)
PAPER_OMNIGLOT = {"conv DRAW": "< 91.00", "DRAW": "< 96.50", "IWAE": "103.38", "VAE": "106.31"}
PAPER_ROW = {"conv_draw": "conv DRAW", "vae": "VAE", "iwae": "IWAE"}
COLLAPSE_NOTE = (
    "Posterior collapse without warm-up: an earlier run of this script without KL warm-up "
    "(`--kl-anneal 0 --batch-size 100 --epochs 2`, 6000 training images, prior and posterior "
    "heads then randomly initialised, now zero-initialised) collapsed `conv_draw`'s posterior: "
    "0.07 nats sent over its 4 steps on Omniglot (0.06 on MNIST), test NLL 174.74 ± 3.10 "
    "(Omniglot) and 202.39 ± 2.54 (MNIST), the mean image's, beside the VAE's 158.60 and "
    "144.31 in that run. Zero-initialised heads alone did not prevent it (0.25 nats after "
    "one epoch on 3000 images); warming the KL weight up over the first epoch did (26 nats, "
    "ELBO -139.9 after two epochs on 3000 images)."
)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--datasets", default="omniglot,binarized_mnist")
    parser.add_argument("--models", default="conv_draw,vae,iwae")
    parser.add_argument("--train-size", type=int, default=10000)
    parser.add_argument("--valid-size", type=int, default=500)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument(
        "--kl-anneal",
        type=float,
        default=1.0,
        help="epochs of linear KL warm-up of the ELBO-trained models (0: off)",
    )
    parser.add_argument("--steps", type=int, default=4, help="conv_draw's T")
    parser.add_argument("--channels", type=int, default=16, help="conv_draw's LSTM channels")
    parser.add_argument("--latent-channels", type=int, default=4, help="conv_draw's Cz")
    parser.add_argument("--latent-dim", type=int, default=50, help="the VAE's")
    parser.add_argument("--hidden", type=int, default=400, help="the VAE's")
    parser.add_argument("--iwae-particles", type=int, default=5)
    parser.add_argument("--eval-size", type=int, default=500)
    parser.add_argument("--eval-samples", type=int, default=100)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    draw = {
        "steps": args.steps,
        "channels": args.channels,
        "latent_channels": args.latent_channels,
        "levels": 2,
    }
    vae = {"latent_dim": args.latent_dim, "hidden": [args.hidden]}
    models = {
        "conv_draw": ("conv_draw", draw, "elbo", 1),
        "vae": ("vae", vae, "elbo", 1),
        "iwae": ("vae", vae, "iwae", args.iwae_particles),
    }
    rows, rates = [], {}
    for dataset in args.datasets.split(","):
        split = dict(size_seed=args.seed, progress=False)
        train = load_dataset(dataset, "train", size=args.train_size, **split)
        valid = load_dataset(dataset, "valid", size=args.valid_size, **split)
        test = load_dataset(dataset, "test", size=args.eval_size, **split)
        x_test = next(iter(test.batches(len(test), shuffle=False)))[0]
        for label in args.models.split(","):
            name, options, objective, particles = models[label]
            torch.manual_seed(args.seed)
            model = build_model(name, input_shape=train.model_options()["input_shape"], **options)
            model.initialize(train.model_options())
            start = time.perf_counter()
            with pyro.settings.context(module_local_params=True):
                result = fit(
                    model.model,
                    model.guide,
                    train,
                    valid_data=valid,
                    objective=objective,
                    num_particles=particles,
                    config=TrainConfig(
                        epochs=args.epochs,
                        batch_size=args.batch_size,
                        lr=args.lr,
                        seed=args.seed,
                        # The IWAE bound has no KL term to weight.
                        kl_anneal_epochs=args.kl_anneal if objective == "elbo" else 0.0,
                    ),
                    progress=False,
                )
            train_seconds = time.perf_counter() - start
            model.eval()
            start = time.perf_counter()
            values = log_likelihood(
                model.model,
                model.guide,
                x_test,
                num_samples=args.eval_samples,
                batch_size=50,
                seed=args.seed,
            )
            estimate = LogLikelihood(values, args.eval_samples)
            row = dict(
                dataset=dataset,
                model=label,
                nll=-estimate.mean,
                stderr=estimate.stderr,
                valid=result.history[-1].get("valid_elbo"),
                train_seconds=train_seconds,
                eval_seconds=time.perf_counter() - start,
                parameters=sum(p.numel() for p in model.parameters()),
            )
            if label == "conv_draw":
                with torch.random.fork_rng(devices=[]):
                    torch.manual_seed(args.seed)
                    step_rates = model.rate_by_step(x_test).mean(0)
                rates[dataset] = step_rates
                figure = out.with_name(
                    "conv_draw_compression.png"
                    if dataset == "omniglot"
                    else f"conv_draw_compression_{dataset}.png"
                )
                plot_compression(compression_rows(model, x_test[:8], args.seed), step_rates, figure)
                row["figure"] = figure.name
            rows.append(row)
            print({k: v for k, v in row.items()}, flush=True)
    write_results(args, argv, rows, rates)
    print(out.read_text())


def time_note(rows: list[dict]) -> str:
    """The training time of ``conv_draw`` against the VAE's, per dataset: the table compares
    equal epochs, not equal time."""
    seconds = {(r["dataset"], r["model"]): r["train_seconds"] for r in rows}
    ratios = [
        f"{dataset} {seconds[(dataset, 'conv_draw')] / seconds[(dataset, 'vae')]:.0f}x"
        for dataset, model in seconds
        if model == "conv_draw" and (dataset, "vae") in seconds
    ]
    if not ratios:
        return ""
    return (
        "Equal epochs, not equal time: `conv_draw` trained " + ", ".join(ratios) + " as long as "
        "the VAE (train s); the VAE at equal wall time (more epochs) was not measured."
    )


def write_results(
    args: argparse.Namespace,
    argv: list[str] | None,
    rows: list[dict],
    rates: dict[str, torch.Tensor],
) -> None:
    def number(value, digits=2):
        return "n/a" if value is None else f"{value:.{digits}f}"

    total = sum(r["train_seconds"] + r["eval_seconds"] for r in rows)
    lines = [
        "# Convolutional DRAW on Omniglot and binarized MNIST",
        "",
        f"Command: `python {' '.join(['benchmarks/conv_draw.py', *(argv or sys.argv[1:])])}`",
        "",
        f"Setup: {args.threads} CPU thread(s) on a 2-core machine shared with other jobs "
        f"(the whole benchmark: {total / 60:.0f} min wall). Every model is trained on the same "
        f"random {args.train_size} training images of each dataset (drawn with seed "
        f"{args.seed}), {args.epochs} epochs, batch {args.batch_size}, Adam lr {args.lr}, "
        f"seed {args.seed}; the ELBO-trained models (`conv_draw`, `vae`) with the KL weight "
        f"growing linearly from 0 to 1 over the first {args.kl_anneal:g} epoch(s) (without it "
        "`conv_draw`'s posterior collapses in so short a run: see below); the parameters "
        "after the last epoch are evaluated. Omniglot: "
        "pvae's `omniglot`, the background/evaluation split (train 18,316 / valid 964 / test "
        "13,180 28x28 images; test alphabets unseen in training), training images binarised "
        "dynamically, test statically; binarized MNIST: Larochelle's fixed binarisation. "
        f"Test NLL: importance sampling with K = {args.eval_samples} on the same random "
        f"{args.eval_size} test images for every model (seeded); ± is the standard error over "
        "images. Valid ELBO: the last epoch's, on "
        f"{args.valid_size} random validation images.",
        "",
        f"Models: `conv_draw` with T = {args.steps} steps, {args.channels}-channel "
        f"convolutional LSTMs at 7x7, {args.latent_channels} latent channels per step "
        f"({args.latent_channels * 49} latent dims per step), a learned prior per step, "
        "Bernoulli likelihood; `vae`: pvae's MLP VAE "
        f"784-{args.hidden}-{args.latent_dim}, trained with the ELBO; `iwae`: the same network "
        f"trained with the IWAE bound, K = {args.iwae_particles}.",
        "",
        "Paper numbers (Omniglot, from Chen et al. 2017, VLAE, Table 3): conv DRAW < 91.00 "
        "(Gregor et al. 2016), DRAW < 96.50, IWAE 103.38, VAE 106.31. They are on the IWAE "
        "paper's Omniglot split (24,345 training / 8,070 test images, alphabets shared), "
        "trained to convergence with far larger networks, so they are not comparable with the "
        "numbers here: this split's test alphabets are unseen, and this is a minutes-long, "
        "small-model run. The comparison is between the models of one row group, measured in "
        "the same run.",
        "",
        COLLAPSE_NOTE,
        "",
        "| dataset | model | test NLL (nats) | ± s.e. | paper (Omniglot) | last valid ELBO | "
        "parameters | train s | eval s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        paper = PAPER_OMNIGLOT[PAPER_ROW[r["model"]]] if r["dataset"] == "omniglot" else "n/a"
        lines.append(
            f"| {r['dataset']} | {r['model']} | {r['nll']:.2f} | {r['stderr']:.2f} | {paper} | "
            f"{number(r['valid'])} | {r['parameters']:,} | {r['train_seconds']:.0f} | "
            f"{r['eval_seconds']:.0f} |"
        )
    lines += ["", time_note(rows)]
    if rates:
        steps = len(next(iter(rates.values())))
        lines += [
            "",
            "## Conceptual compression",
            "",
            "Rate by step: the mean KL(q(z_t | x, z_<t) || p(z_t | z_<t)) in nats over the test "
            "images, the cost of sending step t's latent (bits-back); the sum is the ELBO's KL "
            "term. Sending the first k latents and drawing the rest from the prior gives the "
            "figures' decodings (columns k = 0..T; k = 0 is a sample, k = T the reconstruction "
            "from q's means).",
            "",
            "| dataset | " + " | ".join(f"step {t + 1}" for t in range(steps)) + " | total |",
            "|---|" + "---|" * (steps + 1),
        ]
        for dataset, values in rates.items():
            lines.append(
                f"| {dataset} | "
                + " | ".join(f"{v:.2f}" for v in values.tolist())
                + f" | {float(values.sum()):.2f} |"
            )
        for r in rows:
            if "figure" in r:
                lines += [
                    "",
                    f"{r['dataset']}: 8 test images (first column), decoded from their first k "
                    "latents (k = 0..T), and the rate by step:",
                    "",
                    f"![conceptual compression, {r['dataset']}]({r['figure']})",
                ]
    Path(args.out).write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
