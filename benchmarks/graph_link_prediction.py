"""VGAE and the hyperspherical S-VGAE on Cora and Citeseer link prediction, beside the papers.

Davidson et al. (2018), Table 3, report test AUC / AP (%) of Kipf & Welling's VGAE and of the
S-VGAE (the same model with a vMF posterior and a uniform prior on the sphere). This script
trains both through the runner (:func:`pvae.runs.train_run`) with the gae code's settings
(two-layer GCN encoder, 32 hidden units, latent 16, Adam lr 0.01, 200 full-batch epochs,
dropout 0, Kipf's class-balanced edge likelihood), one run per seed: seed ``s`` draws both the
link-prediction split (:func:`pvae.data.graphs.link_split`, 85/5/10 %) and the initialisation.
It reports the mean and standard deviation over seeds of the test AUC and AP at the epoch with
the best validation AUC (the runner's best checkpoint), and at the last epoch (what the gae code
reports), beside the papers' numbers. Usage::

    python benchmarks/graph_link_prediction.py --seeds 10
    python benchmarks/graph_link_prediction.py --smoke      # seconds: 2 epochs, 1 seed, Cora

Each run's numbers are appended to ``<out>.jsonl`` as it finishes, and the table is rewritten
from all of them, so an interrupted sweep keeps its finished runs (``--resume`` skips them;
``--table-only`` rewrites the table from them).
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import pyro
import torch

from pvae.data.planetoid import build_planetoid
from pvae.data.registry import DATASETS, DatasetSpec, register_dataset
from pvae.infer.train import TrainConfig
from pvae.runs import TrainSpec, load_run, train_run
from pvae.runs.train import load_split

RESULTS = Path(__file__).parent / "results" / "graph_link_prediction.md"
# Davidson et al. 2018, Table 3 (VGAE: Kipf & Welling 2016, Table 1): test AUC, AP in %.
PAPER = {
    ("cora", "vgae"): (91.4, 92.6),
    ("cora", "svgae"): (94.1, 94.1),
    ("citeseer", "vgae"): (90.8, 92.0),
    ("citeseer", "svgae"): (94.7, 95.2),
}


def split_dataset(dataset: str, seed: int) -> str:
    """The name of ``dataset`` with its link-prediction split drawn by ``seed``, registered
    in this process (the runner loads datasets by name)."""
    name = f"{dataset}_split{seed}"
    if name not in DATASETS:
        spec = DATASETS[dataset]
        register_dataset(
            DatasetSpec(
                name=name,
                resource=spec.resource,
                splits=spec.splits,
                build=functools.partial(build_planetoid, split_seed=seed),
                description=f"{spec.description} (split seed {seed})",
            )
        )
    return name


def one_run(dataset: str, model: str, seed: int, epochs: int, out: Path) -> dict:
    """Trains ``model`` on ``dataset`` split by ``seed``; its numbers in a flat dict."""
    name = split_dataset(dataset, seed)
    spec = TrainSpec(
        model=model,
        dataset=name,
        train=TrainConfig(epochs=epochs, batch_size=1, lr=0.01, seed=seed),
        eval_samples=1,
        out=out,
        progress=False,
        command=" ".join(sys.argv),
    )
    with pyro.settings.context(module_local_params=True):
        metrics = train_run(spec)
        last, _ = load_run(out, "last")
        last_metrics = last.metrics(load_split(name, "test", progress=False))
    return {
        "dataset": dataset,
        "model": model,
        "seed": seed,
        "epochs": epochs,
        "test_auc": metrics["test_auc"],
        "test_ap": metrics["test_ap"],
        "best_epoch": metrics["best_epoch"],
        "last_test_auc": last_metrics["test_auc"],
        "last_test_ap": last_metrics["test_ap"],
        "train_wall_time": metrics["train_wall_time"],
    }


def _mean_std(values: list[float]) -> str:
    if len(values) == 1:
        return f"{100 * values[0]:.1f}"
    return f"{100 * statistics.mean(values):.1f} ± {100 * statistics.stdev(values):.1f}"


def table(rows: list[dict]) -> str:
    """The Markdown table of ``rows`` (one per run), grouped by dataset and model."""
    lines = [
        "| dataset | model | seeds | test AUC (%) | test AP (%) | paper AUC / AP | gap AUC / AP "
        "| last epoch AUC / AP | best epoch | train time per run |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for (dataset, model), (paper_auc, paper_ap) in PAPER.items():
        runs = [r for r in rows if r["dataset"] == dataset and r["model"] == model]
        if not runs:
            continue
        auc = [r["test_auc"] for r in runs]
        ap = [r["test_ap"] for r in runs]
        gap_auc = 100 * statistics.mean(auc) - paper_auc
        gap_ap = 100 * statistics.mean(ap) - paper_ap
        lines.append(
            f"| {dataset} | {model} | {len(runs)} | {_mean_std(auc)} | {_mean_std(ap)} "
            f"| {paper_auc} / {paper_ap} | {gap_auc:+.1f} / {gap_ap:+.1f} "
            f"| {_mean_std([r['last_test_auc'] for r in runs])} / "
            f"{_mean_std([r['last_test_ap'] for r in runs])} "
            f"| {statistics.mean(r['best_epoch'] for r in runs):.0f} "
            f"| {statistics.mean(r['train_wall_time'] for r in runs):.0f} s |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--datasets", nargs="+", default=["cora", "citeseer"])
    parser.add_argument("--models", nargs="+", default=["vgae", "svgae"])
    parser.add_argument("--seeds", type=int, default=10, help="seeds 0..N-1 (splits and inits)")
    parser.add_argument("--epochs", type=int, default=200)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--resume", action="store_true", help="keep the runs in <out>.jsonl")
    parser.add_argument("--smoke", action="store_true", help="2 epochs, 1 seed, Cora only")
    parser.add_argument(
        "--table-only", action="store_true", help="rewrite the table from <out>.jsonl, no training"
    )
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args()
    if args.smoke:
        args.seeds, args.epochs, args.datasets = 1, 2, ["cora"]
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    log = out.with_suffix(".jsonl")
    keep = args.resume or args.table_only
    rows = [json.loads(line) for line in log.read_text().splitlines()] if keep else []
    done = {(r["dataset"], r["model"], r["seed"]) for r in rows if r["epochs"] == args.epochs}
    if not keep:
        log.write_text("")
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="graph_link_prediction.") as work:
        for seed in range(0 if args.table_only else args.seeds):
            for dataset in args.datasets:
                for model in args.models:
                    if (dataset, model, seed) in done:
                        continue
                    row = one_run(
                        dataset, model, seed, args.epochs, Path(work) / f"{dataset}-{model}-{seed}"
                    )
                    rows.append(row)
                    with log.open("a") as handle:
                        handle.write(json.dumps(row) + "\n")
                    print(
                        f"{dataset} {model} seed {seed}: test AUC {row['test_auc']:.4f} AP "
                        f"{row['test_ap']:.4f} (best epoch {row['best_epoch']}, "
                        f"{row['train_wall_time']:.0f} s)",
                        file=sys.stderr,
                    )
                    write(out, rows, args)
    write(out, rows, args)
    print(table(rows))
    print(f"{time.perf_counter() - start:.0f} s", file=sys.stderr)


def write(out: Path, rows: list[dict], args: argparse.Namespace) -> None:
    seeds = sorted({r["seed"] for r in rows})
    hours = sum(r["train_wall_time"] for r in rows) / 3600
    out.write_text(
        "# Link prediction: VGAE and S-VGAE on Cora and Citeseer\n\n"
        f"Command: `python benchmarks/graph_link_prediction.py --seeds {args.seeds} "
        f"--epochs {args.epochs}{' --smoke' if args.smoke else ''}` (this file: seeds {seeds}; "
        f"{hours:.1f} h of training in all, one CPU thread each on a shared 2-core machine)\n\n"
        "Setup: the gae code's settings (Kipf & Welling 2016): two-layer GCN encoder, 32 hidden "
        "units, latent dimension 16 (S-VGAE: the sphere S^15 in R^16), inner-product decoder, "
        "Kipf's class-balanced edge likelihood (pos_weight, norm), Adam lr 0.01, "
        f"{args.epochs} full-batch epochs, dropout 0, with features. Split: 85 / 5 / 10 % of the "
        "undirected edges, as many sampled non-edges for validation and test; seed s draws the "
        "split and the initialisation. Test numbers at the epoch of the best validation AUC "
        "(mean ± standard deviation over seeds), and at the last epoch (what the gae code "
        "prints). Paper: Davidson et al. 2018, Table 3 (VGAE from Kipf & Welling 2016).\n\n"
        + table(rows)
        + "\n"
    )


if __name__ == "__main__":
    main()
