"""Variance networks (Neklyudov et al. 2019) on MNIST at a CPU budget: LeNet-5 whose layers
have zero-mean weights beside the same LeNet-5 trained normally.

Both are the registered model ``variance_lenet`` (``--variance-layers`` for the variance
network, ``variance_layers=[]`` for the baseline), trained by ``pvae.infer.fit`` with the ELBO
of their Pyro model and guide (for the variance network the paper's training bound: the
expected log-likelihood, KL zero under the empirical-Bayes ARD prior; for the baseline the
log-likelihood), on grey-level MNIST with the authors' settings: convolutions of 20 and 50
channels, 500 dense units, batch normalisation, batch 200, Adam 1e-3 (constant here; the
authors decay it linearly to 0 over 200 epochs). After every epoch: test accuracy with 1
sample, with 10 samples (test-time averaging), with the noise off (the biases alone), and the
10-sample classification NLL. Usage::

    python benchmarks/variance_layers.py --epochs 3
    python benchmarks/variance_layers.py --train-size 10000 --epochs 5 --variance-layers 2

The results file is rewritten after every epoch.

References:
    [1] Neklyudov, Molchanov, Ashukha, Vetrov. Variance Networks: When Expectation Does Not
        Meet Your Expectations. ICLR 2019. arXiv:1803.03764; code:
        github.com/da-molchanov/variance-networks (variance-networks-pytorch/scripts/lenet5-vn.py)
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import pyro
import torch

from pvae.data import load_dataset
from pvae.infer.train import fit
from pvae.models import build_model

RESULTS = Path(__file__).parent / "results" / "variance_layers.md"


@torch.no_grad()
def evaluate(model, test, batch_size: int = 1000) -> dict[str, float]:
    """Test accuracy (1 and 10 samples, noise off) and the 10-sample NLL (nats per image)."""
    out: dict[str, float] = {}
    correct = {"1": 0, "10": 0, "off": 0}
    nll = 0.0
    for x, y in test.batches(batch_size, shuffle=False):
        one = model.predict_log_probs(x, 1)
        ten = model.predict_log_probs(x, 10)
        correct["1"] += int((one.argmax(-1) == y).sum())
        correct["10"] += int((ten.argmax(-1) == y).sum())
        nll -= float(ten.gather(-1, y[:, None]).sum())
        if model.net.variance_layers:
            with model.noise_off():
                correct["off"] += int((model.predict_log_probs(x, 1).argmax(-1) == y).sum())
    n = len(test)
    out["accuracy_1"] = correct["1"] / n
    out["accuracy_10"] = correct["10"] / n
    out["accuracy_noise_off"] = correct["off"] / n if model.net.variance_layers else math.nan
    out["nll_10"] = nll / n
    return out


def run(name: str, layers: list[int], args, train, test, records: list, report) -> None:
    torch.manual_seed(args.seed)
    pyro.set_rng_seed(args.seed)
    model = build_model("variance_lenet", variance_layers=layers)
    history: list[dict] = []
    record = dict(name=name, layers=layers, history=history, seconds=0.0)
    records.append(record)
    start = time.perf_counter()

    def on_epoch_end(epoch_record: dict) -> None:
        record["seconds"] = time.perf_counter() - start
        if epoch_record["epoch"] < args.epochs and not args.every_epoch:
            print(name, epoch_record)
            return
        result = {**epoch_record, **evaluate(model, test)}
        history.append(result)
        print(name, {k: round(v, 4) for k, v in result.items() if isinstance(v, float)})
        sys.stdout.flush()
        report()

    with pyro.settings.context(module_local_params=True):
        fit(
            model.model,
            model.guide,
            train,
            epochs=args.epochs,
            batch_size=200,
            lr=1e-3,
            lr_schedule=args.lr_schedule,
            seed=args.seed,
            progress=False,
            on_epoch_end=on_epoch_end,
        )
    record["seconds"] = time.perf_counter() - start


def write(records: list, args, command: str) -> str:
    names = ", ".join(["conv1", "conv2", "dense1", "output"][i] for i in args.variance_layers)
    lines = [
        "# Variance networks: LeNet-5 on MNIST at a CPU budget",
        "",
        f"Command: `{command}`",
        "",
        f"Setup: grey-level MNIST, {len_train(args)} training images (pvae's train split), "
        f"{args.test_size or 10000:,} test images; LeNet-5 (conv 20, conv 50, dense 500, batch normalisation), batch "
        f"200, Adam 1e-3 {args.lr_schedule or 'constant'}, {args.epochs} epoch(s), seed {args.seed}, one CPU thread. "
        f"Variance layers: {names} (zero-mean weights, local reparameterisation); the baseline "
        "is the same network with ordinary layers. Accuracy with 1 sample, with 10 samples "
        "(test-time averaging), and with the noise off (every variance layer outputs its bias "
        "alone); NLL: the 10-sample ensemble's classification NLL in nats per image.",
        "",
        "| network | epoch | train bound / image | test acc. (1 sample) | test acc. (10 samples) "
        "| test acc. (noise off) | test NLL (10 samples) | seconds |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for record in records:
        for entry in record["history"]:
            off = entry["accuracy_noise_off"]
            lines.append(
                f"| {record['name']} | {entry['epoch']} | {entry['train_bound']:.4f} "
                f"| {entry['accuracy_1']:.4f} | {entry['accuracy_10']:.4f} "
                f"| {'-' if math.isnan(off) else f'{off:.4f}'} | {entry['nll_10']:.4f} "
                f"| {entry['time']:.0f} |"
            )
    return "\n".join(lines) + "\n"


def len_train(args) -> str:
    return f"{args.train_size:,}" if args.train_size else "50,000"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--train-size", type=int, default=None)
    parser.add_argument("--variance-layers", type=int, nargs="*", default=[0, 1, 2])
    parser.add_argument("--test-size", type=int, default=None, help="default: all 10,000")
    parser.add_argument("--every-epoch", action="store_true", help="evaluate after every epoch")
    parser.add_argument("--skip-baseline", action="store_true", help="the variance net only")
    parser.add_argument(
        "--lr-schedule",
        default=None,
        choices=["cosine", "exponential"],
        help="default constant; cosine decays to 0 over the run (the authors decay linearly)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--notes", type=str, default="", help="a paragraph appended to the file")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    command = "python benchmarks/variance_layers.py " + " ".join(
        sys.argv[1:] if argv is None else argv
    )
    options = dict(progress=False, binarize=None)
    train = load_dataset("mnist", "train", size=args.train_size, size_seed=args.seed, **options)
    test = load_dataset("mnist", "test", size=args.test_size, **options)
    records: list = []

    def report() -> None:
        text = write(records, args, command)
        if args.notes:
            text += "\n" + args.notes + "\n"
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)

    run("variance LeNet-5", list(args.variance_layers), args, train, test, records, report)
    if not args.skip_baseline:
        run("LeNet-5 (plain)", [], args, train, test, records, report)
    print(write(records, args, command))


if __name__ == "__main__":
    main()
