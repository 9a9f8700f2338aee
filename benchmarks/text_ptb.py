"""Penn Treebank: the LSTM language model, the Gaussian sentence VAE and the vMF text VAE at one
budget, beside the papers' numbers.

Trains each configuration through the runner (:func:`pvae.runs.train_run`, as ``pvae train``
does: same networks, optimiser, data, seed), then reports on the test sentences the
importance-sampled NLL per sentence (K samples from the guide; exact for the language model,
which has no latent), the KL term ``E_x KL(q(z | x) || p(z))``, active units, and perplexity
``exp(total NLL / tokens)`` counting ``<eos>``. The VAEs' NLL and perplexity are stochastic
upper bounds in expectation (a lower bound on log p(x)), the language model's are exact.

The question this answers (issue #12): at one budget, does the vMF VAE keep a non-zero KL and
beat the Gaussian VAE and the LSTM-LM in perplexity, as Xu & Durrett (2018) report?

Usage (the CPU budget run quoted in ``benchmarks/results/text_ptb.md``)::

    python benchmarks/text_ptb.py --epochs 3 --embed 128 --hidden 128 --eval-size 1000 \\
        --eval-samples 100

References:
    [1] Bowman, Vilnis, Vinyals, Dai, Jozefowicz, Bengio. Generating Sentences from a
        Continuous Space. CoNLL 2016. arXiv:1511.06349
    [2] Xu, Durrett. Spherical Latent Spaces for Stable Variational Autoencoders. EMNLP 2018.
        arXiv:1808.10805
    [3] Li, Gao, Li, Peng, Li, Zhang, Gao. Optimus: Organizing Sentences via Pre-trained
        Modeling of a Latent Space. EMNLP 2020. arXiv:2004.04092 (Table 8, quoting Li et al.
        2019's protocol)
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import pyro
import torch

from pvae.infer.train import TrainConfig
from pvae.runs import TrainSpec, train_run

RESULTS = Path(__file__).parent / "results" / "text_ptb.md"

#: (name, registered model, model options, train options)
CONFIGS = {
    "lstm_lm": ("lstm_lm", {}, {}),
    "vae_logistic": (
        "sentence_vae",
        {},
        {"kl_anneal_schedule": "logistic"},
    ),
    "vae_plain": ("sentence_vae", {}, {"kl_anneal_epochs": 0.0}),
    "vae_cyclical": (
        "sentence_vae",
        {},
        {"kl_anneal_schedule": "cyclical", "kl_anneal_cycles": 1},
    ),
    "vae_word_dropout": ("sentence_vae", {"word_dropout": 0.3}, {"kl_anneal_schedule": "logistic"}),
    "vae_inputless": ("sentence_vae", {"inputless": True}, {"kl_anneal_schedule": "logistic"}),
    "vmf_k80_inputless": (
        "vmf_text_vae",
        {"kappa": 80.0, "inputless": True},
        {"kl_anneal_epochs": 0.0},
    ),
    "vmf_k35": ("vmf_text_vae", {"kappa": 35.0}, {"kl_anneal_epochs": 0.0}),
    "vmf_k80": ("vmf_text_vae", {"kappa": 80.0}, {"kl_anneal_epochs": 0.0}),
}

#: the papers' PTB test numbers: (source, model, NLL per sentence, KL, PPL)
PAPERS = [
    ("Li et al. 2019 via Optimus Table 8", "LSTM-LM", None, None, 100.47),
    ("Li et al. 2019 via Optimus Table 8", "VAE, Bowman annealing", None, 0.0, 101.40),
    ("Li et al. 2019 via Optimus Table 8", "VAE, cyclical annealing", None, 1.37, 108.81),
    ("Li et al. 2019 via Optimus Table 8", "VAE, aggressive (He et al.)", None, 0.93, 99.83),
    ("Li et al. 2019 via Optimus Table 8", "VAE, AE pre-training + free bits", None, 6.54, 96.86),
    ("Xu & Durrett 2018 Table 3", "RNNLM", 100.0, None, 114.0),
    ("Xu & Durrett 2018 Table 3", "Gaussian VAE", 99.0, 4.4, 109.0),
    ("Xu & Durrett 2018 Table 3", "vMF VAE (kappa 80)", 96.0, 5.7, 98.0),
    ("Xu & Durrett 2018 Table 3", "Gaussian VAE, inputless", 125.0, 6.3, 379.0),
    ("Xu & Durrett 2018 Table 3", "vMF VAE, inputless", 117.0, 18.6, 262.0),
]


def run_config(name: str, args: argparse.Namespace, out: Path) -> dict:
    model, model_options, train_options = CONFIGS[name]
    options = {
        "embed_dim": args.embed,
        "hidden_dim": args.hidden,
        **({"latent_dim": args.latent_dim} if model != "lstm_lm" else {}),
        **model_options,
    }
    train = {
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "clip_norm": 5.0,
        "seed": args.seed,
        "kl_anneal_epochs": args.anneal_epochs if model == "sentence_vae" else 0.0,
        **train_options,
    }
    spec = TrainSpec(
        model=model,
        dataset="ptb",
        model_options=options,
        train=TrainConfig(**train),
        train_size=args.train_size,
        eval_size=args.eval_size,
        eval_samples=1 if model == "lstm_lm" else args.eval_samples,
        out=out / name,
        progress=args.progress,
        command=" ".join(sys.argv),
    )
    start = time.perf_counter()
    with pyro.settings.context(module_local_params=True):
        metrics = train_run(spec)
    metrics["seconds"] = time.perf_counter() - start
    metrics["model"] = model
    metrics["options"] = options
    metrics["train_options"] = train
    return metrics


def table(rows: dict[str, dict], args: argparse.Namespace) -> str:
    lines = [
        "| configuration | model | test NLL / sentence | KL | active units | PPL | epochs "
        "| train time |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, m in rows.items():
        kl = m.get("test_kl")
        units = m.get("test_active_units")
        lines.append(
            f"| {name} | {m['model']} | {m['test_nll']:.2f} ± {m['test_nll_stderr']:.2f} "
            f"| {'—' if kl is None else f'{kl:.2f}'} "
            f"| {'—' if units is None else f'{units:.0f}'} | {m['perplexity']:.1f} "
            f"| {len(m['history'])} | {m['train_wall_time'] / 60:.0f} min |"
        )
    return "\n".join(lines)


def papers_table() -> str:
    lines = ["| source | model | NLL / sentence | KL | PPL |", "|---|---|---|---|---|"]
    for source, model, nll, kl, ppl in PAPERS:
        cells = ["—" if v is None else f"{v:g}" for v in (nll, kl, ppl)]
        lines.append(f"| {source} | {model} | {' | '.join(cells)} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--configs", default="lstm_lm,vae_logistic,vmf_k35,vmf_k80")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--embed", type=int, default=128)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--latent-dim", type=int, default=32)
    parser.add_argument("--anneal-epochs", type=float, default=1.0)
    parser.add_argument("--train-size", type=int, default=None)
    parser.add_argument("--eval-size", type=int, default=1000)
    parser.add_argument("--eval-samples", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=None, help="run folders (default: a temp dir)")
    parser.add_argument("--json", type=Path, default=None, help="write the metrics here too")
    parser.add_argument("--no-write", action="store_true", help="do not write results/text_ptb.md")
    parser.add_argument("--progress", action="store_true")
    parser.add_argument(
        "--from-json",
        type=Path,
        nargs="+",
        default=None,
        help="tabulate the metrics of earlier runs (their --json files) instead of training, "
        "e.g. of configurations trained in parallel processes",
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    out = args.out or Path(tempfile.mkdtemp(prefix="pvae-text-ptb-"))
    rows = {}
    if args.from_json:
        for path in args.from_json:
            rows.update(json.loads(path.read_text()))
        text = table(rows, args)
        print(text)
        if not args.no_write:
            write_results(rows, args, text)
        return
    for name in args.configs.split(","):
        rows[name] = run_config(name, args, out)
        m = rows[name]
        print(
            f"{name}: NLL {m['test_nll']:.2f} KL {m.get('test_kl', float('nan')):.2f} "
            f"PPL {m['perplexity']:.1f} ({m['seconds'] / 60:.1f} min)",
            flush=True,
        )
        if args.json:
            args.json.write_text(json.dumps(rows, indent=1, default=str))
    text = table(rows, args)
    print(text)
    if not args.no_write:
        write_results(rows, args, text)


def write_results(rows: dict, args: argparse.Namespace, text: str) -> None:
    command = "python benchmarks/" + " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])
    RESULTS.write_text(
        "# Penn Treebank: LSTM-LM, Gaussian sentence VAE, vMF text VAE\n\n"
        f"Command: `{command}`\n\n"
        f"Setup: PTB (Mikolov), vocabulary {10002} tokens (10k words and pvae's specials; "
        "the decoders never predict `<pad>`/`<bos>`), LSTM encoder and decoder with "
        f"embeddings {args.embed}, {args.hidden} units, latent {args.latent_dim}, z fed to the "
        f"decoder's initial state and every input; Adam lr {args.lr}, batch {args.batch_size}, "
        f"gradient norm clipped at 5, {args.epochs} epochs, seed {args.seed}, one CPU thread. "
        f"Test: the first {args.eval_size} test sentences, NLL by importance sampling with "
        f"K = {args.eval_samples} (the language model's is exact), PPL = exp(total NLL / "
        "tokens counting `<eos>`).\n\n"
        f"{text}\n\n## The papers' numbers (PTB test)\n\n{papers_table()}\n"
    )


if __name__ == "__main__":
    main()
