"""One training entry point for any model/guide pair: :func:`fit`.

``fit`` runs stochastic variational inference with a pvae objective (``"elbo"``, ``"iwae"``,
``"dreg"``) or any Pyro ``ELBO``, with minibatch scaling of the ``"data"`` plate, KL annealing,
a learning-rate schedule, gradient clipping, validation and early stopping, progress bars, and
checkpoints written atomically every epoch (and every ``checkpoint_every`` steps) from which a
killed run resumes bit for bit.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pyro
import torch
from pyro.infer import ELBO as PyroELBO
from pyro.params.param_store import StateDict
from tqdm.auto import tqdm

from pvae.infer.checkpoint import (
    CheckpointError,
    check_same_model,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from pvae.infer.objectives import ELBO, Objective, PyroObjective, make_objective

LAST = "checkpoint_last.pt"
BEST = "checkpoint_best.pt"


class TrainingError(RuntimeError):
    """Training cannot continue (a non-finite loss, for example)."""


@dataclass
class TrainConfig:
    """Everything that defines a training run (saved in checkpoints and run folders)."""

    epochs: int = 10
    batch_size: int = 128
    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    lr_schedule: str | None = None  # None, "exponential", "cosine" or "burda"
    lr_decay: float = 0.97  # per epoch, with lr_schedule="exponential"
    clip_norm: float | None = None
    kl_anneal_epochs: float = 0.0  # beta grows linearly from 0 to 1 over this many epochs
    early_stopping_patience: int | None = None
    seed: int = 0
    device: str = "cpu"
    checkpoint_every: int | None = None  # steps; None: only at the end of each epoch
    valid_particles: int | None = None  # K for the validation bound (default: the objective's)
    # The epoch record's key (higher is better) that picks checkpoint_best.pt and drives early
    # stopping: "valid_bound", or a key that fit's valid_metrics returns ("valid_accuracy").
    monitor: str = "valid_bound"

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise ValueError(f"epochs must be >= 1, got {self.epochs}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f"lr must be a positive number, got {self.lr}")
        if self.lr_schedule not in (None, "none", "exponential", "cosine", "burda"):
            raise ValueError(
                f"lr_schedule must be one of none, exponential, cosine, burda; got {self.lr_schedule!r}"
            )
        if self.clip_norm is not None and self.clip_norm <= 0:
            raise ValueError(f"clip_norm must be positive, got {self.clip_norm}")
        self.betas = tuple(self.betas)


def burda_lr_factor(epoch: int) -> float:
    """Burda et al.'s schedule relative to 1e-3: stage i (from 0) lasts 3^i epochs at
    1e-3 * 10^(-i/7) (``epoch`` counts from 0)."""
    stage, boundary = 0, 1
    while epoch >= boundary:
        stage += 1
        boundary += 3**stage
    return 10 ** (-stage / 7)


def _lr_lambda(config: TrainConfig) -> Callable[[int], float]:
    if config.lr_schedule == "exponential":
        return lambda epoch: config.lr_decay**epoch
    if config.lr_schedule == "cosine":
        return lambda epoch: (
            0.5 * (1 + math.cos(math.pi * min(epoch, config.epochs) / config.epochs))
        )
    if config.lr_schedule == "burda":
        return burda_lr_factor
    return lambda epoch: 1.0


@dataclass
class FitResult:
    """What :func:`fit` returns: the per-epoch history and where the best epoch is."""

    history: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int | None = None
    best_valid: float | None = None
    stopped_early: bool = False
    param_state: StateDict | None = None
    wall_time: float = 0.0

    @contextmanager
    def params(self) -> Iterator[None]:
        """Makes the run's ``pyro.param`` values current (for plain-function models)."""
        with pyro.get_param_store().scope(self.param_state):
            yield


def _owner_modules(*fns: Callable) -> list[torch.nn.Module]:
    modules: list[torch.nn.Module] = []
    for fn in fns:
        owner = fn if isinstance(fn, torch.nn.Module) else getattr(fn, "__self__", None)
        if isinstance(owner, torch.nn.Module) and all(owner is not m for m in modules):
            modules.append(owner)
    return modules


def _model_identity(model: Callable, guide: Callable) -> tuple[str, dict | None]:
    owner = _owner_modules(model, guide)
    if owner:
        cls = type(owner[0])
        return f"{cls.__module__}.{cls.__qualname__}", getattr(owner[0], "config", None)
    name = getattr(model, "__qualname__", repr(model))
    return f"{getattr(model, '__module__', '?')}.{name}", None


def _default_batch_args(batch: Any) -> tuple:
    if isinstance(batch, (tuple, list)):
        return (batch[0],)
    return (batch,)


def _to_device(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, (tuple, list)):
        return type(batch)(_to_device(b, device) for b in batch)
    return batch


def _iterate(data: Any, batch_size: int, shuffle: bool, generator: torch.Generator) -> Iterable:
    if hasattr(data, "batches"):
        return data.batches(batch_size, shuffle=shuffle, generator=generator)
    if isinstance(data, torch.Tensor):
        order = (
            torch.randperm(len(data), generator=generator) if shuffle else torch.arange(len(data))
        )
        return (data[order[i : i + batch_size]] for i in range(0, len(data), batch_size))
    return data


def _num_data(data: Any) -> int:
    try:
        return len(data.dataset) if hasattr(data, "dataset") else len(data)
    except TypeError:
        raise ValueError(
            "training data must have a length (a pvae dataset, a tensor or a DataLoader)"
        ) from None


def _batch_len(batch: Any) -> int:
    first = batch[0] if isinstance(batch, (tuple, list)) else batch
    return int(first.shape[0])


def fit(
    model: Callable,
    guide: Callable,
    train_data: Any,
    *,
    valid_data: Any = None,
    objective: str | Objective | PyroELBO = "elbo",
    num_particles: int = 1,
    config: TrainConfig | None = None,
    checkpoint_dir: str | Path | None = None,
    resume: bool = False,
    batch_args: Callable[[Any], tuple] | None = None,
    param_state: StateDict | None = None,
    progress: bool = True,
    on_epoch_end: Callable[[dict[str, float]], None] | None = None,
    valid_metrics: Callable[[], dict[str, float]] | None = None,
    **config_overrides: Any,
) -> FitResult:
    """Trains ``model``/``guide`` on ``train_data`` and returns a :class:`FitResult`.

    Args:
        model, guide: Pyro callables taking ``*batch_args(batch)``; data in ``pyro.plate("data")``.
            Methods of a ``PyroModule`` (``vae.model``, ``vae.guide``) train its parameters;
            plain functions train the ``pyro.param`` values they create, kept in
            ``param_state`` (a fresh, private store by default: see ``FitResult.params``).
        train_data: a pvae dataset (with ``.batches``), a tensor of data, or a re-iterable of
            batches (a ``DataLoader``), with a length.
        valid_data: the same kinds; evaluated after every epoch: ``valid_elbo`` and the
            training bound ``valid_bound`` with pvae's objectives; with a Pyro ``ELBO`` (which
            may enumerate discrete sites) only ``valid_bound``, that ELBO's value.
        objective: ``"elbo"``, ``"iwae"``, ``"dreg"``, a pvae ``Objective`` or a Pyro ``ELBO``.
        num_particles: K for ``"iwae"``/``"dreg"``; particles averaged by ``"elbo"``.
        config: a :class:`TrainConfig`; keyword arguments override its fields.
        checkpoint_dir: where ``checkpoint_last.pt`` (every epoch) and ``checkpoint_best.pt``
            (best validation bound) are written atomically.
        resume: continue from ``checkpoint_dir/checkpoint_last.pt`` if it exists.
        batch_args: maps a batch to the model's positional arguments (default: ``(x,)``; for a
            model object with a ``batch_args`` method, that method).
        on_epoch_end: called with each epoch's record (after its checkpoint is written).
        valid_metrics: called without gradients after every epoch; the numbers it returns
            (``{"valid_accuracy": ...}``) join the epoch's record, where ``config.monitor``
            can select them for the best checkpoint and early stopping.

    The best checkpoint and early stopping follow ``config.monitor`` (default
    ``"valid_bound"``), when the record has it.
    """
    config = config or TrainConfig()
    if config_overrides:
        config = TrainConfig(**{**asdict(config), **config_overrides})
    objective = make_objective(objective, num_particles)
    if config.monitor != "valid_bound" and valid_metrics is None:
        raise ValueError(
            f"monitor={config.monitor!r} needs valid_metrics returning it (the validation "
            "bound is 'valid_bound')"
        )
    device = torch.device(config.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was requested but CUDA is not available on this machine")
    modules = _owner_modules(model, guide)
    for module in modules:
        module.to(device)
    if batch_args is None:
        owner_batch_args = getattr(modules[0], "batch_args", None) if modules else None
        batch_args = owner_batch_args or _default_batch_args
    num_data = _num_data(train_data)
    checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir is not None else None
    model_class, model_config = _model_identity(model, guide)

    generator = torch.Generator().manual_seed(config.seed)
    pyro.set_rng_seed(config.seed)
    result = FitResult(
        param_state=param_state if param_state is not None else {"params": {}, "constraints": {}}
    )
    start_time = time.perf_counter()

    with pyro.get_param_store().scope(result.param_state):
        # One pass without gradients creates any pyro.param sites and checks the model.
        first = _to_device(
            next(iter(_iterate(train_data, config.batch_size, False, generator))), device
        )
        with torch.no_grad():
            try:
                objective.max_plate_nesting(model, guide, batch_args(first), {})
                objective(model, guide, *batch_args(first), scale=1.0)
            except ValueError as error:
                first_line = str(error).splitlines()[0] if str(error) else ""
                if "found invalid values" not in first_line:
                    raise
                raise ValueError(f"the first batch: {first_line.rstrip(':')}") from None
        generator.manual_seed(config.seed)  # the probe must not shift the data stream
        params = _collect_params(modules)
        if not params:
            raise ValueError("the model and guide have no parameters to train")
        optimizer = torch.optim.Adam(params, lr=config.lr, betas=config.betas, eps=config.eps)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(config))

        start_epoch, skip_steps = 0, 0
        resumed_totals: tuple[float, int] = (0.0, 0)
        epoch_totals: tuple[float, int] = (0.0, 0)  # running (bound, data) for mid-epoch saves
        epoch_start_generator = None
        if resume and checkpoint_dir is not None and (checkpoint_dir / LAST).exists():
            payload = load_checkpoint(checkpoint_dir / LAST, map_location=device)
            check_same_model(payload, model_class, model_config, checkpoint_dir / LAST)
            _load_state(payload, modules, optimizer, scheduler)
            result.history = payload["history"]
            result.best_epoch = payload.get("best_epoch")
            result.best_valid = payload.get("best_valid")
            start_epoch, skip_steps = payload["epoch"], payload.get("step", 0)
            epoch_start_generator = payload.get("epoch_start_generator")
            resumed_totals = tuple(payload.get("epoch_totals") or (0.0, 0))
            set_rng_state(payload["rng"], generator)
            result.wall_time = payload.get("wall_time", 0.0)
            if payload.get("stopped_early") or start_epoch >= config.epochs:
                result.stopped_early = bool(payload.get("stopped_early"))
                return result

        def checkpoint(epoch: int, step: int, path_name: str = LAST, stopped_early=False) -> None:
            if checkpoint_dir is None:
                return
            save_checkpoint(
                checkpoint_dir / path_name,
                {
                    "model_class": model_class,
                    "model_config": model_config,
                    "modules": [m.state_dict() for m in modules],
                    "param_store": pyro.get_param_store().get_state(),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "epoch": epoch,
                    "step": step,
                    "epoch_start_generator": epoch_start_state,
                    "rng": rng_state(generator),
                    "config": asdict(config),
                    "objective": objective.name,
                    "num_particles": objective.num_particles,
                    "history": result.history,
                    "best_epoch": result.best_epoch,
                    "best_valid": result.best_valid,
                    "wall_time": result.wall_time + time.perf_counter() - start_time,
                    "stopped_early": stopped_early,
                    "epoch_totals": epoch_totals,
                },
            )

        bad_epochs = 0
        for epoch in range(start_epoch, config.epochs):
            if skip_steps and epoch_start_generator is not None:
                # Mid-epoch resume: replay the epoch's data stream up to where it stopped; the
                # generator ends in the state it had when the checkpoint was written.
                generator.set_state(epoch_start_generator)
            epoch_start_state = generator.get_state()
            batches = iter(_iterate(train_data, config.batch_size, True, generator))
            for _ in range(skip_steps):
                next(batches)
            total_bound, seen = resumed_totals if skip_steps else (0.0, 0)
            steps_per_epoch = math.ceil(num_data / config.batch_size)
            bar = tqdm(
                batches,
                total=steps_per_epoch,
                initial=skip_steps,
                desc=f"epoch {epoch + 1}/{config.epochs}",
                unit="batch",
                disable=not progress,
                leave=False,
            )
            for step, batch in enumerate(bar, start=skip_steps):
                batch = _to_device(batch, device)
                size = _batch_len(batch)
                if config.kl_anneal_epochs > 0:
                    objective.beta = min(
                        1.0, (epoch + step / steps_per_epoch) / config.kl_anneal_epochs
                    )
                try:
                    value = objective(model, guide, *batch_args(batch), scale=num_data / size)
                except ValueError as error:
                    # Distribution validation: parameters that overflowed to inf/nan are a
                    # divergence; a value outside its support is a data or model error.
                    # Either way one line, not a tensor dump.
                    first = str(error).splitlines()[0] if str(error) else ""
                    invalid = "found invalid values" in first
                    if not _all_finite(params) or (
                        invalid and first.startswith("Expected parameter")
                    ):
                        raise _diverged(epoch, step, first) from None
                    if invalid:
                        raise ValueError(
                            f"epoch {epoch + 1}, step {step + 1}: {first.rstrip(':')}"
                        ) from None
                    raise
                if not torch.isfinite(value.loss):
                    raise _diverged(epoch, step)
                optimizer.zero_grad(set_to_none=True)
                value.loss.backward()
                if config.clip_norm is not None:
                    torch.nn.utils.clip_grad_norm_(params, config.clip_norm)
                optimizer.step()
                total_bound += float(value.bound)
                seen += size
                if progress and step % 20 == 0:
                    bar.set_postfix(bound=f"{total_bound / seen:.2f}")
                if config.checkpoint_every and (step + 1) % config.checkpoint_every == 0:
                    epoch_totals = (total_bound, seen)
                    checkpoint(epoch, step + 1)
            bar.close()
            if not _all_finite(params):  # the epoch's last step may have diverged
                raise _diverged(epoch, step)
            skip_steps = 0
            with warnings.catch_warnings():
                # A run resumed after its epoch's last step takes no optimizer step in this
                # epoch; the schedule still advances once per epoch, as uninterrupted.
                warnings.filterwarnings(
                    "ignore", "Detected call of `lr_scheduler.step", UserWarning
                )
                scheduler.step()
            objective.beta = 1.0
            record = {
                "epoch": epoch + 1,
                "train_bound": total_bound / max(seen, 1),
                "lr": optimizer.param_groups[0]["lr"],
                "time": time.perf_counter() - start_time + result.wall_time,
            }
            if valid_data is not None:
                record.update(
                    _validate(model, guide, valid_data, objective, config, batch_args, device)
                )
            if valid_metrics is not None:
                with torch.no_grad():
                    record.update({k: float(v) for k, v in valid_metrics().items()})
            result.history.append(record)
            monitored = record.get(config.monitor)
            if monitored is None and (valid_data is not None or valid_metrics is not None):
                raise ValueError(
                    f"monitor={config.monitor!r} is not in the epoch record "
                    f"(keys: {', '.join(sorted(record))})"
                )
            if monitored is not None:
                if result.best_valid is None or monitored > result.best_valid:
                    result.best_valid, result.best_epoch = monitored, epoch + 1
                    bad_epochs = 0
                    checkpoint(epoch + 1, 0, BEST)
                else:
                    bad_epochs += 1
            epoch_start_state = generator.get_state()
            stop = (
                config.early_stopping_patience is not None
                and bad_epochs >= config.early_stopping_patience
            )
            checkpoint(epoch + 1, 0, stopped_early=stop)
            if on_epoch_end is not None:
                on_epoch_end(record)
            if stop:
                result.stopped_early = True
                break
    result.wall_time += time.perf_counter() - start_time
    return result


def _all_finite(params: list[torch.Tensor]) -> bool:
    return all(bool(torch.isfinite(p).all()) for p in params)


def _diverged(epoch: int, step: int, detail: str = "") -> TrainingError:
    detail = f" ({detail.split(' of distribution')[0]} is not finite)" if detail else ""
    return TrainingError(
        f"non-finite loss or parameters at epoch {epoch + 1}, step {step + 1}{detail}; lower "
        "--lr or set --clip-norm (the last good checkpoint is kept)"
    )


def _collect_params(modules: list[torch.nn.Module]) -> list[torch.nn.Parameter]:
    params: list[torch.nn.Parameter] = []
    seen: set[int] = set()
    for module in modules:
        for p in module.parameters():
            if id(p) not in seen:
                seen.add(id(p))
                params.append(p)
    store = pyro.get_param_store()
    for name in store.keys():
        p = store._params[name]
        if id(p) not in seen and p.requires_grad:
            seen.add(id(p))
            params.append(p)
    return params


def _load_state(payload: dict, modules, optimizer, scheduler) -> None:
    if len(payload["modules"]) != len(modules):
        raise CheckpointError("checkpoint holds a different number of modules than the model")
    for module, state in zip(modules, payload["modules"], strict=True):
        module.load_state_dict(state)
    # Copy saved pyro.param values into the existing tensors: modules registered with
    # pyro.module and the optimizer both hold references to them.
    store = pyro.get_param_store()
    saved = payload["param_store"]
    for name, value in saved["params"].items():
        if name in store._params:
            with torch.no_grad():
                store._params[name].copy_(value)
        else:
            store._params[name] = value
            store._param_to_name[value] = name
            store._constraints[name] = saved["constraints"][name]
    optimizer.load_state_dict(payload["optimizer"])
    scheduler.load_state_dict(payload["scheduler"])


@torch.no_grad()
def _validate(model, guide, data, objective, config, batch_args, device) -> dict[str, float]:
    # A Pyro ELBO may enumerate discrete sites, which pvae's ELBO refuses: validate with it.
    elbo = None if isinstance(objective, PyroObjective) else ELBO()
    use_training_bound = not (isinstance(objective, ELBO) and objective.num_particles == 1)
    totals = {"valid_elbo": 0.0, "valid_bound": 0.0}
    seen = 0
    generator = torch.Generator().manual_seed(config.seed + 1)
    for batch in _iterate(data, config.batch_size, False, generator):
        batch = _to_device(batch, device)
        args = batch_args(batch)
        if elbo is not None:
            totals["valid_elbo"] += float(elbo(model, guide, *args).bound)
        if use_training_bound:
            beta, objective.beta = objective.beta, 1.0
            totals["valid_bound"] += float(objective(model, guide, *args).bound)
            objective.beta = beta
        seen += _batch_len(batch)
    record = {k: v / max(seen, 1) for k, v in totals.items()}
    if elbo is None:
        del record["valid_elbo"]
    elif not use_training_bound:
        record["valid_bound"] = record["valid_elbo"]
    return record
