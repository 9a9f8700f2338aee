"""Associative compression networks against VAEs with the same networks: test NLL, how
informative the codes are (KL per datum, active units, KNN accuracy), the coding cost of the
test set in a nearest-neighbour chain order; and, with ``--speed``, the cost of the memory and
its neighbour search.

Trains ``acn`` and ``vae`` through the runner (:func:`pvae.runs.train_run`, as ``pvae train``
does: same encoder, decoder, latent dimension, optimiser, seed and data) with each decoder of
``--decoders``: the MLP decoder, and the gated PixelCNN (:mod:`pvae.nets.pixelcnn`, an
autoregressive decoder that can model the pixels without the code). For each model:

- test NLL by importance sampling with the guide (K samples). ACN's conditions each test image
  on its nearest training code, found with the image itself, so ``-log p(x | c_m(x))`` is not
  the NLL of a normalised density; ``+ log N`` (naming one of N training codes) bounds the NLL
  of ACN as the uniform mixture ``(1/N) sum_m p(x | c_m)`` over its memory;
- KL per datum (nats): ``KL(q(z | x) || p(z))`` under the model's own prior: ``Normal(0, I)``
  for the VAE (analytic), ``p(z | c_m(x))`` for ACN (Monte Carlo, :meth:`ACN.metrics`);
- active units (Burda et al.: ``Var_x E_q[z_u | x] > 0.01``) of the test codes;
- the accuracy of a K-nearest-neighbour vote of the test codes (guide means) against the
  training codes' MNIST labels;
- the compression view: ACN's ELBO code length of the test set sent in a greedy
  nearest-neighbour chain order (:func:`pvae.models.acn.chain_coding_cost`), beside the mean
  per-datum ELBO under ``Normal(0, I)`` (each datum coded on its own: the VAE's code).

The claim checked (Graves et al. [1], Sec. 4): with an autoregressive decoder the VAE's KL
collapses towards zero, while ACN's codes stay informative.

The test images are ``--eval-size`` drawn at random (seed ``--eval-seed``) from the test
split, every number above on the same ones; the runner's own test evaluation (the first
images, one sample) is not used. Rows can be run separately (``--decoders``, ``--seed``,
``--pixelcnn-epochs``, ``--posterior-scale``, ``--models``, ``--vae-beta``,
``--prior-network``), each run saving its rows with ``--rows FILE.json``, and merged into one
table with ``--merge``; the merged runs must agree on everything else. ``--prior-network
paper`` gives ACN the paper's prior network (3 x 512 tanh units, skips from the input to every
hidden layer and from every hidden layer to the output; rows ``acn, paper prior``).

``--speed`` measures instead (a) one epoch of ACN on the 60,000 MNIST training images, with
the share of its time spent re-encoding the memory and searching neighbours, and (b) the exact
chunked search against faiss (``faiss-cpu``, when installed) on synthetic codes. Usage::

    python benchmarks/acn.py --train-size 5000 --epochs 2 --eval-size 500 --eval-samples 10 \
        --pixelcnn-layers 3 --pixelcnn-channels 16
    python benchmarks/acn.py --decoders mlp --seed 1 --rows mlp_1.json ...
    python benchmarks/acn.py --merge mlp_0.json mlp_1.json pixelcnn_0.json
    python benchmarks/acn.py --posterior-scale 1 ...   # the paper's unit-variance q(z | x)
    python benchmarks/acn.py --models vae --vae-beta 0.1 ...   # what a cheap code is worth
    python benchmarks/acn.py --models acn --prior-network paper ...   # 3 x 512 tanh, skips
    python benchmarks/acn.py --speed

References:
    [1] Graves, Menick, van den Oord. Associative Compression Networks for Representation
        Learning. 2018. arXiv:1804.02476
    [2] van den Oord et al. Conditional Image Generation with PixelCNN Decoders. NeurIPS 2016.
        arXiv:1606.05328
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pyro
import pyro.distributions as dist
import torch

from pvae.data import load_dataset
from pvae.evaluation import active_units
from pvae.infer.train import TrainConfig
from pvae.models.acn import chain_coding_cost, nearest_neighbours
from pvae.models.base import option
from pvae.models.registry import register_model
from pvae.models.vae import VAE, VAEConfig
from pvae.runs import TrainSpec, load_run, train_run
from pvae.runs.evaluate import evaluate_model

RESULTS = Path(__file__).parent / "results" / "acn.md"
SPEED_RESULTS = Path(__file__).parent / "results" / "acn_speed.md"
PAPER_ACN_NATS = 73.9
FIXED_SCALE_VAE = "benchmark_acn_fixed_scale_vae"
# Options that may differ between merged runs (the rows record them); all others must agree.
PER_RUN = (
    "decoders",
    "epochs",
    "pixelcnn_epochs",
    "seed",
    "threads",
    "out",
    "rows",
    "merge",
    "posterior_scale",
    "models",
    "vae_beta",
    "prior_network",
    "kl_anneal_epochs",
    "pixelcnn_layers",
    "pixelcnn_spatial",
)
# The paper's prior network, as quoted in johannah/ACN's acn_models.py: "an MLP with three
# hidden layers each containing 512 tanh units, and skip connections from the input to all
# hidden layers and all hiddens to the output layer".
PAPER_PRIOR = {"prior_hidden": [512, 512, 512], "prior_activation": "tanh", "prior_skips": True}


@dataclass(frozen=True)
class FixedScaleVAEConfig(VAEConfig):
    """:class:`~pvae.models.vae.VAEConfig` and ACN's ``posterior_scale``."""

    posterior_scale: float = option(
        1.0, "fixed scale of every unit of q(z | x) (> 0)", convert=float
    )

    def validate(self) -> None:
        super().validate()
        if not (self.posterior_scale > 0 and math.isfinite(self.posterior_scale)):
            raise ValueError(f"posterior_scale must be positive, got {self.posterior_scale}")


@register_model(FIXED_SCALE_VAE)
class FixedScaleVAE(VAE):
    """The VAE with ``q(z | x) = Normal(mu(x), s^2 I)``, ``s`` = ``posterior_scale``: the
    baseline of ACN with ``posterior_scale = s`` (same encoder mean, same decoder). Registered
    by this benchmark only (the runner builds models by name): ``vae`` has no such option."""

    Config = FixedScaleVAEConfig
    config: FixedScaleVAEConfig

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        loc = self.encoder.head.loc(self.encoder.trunk(self._flat(x)))
        return loc, torch.full_like(loc, self.config.posterior_scale)


@torch.no_grad()
def codes_of(model, data) -> torch.Tensor:
    """Guide means of every datum, in order (binarization drawn with seed 0)."""
    generator = torch.Generator().manual_seed(0)
    return torch.cat(
        [model.encode_mean(x) for x, _ in data.batches(1000, shuffle=False, generator=generator)]
    )


@torch.no_grad()
def knn_accuracy(model, train, test, k: int) -> float | None:
    """Majority vote of the ``k`` nearest training codes' labels for each test code."""
    if not bool((train.labels >= 0).any()):
        return None
    memory, queries = codes_of(model, train), codes_of(model, test)
    _, nearest = nearest_neighbours(queries, memory, k)
    votes = train.labels[nearest]
    predicted = torch.nn.functional.one_hot(votes, int(train.labels.max()) + 1).sum(1).argmax(-1)
    return float((predicted == test.labels).float().mean())


@torch.no_grad()
def independent_elbo_nats(
    model, x: torch.Tensor, num_samples: int, seed: int = 0, batch_size: int = 1000
) -> float:
    """Mean ``E_q[-log p(x | z)] + KL(q(z | x) || Normal(0, I))`` per image, by Monte Carlo
    (the VAE's independent code; :func:`chain_coding_cost`'s ``independent_nats`` for ACN)."""
    generator = torch.Generator().manual_seed(seed)
    total = 0.0
    for i in range(0, x.shape[0], batch_size):
        batch = x[i : i + batch_size]
        loc, scale = model.encode(batch)
        eps = torch.randn((num_samples, *loc.shape), generator=generator, dtype=loc.dtype)
        z = loc + scale * eps
        log_q = dist.Normal(loc, scale).to_event(1).log_prob(z)
        log_px = model.likelihood(model.decode_logits(z, batch)).log_prob(batch)
        total += float((log_q - log_px - model.prior().log_prob(z)).mean(0).sum())
    return total / x.shape[0]


@torch.no_grad()
def code_use_nats(
    model, x: torch.Tensor, num_samples: int, seed: int = 0, batch_size: int = 1000
) -> float:
    """How much the decoder uses the code, in nats per image, whatever the prior and the
    codes' scale: the mean of ``log p(x_n | z_n) - log p(x_n | z_m)``, ``z_n ~ q(z | x_n)``
    and ``z_m`` the code of another image (a random derangement; ``num_samples`` draws).
    Near 0 for a decoder that ignores its code (a collapsed VAE)."""
    generator = torch.Generator().manual_seed(seed)
    loc, scale = zip(
        *(model.encode(x[i : i + batch_size]) for i in range(0, x.shape[0], batch_size)),
        strict=True,
    )
    loc, scale = torch.cat(loc), torch.cat(scale)
    order = torch.randperm(x.shape[0], generator=generator)
    other = torch.empty_like(order)
    other[order] = order.roll(1)  # every image gets another's code, none its own
    total = 0.0
    for _ in range(num_samples):
        z = loc + scale * torch.randn(loc.shape, generator=generator, dtype=loc.dtype)
        for i in range(0, x.shape[0], batch_size):
            batch = x[i : i + batch_size]
            own = model.likelihood(model.decode_logits(z[i : i + batch_size], batch))
            swapped = model.decode_logits(z[other[i : i + batch_size]], batch)
            total += float((own.log_prob(batch) - model.likelihood(swapped).log_prob(batch)).sum())
    return total / (num_samples * x.shape[0])


@torch.no_grad()
def standard_normal_kl(model, x: torch.Tensor) -> float:
    """Mean analytic ``KL(q(z | x) || Normal(0, I))`` per image, nats."""
    loc, scale = model.encode(x)
    return float((0.5 * (loc**2 + scale**2 - 1) - scale.log()).sum(-1).mean())


def test_images(test) -> torch.Tensor:
    """The test set's images as one tensor, in order (binarization drawn with seed 0)."""
    generator = torch.Generator().manual_seed(0)
    return torch.cat([x for x, _ in test.batches(1000, shuffle=False, generator=generator)])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", default="mnist", help="a binary image dataset with labels")
    parser.add_argument("--decoders", default="mlp,pixelcnn")
    parser.add_argument("--train-size", type=int, default=10000)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument(
        "--pixelcnn-epochs", type=int, default=None, help="epochs of the pixelcnn rows (--epochs)"
    )
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--latent-dim", type=int, default=32)
    parser.add_argument("--hidden", type=int, default=400)
    parser.add_argument("--neighbours", type=int, default=5)
    parser.add_argument("--components", type=int, default=3)
    parser.add_argument("--pixelcnn-layers", type=int, default=4)
    parser.add_argument("--pixelcnn-channels", type=int, default=32)
    parser.add_argument(
        "--pixelcnn-spatial",
        type=int,
        default=0,
        help="maps of the PixelCNN's location-dependent code (van den Oord et al. Eq. 5; the "
        "models' pixelcnn_spatial); 0: the per-layer bias only",
    )
    parser.add_argument("--eval-size", type=int, default=1000)
    parser.add_argument("--eval-seed", type=int, default=0, help="draws the test images")
    parser.add_argument("--eval-samples", type=int, default=20)
    parser.add_argument("--elbo-samples", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--posterior-scale",
        type=float,
        default=0.0,
        help="fixed scale of q(z | x) in both models (1: the paper's unit variance); 0: learned",
    )
    parser.add_argument("--models", default="vae,acn", help="which of vae, acn to train")
    parser.add_argument(
        "--vae-beta",
        type=float,
        default=1.0,
        help="KL weight of the VAE rows (< 1: how much the decoder gains from a cheaper code)",
    )
    parser.add_argument(
        "--prior-network",
        choices=("ours", "paper"),
        default="ours",
        help="ACN's prior network: ours (one hidden layer of --hidden units, the model's "
        "activation) or the paper's (3 x 512 tanh, skips from the input to every hidden layer "
        "and from every hidden layer to the output)",
    )
    parser.add_argument(
        "--kl-anneal-epochs",
        type=float,
        default=0.0,
        help="KL warm-up of both models: beta grows linearly from 0 to 1 over this many epochs "
        "(0: off). Starts from informative codes, so that a collapse at the end is the "
        "objective's choice, not an early accident of optimisation",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None)
    parser.add_argument("--rows", default=None, help="also save this run's rows (JSON)")
    parser.add_argument("--merge", nargs="+", default=None, help="rows files to merge")
    parser.add_argument("--speed", action="store_true", help="measure the memory's cost instead")
    parser.add_argument("--speed-train-size", type=int, default=60000)
    parser.add_argument("--search-size", type=int, default=1_000_000)
    parser.add_argument("--search-dim", type=int, default=32)
    parser.add_argument("--search-queries", type=int, default=1000)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.speed:
        return speed(args, argv)
    out = Path(args.out or RESULTS)
    if args.merge:
        runs = [json.loads(Path(path).read_text()) for path in args.merge]
        merge_runs(runs, out)
        print(out.read_text())
        return None
    shared = {"latent_dim": args.latent_dim, "hidden": [args.hidden]}
    rows = []
    train = load_dataset(args.dataset, "train", size=args.train_size, progress=False)
    # At random: the first images of a split need not be a fair sample of it.
    test = load_dataset(
        args.dataset, "test", size=args.eval_size, size_seed=args.eval_seed, progress=False
    )
    images = test_images(test)
    with tempfile.TemporaryDirectory() as folder:
        for decoder in args.decoders.split(","):
            architecture = {"architecture": decoder}
            if decoder == "pixelcnn":
                architecture.update(
                    pixelcnn_layers=args.pixelcnn_layers, pixelcnn_channels=args.pixelcnn_channels
                )
                if args.pixelcnn_spatial:
                    architecture.update(pixelcnn_spatial=args.pixelcnn_spatial)
            fixed = {"posterior_scale": args.posterior_scale} if args.posterior_scale else {}
            models = {
                "vae": {
                    **shared,
                    **architecture,
                    **fixed,
                    **({"beta": args.vae_beta} if args.vae_beta != 1.0 else {}),
                },
                "acn": {
                    **shared,
                    **architecture,
                    **fixed,
                    **(
                        PAPER_PRIOR
                        if args.prior_network == "paper"
                        else {"prior_hidden": [args.hidden]}
                    ),
                    "neighbours": args.neighbours,
                    "components": args.components,
                },
            }
            # The pixelcnn's activations are 32 maps per pixel: smaller batches.
            batch = 100 if decoder == "pixelcnn" else 1000
            epochs = args.epochs
            if decoder == "pixelcnn" and args.pixelcnn_epochs is not None:
                epochs = args.pixelcnn_epochs
            for name, options in models.items():
                if name not in args.models.split(","):
                    continue
                spec = TrainSpec(
                    model=FIXED_SCALE_VAE if name == "vae" and fixed else name,
                    dataset=args.dataset,
                    model_options=options,
                    train=TrainConfig(
                        epochs=epochs,
                        batch_size=args.batch_size,
                        lr=args.lr,
                        seed=args.seed,
                        kl_anneal_epochs=args.kl_anneal_epochs,
                    ),
                    train_size=args.train_size,
                    # The runner's evaluation (the first test images) is replaced below.
                    eval_samples=1,
                    eval_size=min(100, args.eval_size),
                    out=Path(folder) / f"{decoder}_{name}",
                    progress=False,
                )
                start = time.perf_counter()
                with pyro.settings.context(module_local_params=True):
                    metrics = train_run(spec)
                model, _ = load_run(spec.out, "best")
                model.eval()
                evaluation = evaluate_model(
                    model, test, num_samples=args.eval_samples, progress=False, seed=args.seed
                )
                if name == "acn":
                    cost = chain_coding_cost(
                        model,
                        images,
                        num_samples=args.elbo_samples,
                        generator=torch.Generator().manual_seed(0),
                        batch_size=batch,
                    )
                    chain, independent = cost.chain_nats, cost.independent_nats
                    kl = evaluation["test_kl"]
                else:
                    chain = None
                    independent = independent_elbo_nats(
                        model, images, args.elbo_samples, batch_size=batch
                    )
                    kl = standard_normal_kl(model, images)
                with torch.no_grad():
                    active = active_units(lambda x, m=model: m.encode_mean(x), images).count
                use = code_use_nats(model, images, args.elbo_samples, batch_size=batch)
                label = (
                    f"vae, beta {args.vae_beta:g}"
                    if name == "vae" and args.vae_beta != 1.0
                    else "acn, paper prior"
                    if name == "acn" and args.prior_network == "paper"
                    else name
                )
                if args.kl_anneal_epochs:
                    label += f", warm-up {args.kl_anneal_epochs:g}"
                row = dict(
                    decoder=decoder,
                    **(
                        {
                            "pixelcnn_layers": args.pixelcnn_layers,
                            "pixelcnn_spatial": args.pixelcnn_spatial,
                        }
                        if decoder == "pixelcnn"
                        else {}
                    ),
                    model=label,
                    seed=args.seed,
                    epochs=epochs,
                    posterior_scale=args.posterior_scale,
                    best_epoch=metrics["best_epoch"],
                    train_bounds=[record["train_bound"] for record in metrics["history"]],
                    valid_bounds=[record.get("valid_bound") for record in metrics["history"]],
                    nll=evaluation["nll"],
                    index_cost=math.log(len(train)) if name == "acn" else 0.0,
                    stderr=evaluation["nll_stderr"],
                    kl=kl,
                    active=active,
                    knn=knn_accuracy(model, train, test, args.neighbours),
                    code_use=use,
                    chain=chain,
                    independent=independent,
                    train_seconds=metrics["train_wall_time"],
                    seconds=time.perf_counter() - start,
                )
                rows.append(row)
                print(row, flush=True)
    run = {
        "command": " ".join(["benchmarks/acn.py", *(argv or sys.argv[1:])]),
        "args": vars(args),
        "rows": rows,
    }
    if args.rows:
        Path(args.rows).write_text(json.dumps(run, indent=1) + "\n")
    merge_runs([run], out)
    print(out.read_text())


def merge_runs(runs: list[dict], out: Path) -> None:
    """Writes the table of the rows of ``runs`` (``{"command", "args", "rows"}``, as
    ``--rows`` saves them) to ``out``; ``ValueError`` if the runs differ in more than
    :data:`PER_RUN`."""
    first = runs[0]["args"]
    for run in runs[1:]:
        differing = sorted(
            key for key in first if key not in PER_RUN and run["args"].get(key) != first[key]
        )
        if differing:
            raise ValueError(f"runs to merge differ in {', '.join(differing)}")
    rows = []
    for run in runs:
        for row in run["rows"]:
            if row["decoder"] == "pixelcnn":  # rows saved before they recorded it
                row = {"pixelcnn_layers": run["args"]["pixelcnn_layers"], **row}
            rows.append(row)
    rows.sort(
        key=lambda r: (
            r["decoder"] != "mlp",
            r["decoder"],
            -r.get("pixelcnn_layers", 0),
            -r.get("pixelcnn_spatial", 0),
            r.get("posterior_scale", 0.0),
            not r["model"].startswith("vae"),
            r["model"],
            r["epochs"],
            r["seed"],
        )
    )
    write_results(
        argparse.Namespace(**first),
        [run["command"] for run in runs],
        sorted({run["args"]["threads"] for run in runs}),
        rows,
        out,
    )


def write_results(
    args: argparse.Namespace, commands: list[str], threads: list[int], rows: list[dict], out: Path
) -> None:
    def number(value, digits=2):
        return "n/a" if value is None else f"{value:.{digits}f}"

    def scale_name(value):
        return f"{value:g}" if value else "learned"

    paper_prior = any(r["model"].startswith("acn, paper prior") for r in rows)

    lines = [
        "# ACN beside a VAE with the same networks: how informative the codes are",
        "",
        ("Command: " if len(commands) == 1 else "Commands (merged with `--merge`): ")
        + "; ".join(f"`python {command}`" for command in commands),
        "",
        f"Setup: `{args.dataset}` (training images dynamically binarized, test images "
        f"statically), the first {args.train_size} training images (validation: the runner's "
        f"{max(100, args.train_size // 5)}), epochs and seed as in the table, batch "
        f"{args.batch_size}, Adam lr {args.lr}, {'/'.join(map(str, threads))} thread(s); the "
        "model kept is the best epoch's on the validation bound. Both models: "
        f"784-{args.hidden}-{args.latent_dim} MLP encoder; decoder `mlp` (mirrored MLP) or "
        f"`pixelcnn` (gated PixelCNN, {args.pixelcnn_layers} layers x "
        f"{args.pixelcnn_channels} channels, 7x7 first kernel then 3x3, conditioned on z by a "
        "per-layer bias; rows `spatial code S` also by S maps `m(z)` of the image's size, "
        f"m a {args.latent_dim}-{args.hidden}-(S x 784) MLP, through a 1x1 convolution in every "
        "layer: van den Oord et al.'s location-dependent conditioning, Eq. 5); Bernoulli "
        "likelihood; the guide `Normal(mu(x), diag sigma(x)^2)` with "
        "learned scales, or with every scale fixed at the `q scale` column's value "
        "(`posterior_scale`; the paper's unit-variance codes: 1; the VAE then "
        f"`{FIXED_SCALE_VAE}`, this benchmark's VAE with that option). ACN's prior network "
        f"{args.latent_dim}-{args.hidden}-mixture of {args.components} Gaussians"
        + (
            f" (rows `acn, paper prior`: the paper's, {args.latent_dim}-512-512-512 tanh with "
            "skips from the input to every hidden layer and from every hidden layer to the "
            f"output, to a mixture of {args.components})"
            if paper_prior
            else ""
        )
        + f", K = {args.neighbours}. Test set: {args.eval_size} test images drawn at random (seed "
        f"{args.eval_seed}), the same for every row. Test NLL: importance sampling with "
        f"{args.eval_samples} samples.",
        "",
        "Columns. KL: nats per test image of `KL(q(z | x) || prior)` under the model's own "
        "prior (the VAE's `Normal(0, I)`, analytic; ACN's `p(z | c_m(x))`, nearest training "
        "code, Monte Carlo). Active units: `Var_x E_q[z_u | x] > 0.01` out of "
        f"{args.latent_dim}. KNN: majority vote of the {args.neighbours} nearest training codes' "
        "MNIST labels (guide means, training codes of the final encoder). Code use: how much "
        "the decoder uses the code whatever its prior and scale, `log p(x | z) - log p(x | z')` "
        "per test image with `z ~ q(z | x)` and `z'` another test image's code (`code_use_nats`; "
        "n/a: rows run before it was measured). ACN's test NLL is "
        "`-log p(x | c_m(x))`, not a normalised density's; `+ log N` bounds ACN as the uniform "
        "mixture over its N training codes. Chain code: ACN's ELBO code length of the test set "
        "sent in a greedy nearest-neighbour chain order of its codes, each code under "
        "`p(z | predecessor's code)`, the first under Normal(0, I) (`chain_coding_cost`; the "
        "order is free for a set, `+ log N!` would restore the original one). Independent "
        "code: each model's per-image ELBO under Normal(0, I) (for ACN a prior it was not "
        f"trained with). Both with {args.elbo_samples} draws of z per image. Seconds: "
        "training (and the run's evaluation and report, in total).",
        "",
        "| decoder | model | q scale | seed | epochs | test NLL (nats) | + log N | +- s.e. | "
        "KL (nats) | active units | KNN accuracy | code use (nats) | chain code | "
        "independent code | train s | total s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]

    def decoder_name(r: dict) -> str:
        name = r["decoder"]
        if r.get("pixelcnn_layers", args.pixelcnn_layers) != args.pixelcnn_layers:
            name += f", {r['pixelcnn_layers']} layer{'s' if r['pixelcnn_layers'] > 1 else ''}"
        if r.get("pixelcnn_spatial"):
            name += f", spatial code {r['pixelcnn_spatial']}"
        return name

    for r in rows:
        decoder = decoder_name(r)
        lines.append(
            f"| {decoder} | {r['model']} | {scale_name(r.get('posterior_scale', 0.0))} | "
            f"{r['seed']} | {r['epochs']} | {r['nll']:.2f} | "
            f"{r['nll'] + r['index_cost']:.2f} | {r['stderr']:.2f} | {r['kl']:.2f} | "
            f"{r['active']} | {number(r['knn'], 4)} | {number(r.get('code_use'))} | "
            f"{number(r['chain'])} | "
            f"{number(r['independent'])} | {r['train_seconds']:.0f} | {r['seconds']:.0f} |"
        )
    chains: dict[str, list[float]] = {}
    for r in rows:
        if r["chain"] is not None:
            chains.setdefault(decoder_name(r), []).append(r["chain"])
    ours = (
        f"Ours, the chain code of {args.eval_size} test images: "
        + ", ".join(
            f"{' and '.join(f'{v:.1f}' for v in values)} nats with the `{key}` decoder"
            for key, values in chains.items()
        )
        + f" ({min(min(v) for v in chains.values()) - PAPER_ACN_NATS:.0f} nats above "
        f"{PAPER_ACN_NATS} at best)"
        if chains
        else "No ACN row here, so no chain code of ours"
    )
    lines += [
        "",
        f"The paper. The v1 abstract of Graves et al. reports an upper bound of {PAPER_ACN_NATS} "
        "nats per image on binarized MNIST, without naming the decoder; the v2 abstract no "
        "longer quotes it. No full text of the paper could be searched (deepai.org, bytez.com, "
        "deeplearn.org, dokumen.tips: abstract and introduction only); what its method and "
        "experiments sections say reaches us through quotations. (1) The posterior: "
        "unit-variance diagonal Gaussians, the code being their mean (the paper's Sec. 3 as "
        "quoted by the vitalab.github.io summary of 2018-12-07; the experiments section as "
        "quoted in the jalexvig-derived ACN scripts: q(z|x) 'a unit variance Gaussian with mean "
        "specified by the output of the encoder network', a VGG-style convolutional encoder; "
        "johannah/ACN implements it so): our `q scale` 1 rows. (2) The prior network: 'an MLP "
        "with three hidden layers each containing 512 tanh units, and skip connections from the "
        "input to all hidden layers and all hiddens to the output layer' (quoted in "
        "johannah/ACN's acn_models.py and the derived scripts); its output distribution is not "
        "quoted anywhere we found (johannah/ACN: one diagonal Gaussian; one derived script: a "
        "mixture of 8, unsourced). Ours: one hidden layer of "
        f"{args.hidden} ReLU units, a mixture of {args.components}"
        + ("; the paper's in the `acn, paper prior` rows" if paper_prior else "")
        + ". (3) K: 5 in every "
        "reimplementation; the paper's value not found. (4) Code size: 'size of z is 16 for "
        "mnist, 128 for others' in the derived scripts, an implementer's note, not a quotation. "
        "(5) The decoder, code size, training length and binarization behind "
        f"{PAPER_ACN_NATS}: not found, so we claim no match. "
        + ours
        + f", after the epochs above on {args.train_size} images "
        "with small networks: far from converged, and on pvae's statically binarized MNIST "
        "test images (the `binarized_mnist` of Larochelle and Murray has no labels, which the "
        "KNN column needs).",
    ]
    out.write_text("\n".join(lines) + "\n")


def speed(args: argparse.Namespace, argv: list[str] | None) -> None:
    """(a) One ACN epoch on ``--speed-train-size`` training images (60,000) and the
    shares of it spent refreshing the memory and searching neighbours; (b) the exact search
    against faiss on ``--search-size`` synthetic codes."""
    from pvae.infer.train import fit
    from pvae.models.acn import ACN, faiss_nearest_neighbours

    size = args.speed_train_size
    train = load_dataset(args.dataset, "train", size=size, progress=False)
    torch.manual_seed(args.seed)
    model = ACN(
        latent_dim=args.latent_dim,
        hidden=[args.hidden],
        prior_hidden=[args.hidden],
        neighbours=args.neighbours,
        components=args.components,
    )
    setup = model.training_setup(train, seed=args.seed)
    refresh = setup["callbacks"][0]
    # Timed parts, measured inside the epoch by wrapping them.
    timers = {"refresh": 0.0, "search": 0.0}
    original_refresh, original_search = refresh.refresh, model.search

    def timed_refresh(epoch):
        start = time.perf_counter()
        original_refresh(epoch)
        timers["refresh"] += time.perf_counter() - start

    def timed_search(*a, **k):
        start = time.perf_counter()
        result = original_search(*a, **k)
        timers["search"] += time.perf_counter() - start
        return result

    refresh.refresh, model.search = timed_refresh, timed_search
    start = time.perf_counter()
    with pyro.settings.context(module_local_params=True):
        fit(
            model.model,
            model.guide,
            train_data=setup["train_data"],
            callbacks=setup["callbacks"],
            epochs=1,
            batch_size=args.batch_size,
            lr=args.lr,
            seed=args.seed,
            progress=False,
        )
    epoch = time.perf_counter() - start
    # The runner's epoch holds one refresh (at its end; the first epoch also one at its start).
    refreshes = 2
    print(
        f"epoch {epoch:.1f} s, {refreshes} refreshes {timers['refresh']:.1f} s, "
        f"searches {timers['search']:.1f} s",
        flush=True,
    )

    generator = torch.Generator().manual_seed(args.seed)
    memory = torch.randn(args.search_size, args.search_dim, generator=generator)
    queries = memory[: args.search_queries] + 0.01 * torch.randn(
        args.search_queries, args.search_dim, generator=generator
    )
    exclude = torch.arange(args.search_queries)
    timings, results = {}, {}
    backends = {"exact (torch, chunks of 4096)": nearest_neighbours}
    try:
        import faiss

        faiss.omp_set_num_threads(args.threads)
        backends["faiss IndexFlatL2"] = faiss_nearest_neighbours
    except ImportError:
        faiss = None
    for name, search in backends.items():
        search(queries[:10], memory[:1000], args.neighbours, exclude=exclude[:10])  # warm up
        start = time.perf_counter()
        results[name] = search(queries, memory, args.neighbours, exclude=exclude)
        timings[name] = time.perf_counter() - start
        print(f"{name}: {timings[name]:.2f} s", flush=True)
    names = list(backends)
    same = bool(torch.equal(results[names[0]][1], results[names[1]][1])) if len(names) > 1 else None
    write_speed(args, argv, size, epoch, refreshes, timers, timings, same, faiss)
    print(Path(args.out or SPEED_RESULTS).read_text())


def _duration(seconds: float) -> str:
    return f"{seconds / 3600:.1f} h" if seconds >= 3600 else f"{seconds:.0f} s"


def write_speed(args, argv, size, epoch, refreshes, timers, timings, same, faiss) -> None:
    base = next(iter(timings.values()))
    per_epoch = args.search_size / args.search_queries
    lines = [
        "# ACN: the cost of the memory and of its neighbour search",
        "",
        f"Command: `python {' '.join(['benchmarks/acn.py', *(argv or sys.argv[1:])])}`",
        "",
        f"Setup: {args.threads} thread(s) on a shared 2-core CPU (other jobs ran beside it: "
        "the ratios within each table are the result, the seconds are indicative), seed "
        f"{args.seed}.",
        "",
        f"## One epoch of ACN on {size} `{args.dataset}` training images",
        "",
        f"784-{args.hidden}-{args.latent_dim} MLP encoder and decoder, prior network "
        f"{args.latent_dim}-{args.hidden}-{args.components} Gaussians, K = {args.neighbours}, "
        f"batch {args.batch_size} (`fit`, one epoch, no validation). The memory refresh "
        "re-encodes all the training images without gradients; the first epoch has two (at "
        "its start, the memory being empty, and at its end), later ones one. The search is "
        "the exact chunked torch search of every batch's codes against the whole memory.",
        "",
        "| part | seconds | share of the epoch |",
        "|---|---|---|",
        f"| epoch (all) | {epoch:.1f} | 100% |",
        f"| memory refresh ({refreshes} passes) | {timers['refresh']:.1f} | "
        f"{100 * timers['refresh'] / epoch:.1f}% |",
        f"| memory refresh, one pass (later epochs) | {timers['refresh'] / refreshes:.1f} | "
        f"{100 * timers['refresh'] / refreshes / epoch:.1f}% |",
        f"| neighbour search ({size // args.batch_size} batches) | {timers['search']:.1f} | "
        f"{100 * timers['search'] / epoch:.1f}% |",
        "",
        f"## Exact search against faiss: {args.search_queries} queries, {args.search_size} "
        f"codes of dimension {args.search_dim}",
        "",
        f"Synthetic codes (standard normal); queries: the first {args.search_queries} codes "
        f"plus noise, each excluding its own row, K = {args.neighbours}. faiss: "
        + (
            f"`faiss-cpu` {faiss.__version__}, `IndexFlatL2` (exact), built from the memory "
            "on every call (included in its time)."
            if faiss is not None
            else "not installed (`pip install faiss-cpu`): not measured."
        ),
        "",
        "| search | seconds | ratio to the exact torch search | one epoch's searches at this "
        "size (extrapolated) |",
        "|---|---|---|---|",
    ]
    for name, seconds in timings.items():
        lines.append(
            f"| {name} | {seconds:.2f} | {seconds / base:.2f} | {_duration(seconds * per_epoch)} |"
        )
    if same is not None:
        lines += ["", f"Same neighbours (indices, in order) from both: {same}."]
    Path(args.out or SPEED_RESULTS).write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
