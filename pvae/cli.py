"""The ``pvae`` command line: ``pvae train | evaluate | sample | diagnose``.

This module only parses: each command turns its flags into arguments of the runner
(:mod:`pvae.runs`) and prints what it returns. Every command validates its input up front and
fails with one line on stderr (exit code 2), never a bare traceback. ``pvae train`` writes a
run folder (see :mod:`pvae.runs.folder`).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path
from typing import Any

EXIT_USAGE = 2


class CLIError(Exception):
    """A user-facing error: printed as one line."""


class _Parser(argparse.ArgumentParser):
    """argparse with its errors on one line (the usage is one ``--help`` away)."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not (value > 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def _nonnegative_float(text: str) -> float:
    value = float(text)
    if not (value >= 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"must be a number >= 0, got {text}")
    return value


# pvae diagnose sizes: flag -> (default, with --quick, help).
_DIAGNOSE_SIZES = {
    "--num-data": (100, 20, "test images to diagnose"),
    "--num-samples": (1000, 200, "importance samples per datum"),
    "--ais-steps": (500, 100, "AIS intermediate distributions"),
    "--ais-chains": (8, 4, "AIS chains per datum"),
    "--bdmc-data": (20, 5, "simulated data for BDMC"),
}


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Adds ``(default: X)`` to a flag's help once: not when the help already states its
    default, and not for a default that says nothing (an off switch, an unset option)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        silent = action.default is None or action.default is False or action.default == []
        if "default" in text or silent or action.default == argparse.SUPPRESS:
            return text
        return super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
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
        formatter_class=_HelpFormatter,
    )
    train.add_argument(
        "--model",
        default="vae",
        help="registered model name (`pvae train --model list` lists them with their options)",
    )
    train.add_argument(
        "--dataset",
        default="mnist",
        help="registered dataset name (`pvae train --dataset list` lists them)",
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
    train.add_argument(
        "--architecture",
        default=None,
        help="network family where a model offers several: mlp, conv, or pixelcnn (vae and acn); "
        "`pvae train --model list` shows each model's choices",
    )
    train.add_argument(
        "--model-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        type=_model_option,
        help="any other option of the model's config, VALUE read as JSON (else a string); "
        "repeatable, e.g. --model-option beta=4 --model-option free_bits=0.5; "
        "`pvae train --model list` shows each model's options",
    )
    train.add_argument(
        "--objective",
        default="elbo",
        choices=["elbo", "iwae", "dreg", "infovae"],
        help="elbo (analytic KL where available), iwae (importance weighted, K=--num-particles), "
        "dreg (IWAE with the doubly-reparameterized gradient of Tucker et al. 2018), or infovae "
        "(Zhao et al.: KL weight 1 - alpha, MMD across the batch weighted alpha + lambda - 1; "
        "options by --objective-option)",
    )
    train.add_argument(
        "--objective-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        type=_model_option,
        help="an option of the objective, VALUE read as JSON (else a string); repeatable; "
        "infovae: alpha (0 if unset), mmd_lambda (1000), kernel (rbf or imq), bandwidth "
        "(a number, median, or null for 2 * latent size), e.g. --objective-option alpha=1",
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
        type=_nonnegative_float,
        default=0.0,
        help="epochs over which the KL weight grows from 0 to 1",
    )
    train.add_argument(
        "--kl-schedule",
        choices=("linear", "logistic", "cyclical"),
        default="linear",
        help="shape of the KL weight's growth (logistic: Bowman et al.; cyclical: Fu et al., "
        "--kl-cycles ramps of --kl-anneal epochs, each followed by as many at weight 1)",
    )
    train.add_argument("--kl-cycles", type=int, default=4, help="cycles of --kl-schedule cyclical")
    train.add_argument(
        "--patience",
        type=_positive_int,
        default=None,
        help="early stopping: epochs without validation improvement",
    )
    train.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (checked first)")
    train.add_argument(
        "--precision",
        choices=["fp32", "bf16"],
        default="fp32",
        help="bf16: the networks' matrix products in bfloat16 (autocast), the distributions' "
        "log-densities and the parameters in float32",
    )
    train.add_argument(
        "--no-fused-adam",
        dest="fused_adam",
        action="store_false",
        help="torch's default Adam instead of the fused update (same arithmetic to float "
        "rounding; reproduces runs made before pvae fused it to the bit)",
    )
    train.add_argument(
        "--seed", type=int, default=0, help="random seed (data order, binarization, initialisation)"
    )
    train.add_argument(
        "--out", default=None, help="run folder (default runs/<model>-<dataset>-<objective>)"
    )
    train.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in --out from its last checkpoint; it may change only --epochs, "
        "--patience, --checkpoint-every, --device, --eval-samples and --eval-size (recorded in "
        "config.json's resumes), not what decided the epochs already trained",
    )
    train.add_argument(
        "--checkpoint-every", type=_positive_int, default=None, help="also checkpoint every N steps"
    )
    train.add_argument(
        "--eval-samples",
        type=_positive_int,
        default=None,
        help="K importance samples for the test NLL (default: the model's, 5000 for images, "
        "500 for text, 1 for a model without latents)",
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
        help="labelled training items for semi-supervised models (m2); others ignore it",
    )
    train.add_argument(
        "--labelled-schedule",
        choices=["epoch", "step"],
        default="epoch",
        help="semi-supervised models: 'epoch' visits the labelled items as their own batches "
        "once an epoch; 'step' adds a labelled minibatch to every step, weighted so that the "
        "objective of an epoch is unchanged",
    )
    train.add_argument(
        "--train-size",
        type=_positive_int,
        default=None,
        help="use only the first N training images (smoke runs)",
    )
    train.add_argument("--no-progress", action="store_true", help="hide progress bars")
    train.add_argument(
        "--nproc",
        type=_positive_int,
        default=None,
        help="train with N processes on this machine (starts `torchrun --nproc-per-node N -m "
        "pvae.cli train ...`; --batch-size is the global batch, a multiple of N; with --device "
        "cuda one GPU per process); several machines: run torchrun yourself",
    )

    evaluate = sub.add_parser(
        "evaluate",
        help="importance-sampled test log-likelihood of a trained run",
        formatter_class=_HelpFormatter,
    )
    evaluate.add_argument("run_dir", help="a run folder written by `pvae train`")
    evaluate.add_argument(
        "--eval-samples",
        type=_positive_int,
        default=None,
        help="K importance samples per datum (default: the model's, 5000 for images, 500 for "
        "text, 1 for a model without latents)",
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
    evaluate.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (checked first)")
    evaluate.add_argument(
        "--seed",
        type=int,
        default=None,
        help="seed of the importance samples (default: the run's, which reproduces the test "
        "NLL that `pvae train` reported for the same K and size)",
    )
    evaluate.add_argument("--no-progress", action="store_true", help="hide progress bars")
    evaluate.add_argument(
        "--nproc",
        type=_positive_int,
        default=None,
        help="share the data among N processes on this machine (starts `torchrun "
        "--nproc-per-node N -m pvae.cli evaluate ...`); each batch's samples are then seeded "
        "from --seed and the batch, so the result is the same at any N (and differs, within "
        "its standard error, from one process's single stream)",
    )

    sample = sub.add_parser(
        "sample",
        help="draw images from a trained model's prior (no encoder)",
        formatter_class=_HelpFormatter,
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
        formatter_class=_HelpFormatter,
    )
    diagnose.add_argument("run_dir", help="a run folder written by `pvae train`")
    diagnose.add_argument(
        "--quick",
        action="store_true",
        help="small sizes for a first look (about 2 CPU-minutes for the default VAE: 121 s of CPU, 262 s wall on a busy 2-core machine): "
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
    diagnose.add_argument(
        "--ais-start",
        choices=["guide", "prior"],
        default="guide",
        help="where AIS on the test data starts: the guide (recommended: tighter at the same "
        "steps) or the prior (Wu et al.'s setup); BDMC always starts from the prior",
    )
    diagnose.add_argument(
        "--ais-schedule",
        choices=["adaptive", "sigmoid", "linear"],
        default="adaptive",
        help="the annealing schedule of AIS and BDMC: adaptive (equal thermodynamic length, "
        "learned by each run's pilot chains, whose weights are dropped) or the fixed sigmoid "
        "or linear spacing",
    )
    diagnose.add_argument("--seed", type=int, default=0, help="random seed")
    diagnose.add_argument("--no-progress", action="store_true", help="hide progress bars")
    diagnose.add_argument(
        "--nproc",
        type=_positive_int,
        default=None,
        help="share the work among N processes on this machine (starts `torchrun "
        "--nproc-per-node N -m pvae.cli diagnose ...`): the data are cut into 8 seeded chunks "
        "that the processes share, so the numbers are the same at any N up to 8 (and another "
        "draw, within Monte Carlo error, than one process's single stream)",
    )
    return parser


# -- train ------------------------------------------------------------------------------------
# Model options with a flag of their own (the others go through --model-option).
_MODEL_FLAGS = ("latent_dim", "hidden", "activation", "likelihood", "architecture")


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


def _model_options(args: argparse.Namespace) -> dict[str, Any]:
    options: dict[str, Any] = {}
    for key in _MODEL_FLAGS:
        value = getattr(args, key)
        if value is not None:
            options[key] = value
    for key, value in args.model_option:
        if key == "input_shape":
            raise CLIError("--model-option input_shape=...: the dataset sets the input shape")
        if key in _MODEL_FLAGS:
            flag = "--" + key.replace("_", "-")
            raise CLIError(f"--model-option {key}=...: set {key} with its own flag, {flag}")
        options[key] = value
    return options


def _list_datasets() -> str:
    from pvae.data.registry import DATASETS, available_datasets

    lines = []
    for name in available_datasets():
        spec = DATASETS[name]
        lines.append(f"{name}: {spec.description} (splits: {', '.join(spec.splits)})")
    return "\n".join(lines)


def _list_models() -> str:
    from pvae.models.registry import available_models, get_model_class

    lines = []
    for name in available_models():
        cls = get_model_class(name)
        lines.append(f"{name}: {(cls.__doc__ or '').strip().splitlines()[0]}")
        for option, default, text in cls.Config.describe():
            if option not in cls.data_keys:
                shown = list(default) if isinstance(default, tuple) else default
                lines.append(f"    {option} (default {json.dumps(shown)}): {text}")
    return "\n".join(lines)


# TrainConfig's fields and the flags that set them (its errors start with the field's name).
_TRAIN_FLAGS = {
    "epochs": "--epochs",
    "batch_size": "--batch-size",
    "lr": "--lr",
    "lr_schedule": "--lr-schedule",
    "clip_norm": "--clip-norm",
    "kl_anneal_epochs": "--kl-anneal",
    "kl_anneal_schedule": "--kl-schedule",
    "kl_anneal_cycles": "--kl-cycles",
    "early_stopping_patience": "--patience",
    "seed": "--seed",
    "checkpoint_every": "--checkpoint-every",
    "precision": "--precision",
}


def _without_nproc(argv: list[str]) -> list[str]:
    """``argv`` less ``--nproc N`` (or ``--nproc=N``, or an abbreviation argparse accepted)."""
    rest, skip = [], False
    for token in argv:
        if skip:
            skip = False
            continue
        name = token.split("=", 1)[0]
        if len(name) >= 4 and "--nproc".startswith(name):
            skip = "=" not in token
            continue
        rest.append(token)
    return rest


def _refuse_nproc_under_torchrun(args: argparse.Namespace) -> None:
    """``--nproc`` starts torchrun: a process that torchrun started must not start another."""
    from pvae.infer.distributed import launched_by_torchrun

    if args.nproc is not None and launched_by_torchrun():
        raise CLIError("--nproc: this process is already one of torchrun's; drop --nproc")


def _launch_torchrun(args: argparse.Namespace) -> int:
    """``pvae train|evaluate|diagnose --nproc N``: the same command under ``torchrun`` with N
    processes on this machine (a free port found by ``--standalone``); returns torchrun's exit code."""
    import subprocess

    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={args.nproc}",
        "-m",
        "pvae.cli",
        *_without_nproc(args.argv),
    ]
    print(f"pvae {args.command}: starting {' '.join(command[1:])}", file=sys.stderr)
    return subprocess.call(command)


def cmd_train(args: argparse.Namespace) -> int:
    from pvae.infer.distributed import from_env, restart_count
    from pvae.infer.train import TrainConfig
    from pvae.models.registry import available_models
    from pvae.runs import TrainSpec, train_run
    from pvae.runs.report import plus_minus

    _refuse_nproc_under_torchrun(args)
    world_size = args.nproc or int(os.environ.get("WORLD_SIZE", "1") or 1)
    if args.model != "list" and args.batch_size % world_size:
        raise CLIError(
            f"--batch-size {args.batch_size} is the global batch: it must be a multiple of the "
            f"{world_size} processes"
        )
    if args.nproc is not None and args.nproc > 1 and args.model != "list":
        return _launch_torchrun(args)
    if args.model == "list":
        print(_list_models())
        return 0
    if args.dataset == "list":
        print(_list_datasets())
        return 0
    if args.model not in available_models():
        raise CLIError(f"unknown model {args.model!r}; available: {', '.join(available_models())}")
    restarts = restart_count()
    if restarts and not args.resume:
        # torchrun --max-restarts starts the same command again after a rank died: continue
        # the run from its last checkpoint rather than refuse its unfinished folder.
        print(
            f"pvae train: torchrun restart {restarts}: resuming from the last checkpoint",
            file=sys.stderr,
        )
        args.resume = True
    if args.objective in ("iwae", "dreg") and args.num_particles < 2:
        print(
            "pvae: note: --objective iwae with --num-particles 1 equals the ELBO", file=sys.stderr
        )
    try:
        train = TrainConfig(
            epochs=args.epochs,
            batch_size=args.batch_size,
            lr=args.lr,
            lr_schedule=None if args.lr_schedule == "none" else args.lr_schedule,
            clip_norm=args.clip_norm,
            kl_anneal_epochs=args.kl_anneal,
            kl_anneal_schedule=args.kl_schedule,
            kl_anneal_cycles=args.kl_cycles,
            early_stopping_patience=args.patience,
            seed=args.seed,
            device=args.device,
            checkpoint_every=args.checkpoint_every,
            precision=args.precision,
            fused_adam=args.fused_adam,
        )
    except ValueError as error:
        field = str(error).split(" ", 1)[0]
        raise CLIError(f"argument {_TRAIN_FLAGS.get(field, field)}: {error}") from None
    spec = TrainSpec(
        model=args.model,
        dataset=args.dataset,
        model_options=_model_options(args),
        objective=args.objective,
        num_particles=args.num_particles,
        objective_options=dict(args.objective_option),
        train=train,
        eval_samples=args.eval_samples,
        eval_size=args.eval_size,
        train_size=args.train_size,
        num_labels=args.num_labels,
        labelled_schedule=args.labelled_schedule,
        out=Path(args.out) if args.out else None,
        resume=args.resume,
        progress=not args.no_progress,
        command="pvae " + " ".join(args.argv),
    )
    with from_env(args.device) as distributed:
        metrics = train_run(spec, distributed=distributed)
    if distributed is not None and not distributed.is_main:
        return 0  # rank 0 prints
    extra = "".join(f", {key} {value:.4f}" for key, value in metrics["model_metrics"].items())
    print(
        f"test NLL {metrics['test_nll']:.2f}{plus_minus(metrics['test_nll_stderr'], ' +- ')} nats "
        f"(K={metrics['eval_samples']}, {metrics['eval_size']} items){extra}; "
        f"report: {spec.run_dir / 'report.md'}"
    )
    return 0


# -- evaluate, sample, diagnose ------------------------------------------------------------------
def cmd_evaluate(args: argparse.Namespace) -> int:
    from pvae.infer.distributed import from_env
    from pvae.runs import evaluate_run
    from pvae.runs.report import plus_minus

    _refuse_nproc_under_torchrun(args)
    if args.nproc is not None and args.nproc > 1:
        return _launch_torchrun(args)
    with from_env(args.device) as distributed:
        result = evaluate_run(
            args.run_dir,
            split=args.split,
            num_samples=args.eval_samples,
            size=args.eval_size,
            checkpoint=args.checkpoint,
            device=args.device,
            progress=not args.no_progress,
            seed=args.seed,
            distributed=distributed,
        )
    if distributed is not None and not distributed.is_main:
        return 0  # rank 0 prints
    model_metrics = {
        key: value
        for key, value in result.items()
        if key
        not in ("split", "checkpoint", "seed", "nll", "nll_stderr", "eval_samples", "eval_size")
        and key != "eval_wall_time"
    }
    extra = "".join(f", {key} {value:.4f}" for key, value in model_metrics.items())
    print(
        f"{args.split} NLL {result['nll']:.2f}{plus_minus(result['nll_stderr'], ' +- ')} nats "
        f"(K={result['eval_samples']}, {result['eval_size']} items){extra}"
    )
    return 0


def cmd_sample(args: argparse.Namespace) -> int:
    from pvae.runs import sample_run

    try:
        path = sample_run(
            args.run_dir, num=args.num, seed=args.seed, out=args.out, checkpoint=args.checkpoint
        )
    except NotImplementedError as error:  # a model of p(y | x) only (text_classifier)
        raise CLIError(str(error)) from None
    if path.suffix == ".txt":  # sentences: show them, then say where they are
        print(path.read_text(encoding="utf-8"), end="")
    print(path)
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
    from pvae.infer.distributed import from_env
    from pvae.runs import diagnose_run
    from pvae.runs.diagnose import summary_text

    _refuse_nproc_under_torchrun(args)
    sizes = _diagnose_sizes(args)
    if args.nproc is not None and args.nproc > 1:
        return _launch_torchrun(args)
    with from_env("cpu") as distributed:
        metrics = diagnose_run(
            args.run_dir,
            **sizes,
            checkpoint=args.checkpoint,
            seed=args.seed,
            progress=not args.no_progress,
            ais_start=args.ais_start,
            ais_schedule=args.ais_schedule,
            distributed=distributed,
        )
    if distributed is not None and not distributed.is_main:
        return 0  # rank 0 prints
    print(summary_text(metrics, args.run_dir))
    return 0


COMMANDS = {
    "train": cmd_train,
    "evaluate": cmd_evaluate,
    "sample": cmd_sample,
    "diagnose": cmd_diagnose,
}


def _check_device(args: argparse.Namespace) -> None:
    """Any command's ``--device``, checked before it reads or writes anything."""
    device = getattr(args, "device", None)
    if device is None:
        return
    from pvae.runs.folder import check_device

    try:
        check_device(device)
    except ValueError as error:
        raise CLIError(f"--device {device}: {error}") from None


def _os_error(error: OSError) -> str:
    """An OS error (a full disk, a folder without permission) as one line naming the file."""
    if error.strerror is None:
        return str(error)
    where = f" {error.filename}" if error.filename is not None else ""
    return f"cannot write or read{where}: {error.strerror}"


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.argv = argv
    from pvae.data.download import DataIntegrityError
    from pvae.infer.checkpoint import CheckpointError
    from pvae.infer.distributed import DistributedError, env_world
    from pvae.infer.train import TrainingError

    user_errors = (
        CLIError,
        ValueError,
        FileNotFoundError,
        CheckpointError,
        TrainingError,
        DataIntegrityError,
        DistributedError,
    )
    # Under torchrun, the other ranks' messages say whose they are.
    try:
        world = env_world()
    except ValueError:
        world = None
    who = f"pvae {args.command}" + (f" [rank {world[0]}]" if world and world[0] > 0 else "")
    try:
        _check_device(args)
        return COMMANDS[args.command](args)
    except user_errors as error:
        print(f"{who}: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as error:
        print(f"{who}: error: {_os_error(error)}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"{who}: interrupted (resume training with --resume)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
