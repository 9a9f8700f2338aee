"""InfoVAE against the ELBO with a flexible (PixelCNN) decoder: is the latent code used?

Zhao, Song and Ermon [1] argue that with a decoder flexible enough to model x alone, the ELBO's
KL term drives ``q(z | x)`` to the prior (the code is ignored), while the InfoVAE objective
with ``alpha = 1`` (no per-datum KL, an MMD between the aggregate posterior and the prior:
the MMD-VAE) keeps the mutual information between x and z. This script trains the same
network, the VAE with an MLP encoder and a gated PixelCNN decoder (``architecture=pixelcnn``),
through the runner (:func:`pvae.runs.train_run`, as ``pvae train`` does: same data, seed,
optimiser and epochs) with ``--objective elbo`` and ``--objective infovae`` at each setting of
``--settings`` (``alpha:lambda`` pairs), and measures on a random subset of the test set
(drawn with ``--seed``):

- ``I(x; z)``: the aggregate-posterior estimate of :func:`pvae.evaluation.mutual_information`
  over the subset (at most ``log n`` nats for ``n`` test images);
- active units (``Var_x E_q[z_u | x] > 0.01``) and the KL per image,
  ``KL(q(z | x) || N(0, I))`` (analytic);
- the test ELBO (one draw per image) and its reconstruction term ``E_q log p(x | z)``;
- the test NLL, importance sampled with the guide (K samples): an upper bound on
  ``-log p(x)`` in expectation whatever the training objective.

Usage (the recorded runs, about 10 CPU minutes together; ``--settings 1:1000,1:10,0:1000``
does both in one)::

    python benchmarks/info_vae.py --train-size 8000 --epochs 2 --eval-size 300 \
        --eval-samples 20 --pixelcnn-layers 3 --pixelcnn-channels 16 --settings 1:1000
    python benchmarks/info_vae.py --train-size 8000 --epochs 2 --eval-size 300 \
        --eval-samples 20 --pixelcnn-layers 3 --pixelcnn-channels 16 --settings 1:10,0:1000

References:
    [1] Zhao, Song, Ermon. InfoVAE: Balancing Learning and Inference in Variational
        Autoencoders. AAAI 2019. arXiv:1706.02262
    [2] van den Oord et al. Conditional Image Generation with PixelCNN Decoders. NeurIPS 2016.
        arXiv:1606.05328
"""

from __future__ import annotations

import argparse
import math
import resource
import sys
import tempfile
import time
from pathlib import Path

import pyro
import torch

from pvae.data import load_dataset
from pvae.evaluation import active_units
from pvae.evaluation.collapse import mutual_information
from pvae.evaluation.importance import log_likelihood
from pvae.infer.objectives import ELBO
from pvae.infer.train import TrainConfig
from pvae.runs import TrainSpec, load_run, train_run

RESULTS = Path(__file__).parent / "results" / "info_vae.md"


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def test_images(test) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    return torch.cat([x for x, _ in test.batches(500, shuffle=False, generator=generator)])


def kl_and_elbo(model, x: torch.Tensor, batch: int = 100) -> tuple[float, float, float]:
    """Mean KL(q(z|x) || N(0, I)) (analytic), test ELBO and its reconstruction term per image
    (one draw of z per image)."""
    kl_total = elbo_total = 0.0
    with torch.no_grad():
        for start in range(0, len(x), batch):
            chunk = x[start : start + batch]
            loc, scale = model.encode(chunk)
            kl_total += (0.5 * (loc**2 + scale**2 - 1) - scale.log()).sum().item()
            elbo_total += ELBO()(model.model, model.guide, chunk).bound.item()
    kl, elbo = kl_total / len(x), elbo_total / len(x)
    return kl, elbo, elbo + kl


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", default="mnist")
    parser.add_argument("--train-size", type=int, default=8000)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--latent-dim", type=int, default=32)
    parser.add_argument("--hidden", type=int, default=400)
    parser.add_argument("--pixelcnn-layers", type=int, default=3)
    parser.add_argument("--pixelcnn-channels", type=int, default=16)
    parser.add_argument(
        "--settings",
        default="1:1000,1:10,0:1000",
        help="InfoVAE (alpha:lambda) pairs to train beside the ELBO, comma separated",
    )
    parser.add_argument("--kernel", default="rbf")
    parser.add_argument("--eval-size", type=int, default=300)
    parser.add_argument("--eval-samples", type=int, default=20)
    parser.add_argument("--mi-samples", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    out = Path(args.out or RESULTS)
    options = {
        "latent_dim": args.latent_dim,
        "hidden": [args.hidden],
        "architecture": "pixelcnn",
        "pixelcnn_layers": args.pixelcnn_layers,
        "pixelcnn_channels": args.pixelcnn_channels,
    }
    runs: list[tuple[str, str, dict]] = [("ELBO (VAE)", "elbo", {})]
    for pair in filter(None, args.settings.split(",")):
        alpha, lam = (float(v) for v in pair.split(":"))
        label = f"InfoVAE alpha={alpha:g}, lambda={lam:g}"
        runs.append((label, "infovae", {"alpha": alpha, "mmd_lambda": lam, "kernel": args.kernel}))
    test = load_dataset(args.dataset, "test", progress=False)
    test = test.subset(args.eval_size, seed=args.seed)
    images = test_images(test)
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for index, (label, objective, objective_options) in enumerate(runs):
            spec = TrainSpec(
                model="vae",
                dataset=args.dataset,
                model_options=options,
                objective=objective,
                objective_options=objective_options,
                train=TrainConfig(
                    epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=args.seed
                ),
                train_size=args.train_size,
                eval_samples=1,
                eval_size=2,  # the runner's own test NLL is not used: measured below
                out=Path(folder) / f"run{index}",
                progress=False,
            )
            cpu, wall = cpu_seconds(), time.perf_counter()
            with pyro.settings.context(module_local_params=True):
                metrics = train_run(spec)
            train_cpu = cpu_seconds() - cpu
            model, _ = load_run(spec.out, "best")
            model.eval()
            with torch.no_grad():
                pyro.set_rng_seed(args.seed)
                mi = mutual_information(model, images, num_samples=args.mi_samples)
                active = active_units(lambda x, m=model: m.encode_mean(x), images).count
                kl, elbo, reconstruction = kl_and_elbo(model, images)
                values = log_likelihood(
                    model.model,
                    model.guide,
                    images,
                    num_samples=args.eval_samples,
                    batch_size=50,
                    seed=args.seed,
                )
            nll = -values.mean().item()
            stderr = values.std().item() / math.sqrt(len(values))
            row = dict(
                label=label,
                mi=mi,
                active=active,
                kl=kl,
                reconstruction=reconstruction,
                elbo=elbo,
                nll=nll,
                stderr=stderr,
                train_cpu=train_cpu,
                cpu=cpu_seconds() - cpu,
                wall=time.perf_counter() - wall,
                train_bound=metrics.get("train_bound"),
            )
            rows.append(row)
            print(row, flush=True)
    write_results(args, argv, rows, out)
    print(out.read_text())


def write_results(args, argv, rows, out: Path) -> None:
    command = "python benchmarks/info_vae.py " + " ".join(sys.argv[1:] if argv is None else argv)
    base = rows[0]
    lines = [
        "# InfoVAE against the ELBO with a PixelCNN decoder (MNIST)",
        "",
        f"Command: `{command}`",
        "",
        f"Setup: `{args.dataset}` (training images dynamically binarized, test images "
        f"statically), the first {args.train_size} training images, {args.epochs} epochs, "
        f"batch {args.batch_size}, Adam lr {args.lr}, seed {args.seed}, {args.threads} "
        f"thread(s). One network for every row: the VAE with a 784-{args.hidden}-"
        f"{args.latent_dim} MLP encoder and a gated PixelCNN decoder ({args.pixelcnn_layers} "
        f"layers x {args.pixelcnn_channels} channels, conditioned on z by a per-layer bias), "
        "Bernoulli likelihood, N(0, I) prior; trained through the runner with "
        "`--objective elbo` or `--objective infovae` (MMD kernel "
        f"{args.kernel}, bandwidth 2 x {args.latent_dim}). Test: {args.eval_size} test images "
        f"drawn at random (seed {args.seed}). Test NLL: importance sampling with the guide, "
        f"K = {args.eval_samples}. I(x; z): aggregate-posterior estimate over those images "
        f"({args.mi_samples} draws per image; at most log {args.eval_size} = "
        f"{math.log(args.eval_size):.2f} nats).",
        "",
        "| objective | I(x; z) (nats) | ratio to ELBO | active units | KL (nats) | "
        "E_q log p(x \\| z) | test ELBO | test NLL +- s.e. | train CPU s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        ratio = row["mi"] / base["mi"] if base["mi"] > 0 else float("inf")
        lines.append(
            f"| {row['label']} | {row['mi']:.3f} | {ratio:.1f} | {row['active']} / "
            f"{args.latent_dim} | {row['kl']:.2f} | {row['reconstruction']:.2f} | "
            f"{row['elbo']:.2f} | {row['nll']:.2f} +- {row['stderr']:.2f} | "
            f"{row['train_cpu']:.0f} |"
        )
    total = sum(row["cpu"] for row in rows)
    lines += [
        "",
        f"Total CPU time of the measured runs: {total / 60:.1f} minutes.",
        "",
    ]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines))


if __name__ == "__main__":
    main()
