"""How much the Neural Statistician's context carries, and whether few-shot scoring uses it.

Issue #14's puzzle: the Neural Statistician's few-shot accuracy did not move from 6 to 15
epochs (Omniglot 5-way 1-shot 63.0 -> 62.0 %) while its test NLL per set kept improving
(655.9 -> 623.2 nats). This script trains ``neural_statistician`` on ``omniglot_sets`` (the
networks of ``benchmarks/few_shot.py``) and after every epoch measures, on held-out
characters (the evaluation alphabets, static binarisation):

- ``KL_c``: KL(q(c | X) || p(c)) per set of 5, and per singleton set {x} (the sets a 1-shot
  episode scores), nats; ``act``: context dimensions whose posterior mean varies across
  sets (variance > 0.01, the "active units" of Burda et al.); ``σ_c``: q(c | X)'s mean
  standard deviation for sets of 5 and for singletons;
- ``KL_z``: KL(q(z | x, c) || p(z | c)) per element (all layers), and ``-log p(x|c,z)``;
- few-shot accuracy (%) of several scoring rules on the *same* episodes (paired):

  * ``KL(x||D)``: argmin_k KL(q(c | x) || q(c | D_k)), the rule pvae implements;
  * ``KL(D||x)``: argmin_k KL(q(c | D_k) || q(c | x)), the order of the authors' group's
    reimplementation's k-shot script (``kl_diagnormal_diagnormal(D_mean, D_logvar,
    x_mean, x_logvar)``);
  * ``L2``: the nearest posterior mean, ||E[c | x] - E[c | D_k]||;
  * ``ELBO``: the generative rule argmax_k ELBO(x | c = E[c | D_k]) (z at q's mean; 5-way
    tasks only, a decoder pass per query and class).

Variants (``--variants``, comma separated): ``base`` (as few_shot.py), ``dropout`` (the
model's ``sample_dropout=0.5``), ``anneal`` (KL annealing over 3 epochs), ``c512``
(context_dim 512) and combinations joined by ``+`` (``dropout+anneal``). Usage::

    python benchmarks/ns_context.py --epochs 6 --variants base,dropout
    python benchmarks/ns_context.py --smoke
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import pyro
import torch
from torch.distributions import Normal, kl_divergence

from pvae.data import load_dataset
from pvae.infer.train import fit
from pvae.models import build_model
from pvae.runs.folder import write_text

RESULTS = Path(__file__).parent / "results" / "ns_context.md"
RULES = ("KL(x||D)", "KL(D||x)", "L2", "ELBO")
TASKS = ((5, 1), (5, 5), (20, 1))
ELBO_WAYS = 5  # the ELBO rule costs a decoder pass per query and class: 5-way tasks only
VARIANTS = {
    "base": ({}, {}),
    "dropout": ({"sample_dropout": 0.5}, {}),
    "anneal": ({}, {"kl_anneal_epochs": 3.0}),
    "c512": ({"context_dim": 512}, {}),
}


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", default="base")
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--context-dim", type=int, default=64)
    parser.add_argument("--latent-dim", type=int, default=16)
    parser.add_argument("--latent-layers", type=int, default=1)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--architecture", default="conv", choices=["conv", "mlp"])
    parser.add_argument("--train-size", type=int, default=None, help="training sets (classes)")
    parser.add_argument("--episodes", type=int, default=100)
    parser.add_argument("--queries", type=int, default=5, help="queries per class and episode")
    parser.add_argument("--diag-sets", type=int, default=300, help="held-out sets for the KLs")
    parser.add_argument("--every", type=int, default=1, help="measure every this many epochs")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--smoke", action="store_true", help="a seconds-long run")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if args.smoke:
        args.epochs, args.train_size, args.episodes, args.diag_sets = 1, 32, 3, 20
        args.architecture, args.hidden, args.context_dim = "mlp", 16, 4
    return args


# -- measurements ----------------------------------------------------------------------------
@torch.no_grad()
def _element_terms(model, x: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """KL_z (all layers) and log p(x | c, z) with z at q's mean, for elements ``x``
    ``(..., *event)`` and contexts ``c`` ``(..., C)`` (broadcast against each other)."""
    h = model.features(model._flat(x))
    batch = torch.broadcast_shapes(h.shape[:-1], c.shape[:-1])
    h, c = h.expand(*batch, h.shape[-1]), c.expand(*batch, c.shape[-1])
    kl = torch.zeros(batch)
    zs: list[torch.Tensor] = []
    for inference, prior in zip(model.inference, model.latent_decoders, strict=True):
        q_loc, q_scale = inference(torch.cat([h, c, *zs[-1:]], -1))
        p_loc, p_scale = prior(torch.cat([c, *zs[-1:]], -1))
        kl = kl + kl_divergence(Normal(q_loc, q_scale), Normal(p_loc, p_scale)).sum(-1)
        zs.append(q_loc)
    log_px = model._observation(c, zs).log_prob(x.expand(*batch, *x.shape[-3:]))
    return kl, log_px


@torch.no_grad()
def context_diagnostics(model, sets: torch.Tensor) -> dict[str, float]:
    """KL_c per set and per singleton, active context dims, KL_z and -log p(x|c,z) per
    element (c at q(c | X)'s mean) on held-out sets ``(N, S, *event)``."""
    q = model.context_posterior(sets)
    prior = Normal(torch.zeros_like(q.loc), torch.ones_like(q.scale))
    kl_c = kl_divergence(q, prior).sum(-1)
    single = model.context_posterior(sets[:, :1])
    kl_single = kl_divergence(single, prior).sum(-1)
    active = int((q.loc.var(0) > 0.01).sum())
    kl_z, log_px = _element_terms(model, sets, q.loc.unsqueeze(1))
    return {
        "KL_c/set": float(kl_c.mean()),
        "KL_c/singleton": float(kl_single.mean()),
        "active_c": active,
        "c_scale/set": float(q.scale.mean()),
        "c_scale/singleton": float(single.scale.mean()),
        "KL_z/element": float(kl_z.mean()),
        "-log p(x|c,z)/element": float(-log_px.mean()),
    }


@torch.no_grad()
def rule_scores(
    model, support: torch.Tensor, query: torch.Tensor, elbo: bool = True
) -> dict[str, torch.Tensor]:
    """Each rule's scores ``(q, k)`` (higher: that class) for one episode; the ELBO rule (a
    decoder pass per query and class) only with ``elbo``."""
    classes = model.context_posterior(support)  # (k, C)
    queries = model.context_posterior(query.unsqueeze(1))  # (q, C)
    qx = Normal(queries.loc.unsqueeze(1), queries.scale.unsqueeze(1))
    qd = Normal(classes.loc.unsqueeze(0), classes.scale.unsqueeze(0))
    scores = {
        "KL(x||D)": -kl_divergence(qx, qd).sum(-1),
        "KL(D||x)": -kl_divergence(qd, qx).sum(-1),
        "L2": -(qx.loc - qd.loc).pow(2).sum(-1),
    }
    if elbo:
        kl_z, log_px = _element_terms(model, query.unsqueeze(1), classes.loc.unsqueeze(0))
        scores["ELBO"] = log_px - kl_z
    return scores


@torch.no_grad()
def few_shot(model, data, k_way: int, n_shot: int, episodes: int, queries: int, seed: int):
    """Accuracy (%) and its standard error over episodes, per rule, on the same episodes."""
    generator = torch.Generator().manual_seed(seed)
    hits: dict[str, list[float]] = {}
    for episode in data.episodes(episodes, k_way, n_shot, num_queries=queries, generator=generator):
        scores = rule_scores(model, episode.support, episode.query, elbo=k_way <= ELBO_WAYS)
        for rule, score in scores.items():
            correct = (score.argmax(-1) == episode.query_labels).double().mean()
            hits.setdefault(rule, []).append(100 * float(correct))
    out = {}
    for rule, values in hits.items():
        v = torch.tensor(values, dtype=torch.float64)
        se = float(v.std() / math.sqrt(len(v))) if len(v) > 1 else float("nan")
        out[rule] = (float(v.mean()), se)
    return out


# -- runs ----------------------------------------------------------------------------------
def run_variant(name: str, args: argparse.Namespace, data: dict) -> dict:
    model_options, fit_options = {}, {}
    for part in name.split("+"):
        if part not in VARIANTS:
            raise SystemExit(f"unknown variant {part!r}; choose from {', '.join(VARIANTS)}")
        model_options.update(VARIANTS[part][0])
        fit_options.update(VARIANTS[part][1])
    torch.manual_seed(args.seed)
    pyro.set_rng_seed(args.seed)
    options = dict(
        input_shape=(1, 28, 28),
        architecture=args.architecture,
        context_dim=args.context_dim,
        latent_dim=args.latent_dim,
        latent_layers=args.latent_layers,
        hidden=args.hidden,
    )
    options.update(model_options)
    model = build_model("neural_statistician", **options)
    model.initialize(data["train"].model_options())
    rows: list[dict] = []
    clock = {"start": time.process_time()}

    def measure(record: dict) -> None:
        epoch = len(rows) + 1
        train_seconds = time.process_time() - clock["start"]
        if epoch % args.every and epoch != args.epochs:
            rows.append({"epoch": epoch, "train_bound": record["train_bound"]})
            clock["start"] = time.process_time()
            return
        model.eval()
        row = {"epoch": epoch, "train_bound": record["train_bound"], "cpu_s": train_seconds}
        row.update(context_diagnostics(model, data["diag"]))
        for k_way, n_shot in TASKS:
            row[f"{k_way}w{n_shot}s"] = few_shot(
                model, data["test"], k_way, n_shot, args.episodes, args.queries, args.seed
            )
        model.train()
        rows.append(row)
        print(json.dumps({"variant": name, **row}), flush=True)
        clock["start"] = time.process_time()

    fit(
        model.model,
        model.guide,
        data["train"],
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed,
        progress=False,
        on_epoch_end=measure,
        **fit_options,
    )
    return {
        "variant": name,
        "model_options": model_options,
        "fit_options": fit_options,
        "rows": rows,
    }


def write_results(args: argparse.Namespace, runs: list[dict], command: str) -> str:
    lines = [
        "# The Neural Statistician's context over training (issue #14)",
        "",
        f"Command: `{command}`",
        "",
        f"Setup: {args.architecture} networks as benchmarks/few_shot.py (c {args.context_dim}, "
        f"z {args.latent_dim} x {args.latent_layers}, hidden {args.hidden}), Adam lr {args.lr}, "
        f"{args.batch_size} sets of 5 a batch, training sets: "
        f"{args.train_size or 'all 3,456'} (rotated background characters). Measured after "
        f"each epoch on the evaluation alphabets (static binarisation): KLs on "
        f"{args.diag_sets} sets of 5 (c at q's mean for KL_z and the reconstruction); few-shot "
        f"accuracy (%) on {args.episodes} episodes x {args.queries} queries per class, every "
        "rule on the same episodes. CPU, 1 thread.",
        "",
    ]
    for run in runs:
        lines += [
            f"## {run['variant']}  (model {run['model_options']}, fit {run['fit_options']})",
            "",
        ]
        head = [
            "epoch",
            "train bound",
            "KL_c/set",
            "KL_c/{x}",
            "act c",
            "σ_c set/{x}",
            "KL_z/el",
            "-log p(x|c,z)/el",
        ]
        for k_way, n_shot in TASKS:
            head += [f"{k_way}w{n_shot}s {rule}" for rule in RULES]
        head = [cell.replace("|", "\\|") for cell in head]  # "||" would split a cell
        lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for row in run["rows"]:
            if "KL_c/set" not in row:
                continue
            cells = [
                str(row["epoch"]),
                f"{row['train_bound']:.1f}",
                f"{row['KL_c/set']:.1f}",
                f"{row['KL_c/singleton']:.1f}",
                str(row["active_c"]),
                f"{row['c_scale/set']:.2f}/{row['c_scale/singleton']:.2f}",
                f"{row['KL_z/element']:.1f}",
                f"{row['-log p(x|c,z)/element']:.1f}",
            ]
            for k_way, n_shot in TASKS:
                task = row[f"{k_way}w{n_shot}s"]
                cells += [f"{task[rule][0]:.1f}" if rule in task else "—" for rule in RULES]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    lines += ["```json", json.dumps(runs, indent=1), "```", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    torch.set_num_threads(args.threads)
    command = "python benchmarks/ns_context.py " + " ".join(sys.argv[1:] if argv is None else argv)
    test = load_dataset("omniglot_sets", "test", progress=False)
    data = {
        "train": load_dataset("omniglot_sets", "train", size=args.train_size, progress=False),
        "test": test,
        "diag": test.subset(args.diag_sets, seed=0).items[:, :5],
    }
    runs = []
    text = ""
    for name in args.variants.split(","):
        runs.append(run_variant(name, args, data))
        text = write_results(args, runs, command)
        if not args.smoke or args.out != RESULTS:
            write_text(args.out, text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
