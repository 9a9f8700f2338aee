"""The ``pvae`` command line: ``pvae train | evaluate | sample | diagnose``.

Every command validates its input up front and fails with one line on stderr (exit code 2),
never a bare traceback. ``pvae train`` writes a run folder (see :mod:`pvae.runs`).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

EXIT_USAGE = 2


class CLIError(Exception):
    """A user-facing error: printed as one line."""


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


# pvae diagnose sizes: flag -> (default, with --quick, help).
_DIAGNOSE_SIZES = {
    "--num-data": (100, 20, "test images to diagnose"),
    "--num-samples": (1000, 200, "importance samples per datum"),
    "--ais-steps": (500, 100, "AIS intermediate distributions"),
    "--ais-chains": (8, 4, "AIS chains per datum"),
    "--bdmc-data": (20, 5, "simulated data for BDMC"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pvae",
        description="pvae: a model zoo of variational autoencoders built on Pyro.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    train = sub.add_parser(
        "train",
        help="train a model and write a run folder with metrics, figures and a report",
        description="Train a registered model on a dataset; evaluate its test log-likelihood by "
        "importance sampling; write config.json, checkpoints/, metrics.json, PNG figures and "
        "report.md into --out.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    train.add_argument(
        "--model", default="vae", help="registered model name (see `pvae train --model list`)"
    )
    train.add_argument(
        "--dataset", default="mnist", help="dataset name: mnist, binarized_mnist or omniglot"
    )
    train.add_argument("--epochs", type=_positive_int, default=10, help="training epochs")
    train.add_argument(
        "--latent-dim",
        type=_positive_int,
        default=None,
        help="latent dimensions (model default if unset)",
    )
    train.add_argument(
        "--hidden",
        type=_positive_int,
        nargs="+",
        default=None,
        help="hidden layer sizes (model default if unset)",
    )
    train.add_argument(
        "--activation", default=None, help="relu, tanh, elu or softplus (model default if unset)"
    )
    train.add_argument(
        "--likelihood", default=None, help="bernoulli, continuous_bernoulli or gaussian"
    )
    train.add_argument("--architecture", default=None, help="mlp or conv (vae only)")
    train.add_argument(
        "--model-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        type=_model_option,
        help="any other constructor argument of the model, VALUE read as JSON (else a string); "
        "repeatable, e.g. --model-option beta=4 --model-option free_bits=0.5",
    )
    train.add_argument(
        "--objective",
        default="elbo",
        choices=["elbo", "iwae", "dreg"],
        help="elbo (analytic KL where available), iwae (importance weighted, K=--num-particles), "
        "or dreg (IWAE with the doubly-reparameterized gradient of Tucker et al. 2018)",
    )
    train.add_argument(
        "--num-particles",
        type=_positive_int,
        default=1,
        help="K samples per datum in the objective",
    )
    train.add_argument("--batch-size", type=_positive_int, default=128, help="minibatch size")
    train.add_argument("--lr", type=_positive_float, default=1e-3, help="Adam learning rate")
    train.add_argument(
        "--lr-schedule",
        default="none",
        choices=["none", "exponential", "cosine", "burda"],
        help="learning-rate schedule per epoch (burda: 3^i-epoch stages at 1e-3*10^(-i/7))",
    )
    train.add_argument(
        "--clip-norm",
        type=_positive_float,
        default=None,
        help="clip the gradient norm to this value",
    )
    train.add_argument(
        "--kl-anneal",
        type=float,
        default=0.0,
        help="epochs over which the KL weight grows from 0 to 1",
    )
    train.add_argument(
        "--patience",
        type=_positive_int,
        default=None,
        help="early stopping: epochs without validation improvement",
    )
    train.add_argument("--device", default="cpu", help="cpu or cuda")
    train.add_argument(
        "--seed", type=int, default=0, help="random seed (data order, binarization, initialisation)"
    )
    train.add_argument(
        "--out", default=None, help="run folder (default runs/<model>-<dataset>-<objective>)"
    )
    train.add_argument(
        "--resume", action="store_true", help="continue the run in --out from its last checkpoint"
    )
    train.add_argument(
        "--checkpoint-every", type=_positive_int, default=None, help="also checkpoint every N steps"
    )
    train.add_argument(
        "--eval-samples",
        type=_positive_int,
        default=5000,
        help="K importance samples for the test NLL",
    )
    train.add_argument(
        "--eval-size",
        type=_positive_int,
        default=None,
        help="number of test images to evaluate (default: all)",
    )
    train.add_argument(
        "--num-labels",
        type=_positive_int,
        default=100,
        help="labelled training images for semi-supervised models (m2); others ignore it",
    )
    train.add_argument(
        "--train-size",
        type=_positive_int,
        default=None,
        help="use only the first N training images (smoke runs)",
    )
    train.add_argument("--no-progress", action="store_true", help="hide progress bars")

    evaluate = sub.add_parser(
        "evaluate",
        help="importance-sampled test log-likelihood of a trained run",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    evaluate.add_argument("run_dir", help="a run folder written by `pvae train`")
    evaluate.add_argument(
        "--eval-samples", type=_positive_int, default=5000, help="K importance samples per datum"
    )
    evaluate.add_argument(
        "--eval-size", type=_positive_int, default=None, help="number of test images (default: all)"
    )
    evaluate.add_argument(
        "--split", default="test", choices=["test", "valid"], help="which split to evaluate"
    )
    evaluate.add_argument(
        "--checkpoint", default="best", choices=["best", "last"], help="which checkpoint"
    )
    evaluate.add_argument("--device", default="cpu", help="cpu or cuda")
    evaluate.add_argument("--no-progress", action="store_true", help="hide progress bars")

    sample = sub.add_parser(
        "sample",
        help="draw images from a trained model's prior (no encoder)",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    sample.add_argument("run_dir", help="a run folder written by `pvae train`")
    sample.add_argument("--num", type=_positive_int, default=64, help="number of samples")
    sample.add_argument("--seed", type=int, default=0, help="random seed")
    sample.add_argument(
        "--out", default=None, help="output PNG (default RUN_DIR/samples_seed<seed>.png)"
    )
    sample.add_argument(
        "--checkpoint", default="best", choices=["best", "last"], help="which checkpoint"
    )

    diagnose = sub.add_parser(
        "diagnose",
        help="posterior diagnostics of a trained run: bound ladder, AIS/BDMC, k-hat, collapse",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    diagnose.add_argument("run_dir", help="a run folder written by `pvae train`")
    diagnose.add_argument(
        "--quick",
        action="store_true",
        help="small sizes for a first look (about 30 s for the default VAE on 2 CPU cores): "
        "the values after 'with --quick' below; sizes given explicitly still win",
    )
    for flag, (full, quick, text) in _DIAGNOSE_SIZES.items():
        diagnose.add_argument(
            flag,
            type=_positive_int,
            default=None,
            help=f"{text} (default {full}; {quick} with --quick)",
        )
    diagnose.add_argument(
        "--checkpoint", default="best", choices=["best", "last"], help="which checkpoint"
    )
    diagnose.add_argument("--seed", type=int, default=0, help="random seed")
    diagnose.add_argument("--no-progress", action="store_true", help="hide progress bars")
    return parser


# -- train ------------------------------------------------------------------------------------
_MODEL_FLAGS = ("latent_dim", "hidden", "activation", "likelihood", "architecture")


def _model_config(args: argparse.Namespace, input_shape: tuple[int, ...]) -> dict[str, Any]:
    config: dict[str, Any] = {"input_shape": list(input_shape)}
    for key in _MODEL_FLAGS:
        value = getattr(args, key)
        if value is not None:
            config[key] = value
    for key, value in args.model_option:
        if key == "input_shape":
            raise CLIError("--model-option input_shape=...: the dataset sets the input shape")
        if key in _MODEL_FLAGS:
            flag = "--" + key.replace("_", "-")
            raise CLIError(f"--model-option {key}=...: set {key} with its own flag, {flag}")
        config[key] = value
    return config


def _model_option(text: str) -> tuple[str, Any]:
    """``KEY=VALUE`` -> ``(key, value)``; VALUE is parsed as JSON when it is JSON."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip().isidentifier():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError:
        parsed = value
    return key.strip(), parsed


def _train_config_dict(args: argparse.Namespace) -> dict[str, Any]:
    return dict(
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        lr_schedule=None if args.lr_schedule == "none" else args.lr_schedule,
        clip_norm=args.clip_norm,
        kl_anneal_epochs=args.kl_anneal,
        early_stopping_patience=args.patience,
        seed=args.seed,
        device=args.device,
        checkpoint_every=args.checkpoint_every,
    )


def _prepare_run_dir(out: Path, resume: bool, config: dict) -> None:
    from pvae.runs import read_json, run_status, set_status, write_json

    status = run_status(out)
    if out.exists() and any(out.iterdir()):
        if not resume:
            what = "a completed run" if status == "complete" else "an unfinished run"
            raise CLIError(
                f"{out} already holds {what}; pass --resume to continue it or choose another --out"
            )
        if (out / "config.json").exists():
            saved = read_json(out / "config.json")
            for key in ("model", "dataset", "model_config", "objective", "num_particles"):
                if saved.get(key) != config.get(key):
                    raise CLIError(
                        f"cannot resume {out}: its {key} is {saved.get(key)!r}, not {config.get(key)!r}"
                    )
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "config.json", config)
    set_status(out, "running")


def cmd_train(args: argparse.Namespace) -> int:
    import torch

    from pvae.data import load_dataset
    from pvae.evaluation import LogLikelihood, log_likelihood
    from pvae.infer.train import TrainConfig, fit
    from pvae.models.registry import available_models, build_model
    from pvae.runs import CHECKPOINTS, set_status, write_json

    if args.model == "list":
        print("\n".join(available_models()))
        return 0
    if args.model not in available_models():
        raise CLIError(f"unknown model {args.model!r}; available: {', '.join(available_models())}")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise CLIError("--device cuda was requested but CUDA is not available on this machine")
    if args.objective in ("iwae", "dreg") and args.num_particles < 2:
        print(
            "pvae: note: --objective iwae with --num-particles 1 equals the ELBO", file=sys.stderr
        )
    train_config = TrainConfig(**_train_config_dict(args))
    progress = not args.no_progress

    train = load_dataset(args.dataset, "train", size=args.train_size, progress=progress)
    valid = load_dataset(args.dataset, "valid", progress=progress)
    test = load_dataset(args.dataset, "test", size=args.eval_size, progress=progress)
    if args.train_size is not None:
        valid = valid.subset(min(len(valid), max(100, args.train_size // 5)))

    input_shape = tuple(train.images.shape[1:])
    model_config = _model_config(args, input_shape)
    torch.manual_seed(args.seed)  # initialisation follows --seed; torch's default seed varies
    model = build_model(args.model, **model_config)
    out = Path(args.out or f"runs/{args.model}-{args.dataset}-{args.objective}")
    config = {
        "model": args.model,
        "dataset": args.dataset,
        "model_config": model.config,
        "objective": args.objective,
        "num_particles": args.num_particles,
        "train": _train_config_dict(args),
        "eval_samples": args.eval_samples,
        "eval_size": len(test),
        "train_size": len(train),
        "command": "pvae " + " ".join(args.argv),
    }
    _prepare_run_dir(out, args.resume, config)
    try:
        if not args.resume and hasattr(model, "initialize_output_bias"):
            model.initialize_output_bias(train.images.mean(0))

        def report_epoch(record: dict) -> None:
            if progress:
                valid_text = "".join(
                    f", {key.replace('_', ' ').replace('elbo', 'ELBO')} {value:.{4 if 'accuracy' in key else 2}f}"
                    for key, value in record.items()
                    if key.startswith("valid_")
                    and not (key == "valid_bound" and record.get("valid_elbo") == value)
                )
                print(
                    f"epoch {record['epoch']}: train bound {record['train_bound']:.2f}{valid_text} "
                    f"({record['time']:.0f}s)",
                    file=sys.stderr,
                )

        fit_kwargs: dict[str, Any] = dict(
            train_data=train,
            valid_data=valid,
            objective=args.objective,
            num_particles=args.num_particles,
        )
        # A model that needs its own data stream or objective (M2: labelled and unlabelled
        # batches, y enumerated) says so through training_setup(train, valid=, num_labels=,
        # seed=).
        training_setup = getattr(model, "training_setup", None)
        if training_setup is not None:
            fit_kwargs.update(
                training_setup(train, valid=valid, num_labels=args.num_labels, seed=args.seed)
            )
        result = fit(
            model.model,
            model.guide,
            **fit_kwargs,
            config=train_config,
            checkpoint_dir=out / CHECKPOINTS,
            resume=args.resume,
            progress=progress,
            on_epoch_end=report_epoch,
        )
        from pvae.runs import load_run

        model, _ = load_run(out, "best", device=args.device)
        x_test, y_test = _eval_tensors(test)
        eval_start = time.perf_counter()
        values = log_likelihood(
            model.model,
            model.guide,
            *_likelihood_args(model, x_test.to(args.device), y_test.to(args.device)),
            num_samples=args.eval_samples,
            progress=progress,
        )
        estimate = LogLikelihood(values.cpu(), args.eval_samples)
        metrics = {
            "history": result.history,
            "best_epoch": result.best_epoch,
            "best_valid": result.best_valid,
            "stopped_early": result.stopped_early,
            "test_nll": -estimate.mean,
            "test_nll_stderr": estimate.stderr,
            "eval_samples": args.eval_samples,
            "eval_size": int(values.numel()),
            "train_wall_time": result.wall_time,
            "eval_wall_time": time.perf_counter() - eval_start,
        }
        if hasattr(model, "classify"):
            predictions = model.classify(x_test.to(args.device)).cpu()
            metrics["test_accuracy"] = float((predictions == y_test).float().mean())
        _write_figures_and_report(out, model, config, metrics, x_test, args.seed)
        write_json(out / "metrics.json", metrics)
        set_status(out, "complete")
    except BaseException as error:
        set_status(out, "failed", error=f"{type(error).__name__}: {error}")
        raise
    print(
        f"test NLL {metrics['test_nll']:.2f} +- {metrics['test_nll_stderr']:.2f} nats "
        f"(K={args.eval_samples}, {metrics['eval_size']} images); report: {out / 'report.md'}"
    )
    return 0


def _eval_tensors(dataset) -> tuple[Any, Any]:
    """The dataset's evaluation images (binarized once, as stored) and labels."""
    import torch

    batches = dataset.batches(
        len(dataset), shuffle=False, generator=torch.Generator().manual_seed(0)
    )
    xs, ys = zip(*batches, strict=True)
    return torch.cat(xs), torch.cat(ys)


def _eval_tensor(dataset) -> Any:
    return _eval_tensors(dataset)[0]


def _likelihood_args(model, x, y) -> tuple:
    """``log_likelihood``'s data arguments: ``model.eval_args(x, y)`` for conditional models."""
    eval_args = getattr(model, "eval_args", None)
    return tuple(eval_args(x, y)) if eval_args is not None else (x,)


def _write_figures_and_report(
    out: Path, model, config: dict, metrics: dict, x_test, seed: int
) -> None:
    import torch

    from pvae.figures import image_grid, loss_curve

    loss_curve(
        metrics["history"],
        out / "loss_curve.png",
        title=f"{config['model']} on {config['dataset']}",
    )
    generator = torch.Generator().manual_seed(seed)
    image_grid(model.sample(64, generator=generator).cpu(), out / "samples.png", nrow=8)
    originals = x_test[:32].cpu()
    recon = model.reconstruct(x_test[:32]).cpu()
    pairs = torch.stack([originals, recon], dim=1).reshape(-1, *originals.shape[1:])
    image_grid(pairs, out / "reconstructions.png", nrow=8)
    last = metrics["history"][-1]
    lines = [
        f"# {config['model']} on {config['dataset']}",
        "",
        f"Command: `{config['command']}`",
        "",
        "| metric | value |",
        "|---|---|",
        f"| test NLL (nats, K={metrics['eval_samples']}, {metrics['eval_size']} images) | "
        f"{metrics['test_nll']:.2f} ± {metrics['test_nll_stderr']:.2f} |",
        *(
            [
                f"| test accuracy (q(y \\| x), {metrics['eval_size']} images) | {metrics['test_accuracy']:.4f} |"
            ]
            if "test_accuracy" in metrics
            else []
        ),
        f"| best epoch (validation) | {metrics['best_epoch']} of {last['epoch']} |",
        f"| train bound, last epoch (nats per image) | {last['train_bound']:.2f} |",
        f"| valid ELBO, last epoch | "
        f"{last.get('valid_elbo', last.get('valid_bound', float('nan'))):.2f} |",
        *(
            [f"| valid accuracy, best epoch | {metrics['best_valid']:.4f} |"]
            if "valid_accuracy" in last and metrics.get("best_valid") is not None
            else []
        ),
        f"| objective | {config['objective']} (K={config['num_particles']}) |",
        f"| latent | {json.dumps(config['model_config'])} |",
        f"| training time | {metrics['train_wall_time']:.0f} s |",
        f"| evaluation time | {metrics['eval_wall_time']:.0f} s |",
        "",
        "The ± is the standard error of the mean over test images. The NLL is an importance-sampled",
        "upper bound on -log p(x) that tightens as K grows (Burda et al. 2015).",
        "",
        "## Training curve",
        "![loss curve](loss_curve.png)",
        "",
        "## Samples from the prior",
        "![samples](samples.png)",
        "",
        "## Reconstructions (odd columns: test images; even columns: reconstructions)",
        "![reconstructions](reconstructions.png)",
        "",
    ]
    (out / "report.md").write_text("\n".join(lines))


# -- evaluate, sample, diagnose ------------------------------------------------------------------
def _load(run_dir: str, which: str, device: str = "cpu"):
    from pvae.runs import load_run

    path = Path(run_dir)
    if not path.is_dir():
        raise CLIError(f"run folder {path} does not exist")
    return load_run(path, which, device=device)


def cmd_evaluate(args: argparse.Namespace) -> int:
    from pvae.data import load_dataset
    from pvae.evaluation import LogLikelihood, log_likelihood
    from pvae.runs import write_json

    model, config = _load(args.run_dir, args.checkpoint, args.device)
    data = load_dataset(
        config["dataset"], args.split, size=args.eval_size, progress=not args.no_progress
    )
    x, y = _eval_tensors(data)
    values = log_likelihood(
        model.model,
        model.guide,
        *_likelihood_args(model, x.to(args.device), y.to(args.device)),
        num_samples=args.eval_samples,
        progress=not args.no_progress,
    )
    estimate = LogLikelihood(values.cpu(), args.eval_samples)
    result = {
        "split": args.split,
        "checkpoint": args.checkpoint,
        "nll": -estimate.mean,
        "nll_stderr": estimate.stderr,
        "eval_samples": args.eval_samples,
        "eval_size": int(values.numel()),
    }
    write_json(Path(args.run_dir) / f"evaluation_{args.split}_K{args.eval_samples}.json", result)
    print(
        f"{args.split} NLL {result['nll']:.2f} +- {result['nll_stderr']:.2f} nats (K={args.eval_samples}, {result['eval_size']} images)"
    )
    return 0


def cmd_sample(args: argparse.Namespace) -> int:
    import torch

    from pvae.figures import image_grid

    model, _ = _load(args.run_dir, args.checkpoint)
    images = model.sample(args.num, generator=torch.Generator().manual_seed(args.seed))
    out = Path(args.out or Path(args.run_dir) / f"samples_seed{args.seed}.png")
    if not out.parent.is_dir():
        raise CLIError(f"output folder {out.parent} does not exist")
    image_grid(images, out)
    print(out)
    return 0


def _diagnose_sizes(args: argparse.Namespace) -> dict[str, int]:
    """The sizes of ``pvae diagnose``: given flags, else the ``--quick`` or the full defaults."""
    sizes = {}
    for flag, (full, quick, _) in _DIAGNOSE_SIZES.items():
        name = flag[2:].replace("-", "_")
        given = getattr(args, name)
        sizes[name] = given if given is not None else (quick if args.quick else full)
    if sizes["num_samples"] < 50:
        # PSIS fits a Pareto tail to the largest ~3 sqrt(S) weights of each datum.
        raise CLIError(f"--num-samples must be >= 50 for PSIS k-hat, got {sizes['num_samples']}")
    return sizes


def cmd_diagnose(args: argparse.Namespace) -> int:
    from pvae.data import load_dataset
    from pvae.diagnose import diagnose_run

    sizes = _diagnose_sizes(args)
    model, config = _load(args.run_dir, args.checkpoint)
    test = load_dataset(
        config["dataset"],
        "test",
        size=sizes["num_data"],
        size_seed=args.seed,
        progress=not args.no_progress,
    )
    metrics, figures = diagnose_run(
        model,
        _eval_tensor(test),
        test.labels,
        Path(args.run_dir),
        num_samples=sizes["num_samples"],
        ais_steps=sizes["ais_steps"],
        ais_chains=sizes["ais_chains"],
        bdmc_data=sizes["bdmc_data"],
        seed=args.seed,
        progress=not args.no_progress,
    )
    _append_diagnostics_to_report(Path(args.run_dir), figures)
    print(json.dumps(metrics, indent=2, default=str))
    return 0


def _append_diagnostics_to_report(run_dir: Path, figures: list[tuple[str, str]]) -> None:
    """Adds (or replaces) the report's diagnostics section: one heading and image per figure."""
    report = run_dir / "report.md"
    text = report.read_text() if report.exists() else f"# {run_dir.name}\n"
    marker = "\n## Diagnostics (`pvae diagnose`)\n"
    text = text.split(marker)[0].rstrip("\n") + "\n" + marker
    text += "\nNumbers: `diagnostics.json`; ArviZ data: `diagnostics.nc`.\n"
    for title, filename in figures:
        text += f"\n### {title}\n![{title}]({filename})\n"
    report.write_text(text)


COMMANDS = {
    "train": cmd_train,
    "evaluate": cmd_evaluate,
    "sample": cmd_sample,
    "diagnose": cmd_diagnose,
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.argv = argv
    from pvae.data.download import DataIntegrityError
    from pvae.infer.checkpoint import CheckpointError
    from pvae.infer.train import TrainingError

    user_errors = (
        CLIError,
        ValueError,
        FileNotFoundError,
        CheckpointError,
        TrainingError,
        DataIntegrityError,
    )
    try:
        return COMMANDS[args.command](args)
    except user_errors as error:
        print(f"pvae {args.command}: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"pvae {args.command}: interrupted (resume training with --resume)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
