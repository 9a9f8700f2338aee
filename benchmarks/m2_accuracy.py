"""M2 (Kingma et al. 2014) with 100 labels on MNIST: label draws, both labelled-data schedules.

Trains ``m2`` the way ``pvae train --model m2`` does (:meth:`pvae.models.m2.M2.training_setup`:
100 balanced labels among all 50,000 training images, y summed out by enumeration, the
classification loss weighted by ``alpha``) with the settings of Pyro's
``examples/vae/ss_vae_M2.py`` (z 50, one hidden layer of 500 softplus units, Adam lr 4.2e-4 with
beta1 0.95, batch 200), under either labelled-data schedule of
:class:`pvae.data.semisupervised.SemiSupervisedData`:

- ``epoch``: the 100 labels are one batch of their own, one supervised step per epoch
  (pvae's default, and what Pyro's example does with 100 labels);
- ``step``: every step adds a labelled minibatch (all 100 labels, classes interleaved) at the
  weight that keeps the objective of an epoch unchanged (as Kingma et al.'s code, which puts
  labelled and unlabelled data in every minibatch).

Every ``--eval-every`` steps it records the accuracy of q(y | x) on the 10,000 validation and
the 10,000 test images and the cross-entropy of q(y | x) on the 100 labelled images, with the
wall and CPU time of the process. A label draw ``d`` draws the labels and seeds the training
with ``d``. Commands::

    # one run (a JSON record per run, rewritten at every evaluation)
    python benchmarks/m2_accuracy.py run --schedule step --alpha 1000 --draw 0 --epochs 5 \\
        --json /tmp/m2/step-1000-0.json
    # the table, the curves (results/m2_accuracy.png) and the alpha selection from records
    python benchmarks/m2_accuracy.py report /tmp/m2/*.json

``report`` selects, per schedule, the alpha of the grid whose runs reach the best validation
accuracy at the last common evaluation (mean over the draws run at that alpha), then reports
the test accuracy over the label draws at that alpha (mean and standard deviation): at the end
of training and at each run's best validation evaluation.

References:
    [1] Kingma, Rezende, Mohamed, Welling. Semi-Supervised Learning with Deep Generative
        Models. NeurIPS 2014: M2 alone, 100 labels: 11.97% (+- 1.71) test error.
    [2] Pyro's SS-VAE tutorial (https://pyro.ai/examples/ss-vae.html): 0.9319 test accuracy
        with 100 labels: its variant 3 (parallel enumeration and the auxiliary loss), the mean
        over 5 label draws, alpha chosen on validation accuracy, epochs unstated.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import pyro
import torch
from torch.nn import functional as F

from pvae.data import load_dataset
from pvae.infer.callbacks import Callback
from pvae.infer.train import fit
from pvae.models import build_model

RESULTS = Path(__file__).parent / "results" / "m2_accuracy.md"
PYRO_TUTORIAL = 0.9319
PYRO_SAME_BUDGET = 0.6410
KINGMA_ACCURACY = 1 - 0.1197


class Evaluate(Callback):
    """Every ``every`` steps (and at the end of every epoch): the accuracies and the labelled
    cross-entropy, appended to ``record["curve"]`` and written to ``path``."""

    def __init__(self, model, valid, test, labelled, every: int, record: dict, path: Path):
        self.model, self.every, self.record, self.path = model, every, record, path
        self.valid = next(iter(valid.batches(len(valid), shuffle=False)))
        self.test = next(iter(test.batches(len(test), shuffle=False)))
        self.labelled = labelled
        self.steps = 0
        self.start_wall, self.start_cpu = time.perf_counter(), time.process_time()

    def on_step_start(self, state) -> None:
        # An epoch's first step is evaluated at the end of the epoch before.
        if state.step and self.steps % self.every == 0:
            self.evaluate(state.epoch + state.step / state.steps_per_epoch)
        self.steps += 1

    def on_epoch_end(self, state, record: dict) -> None:
        self.evaluate(state.epoch + 1.0, train_bound=record.get("train_bound"))

    @torch.no_grad()
    def evaluate(self, epoch: float, train_bound: float | None = None) -> None:
        model = self.model
        training = model.training
        model.eval()
        x_l, y_l = self.labelled
        point = {
            "epoch": round(epoch, 4),
            "steps": self.steps,
            "valid_accuracy": float(
                (model.classify(self.valid[0]) == self.valid[1]).float().mean()
            ),
            "test_accuracy": float((model.classify(self.test[0]) == self.test[1]).float().mean()),
            "labelled_cross_entropy": float(F.cross_entropy(model.classifier_logits(x_l), y_l)),
            "wall_s": time.perf_counter() - self.start_wall,
            "cpu_s": time.process_time() - self.start_cpu,
        }
        if train_bound is not None:
            point["train_bound"] = train_bound
        model.train(training)
        self.record["curve"].append(point)
        print(
            f"{self.record['schedule']} alpha {self.record['alpha']:g} draw "
            f"{self.record['draw']} epoch {point['epoch']:.2f}: valid "
            f"{point['valid_accuracy']:.4f} test {point['test_accuracy']:.4f} labelled CE "
            f"{point['labelled_cross_entropy']:.3f} ({point['cpu_s']:.0f} cpu s, "
            f"{point['wall_s']:.0f} wall s)",
            flush=True,
        )
        write_json(self.path, self.record)


def write_json(path: Path, record: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(record, indent=1))
    partial.replace(path)  # atomic: a stopped run leaves its last complete record


def run(args: argparse.Namespace) -> None:
    """Trains one M2 (schedule, alpha, label draw) and writes its record to ``args.json``."""
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.draw)
    pyro.set_rng_seed(args.draw)
    train = load_dataset("mnist", "train", size=args.train_size, binarize="dynamic", progress=False)
    valid = load_dataset("mnist", "valid", progress=False)
    test = load_dataset("mnist", "test", progress=False)
    model = build_model("m2", latent_dim=50, hidden=[500], activation="softplus", alpha=args.alpha)
    model.initialize(train.model_options())
    setup = model.training_setup(
        train, valid=valid, num_labels=args.labels, seed=args.draw, labelled_schedule=args.schedule
    )
    # Accuracy only (the Evaluate callback): no validation bound, which costs a fifth of an
    # epoch's forward passes; the best checkpoint is not used here.
    setup.update(valid_data=None, callbacks=[], monitor="valid_bound")
    labelled = setup["train_data"].labelled_set
    x_l = labelled.images.round()  # a fixed binarization of the labelled images
    record: dict[str, Any] = dict(
        schedule=args.schedule,
        alpha=args.alpha,
        draw=args.draw,
        labels=args.labels,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        threads=args.threads,
        command="python benchmarks/m2_accuracy.py " + " ".join(sys.argv[1:]),
        curve=[],
    )
    evaluate = Evaluate(
        model, valid, test, (x_l, labelled.labels), args.eval_every, record, Path(args.json)
    )
    evaluate.evaluate(0.0)
    fit(
        model.model,
        model.guide,
        **{**setup, "callbacks": [evaluate]},
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        betas=(0.95, 0.999),
        seed=args.draw,
        progress=False,
    )
    record["done"] = True
    write_json(Path(args.json), record)


# -- the report ---------------------------------------------------------------------------------
def _mean_std(values: list[float]) -> tuple[float, float]:
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, float("nan")
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def _fmt(values: list[float]) -> str:
    mean, std = _mean_std(values)
    return f"{mean:.4f}" if math.isnan(std) else f"{mean:.4f} +- {std:.4f}"


def _at(curve: list[dict], epoch: float) -> dict:
    """The last evaluation at or before ``epoch``."""
    return [p for p in curve if p["epoch"] <= epoch + 1e-9][-1]


def select_alphas(records: list[dict]) -> dict[str, float]:
    """Per schedule, the alpha of the grid with the best mean validation accuracy over the
    label draws that every alpha of the grid ran, at the last evaluation all those runs
    reached (the grid's runs may have been stopped once the choice was made)."""
    chosen = {}
    for schedule in sorted({r["schedule"] for r in records}):
        runs = [r for r in records if r["schedule"] == schedule]
        alphas = {r["alpha"] for r in runs}
        draws = set.intersection(*({r["draw"] for r in runs if r["alpha"] == a} for a in alphas))
        grid = [r for r in runs if r["draw"] in draws]
        common = min(r["curve"][-1]["epoch"] for r in grid)
        by_alpha: dict[float, list[float]] = {}
        for r in grid:
            by_alpha.setdefault(r["alpha"], []).append(_at(r["curve"], common)["valid_accuracy"])
        chosen[schedule] = max(by_alpha, key=lambda a: sum(by_alpha[a]) / len(by_alpha[a]))
        print(
            f"{schedule}: alpha chosen on draws {sorted(draws)} at epoch {common:g}: "
            + ", ".join(f"{a:g}: {sum(v) / len(v):.4f}" for a, v in sorted(by_alpha.items()))
        )
    return chosen


def report(args: argparse.Namespace) -> None:
    records = [json.loads(Path(p).read_text()) for p in args.records]
    records = [r for r in records if len(r["curve"]) > 1]
    for r in records:  # one point per evaluation, its epoch to 0.1 (the epoch schedule has 251
        # steps an epoch, so its evaluations every 50 steps fall at 0.199, 0.398, ...)
        by_epoch = {round(p["epoch"], 1): {**p, "epoch": round(p["epoch"], 1)} for p in r["curve"]}
        r["curve"] = [by_epoch[e] for e in sorted(by_epoch)]
    chosen = select_alphas(records)
    out = Path(args.out)
    figure = out.with_suffix(".png")
    plot(records, chosen, figure)
    lines = [
        "# M2 with 100 labels: label draws, both labelled-data schedules",
        "",
        "Commands: one `python benchmarks/m2_accuracy.py run ...` per run listed below (each "
        "writes its record, kept in `benchmarks/results/m2_accuracy_runs/`), then "
        f"`python benchmarks/m2_accuracy.py report {' '.join(args.records)}`.",
        "",
        "Setup: all 50,000 MNIST training images (dynamic binarization), 100 labels (10 per "
        "class; label draw d draws them and seeds the run with d), batch 200, Adam lr 4.2e-4 "
        "betas (0.95, 0.999), z 50, hidden 500 softplus (Pyro's example), 1 thread per "
        "process. Accuracy of q(y | x) on the 10,000 validation and 10,000 test images "
        "(statically binarized). Schedules: `epoch`, the 100 labels as one batch of their own, "
        "one supervised step per epoch; `step`, the 100 labels in every step at weight "
        "w = 1/250, the same objective per epoch. Alpha: chosen per schedule from the grid run "
        "on a common label draw, on validation accuracy at the last evaluation all the grid's "
        "runs reached. Evaluations every 50 steps; CPU s: the process's CPU time to the last "
        "common evaluation.",
        "",
        "| schedule | alpha | draws | epochs | test acc. (end) | test acc. at best valid "
        "| valid acc. (end) | labelled CE (end) | CPU s per run |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    groups: dict[tuple[str, float], list[dict]] = {}
    for r in records:
        groups.setdefault((r["schedule"], r["alpha"]), []).append(r)
    for (schedule, alpha), runs in sorted(groups.items()):
        end = min(r["curve"][-1]["epoch"] for r in runs)
        ends = [_at(r["curve"], end) for r in runs]
        best = [
            max((p for p in r["curve"] if p["epoch"] <= end), key=lambda p: p["valid_accuracy"])
            for r in runs
        ]
        mark = " (chosen)" if chosen.get(schedule) == alpha else ""
        lines.append(
            f"| {schedule} | {alpha:g}{mark} | {', '.join(str(r['draw']) for r in runs)} | "
            f"{end:g} | {_fmt([p['test_accuracy'] for p in ends])} | "
            f"{_fmt([p['test_accuracy'] for p in best])} | "
            f"{_fmt([p['valid_accuracy'] for p in ends])} | "
            f"{_fmt([p['labelled_cross_entropy'] for p in ends])} | "
            f"{_mean_std([p['cpu_s'] for p in ends])[0]:.0f} |"
        )
    lines += ["", f"![test accuracy against epochs]({figure.name})", ""]
    lines += ["Test accuracy (mean +- std over the draws) against epochs, chosen alphas:", ""]
    chosen_runs = {s: groups[(s, a)] for s, a in chosen.items()}
    header = " | ".join(f"{s} (alpha {chosen[s]:g})" for s in chosen_runs)
    lines += [f"| epoch | {header} |", "|---|" + "---|" * len(chosen_runs)]
    epochs = sorted({p["epoch"] for runs in chosen_runs.values() for r in runs for p in r["curve"]})
    for epoch in epochs:
        cells = []
        for runs in chosen_runs.values():
            points = [p for r in runs for p in r["curve"] if p["epoch"] == epoch]
            cells.append(_fmt([p["test_accuracy"] for p in points]) if points else "-")
        lines.append(f"| {epoch:g} | " + " | ".join(cells) + " |")
    lines += ["", "Runs:", ""]
    lines += [f"- `{r['command']}`" + ("" if r.get("done") else " (stopped)") for r in records]
    text = "\n".join(lines) + "\n"
    if args.append:
        text = text + "\n" + Path(args.append).read_text()
    out.write_text(text)
    print(text)


def plot(records: list[dict], chosen: dict[str, float], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    colours = {"step": "C0", "epoch": "C1"}
    for r in records:
        curve = r["curve"]
        is_chosen = chosen.get(r["schedule"]) == r["alpha"]
        style = dict(
            color=colours.get(r["schedule"], "C2") if is_chosen else "0.7",
            lw=1.2 if is_chosen else 0.8,
            ls="-" if is_chosen else ":",
        )
        label = f"{r['schedule']} alpha {r['alpha']:g}"
        for ax, x in ((axes[0], "epoch"), (axes[1], "cpu_s")):
            ax.plot(
                [p[x] / (60 if x == "cpu_s" else 1) for p in curve],
                [p["test_accuracy"] for p in curve],
                label=label if r["draw"] == min(q["draw"] for q in records) else None,
                **style,
            )
    for ax, xlabel in ((axes[0], "epoch"), (axes[1], "CPU minutes of the run (1 thread)")):
        ax.axhline(KINGMA_ACCURACY, color="k", ls="--", lw=0.8, label="Kingma et al. M2 0.880")
        ax.axhline(PYRO_TUTORIAL, color="r", ls="--", lw=0.8, label="Pyro tutorial 0.9319")
        ax.axhline(PYRO_SAME_BUDGET, color="m", ls=":", lw=0.8, label="Pyro example, 25 ep. 0.641")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("test accuracy of q(y | x)")
        ax.set_ylim(0.3, 1.0)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7, loc="lower right")
    fig.suptitle("M2, MNIST, 100 labels: one line per (schedule, alpha, label draw)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    one = sub.add_parser("run", help="train one M2 and record its curve")
    one.add_argument("--schedule", choices=["epoch", "step"], default="step")
    one.add_argument("--alpha", type=float, default=300.0)
    one.add_argument("--draw", type=int, default=0, help="label draw and training seed")
    one.add_argument("--epochs", type=int, default=5)
    one.add_argument("--labels", type=int, default=100)
    one.add_argument("--train-size", type=int, default=None, help="default: all 50,000")
    one.add_argument("--batch-size", type=int, default=200)
    one.add_argument("--lr", type=float, default=4.2e-4)
    one.add_argument("--eval-every", type=int, default=50, help="steps between evaluations")
    one.add_argument("--threads", type=int, default=1)
    one.add_argument("--json", required=True, help="the run's record")
    rep = sub.add_parser("report", help="the table and figure from run records")
    rep.add_argument("records", nargs="+")
    rep.add_argument("--out", default=str(RESULTS))
    rep.add_argument("--append", default=None, help="a file appended after the table")
    args = parser.parse_args(argv)
    run(args) if args.command == "run" else report(args)


if __name__ == "__main__":
    main()
