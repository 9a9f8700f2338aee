"""The semi-supervised text VAE (Xu et al. 2017) on SST-2 and TREC, beside the supervised
classifier, and the cost and gradient variance of its three unlabelled estimators.

For every dataset, label count and seed it trains, with the same LSTM classifier and the same
labelled sentences (class balanced, drawn by the seed):

- ``ss_text_vae`` with the unlabelled term enumerated (``enumerate``: C decoder passes) and,
  where asked, sampled with either baseline (``sample_ema``, ``sample_vimco``: K = 2 draws of y,
  two decoder passes whatever C);
- ``text_classifier``: the classifier on the labelled sentences alone, for the same number of
  passes over them (labelled batches per epoch x epochs).

The model's training setup is used (:meth:`pvae.models.ss_text_vae.SSTextVAE.training_setup`)
with two changes that the budget asks for: the labelled set is visited ``labelled_repeats``
times an epoch (about one labelled batch per unlabelled batch, ``--labelled-ratio``; the CLI's
default is once), and no validation bound is computed (only the validation accuracy, which picks the
epoch). Every epoch records the validation and test accuracy of q(y | x); a run reports the
test accuracy at its best validation epoch, as ``benchmarks/m2_accuracy.py``.

The estimator comparison, on the trained enumerated model of the first seed at the smallest
label count, one fixed unlabelled batch: the total variance (trace of the covariance) of the
classifier's gradient over repeated draws, for enumeration, REINFORCE without a baseline, the
moving-average baseline and the leave-one-out baseline; and the wall time per training epoch of
each estimator (from the runs above).

Usage::

    python benchmarks/ss_text.py --quick          # <= 25 min on one thread (the table we ship)
    python benchmarks/ss_text.py                  # the full grid: all sentences, 100, 500,
                                                  # 1000 and all labels, 3 seeds (hours on CPU)

The results file (``benchmarks/results/ss_text.md``, and the runs in ``ss_text.json``) is
rewritten after every run, so a stopped benchmark keeps its table.

References:
    [1] Xu, Sun, Deng, Tan. Variational Autoencoder for Semi-supervised Text Classification.
        AAAI 2017. arXiv:1603.02514 (reports on IMDB and AG's News, which pvae does not ship)
    [2] Felhi, Le Roux, Seddah. Challenging the Semi-Supervised VAE Framework for Text
        Classification. 2021. arXiv:2109.12969
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from pathlib import Path
from typing import Any

import pyro
import torch

from pvae.data import load_dataset
from pvae.data.semisupervised import SemiSupervisedData
from pvae.infer.train import fit
from pvae.models import build_model

RESULTS = Path(__file__).parent / "results" / "ss_text.md"
ESTIMATORS = ("enumerate", "sample_ema", "sample_vimco")
NAMES = {
    "enumerate": "SSVAE, y enumerated",
    "sample_ema": "SSVAE, y sampled, moving-average baseline",
    "sample_vimco": "SSVAE, y sampled, leave-one-out baseline",
    "classifier": "classifier alone (labelled sentences only)",
}

QUICK = dict(
    datasets="sst2,trec",
    labels="100,500",
    seeds="0,1,2",
    sampled_labels="100",
    train_size=2000,
    epochs=4,
    max_vocab=2000,
    embed_dim=64,
    hidden_dim=64,
    latent_dim=32,
    variance_draws=24,
)
FULL = dict(
    datasets="sst2,trec",
    labels="100,500,1000,all",
    seeds="0,1,2",
    sampled_labels="100,500,1000,all",
    train_size=None,
    epochs=20,
    max_vocab=None,
    embed_dim=128,
    hidden_dim=256,
    latent_dim=32,
    variance_draws=100,
)


def load(name: str, args: argparse.Namespace) -> tuple[Any, Any, Any]:
    """Train (``train_size`` sentences, drawn with seed 0), validation and test splits, read
    with the training split's vocabulary (``max_vocab`` most frequent tokens)."""
    options = {"max_vocab": args.max_vocab} if args.max_vocab else {}
    train = load_dataset(name, "train", progress=False, **options)
    vocabulary = train.vocabulary
    if args.train_size and args.train_size < len(train):
        train = train.subset(args.train_size, seed=0)
    valid = load_dataset(name, "valid", progress=False, vocabulary=vocabulary)
    test = load_dataset(name, "test", progress=False, vocabulary=vocabulary)
    return train, valid, test


def labelled_repeats(train: Any, num_labels: int, batch_size: int, ratio: float) -> int:
    """Visits of the labelled set per epoch: about one labelled batch per ``ratio`` unlabelled."""
    unlabelled = math.ceil(len(train) / batch_size)
    labelled = math.ceil(num_labels / batch_size)
    return max(1, round(unlabelled / (ratio * labelled)))


def model_options(train: Any, args: argparse.Namespace) -> dict[str, Any]:
    return dict(
        train.model_options(),
        embed_dim=args.embed_dim,
        hidden_dim=args.hidden_dim,
        max_decode_length=30,
    )


def train_one(
    kind: str, train: Any, valid: Any, test: Any, num_labels: int, seed: int, args
) -> tuple[dict, Any]:
    """One run: ``kind`` an estimator of ``ss_text_vae`` or ``"classifier"``. Returns its
    record and the trained model."""
    repeats = labelled_repeats(train, num_labels, args.batch_size, args.labelled_ratio)
    torch.manual_seed(seed)
    pyro.set_rng_seed(seed)
    if kind == "classifier":
        model = build_model("text_classifier", **model_options(train, args))
        setup = model.training_setup(train, valid, num_labels=num_labels, seed=seed)
        epochs = args.epochs * repeats  # as many passes over the labels as the SSVAE's
    else:
        model = build_model(
            "ss_text_vae",
            **model_options(train, args),
            latent_dim=args.latent_dim,
            unlabelled=kind,
            label_samples=2,
            alpha=args.alpha,
            kl_weight=args.kl_weight,
        )
        setup = model.training_setup(train, valid, num_labels=num_labels, seed=seed)
        setup["train_data"] = SemiSupervisedData(
            train, num_labels, model.num_classes, labelled_repeats=repeats, seed=seed
        )
        setup["valid_data"] = None  # the validation accuracy alone picks the epoch
        epochs = args.epochs
    history: list[dict] = []

    def record_test_accuracy(record: dict) -> None:
        history.append(
            {
                "epoch": record["epoch"],
                "valid_accuracy": record["valid_accuracy"],
                "test_accuracy": model.accuracy(test),
                "train_bound": record["train_bound"],
                "time": record["time"],
            }
        )

    start = time.perf_counter()
    fit(
        model.model,
        model.guide,
        **setup,
        epochs=epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=seed,
        progress=False,
        on_epoch_end=record_test_accuracy,
    )
    seconds = time.perf_counter() - start
    best = max(range(len(history)), key=lambda i: (history[i]["valid_accuracy"], -i))
    return (
        dict(
            kind=kind,
            num_labels=num_labels,
            seed=seed,
            labelled_repeats=repeats,
            epochs=epochs,
            best_epoch=best + 1,
            valid_accuracy=history[best]["valid_accuracy"],
            test_accuracy=history[best]["test_accuracy"],
            seconds=seconds,
            seconds_per_epoch=seconds / epochs,
            history=history,
        ),
        model,
    )


def total_variance(gradients: torch.Tensor) -> float:
    """Trace of the covariance of ``gradients`` ``(n, P)`` (unbiased)."""
    return float(((gradients - gradients.mean(0)) ** 2).sum(-1).sum() / (gradients.shape[0] - 1))


def gradient_variance(model: Any, train: Any, args: argparse.Namespace) -> list[dict]:
    """Total variance and mean squared norm of the classifier's gradient per estimator, over
    ``args.variance_draws`` draws on one unlabelled batch (moving average warmed up first)."""
    from dataclasses import replace

    from pvae.infer.baselines import ScoreFunctionELBO

    x, _ = next(iter(train.batches(args.batch_size, generator=torch.Generator().manual_seed(0))))
    # (name, the option `unlabelled`, draws of y K, an ELBO replacing the option's);
    # sample_vimco's guide asks for no baseline, so Pyro's TraceGraph_ELBO is then REINFORCE.
    cases = [
        ("enumerate", "enumerate", 2, None),
        ("REINFORCE, no baseline, K=1", "sample_vimco", 2, ScoreFunctionELBO(num_particles=1)),
        ("REINFORCE, no baseline, K=2", "sample_vimco", 2, ScoreFunctionELBO(num_particles=2)),
        ("moving average, K=1", "sample_ema", 1, None),
        ("moving average, K=2", "sample_ema", 2, None),
        ("leave-one-out, K=2", "sample_vimco", 2, None),
    ]
    rows = []
    for name, estimator, samples, elbo in cases:
        clone = type(model)(replace(model.config, unlabelled=estimator, label_samples=samples))
        clone.load_state_dict(model.state_dict())
        clone.train()
        elbo = elbo or clone.unlabelled_objective()
        warm = 10 if estimator == "sample_ema" else 0  # the moving average warms up
        grads, seconds = [], 0.0
        with pyro.get_param_store().scope():
            for i in range(warm + args.variance_draws):
                clone.zero_grad()
                begin = time.perf_counter()
                # the batch's loss without fit's N / B factor
                elbo.differentiable_loss(clone.model, clone.guide, x).backward()
                if i >= warm:
                    seconds += time.perf_counter() - begin
                    grads.append(
                        torch.cat([p.grad.flatten() for p in clone.classifier.parameters()])
                    )
        g = torch.stack(grads)
        rows.append(
            dict(
                estimator=name,
                total_variance=total_variance(g),
                squared_mean_norm=float(g.mean(0).pow(2).sum()),
                seconds_per_step=seconds / args.variance_draws,
            )
        )
        print(f"  {name}: total variance {rows[-1]['total_variance']:.4g}", flush=True)
    return rows


# 97.5% quantiles of Student's t by degrees of freedom (two-sided 95% intervals); 2.0 beyond.
T_975 = {1: 12.71, 2: 4.30, 3: 3.18, 4: 2.78, 5: 2.57, 6: 2.45, 7: 2.36, 8: 2.31, 9: 2.26}


def mean_and_stderr(values: list[float]) -> tuple[float, float]:
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, float("nan")
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    return mean, sd / math.sqrt(n)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="the <= 25 min CPU setting")
    parser.add_argument("--datasets")
    parser.add_argument("--labels", help="comma-separated label counts, or 'all'")
    parser.add_argument("--seeds")
    parser.add_argument("--sampled-labels", help="label counts at which the sampled run too")
    parser.add_argument("--train-size", type=int, help="training sentences (default: all)")
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--max-vocab", type=int)
    parser.add_argument("--embed-dim", type=int)
    parser.add_argument("--hidden-dim", type=int)
    parser.add_argument("--latent-dim", type=int)
    parser.add_argument("--variance-draws", type=int)
    parser.add_argument("--alpha", type=float, default=300.0)
    parser.add_argument("--kl-weight", type=float, default=1.0)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument(
        "--labelled-ratio",
        type=float,
        default=1.0,
        help="unlabelled batches per labelled batch (the labelled set is repeated to match)",
    )
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=str(RESULTS))
    parser.add_argument(
        "--from-json", help="rewrite the tables from a results JSON file, training nothing"
    )
    args = parser.parse_args(argv)
    if args.from_json:
        write_results(json.loads(Path(args.from_json).read_text()), Path(args.out))
        print(Path(args.out).read_text())
        return
    for key, value in (QUICK if args.quick else FULL).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    torch.set_num_threads(args.threads)
    pyro.settings.set(module_local_params=True)
    command = " ".join(["python benchmarks/ss_text.py", *(argv or sys.argv[1:])])
    report: dict[str, Any] = dict(
        command=command, settings=vars(args).copy(), runs=[], variance={}, data={}
    )
    start = time.perf_counter()
    seeds = [int(s) for s in args.seeds.split(",")]
    for name in args.datasets.split(","):
        train, valid, test = load(name, args)
        report["data"][name] = dict(
            train=len(train),
            valid=len(valid),
            test=len(test),
            vocabulary=len(train.vocabulary),
            classes=train.num_classes,
        )
        counts = [len(train) if c == "all" else int(c) for c in args.labels.split(",")]
        sampled = {len(train) if c == "all" else int(c) for c in args.sampled_labels.split(",")}
        for num_labels in counts:
            for seed in seeds:
                kinds = ["classifier", "enumerate"] + (
                    ["sample_ema", "sample_vimco"] if num_labels in sampled else []
                )
                for kind in kinds:
                    record, model = train_one(kind, train, valid, test, num_labels, seed, args)
                    record["dataset"] = name
                    report["runs"].append(record)
                    print(
                        f"{name} {num_labels} labels seed {seed} {kind}: test accuracy "
                        f"{record['test_accuracy']:.4f} (epoch {record['best_epoch']} of "
                        f"{record['epochs']}, {record['seconds']:.0f} s)",
                        flush=True,
                    )
                    if kind == "enumerate" and seed == seeds[0] and num_labels == min(counts):
                        report["variance"][name] = dict(
                            num_labels=num_labels,
                            rows=gradient_variance(model, train, args),
                        )
                    report["elapsed"] = time.perf_counter() - start
                    write_results(report, Path(args.out))
    print(Path(args.out).read_text())


def write_results(report: dict, out: Path) -> None:
    args = report["settings"]
    runs = report["runs"]
    lines = [
        "# Semi-supervised text classification: SSVAE (Xu et al. 2017) beside the classifier alone",
        "",
        f"Command: `{report['command']}`",
        "",
        f"Machine: {platform.machine()} CPU, {args['threads']} thread(s), shared with other jobs; "
        f"{report.get('elapsed', 0) / 60:.1f} min in all.",
        "",
        "Budget: "
        + "; ".join(
            f"{name}: {d['train']} training sentences"
            f"{' (a random subset)' if args['train_size'] else ''}, {d['valid']} validation, "
            f"{d['test']} test, {d['classes']} classes, vocabulary {d['vocabulary']}"
            for name, d in report["data"].items()
        )
        + f". Networks: embeddings {args['embed_dim']}, LSTMs of {args['hidden_dim']} units, "
        f"z of {args['latent_dim']}; decoder structure `label` (y at every step). Adam lr "
        f"{args['lr']}, batch {args['batch_size']}, alpha {args['alpha']:g}, KL weight "
        f"{args['kl_weight']:g}. The SSVAE trains {args['epochs']} epochs over the unlabelled "
        f"sentences with about one labelled batch per {args['labelled_ratio']:g} unlabelled "
        "batch(es) (the labelled set repeated); the "
        "classifier alone makes as many passes over the same labelled sentences. The sampled "
        "estimators draw K = 2 labels per sentence. Test accuracy at the epoch of best "
        "validation accuracy (the full validation set's labels select the epoch for every "
        "method), mean +- standard error over seeds (the labelled draw and the initialisation "
        "change with the seed).",
        "",
        "Xu et al. report on IMDB and AG's News, which pvae does not ship, so no number here "
        "is comparable with theirs; with networks and budgets this small, none is comparable "
        "with published SST-2 or TREC accuracies either.",
        "",
    ]
    if args.get("quick"):
        lines += [
            "What the quick setting can and cannot show: with 2,000 training sentences, small "
            "LSTMs trained from scratch and 4 epochs, every classifier here is weak (SST-2 "
            "close to chance), so the tables measure the estimators (gradient variance, cost "
            "per epoch) well, and the value of unlabelled sentences only at this small scale. "
            "The full grid (`python benchmarks/ss_text.py`: all training sentences, 100, 500, "
            "1,000 and all labels, larger networks, 20 epochs) was not run for lack of CPU "
            "time. Felhi et al.'s ablation (no KL term) is `--kl-weight 0`, not run here. "
            "On TREC the validation questions (held out of the training file) are harder than "
            "the test questions: validation accuracy runs well below test accuracy.",
            "",
        ]
    for dataset in report["data"]:
        rows = [r for r in runs if r["dataset"] == dataset]
        if not rows:
            continue
        counts = sorted({r["num_labels"] for r in rows})
        lines += [
            f"## {dataset}: test accuracy",
            "",
            "| method | " + " | ".join(f"{c} labels" for c in counts) + " |",
            "|---|" + "---|" * len(counts),
        ]
        summary: dict[tuple[str, int], tuple[float, float, int]] = {}
        for kind in ("classifier", *ESTIMATORS):
            cells = []
            for c in counts:
                values = [
                    r["test_accuracy"] for r in rows if r["kind"] == kind and r["num_labels"] == c
                ]
                if not values:
                    cells.append("-")
                    continue
                mean, stderr = mean_and_stderr(values)
                summary[(kind, c)] = (mean, stderr, len(values))
                cells.append(
                    f"{mean:.3f} ± {stderr:.3f} (n={len(values)})"
                    if len(values) > 1
                    else f"{mean:.3f} (n=1)"
                )
            if any(cell != "-" for cell in cells):
                lines.append(f"| {NAMES[kind]} | " + " | ".join(cells) + " |")
        lines += [
            "",
            "Did the unlabelled sentences help (SSVAE enumerated minus classifier alone, "
            "paired by seed)?",
            "",
        ]
        for c in counts:
            pairs = [
                (e["test_accuracy"], k["test_accuracy"])
                for e in rows
                if e["kind"] == "enumerate" and e["num_labels"] == c
                for k in rows
                if k["kind"] == "classifier" and k["num_labels"] == c and k["seed"] == e["seed"]
            ]
            if not pairs:
                continue
            diffs = [a - b for a, b in pairs]
            mean, stderr = mean_and_stderr(diffs)
            t = T_975.get(len(diffs) - 1, 2.0)
            if len(diffs) < 2 or not math.isfinite(stderr):
                verdict = "one seed: no verdict"
            elif mean - t * stderr > 0:
                verdict = "yes (the 95% t-interval lies above 0)"
            elif mean + t * stderr < 0:
                verdict = "no, they hurt (the 95% t-interval lies below 0)"
            else:
                verdict = f"not measurably (the 95% t-interval, +- {t * stderr:.3f}, holds 0)"
            lines.append(
                f"- {c} labels: {mean:+.3f} ± {stderr:.3f} over {len(diffs)} seeds: {verdict}."
            )
        lines.append("")
        times = {}
        for kind in ("classifier", *ESTIMATORS):
            values = [r["seconds_per_epoch"] for r in rows if r["kind"] == kind]
            if values:
                times[kind] = sum(values) / len(values)
        if times:
            lines += [
                f"Wall time per training epoch ({dataset}, mean over its runs; an SSVAE epoch is "
                "one pass over the unlabelled sentences plus the labelled batches; the "
                "classifier's epoch is one pass over its labelled sentences):",
                "",
                "| method | seconds per epoch |",
                "|---|---|",
                *(f"| {NAMES[k]} | {v:.1f} |" for k, v in times.items()),
                "",
            ]
        variance = report["variance"].get(dataset)
        if variance:
            by_name = {row["estimator"]: row for row in variance["rows"]}
            exact, loo = by_name["enumerate"], by_name["leave-one-out, K=2"]
            plain = by_name["REINFORCE, no baseline, K=2"]["total_variance"]
            ema = by_name["moving average, K=2"]["total_variance"]
            first_seed = min(int(s) for s in args["seeds"].split(","))
            lines += [
                f"Gradient of the classifier's parameters on one unlabelled batch of "
                f"{args['batch_size']} ({dataset}, the enumerated SSVAE trained with "
                f"{variance['num_labels']} labels, seed {first_seed}; "
                f"{args['variance_draws']} draws each, the batch's loss without fit's N/B "
                "factor; total variance = trace of the covariance over draws):",
                "",
                "| estimator | total variance | / enumeration's | seconds per step |",
                "|---|---|---|---|",
                *(
                    f"| {row['estimator']} | {row['total_variance']:.4g} | "
                    f"{row['total_variance'] / exact['total_variance']:.3g} | "
                    f"{row['seconds_per_step']:.3f} |"
                    for row in variance["rows"]
                ),
                "",
                f"The moving-average baseline divides the variance of REINFORCE (K=2) by "
                f"{plain / ema:.0f}, the leave-one-out baseline by {plain / loo['total_variance']:.0f}; "
                f"enumeration ({report['data'][dataset]['classes']} decoder passes) stays "
                f"{loo['total_variance'] / exact['total_variance']:.0f} times below the "
                f"leave-one-out estimator, at {exact['seconds_per_step'] / loo['seconds_per_step']:.1f} "
                "times its time per step.",
                "",
            ]
    text = "\n".join(lines) + "\n"
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(out.name + ".partial")
    partial.write_text(text)
    partial.replace(out)
    raw = out.with_suffix(".json")
    partial = raw.with_name(raw.name + ".partial")
    partial.write_text(json.dumps(report, indent=1))
    partial.replace(raw)


if __name__ == "__main__":
    main()
