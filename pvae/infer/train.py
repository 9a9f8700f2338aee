"""One training entry point for any model/guide pair: :func:`fit`.

``fit`` runs stochastic variational inference with a pvae objective (``"elbo"``, ``"iwae"``,
``"dreg"``) or any Pyro ``ELBO``, with minibatch scaling read from the ``"data"`` plate, KL
annealing, a learning-rate schedule, gradient clipping, validation and early stopping, callbacks
(:mod:`pvae.infer.callbacks`), progress bars, and checkpoints written atomically every epoch (and
every ``checkpoint_every`` steps) from which a killed run resumes bit for bit; under a
``torch.distributed`` process group (``distributed=``, :mod:`pvae.infer.distributed`) across
processes.
"""

from __future__ import annotations

import functools
import itertools
import math
import random
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyro
import torch
from pyro.infer import ELBO as PyroELBO
from pyro.params.param_store import StateDict
from tqdm.auto import tqdm

from pvae.infer.callbacks import (
    KL_SCHEDULES,
    Callback,
    EpochEndHook,
    KLAnnealing,
    TrainState,
    ValidMetrics,
)
from pvae.infer.checkpoint import (
    CheckpointError,
    check_same_model,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from pvae.infer.distributed import (
    DistributedContext,
    GradientReducer,
    derive_seed,
    rank_seed,
)
from pvae.infer.objectives import ELBO, Objective, PyroObjective, make_objective
from pvae.infer.precision import check_precision, network_precision
from pvae.infer.trace import plate_scale

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
    kl_anneal_epochs: float = 0.0  # beta grows from 0 to 1 over this many epochs (0: off)
    kl_anneal_schedule: str = "linear"  # "linear", "logistic" (Bowman) or "cyclical" (Fu)
    kl_anneal_cycles: int = 4  # cycles of the cyclical schedule
    early_stopping_patience: int | None = None
    seed: int = 0
    device: str = "cpu"
    checkpoint_every: int | None = None  # steps; None: only at the end of each epoch
    # The epoch record's key (higher is better) that picks checkpoint_best.pt and drives early
    # stopping: "valid_bound", or a key that fit's valid_metrics (or a callback) adds
    # ("valid_accuracy").
    monitor: str = "valid_bound"
    # "bf16": the networks' matrix products in bfloat16, the distributions in float32
    # (pvae.infer.precision); "fp32": float32 throughout.
    precision: str = "fp32"
    # Adam's update fused into one kernel where torch has one (make_adam); False: torch's
    # default Adam, the arithmetic of runs made before pvae fused it (to the bit). A resume
    # keeps the checkpoint's choice (its optimizer state records it).
    fused_adam: bool = True

    def __post_init__(self) -> None:
        # Checked here, not deep in the loop: a NaN or a fraction would otherwise reach
        # config.json (NaN is not JSON) or fail later as a traceback.
        for name in ("epochs", "batch_size"):
            _check_integer(name, getattr(self, name))
        for name in ("early_stopping_patience", "checkpoint_every"):
            if getattr(self, name) is not None:
                _check_integer(name, getattr(self, name))
        _check_integer("seed", self.seed, minimum=None)
        if not _finite_number(self.lr) or self.lr <= 0:
            raise ValueError(f"lr must be a positive number, got {self.lr}")
        if len(tuple(self.betas)) != 2 or not all(
            _finite_number(b) and 0 <= b < 1 for b in self.betas
        ):
            raise ValueError(f"betas must be two numbers in [0, 1), got {self.betas}")
        # Adam's first step moves a parameter by up to lr / (1 - beta1): beyond float32's
        # range it cannot even be applied (torch raises "value cannot be converted").
        largest = torch.finfo(torch.float32).max * (1 - self.betas[0])
        if self.lr > largest:
            raise ValueError(
                f"lr must be at most {largest:.3g} (Adam's first step, lr / (1 - beta1), "
                f"must fit in float32), got {self.lr}"
            )
        if not _finite_number(self.eps) or self.eps <= 0:
            raise ValueError(f"eps must be a positive number, got {self.eps}")
        if self.lr_schedule not in (None, "none", "exponential", "cosine", "burda"):
            raise ValueError(
                f"lr_schedule must be one of none, exponential, cosine, burda; got {self.lr_schedule!r}"
            )
        if not _finite_number(self.lr_decay) or not 0 < self.lr_decay <= 1:
            raise ValueError(f"lr_decay must be in (0, 1], got {self.lr_decay}")
        if self.clip_norm is not None and not (
            _finite_number(self.clip_norm) and self.clip_norm > 0
        ):
            raise ValueError(f"clip_norm must be a positive number, got {self.clip_norm}")
        if not _finite_number(self.kl_anneal_epochs) or self.kl_anneal_epochs < 0:
            raise ValueError(
                f"kl_anneal_epochs must be a number >= 0 (0: no annealing), "
                f"got {self.kl_anneal_epochs}"
            )
        if self.kl_anneal_schedule not in KL_SCHEDULES:
            raise ValueError(
                f"kl_anneal_schedule must be one of {', '.join(KL_SCHEDULES)}, "
                f"got {self.kl_anneal_schedule!r}"
            )
        _check_integer("kl_anneal_cycles", self.kl_anneal_cycles)
        if not isinstance(self.fused_adam, bool):
            raise ValueError(f"fused_adam must be True or False, got {self.fused_adam!r}")
        check_precision(self.precision)
        if not isinstance(self.monitor, str) or not self.monitor:
            raise ValueError(f"monitor must be an epoch record's key, got {self.monitor!r}")
        self.betas = tuple(self.betas)


def _finite_number(value: Any) -> bool:
    return (
        isinstance(value, (int, float, np.integer, np.floating))
        and not isinstance(value, bool)
        and math.isfinite(value)
    )


def _check_integer(name: str, value: Any, minimum: int | None = 1) -> None:
    """``value`` is an integer (not a bool, not 2.5) of at least ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")


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


class BoundToParams:
    """``fn`` (a model or guide) that always runs with the ``pyro.param`` values of
    ``param_state``, inside ``pyro.get_param_store().scope(param_state)``: what
    ``FitResult.model`` and ``FitResult.guide`` are. Passed to :func:`fit` again, training
    continues those parameters."""

    def __init__(self, fn: Callable, param_state: StateDict) -> None:
        self.fn = fn
        self.param_state = param_state
        functools.update_wrapper(self, fn)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        with pyro.get_param_store().scope(self.param_state):
            return self.fn(*args, **kwargs)

    def __repr__(self) -> str:
        return f"BoundToParams({self.fn!r})"


@dataclass
class FitResult:
    """What :func:`fit` returns: the per-epoch history and where the best epoch is, the run's
    ``pyro.param`` values (``param_state``), and the trained ``model`` and ``guide`` bound to
    them (:class:`BoundToParams`: evaluate these, not the functions passed to ``fit``, whose
    ``pyro.param`` calls outside the run's store would create fresh, untrained values)."""

    history: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int | None = None
    best_valid: float | None = None
    stopped_early: bool = False
    param_state: StateDict | None = None
    wall_time: float = 0.0
    model: Callable | None = field(default=None, repr=False)
    guide: Callable | None = field(default=None, repr=False)

    @contextmanager
    def params(self) -> Iterator[None]:
        """Makes the run's ``pyro.param`` values current (for plain-function models)."""
        with pyro.get_param_store().scope(self.param_state):
            yield


def _unbind(
    model: Callable, guide: Callable, param_state: StateDict | None
) -> tuple[Callable, Callable, StateDict | None]:
    """The functions under :class:`BoundToParams` wrappers and the one store they share."""
    states = [fn.param_state for fn in (model, guide) if isinstance(fn, BoundToParams)]
    if param_state is not None:
        states.append(param_state)
    if any(state is not states[0] for state in states[1:]):
        raise ValueError(
            "model, guide and param_state come from different parameter stores (different fit "
            "runs); pass result.model and result.guide of one run (or param_state=result."
            "param_state with the plain functions)"
        )

    def unwrap(fn: Callable) -> Callable:
        return fn.fn if isinstance(fn, BoundToParams) else fn

    return unwrap(model), unwrap(guide), (states[0] if states else None)


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
        config = getattr(owner[0], "config", None)
        if hasattr(config, "to_dict"):  # a pvae model's typed config: saved as plain JSON data
            config = config.to_dict()
        return f"{cls.__module__}.{cls.__qualname__}", config
    name = getattr(model, "__qualname__", repr(model))
    return f"{getattr(model, '__module__', '?')}.{name}", None


def _default_batch_args(batch: Any) -> tuple:
    if isinstance(batch, (tuple, list)):
        return (batch[0],)
    return (batch,)


def to_device(batch: Any, device: torch.device | str) -> Any:
    """``batch`` (a tensor, or a tuple or list of them) on ``device``. A host tensor bound
    for a GPU is copied from pinned memory without blocking the host (the copy overlaps the
    work already queued); the step's first use of it waits for it on the GPU's stream."""
    if isinstance(batch, torch.Tensor):
        if batch.device.type == "cpu" and torch.device(device).type == "cuda":
            batch = batch if batch.is_pinned() else batch.pin_memory()
        return batch.to(device, non_blocking=True)
    if isinstance(batch, (tuple, list)):
        return type(batch)(to_device(b, device) for b in batch)
    return batch


def _iterate(
    data: Any,
    batch_size: int,
    shuffle: bool,
    generator: torch.Generator,
    shard: tuple[int, int] = (0, 1),
) -> Iterable:
    """One epoch of ``data``'s batches; with ``shard=(rank, world_size)`` this rank's share: a
    dataset's ``batches(..., shard=)``, the rank's contiguous part of a tensor's permutation,
    or every ``world_size``-th batch of a re-iterable of batches (a ``DataLoader``)."""
    sharded = shard[1] > 1
    if hasattr(data, "batches"):
        if sharded:
            return data.batches(batch_size, shuffle=shuffle, generator=generator, shard=shard)
        return data.batches(batch_size, shuffle=shuffle, generator=generator)
    if isinstance(data, torch.Tensor):
        order = (
            torch.randperm(len(data), generator=generator) if shuffle else torch.arange(len(data))
        )
        if sharded:
            from pvae.data.registry import shard_positions

            order = order[shard_positions(len(data), shard)]
        return (data[order[i : i + batch_size]] for i in range(0, len(order), batch_size))
    if sharded:
        return itertools.islice(data, shard[0], None, shard[1])
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
    callbacks: Sequence[Callback] = (),
    on_epoch_end: Callable[[dict[str, float]], None] | None = None,
    valid_metrics: Callable[[], dict[str, float]] | None = None,
    distributed: DistributedContext | None = None,
    **config_overrides: Any,
) -> FitResult:
    """Trains ``model``/``guide`` on ``train_data`` and returns a :class:`FitResult`.

    Args:
        model, guide: Pyro callables taking ``*batch_args(batch)``; data in ``pyro.plate("data")``.
            Methods of a ``PyroModule`` (``vae.model``, ``vae.guide``) train its parameters;
            plain functions train the ``pyro.param`` values they create, kept in
            ``param_state`` (a fresh, private store by default). Evaluate the returned
            ``result.model`` and ``result.guide``, which run inside that store (or call the
            functions inside ``with result.params():``).
        train_data: a pvae dataset (with ``.batches``), a tensor of data, or a re-iterable of
            batches (a ``DataLoader``), with a length: its number of independent units.
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
        param_state: the ``pyro.param`` store to train in place (``FitResult.param_state``).
            Continued training of a plain-function model needs it: a second
            ``fit(model, guide, ...)`` continues a module's weights but restarts every
            ``pyro.param`` from its initial value; ``fit(model, guide, ...,
            param_state=result.param_state)`` or ``fit(result.model, result.guide, ...)``
            continues them (the optimizer's state restarts).
        callbacks: :class:`~pvae.infer.callbacks.Callback` instances, called in order
            (see :mod:`pvae.infer.callbacks` for the hooks and when they run).
        on_epoch_end: called with each epoch's record after its checkpoint is written: the
            same as ``callbacks=[EpochEndHook(on_epoch_end)]`` (after the other callbacks).
        valid_metrics: called without gradients after every epoch; the numbers it returns
            (``{"valid_accuracy": ...}``) join the epoch's record: the same as
            ``callbacks=[ValidMetrics(valid_metrics)]`` (before the other callbacks).
        distributed: this process's :class:`~pvae.infer.distributed.DistributedContext`
            when it is one rank of a process group (every rank calls ``fit`` with the same
            arguments); ``None`` (or one process): a single process, as without it.

    Minibatch scaling comes from the ``"data"`` plate: each objective evaluation gets
    ``num_data=len(train_data)``, and a site in the plate is scaled by ``num_data / size`` of
    the plate at that site (:func:`pvae.infer.trace.plate_scale`: a plate that Pyro subsamples
    itself keeps Pyro's factor; a plate larger than the dataset, the nodes of one graph, is the
    whole dataset and is not scaled). ``train_bound`` is the bound per unit.

    The best checkpoint and early stopping follow ``config.monitor`` (default
    ``"valid_bound"``), when the record has it. It must be in the record when validation is
    configured (``valid_data``, a :class:`~pvae.infer.callbacks.ValidMetrics`) or the monitor
    is not the default.

    ``fit`` seeds the global random generators with ``config.seed`` (as
    ``pyro.set_rng_seed``) for its own stream and restores the caller's states (``random``,
    numpy, torch, CUDA) when it returns or raises.

    Under a process group of ``W`` ranks (``distributed``), ``config.batch_size`` is the global
    batch (a multiple of ``W``; each rank's is ``batch_size / W``) and training computes what
    one process would with global batches made of the ranks' batches: every rank draws the
    same permutation of each epoch and takes its contiguous shard (a ``DataLoader``: every
    ``W``-th batch); each step's gradient is the units-weighted average of the ranks'
    (:class:`~pvae.infer.distributed.GradientReducer`), which with each rank's ``"data"``
    plate scaled by ``N / its units`` is the one-process gradient of the global batch. Shares
    differ by at most one unit, so a rank may run out of batches one step early: it then takes
    zero-weighted steps (no forward pass, no units) until the others finish, so no data are
    dropped and no rank waits in a collective the others never reach. Rank 0's parameters are
    broadcast after the first pass; each rank's sampling generators are seeded from
    ``config.seed`` and its rank (:func:`~pvae.infer.distributed.rank_seed`); validation is
    sharded and its totals summed; the epoch's totals are all-reduced once, at its end; rank
    0's epoch record (after the callbacks, which run on every rank) is every rank's, so the
    ranks agree on the best epoch and early stopping. Rank 0 alone writes checkpoints and
    shows progress bars; a checkpoint holds every rank's random states, so ``resume`` at the
    same world size continues bit for bit, and at another world size continues correctly
    (a mid-epoch checkpoint then restarts its epoch's data). Every rank reads the checkpoint
    folder: on several machines it must be on a shared filesystem.
    """
    if distributed is not None and distributed.world_size == 1:
        distributed = None
    model, guide, param_state = _unbind(model, guide, param_state)
    config = config or TrainConfig()
    if config_overrides:
        config = TrainConfig(**{**asdict(config), **config_overrides})
    objective = make_objective(objective, num_particles)
    if config.kl_anneal_epochs > 0 and not objective.weights_latents:
        raise ValueError(
            f"KL annealing (kl_anneal_epochs={config.kl_anneal_epochs}) weights the ELBO's KL "
            f"term; the objective {objective.name} has none that it could weight (it would "
            "train unannealed): use pvae's ELBO or set kl_anneal_epochs=0"
        )
    user_callbacks = [
        *([ValidMetrics(valid_metrics)] if valid_metrics is not None else []),
        *callbacks,
        *([EpochEndHook(on_epoch_end)] if on_epoch_end is not None else []),
    ]
    if config.monitor != "valid_bound" and not any(
        type(c).on_epoch_end is not Callback.on_epoch_end for c in user_callbacks
    ):
        raise ValueError(
            f"monitor={config.monitor!r} needs valid_metrics (or a callback's on_epoch_end) "
            "returning it (the validation bound is 'valid_bound')"
        )
    annealing = (
        [
            KLAnnealing(
                config.kl_anneal_epochs,
                schedule=config.kl_anneal_schedule,
                cycles=config.kl_anneal_cycles,
            )
        ]
        if config.kl_anneal_epochs > 0
        else []
    )
    if distributed is not None:
        _check_distributed(config, train_data, distributed)
    device = torch.device(config.device) if distributed is None else distributed.device
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was requested but CUDA is not available on this machine")
    modules = _owner_modules(model, guide)
    for module in modules:
        module.to(device)
    if batch_args is None:
        owner_batch_args = getattr(modules[0], "batch_args", None) if modules else None
        batch_args = owner_batch_args or _default_batch_args
    result = FitResult(
        param_state=param_state if param_state is not None else {"params": {}, "constraints": {}}
    )
    with _caller_rng_kept():
        training = _Training(
            model,
            guide,
            train_data,
            valid_data=valid_data,
            objective=objective,
            config=config,
            callbacks=[*annealing, *user_callbacks],
            modules=modules,
            batch_args=batch_args,
            device=device,
            checkpoint_dir=Path(checkpoint_dir) if checkpoint_dir is not None else None,
            progress=progress and (distributed is None or distributed.is_main),
            result=result,
            distributed=distributed,
        )
        with pyro.get_param_store().scope(result.param_state):
            training.run(resume)
    result.model = BoundToParams(model, result.param_state)
    result.guide = BoundToParams(guide, result.param_state)
    return result


def _check_distributed(config: TrainConfig, train_data: Any, ctx: DistributedContext) -> None:
    """A global batch that the ranks can share evenly (a re-iterable of batches sets its own)."""
    batched = hasattr(train_data, "batches") or isinstance(train_data, torch.Tensor)
    if batched and config.batch_size % ctx.world_size:
        raise ValueError(
            f"batch_size {config.batch_size} (the global batch) must be a multiple of the "
            f"world size {ctx.world_size}"
        )


@contextmanager
def _caller_rng_kept() -> Iterator[None]:
    """Restores the global generators (``random``, numpy, torch, CUDA) that ``fit`` reseeds.

    CUDA's generators are saved when CUDA is initialised on entry; otherwise they are reseeded
    on exit with the caller's torch seed (``torch.initial_seed()``), as a first use of CUDA
    after ``torch.manual_seed`` would find them.
    """
    python_state = random.getstate()
    numpy_state = np.random.get_state()
    cuda_devices = list(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else []
    caller_seed = torch.initial_seed()
    try:
        with torch.random.fork_rng(devices=cuda_devices):
            yield
    finally:
        random.setstate(python_state)
        np.random.set_state(numpy_state)
        if not cuda_devices and torch.cuda.is_available():
            torch.cuda.manual_seed_all(caller_seed)


class _Training:
    """One run of :func:`fit`: the state its steps share, and the steps."""

    def __init__(
        self,
        model: Callable,
        guide: Callable,
        train_data: Any,
        *,
        valid_data: Any,
        objective: Objective,
        config: TrainConfig,
        callbacks: list[Callback],
        modules: list[torch.nn.Module],
        batch_args: Callable[[Any], tuple],
        device: torch.device,
        checkpoint_dir: Path | None,
        progress: bool,
        result: FitResult,
        distributed: DistributedContext | None = None,
    ) -> None:
        self.model, self.guide = model, guide
        self.dist = distributed
        self.shard = distributed.shard if distributed is not None else (0, 1)
        # Each rank's batch: the global batch shared by the ranks.
        self.local_batch = config.batch_size // self.shard[1]
        self.train_data, self.valid_data = train_data, valid_data
        self.objective, self.config, self.callbacks = objective, config, callbacks
        self.modules, self.batch_args, self.device = modules, batch_args, device
        self.device_type = torch.device(device).type
        self.checkpoint_dir, self.progress, self.result = checkpoint_dir, progress, result
        self.num_data = _num_data(train_data)
        self.model_class, self.model_config = _model_identity(model, guide)
        self.monitoring = (
            valid_data is not None
            or config.monitor != "valid_bound"
            or any(isinstance(c, ValidMetrics) for c in callbacks)
        )
        self.state = TrainState(
            model=modules[0] if modules else None,
            train_data=train_data,
            epoch=0,
            device=device,
            objective=objective,
            steps_per_epoch=math.ceil(math.ceil(self.num_data / self.shard[1]) / self.local_batch),
        )
        self.epoch_start_state: torch.Tensor | None = None  # the data generator's, for resumes
        self.resume_generator_state: torch.Tensor | None = None  # from checkpoint_last.pt
        self.epoch_totals: tuple[float, int] = (0.0, 0)  # running (bound, units) at mid-epoch saves
        self.bad_epochs = 0

    def run(self, resume: bool) -> None:
        # The data stream has its own generator; the model's draws use the global ones, seeded
        # here (fit restores the caller's states afterwards).
        # Under a process group the data generator is the same on every rank (one permutation
        # per epoch, sharded), the sampling generators are the rank's own.
        self.generator = torch.Generator().manual_seed(self.config.seed)
        pyro.set_rng_seed(rank_seed(self.config.seed, *self.shard))
        self.start_time = time.perf_counter()
        modes = [module.training for module in self.modules]
        try:
            self._run(resume)
            if self.dist is not None:  # rank 0's files are written before anyone reads them
                self.dist.barrier()
        finally:
            for module, mode in zip(self.modules, modes, strict=True):
                module.train(mode)

    def _set_training(self, mode: bool) -> None:
        """Training mode for the epoch's steps (dropout, word dropout on), evaluation mode for
        validation and the epoch-end callbacks; ``fit`` restores the modules' modes."""
        for module in self.modules:
            module.train(mode)

    def _run(self, resume: bool) -> None:
        self._probe()
        start_epoch, skip_steps, resumed_totals = 0, 0, (0.0, 0)
        if resume and self.checkpoint_dir is not None and (self.checkpoint_dir / LAST).exists():
            resumed = self._resume()
            if resumed is None:
                return
            start_epoch, skip_steps, resumed_totals = resumed
        for epoch in range(start_epoch, self.config.epochs):
            total_bound, seen = self._run_epoch(epoch, skip_steps, resumed_totals)
            skip_steps = 0
            if self._end_of_epoch(epoch, total_bound, seen):
                self.result.stopped_early = True
                break
        self.result.wall_time += time.perf_counter() - self.start_time

    def _probe(self) -> None:
        """One pass without gradients creates any pyro.param sites and checks the model."""
        config = self.config
        # Unsharded on every rank (a rank's share may be empty): the same first batch, of
        # the rank's batch size, creates the same parameters everywhere.
        first = to_device(
            next(iter(_iterate(self.train_data, self.local_batch, False, self.generator))),
            self.device,
        )
        with torch.no_grad():
            try:
                self.objective.max_plate_nesting(self.model, self.guide, self.batch_args(first), {})
                self.objective(self.model, self.guide, *self.batch_args(first), scale=1.0)
            except ValueError as error:
                first_line = str(error).splitlines()[0] if str(error) else ""
                if "found invalid values" not in first_line:
                    raise
                raise ValueError(f"the first batch: {first_line.rstrip(':')}") from None
        self.generator.manual_seed(config.seed)  # the probe must not shift the data stream
        self.params = _collect_params(self.modules)
        if not self.params:
            raise ValueError("the model and guide have no parameters to train")
        self.reducer = None
        if self.dist is not None:
            # Every rank starts from rank 0's parameters and buffers.
            buffers = [b for module in self.modules for b in module.buffers()]
            self.dist.broadcast_tensors_([p.detach() for p in self.params] + buffers)
            self.reducer = GradientReducer(self.dist, self.params)
        self.optimizer = make_adam(self.params, config)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, _lr_lambda(config))

    def _resume(self) -> tuple[int, int, tuple[float, int]] | None:
        """Loads ``checkpoint_last.pt``: ``(epoch, step, running totals)`` to continue from, or
        ``None`` when that run is already complete."""
        path = self.checkpoint_dir / LAST
        payload = load_checkpoint(path, map_location=self.device)
        check_same_model(payload, self.model_class, self.model_config, path)
        _load_state(payload, self.modules, self.optimizer, self.scheduler)
        result = self.result
        result.history = payload["history"]
        result.best_epoch = payload.get("best_epoch")
        result.best_valid = payload.get("best_valid")
        start_epoch, skip_steps = payload["epoch"], payload.get("step", 0)
        self.resume_generator_state = payload.get("epoch_start_generator")
        resumed_totals = tuple(payload.get("epoch_totals") or (0.0, 0))
        rank, world_size = self.shard
        if payload.get("world_size", 1) == world_size:
            if world_size > 1:  # this rank's own states and running totals
                set_rng_state(payload["rank_rng"][rank], self.generator)
                resumed_totals = tuple(payload["rank_epoch_totals"][rank])
            else:
                set_rng_state(payload["rng"], self.generator)
        else:
            # Another world size: the data stream continues (it is the same on every rank),
            # each rank's sampling generators are seeded afresh from the seed, its rank and
            # the position; rank 0 carries the epoch's running totals.
            set_rng_state(payload["rng"], self.generator)
            pyro.set_rng_seed(
                derive_seed(self.config.seed, rank, world_size, start_epoch, skip_steps)
            )
            resumed_totals = resumed_totals if rank == 0 else (0.0, 0)
            if skip_steps:
                # The shards of another world size cannot skip what was seen: the epoch
                # restarts from its beginning with the trained parameters.
                warnings.warn(
                    f"{path} was written mid-epoch by {payload.get('world_size', 1)} "
                    f"process(es), not {world_size}: epoch {start_epoch + 1} restarts from "
                    "its first step",
                    stacklevel=2,
                )
                if self.resume_generator_state is not None:
                    self.generator.set_state(self.resume_generator_state)
                skip_steps, resumed_totals = 0, (0.0, 0)
        result.wall_time = payload.get("wall_time", 0.0)
        if payload.get("stopped_early") or start_epoch >= self.config.epochs:
            result.stopped_early = bool(payload.get("stopped_early"))
            return None
        return start_epoch, skip_steps, resumed_totals

    def _checkpoint(
        self, epoch: int, step: int, path_name: str = LAST, stopped_early: bool = False
    ) -> None:
        if self.checkpoint_dir is None:
            return
        result, config = self.result, self.config
        extra: dict[str, Any] = {}
        epoch_totals = self.epoch_totals
        if self.dist is not None:
            # Every rank's random states and running totals (a collective: all ranks call
            # _checkpoint at the same points); rank 0 writes them.
            ranks = self.dist.gather_objects((rng_state(self.generator), self.epoch_totals))
            if not self.dist.is_main:
                return
            extra = {
                "world_size": self.dist.world_size,
                "rank_rng": [states for states, _ in ranks],
                "rank_epoch_totals": [totals for _, totals in ranks],
            }
            epoch_totals = (sum(t[0] for _, t in ranks), sum(t[1] for _, t in ranks))
        save_checkpoint(
            self.checkpoint_dir / path_name,
            {
                "model_class": self.model_class,
                "model_config": self.model_config,
                "modules": [m.state_dict() for m in self.modules],
                "param_store": pyro.get_param_store().get_state(),
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "epoch": epoch,
                "step": step,
                "epoch_start_generator": self.epoch_start_state,
                "rng": rng_state(self.generator),
                "config": asdict(config),
                "objective": self.objective.name,
                "num_particles": self.objective.num_particles,
                "history": result.history,
                "best_epoch": result.best_epoch,
                "best_valid": result.best_valid,
                "wall_time": result.wall_time + time.perf_counter() - self.start_time,
                "stopped_early": stopped_early,
                "epoch_totals": epoch_totals,
                **extra,
            },
        )

    def _run_epoch(
        self, epoch: int, skip_steps: int, resumed_totals: tuple[float, int]
    ) -> tuple[float, int]:
        """The epoch's optimizer steps (after ``skip_steps`` already taken): returns the
        bound summed over the epoch and the number of units it covers (over all ranks)."""
        config, generator, state = self.config, self.generator, self.state
        if skip_steps and self.resume_generator_state is not None:
            # Mid-epoch resume: replay the epoch's data stream up to where it stopped; the
            # generator ends in the state it had when the checkpoint was written.
            generator.set_state(self.resume_generator_state)
        self.epoch_start_state = generator.get_state()
        state.epoch = epoch
        self._set_training(True)
        for callback in self.callbacks:
            callback.on_epoch_start(state)
        batches = iter(_iterate(self.train_data, self.local_batch, True, generator, self.shard))
        for _ in range(skip_steps):
            next(batches, None)  # a rank's share may be one batch shorter
        bound, seen = resumed_totals if skip_steps else (0.0, 0)
        # The running total stays on the device: the host reads it for the progress bar, at
        # mid-epoch checkpoints and at the end of the epoch, not after every step.
        total_bound = torch.tensor(bound, dtype=torch.float64, device=self.device)
        bar = tqdm(
            batches if self.dist is None else None,
            total=state.steps_per_epoch,
            initial=skip_steps,
            desc=f"epoch {epoch + 1}/{config.epochs}",
            unit="batch",
            disable=not self.progress,
            leave=False,
        )
        step = skip_steps
        if self.dist is not None:
            step, seen = self._distributed_steps(epoch, skip_steps, batches, bar, total_bound, seen)
        else:
            for step, batch in enumerate(bar, start=skip_steps):
                batch = to_device(batch, self.device)
                state.step = step
                for callback in self.callbacks:
                    callback.on_step_start(state)
                value = self._objective(epoch, step, batch)
                if not torch.isfinite(value.loss):
                    raise _diverged(epoch, step)
                self.optimizer.zero_grad(set_to_none=True)
                value.loss.backward()
                if config.clip_norm is not None:
                    torch.nn.utils.clip_grad_norm_(self.params, config.clip_norm)
                self.optimizer.step()
                total_bound += torch.as_tensor(value.bound).detach()
                seen += _units(value, batch, self.num_data)
                if self.progress and step % 20 == 0:
                    bar.set_postfix(bound=f"{float(total_bound) / seen:.2f}")
                if config.checkpoint_every and (step + 1) % config.checkpoint_every == 0:
                    self.epoch_totals = (float(total_bound), seen)
                    self._checkpoint(epoch, step + 1)
        bar.close()
        if not _all_finite(self.params):  # the epoch's last step may have diverged
            raise _diverged(epoch, step)
        if self.dist is not None:  # the epoch's totals, summed over the ranks once
            total, units = self.dist.all_reduce_sum([float(total_bound), seen])
            return total, int(units)
        return float(total_bound), seen

    def _objective(self, epoch: int, step: int, batch: Any) -> Any:
        """The objective on one (device-side) batch, its validation errors as one line."""
        try:
            with network_precision(self.modules, self.config.precision, self.device_type):
                return self.objective(
                    self.model, self.guide, *self.batch_args(batch), num_data=self.num_data
                )
        except ValueError as error:
            # Distribution validation: parameters that overflowed to inf/nan are a
            # divergence; a value outside its support is a data or model error.
            # Either way one line, not a tensor dump.
            first = str(error).splitlines()[0] if str(error) else ""
            invalid = "found invalid values" in first
            if not _all_finite(self.params) or (invalid and first.startswith("Expected parameter")):
                raise _diverged(epoch, step, first) from None
            if invalid:
                raise ValueError(
                    f"epoch {epoch + 1}, step {step + 1}: {first.rstrip(':')}"
                ) from None
            raise

    def _distributed_steps(
        self,
        epoch: int,
        skip_steps: int,
        batches: Iterator,
        bar: Any,
        total_bound: torch.Tensor,
        seen: int,
    ) -> tuple[int, int]:
        """The epoch's steps in lockstep with the other ranks: every step all-reduces the
        gradients once (:class:`GradientReducer`), with, in the same message, whether any rank
        has another batch and whether any rank's loss is not finite. A rank whose share has
        run out takes zero-weighted steps. Returns the last step and this rank's units."""
        config, state = self.config, self.state
        pending = next(batches, None)
        # Does any rank have a batch at all? (None has after a checkpoint at the epoch's end.)
        (anyone,) = self.dist.all_reduce_sum([pending is not None])
        step, more = skip_steps, anyone > 0
        last = skip_steps
        while more:
            batch, pending = pending, next(batches, None)  # one batch of lookahead
            state.step = last = step
            for callback in self.callbacks:
                callback.on_step_start(state)
            self.optimizer.zero_grad(set_to_none=True)
            value, units, finite = None, 0, True
            if batch is not None:
                batch = to_device(batch, self.device)
                value = self._objective(epoch, step, batch)
                finite = bool(torch.isfinite(value.loss))
                if finite:
                    value.loss.backward()
                units = _units(value, batch, self.num_data)
            _, (others, diverged) = self.reducer.reduce(units, (pending is not None, not finite))
            if diverged:
                raise _diverged(epoch, step)
            if config.clip_norm is not None:
                torch.nn.utils.clip_grad_norm_(self.params, config.clip_norm)
            self.optimizer.step()
            if value is not None:
                total_bound += torch.as_tensor(value.bound).detach()
                seen += units
            bar.update(1)
            if self.progress and step % 20 == 0 and seen:
                bar.set_postfix(bound=f"{float(total_bound) / seen:.2f}")
            if config.checkpoint_every and (step + 1) % config.checkpoint_every == 0:
                self.epoch_totals = (float(total_bound), seen)
                self._checkpoint(epoch, step + 1)
            more = others > 0
            step += 1
        return last, seen

    def _end_of_epoch(self, epoch: int, total_bound: float, seen: int) -> bool:
        """The schedule, validation, callbacks, best checkpoint and the epoch's checkpoint;
        returns whether early stopping ends the run."""
        config, result, state = self.config, self.result, self.state
        self._set_training(False)  # validation and callbacks see the model as evaluated
        if self.dist is not None:
            # Buffers that training updates (batch norm statistics) are rank 0's everywhere.
            buffers = [b for m in self.modules for b in m.buffers() if b.is_floating_point()]
            if buffers:
                self.dist.broadcast_tensors_(buffers)
        with warnings.catch_warnings():
            # A run resumed after its epoch's last step takes no optimizer step in this
            # epoch; the schedule still advances once per epoch, as uninterrupted.
            warnings.filterwarnings("ignore", "Detected call of `lr_scheduler.step", UserWarning)
            self.scheduler.step()
        record = {
            "epoch": epoch + 1,
            "train_bound": total_bound / max(seen, 1),
            "lr": self.optimizer.param_groups[0]["lr"],
            "time": time.perf_counter() - self.start_time + result.wall_time,
        }
        if self.valid_data is not None:
            record.update(
                _validate(
                    self.model,
                    self.guide,
                    self.valid_data,
                    self.objective,
                    config,
                    self.batch_args,
                    self.device,
                    self.dist,
                )
            )
        state.epoch = epoch
        for callback in self.callbacks:
            callback.on_epoch_end(state, record)
        if self.dist is not None:
            # The callbacks ran on every rank; rank 0's record decides for all (the best
            # epoch, early stopping), so that the ranks stay in step.
            record = self.dist.broadcast_object(record)
        result.history.append(record)
        monitored = record.get(config.monitor)
        if monitored is None and self.monitoring:
            raise ValueError(
                f"monitor={config.monitor!r} is not in the epoch record "
                f"(keys: {', '.join(sorted(record))})"
            )
        if monitored is not None:
            if result.best_valid is None or monitored > result.best_valid:
                result.best_valid, result.best_epoch = monitored, epoch + 1
                self.bad_epochs = 0
                self._checkpoint(epoch + 1, 0, BEST)
            else:
                self.bad_epochs += 1
        self.epoch_start_state = self.generator.get_state()
        stop = (
            config.early_stopping_patience is not None
            and self.bad_epochs >= config.early_stopping_patience
        )
        self._checkpoint(epoch + 1, 0, stopped_early=stop)
        for callback in self.callbacks:
            callback.on_epoch_recorded(state, record)
        return stop


def _units(value: Any, batch: Any, num_data: int | None) -> int:
    """The independent units a minibatch's bound sums over: from its ``"data"`` plate when the
    objective reports it (one graph whose nodes fill the plate is one unit), else the batch's
    leading dimension."""
    frame = getattr(value, "data_plate", None)
    if frame is None or num_data is None:
        return _batch_len(batch)
    return plate_scale(frame, num_data).units


def _all_finite(params: list[torch.Tensor]) -> bool:
    return all(bool(torch.isfinite(p).all()) for p in params)


def _diverged(epoch: int, step: int, detail: str = "") -> TrainingError:
    detail = f" ({detail.split(' of distribution')[0]} is not finite)" if detail else ""
    return TrainingError(
        f"non-finite loss or parameters at epoch {epoch + 1}, step {step + 1}{detail}; lower "
        "--lr or set --clip-norm (the last good checkpoint is kept)"
    )


def make_adam(params: list[torch.Tensor], config: TrainConfig) -> torch.optim.Adam:
    """``fit``'s optimizer: Adam with the config's ``lr``, ``betas`` and ``eps``, fused (one
    kernel per step over all parameters, torch's ``fused=True``) where torch has a fused Adam
    for the parameters' device and dtypes, else torch's default.

    The fused update is the same arithmetic as the default one (to float rounding: parameters
    may differ in the last bit) at a fraction of its cost on a CPU, where the default runs
    about ten kernels per parameter tensor: on the 784-400-50 VAE of
    ``benchmarks/throughput.py`` it is the largest saving of the step. ``config.fused_adam =
    False`` (``pvae train --no-fused-adam``) takes torch's default Adam: the arithmetic of runs
    made before the fused one, so that they can be reproduced to the bit.
    """
    options = dict(lr=config.lr, betas=config.betas, eps=config.eps)
    if not config.fused_adam:
        return torch.optim.Adam(params, **options)
    try:
        return torch.optim.Adam(params, fused=True, **options)
    except RuntimeError:  # no fused kernel for these parameters' device or dtype
        return torch.optim.Adam(params, **options)


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
def _validate(
    model, guide, data, objective, config, batch_args, device, distributed=None
) -> dict[str, float]:
    """The validation bound(s) per unit; under a process group each rank validates its shard
    and the totals are summed."""
    # A Pyro ELBO may enumerate discrete sites, which pvae's ELBO refuses: validate with it.
    elbo = None if isinstance(objective, PyroObjective) else ELBO()
    use_training_bound = not (isinstance(objective, ELBO) and objective.num_particles == 1)
    totals = {"valid_elbo": 0.0, "valid_bound": 0.0}
    seen = 0
    try:
        num_data = _num_data(data)
    except ValueError:
        num_data = None
    generator = torch.Generator().manual_seed(config.seed + 1)
    shard = distributed.shard if distributed is not None else (0, 1)
    batch_size = config.batch_size // shard[1] if shard[1] > 1 else config.batch_size
    for batch in _iterate(data, batch_size, False, generator, shard):
        batch = to_device(batch, device)
        args = batch_args(batch)
        if elbo is not None:
            value = elbo(model, guide, *args)
            totals["valid_elbo"] += float(value.bound)
        if use_training_bound:
            beta, objective.beta = objective.beta, 1.0
            value = objective(model, guide, *args)
            totals["valid_bound"] += float(value.bound)
            objective.beta = beta
        seen += _units(value, batch, num_data)
    if distributed is not None:
        *sums, seen = distributed.all_reduce_sum([*totals.values(), seen])
        totals = dict(zip(totals, sums, strict=True))
    record = {k: v / max(seen, 1) for k, v in totals.items()}
    if elbo is None:
        del record["valid_elbo"]
    elif not use_training_bound:
        record["valid_bound"] = record["valid_elbo"]
    return record
