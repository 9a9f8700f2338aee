"""``train_run``: the whole recipe of a run, from data to report, in one place.

Load the dataset's splits; build the registered model with the dataset's ``model_options()``
(its ``input_shape``, ...) under the run's seed; on a fresh run let the model initialise
itself from the data (``Model.initialize``); train with :func:`pvae.infer.fit` and the
model's own ``training_setup``; reload the best checkpoint; evaluate the test NLL and the
model's ``metrics``; write the report with the model's ``report_items``. Every command,
benchmark and tutorial that trains a registered model goes through here.
"""

from __future__ import annotations

import dataclasses
import gc
import sys
import time
import traceback
import warnings
import zipfile
import zlib
from typing import Any

import torch

from pvae.infer.callbacks import Callback
from pvae.infer.distributed import DistributedContext
from pvae.runs.folder import (
    CHECKPOINTS,
    check_device,
    check_not_occupied,
    check_out_path,
    check_resume,
    has_checkpoint,
    load_last_checkpoint,
    load_run,
    set_status,
    start_run,
    write_json,
)
from pvae.runs.spec import TrainSpec


class EpochLine(Callback):
    """Prints one line per epoch to stderr: the training bound and the validation numbers."""

    def on_epoch_end(self, state: Any, record: dict[str, float]) -> None:
        valid_text = "".join(
            f", {key.replace('_', ' ').replace('elbo', 'ELBO')} "
            f"{value:.{4 if 'accuracy' in key else 2}f}"
            for key, value in record.items()
            if key.startswith("valid_")
            and not (key == "valid_bound" and record.get("valid_elbo") == value)
        )
        print(
            f"epoch {record['epoch']}: train bound {record['train_bound']:.2f}{valid_text} "
            f"({record['time']:.0f}s)",
            file=sys.stderr,
        )


def build_run_model(spec: TrainSpec, data_options: dict[str, Any]) -> Any:
    """The registered model of ``spec`` sized by the data, initialised from ``spec``'s seed
    (the caller's global random state is left as it was)."""
    from pvae.models.registry import build_model, get_model_class

    cls = get_model_class(spec.model)
    options = {key: data_options[key] for key in cls.data_keys if key in data_options}
    options.update(spec.model_options)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(spec.train.seed)
        return build_model(spec.model, **options)


class Position(Callback):
    """Where training is (1-based epoch and step), for the status of an interrupted run."""

    def __init__(self) -> None:
        self.where: dict[str, Any] = {"during": "setup"}

    def on_step_start(self, state: Any) -> None:
        self.where = {"epoch": state.epoch + 1, "step": state.step + 1}


def load_split(name: str, split: str, **options: Any) -> Any:
    """:func:`pvae.data.load_dataset`, with a dataset file damaged after its verification (its
    size and time kept, so the recorded checksum still stands) reported as a
    :class:`~pvae.data.download.DataIntegrityError` naming the file, not a zipfile traceback."""
    from pvae.data import load_dataset
    from pvae.data.download import DataIntegrityError

    try:
        return load_dataset(name, split, **options)
    except (zipfile.BadZipFile, zlib.error, EOFError) as error:
        reason = str(error)
        # np.load leaves the damaged file open in the frames of the traceback: free them here,
        # quietly, rather than in a ResourceWarning when the traceback is dropped.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ResourceWarning)
            traceback.clear_frames(error.__traceback__)
            gc.collect()
    raise DataIntegrityError(
        f"{_dataset_files(name)} cannot be read ({reason}): the file is damaged; delete it "
        "to download it again"
    )


def _dataset_files(name: str) -> str:
    """The paths of dataset ``name``'s files (its name when they cannot be found)."""
    from pvae.data.download import fetch
    from pvae.data.registry import DATASETS

    resources = DATASETS[name].resource
    try:
        return ", ".join(
            str(fetch(resource, download=False, progress=False))
            for resource in (resources if isinstance(resources, tuple) else (resources,))
        )
    except Exception:  # only for the message: the file's name is enough
        return f"a file of dataset {name!r}"


def load_splits(spec: TrainSpec, **options: Any) -> tuple[Any, Any, Any]:
    """The run's train, valid and test sets (``train_size`` also shrinks valid); ``options``
    (a model's ``data_options()``) go to every split's loader."""
    train = load_split(
        spec.dataset, "train", size=spec.train_size, progress=spec.progress, **options
    )
    valid = load_split(spec.dataset, "valid", progress=spec.progress, **options)
    test = load_split(spec.dataset, "test", size=spec.eval_size, progress=spec.progress, **options)
    if spec.train_size is not None:
        valid = valid.subset(min(len(valid), max(100, spec.train_size // 5)))
    return train, valid, test


def _check_objective(spec: TrainSpec) -> None:
    """The KL weight (beta, free bits, annealing) is a term of the ELBO; the importance-weighted
    bounds have no KL term to weight, so the combination would train the plain IWAE while the
    run folder claimed otherwise: refuse it."""
    if spec.objective in ("elbo", "infovae"):  # InfoVAE's KL weight (1 - alpha) composes
        return
    weighted = [
        f"{key}={value}"
        for key, value, neutral in (
            ("beta", spec.model_options.get("beta", 1.0), 1.0),
            ("free_bits", spec.model_options.get("free_bits", 0.0), 0.0),
            ("kl_anneal", spec.train.kl_anneal_epochs, 0.0),
        )
        if float(value) != neutral
    ]
    if weighted:
        raise ValueError(
            f"{', '.join(weighted)} weight the ELBO's KL term; --objective {spec.objective} has "
            "none (it would train the unweighted bound): use --objective elbo"
        )


def _check_annealing(spec: TrainSpec, objective: Any) -> None:
    """A model that brings its own objective (M2, the SSVAE: Pyro's ELBOs) cannot be annealed:
    say so before the run folder is written, not from inside ``fit``."""
    from pvae.infer.objectives import make_objective

    if objective is None or spec.train.kl_anneal_epochs <= 0:
        return
    if not make_objective(objective, 1).weights_latents:
        raise ValueError(
            f"--kl-anneal: {spec.model} trains with its own objective "
            f"({type(objective).__name__}), which has no KL weight to anneal; drop --kl-anneal"
        )


def train_run(spec: TrainSpec, distributed: DistributedContext | None = None) -> dict[str, Any]:
    """Trains, evaluates and reports the run ``spec`` into ``spec.run_dir``; returns its
    metrics (also in ``metrics.json``). With ``spec.resume`` a run continues from its last
    checkpoint; a run without one starts afresh.

    Everything is checked before the folder is written: the device, the folder, the data,
    and on resume the options against config.json (:func:`pvae.runs.folder.check_resume`)
    and that ``checkpoint_last.pt`` loads. A failed check leaves the folder as it was.

    ``distributed``: this process's rank of a process group (``torchrun``; every rank calls
    ``train_run`` with the same ``spec``). Training (:func:`pvae.infer.fit`) and the test NLL
    are shared among the ranks; rank 0 alone checks and writes the run folder, prints and
    shows progress bars, and writes the report. ``spec.train.batch_size`` is the global
    batch. The run folder must be one that every rank reads (one machine, or a shared
    filesystem)."""
    from pvae.infer.distributed import main_first
    from pvae.infer.objectives import make_objective
    from pvae.infer.train import fit
    from pvae.models.registry import get_model_class
    from pvae.runs.evaluate import evaluate_model
    from pvae.runs.report import write_report

    if distributed is not None and distributed.world_size == 1:
        distributed = None
    main = distributed is None or distributed.is_main
    cls = get_model_class(spec.model)  # an unknown name fails before any data is loaded
    if spec.eval_samples is None:
        spec = dataclasses.replace(spec, eval_samples=cls.default_eval_samples)
    if not main:
        spec = dataclasses.replace(spec, progress=False)
    device = spec.train.device
    check_device(device)
    if distributed is not None:
        device = distributed.device  # cuda:<local rank> under torchrun
    _check_objective(spec)
    out = spec.run_dir
    check_out_path(out)
    if main:
        check_not_occupied(out, spec.resume)
    with main_first(distributed):  # rank 0 downloads what is missing, then the others read
        train, valid, test = load_splits(spec)
    if len(train) == 0:
        raise ValueError(
            f"dataset {spec.dataset!r} has no training data (its train split is empty)"
        )
    data_options = train.model_options()
    model = build_run_model(spec, data_options)
    setup = model.training_setup(
        train,
        valid,
        num_labels=spec.num_labels,
        seed=spec.train.seed,
        labelled_schedule=spec.labelled_schedule,
    )
    _check_annealing(spec, setup.get("objective"))
    config = {
        "model": spec.model,
        "dataset": spec.dataset,
        "model_config": model.config.to_dict(),
        "objective": spec.objective,
        "num_particles": spec.num_particles,
        "objective_options": spec.objective_options,
        "train": spec.train_dict(),
        "monitor": setup.get("monitor", spec.train.monitor),
        "eval_samples": spec.eval_samples,
        "eval_size": len(test),
        "train_size": len(train),
        "num_labels": spec.num_labels,
        "labelled_schedule": spec.labelled_schedule,
        "command": spec.command,
    }
    if distributed is not None:
        config["world_size"] = distributed.world_size
    # Decided on the checkpoint, not on the flag: a run killed before its first
    # checkpoint, resumed, starts afresh and needs its initialisation.
    resuming = spec.resume and has_checkpoint(out)
    if resuming and main:
        config = check_resume(out, config, load_last_checkpoint(out))
    if main:
        start_run(out, config)
    position = Position()
    try:
        if not resuming:
            model.initialize(data_options)
        fit_kwargs: dict[str, Any] = dict(
            train_data=train,
            valid_data=valid,
            objective=(
                make_objective(spec.objective, spec.num_particles, options=spec.objective_options)
                if spec.objective_options
                else spec.objective
            ),
            num_particles=spec.num_particles,
        )
        callbacks = [*setup.pop("callbacks", []), position]
        # A model trained with another bound than the one it is evaluated with (the
        # homoencoder) supplies its training pair.
        train_model, train_guide = setup.pop("model", model.model), setup.pop("guide", model.guide)
        fit_kwargs.update(setup)
        if spec.progress:
            callbacks.append(EpochLine())
        result = fit(
            train_model,
            train_guide,
            **fit_kwargs,
            config=spec.train,
            checkpoint_dir=out / CHECKPOINTS,
            resume=resuming,
            progress=spec.progress,
            callbacks=callbacks,
            distributed=distributed,
        )
        position.where = {"during": "evaluation"}
        model, _ = load_run(out, "best", device=device)
        evaluation = evaluate_model(
            model,
            test,
            num_samples=spec.eval_samples,
            device=device,
            progress=spec.progress,
            seed=spec.train.seed,
            distributed=distributed,
        )
        model_metrics = {
            key: value
            for key, value in evaluation.items()
            if key not in ("nll", "nll_stderr", "eval_samples", "eval_size", "eval_wall_time")
        }
        metrics = {
            "history": result.history,
            "best_epoch": result.best_epoch,
            "best_valid": result.best_valid,
            "stopped_early": result.stopped_early,
            "test_nll": evaluation["nll"],
            "test_nll_stderr": evaluation["nll_stderr"],
            "eval_samples": evaluation["eval_samples"],
            "eval_size": evaluation["eval_size"],
            **model_metrics,
            "model_metrics": model_metrics,
            "train_wall_time": result.wall_time,
            "eval_wall_time": evaluation["eval_wall_time"],
        }
        if not main:
            return metrics
        position.where = {"during": "the report"}
        report_start = time.perf_counter()
        items = model.report_items(test, out, seed=spec.train.seed)
        write_report(out, config, metrics, items)
        metrics["report_wall_time"] = time.perf_counter() - report_start
        write_json(out / "metrics.json", metrics)
        set_status(out, "complete")
    except KeyboardInterrupt:
        if main:
            _record_status(out, "interrupted", **position.where, resume="pass --resume to continue")
        raise
    except BaseException as error:
        if main:
            _record_status(out, "failed", error=f"{type(error).__name__}: {error}")
        raise
    return metrics


def _record_status(out: Any, status: str, **extra: Any) -> None:
    """Best effort: when the disk is full, the error that stopped the run is the one to report."""
    try:
        set_status(out, status, **extra)
    except OSError:
        pass
