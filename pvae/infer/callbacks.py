"""Hooks into :func:`pvae.infer.train.fit`: validation metrics, epoch reports, KL annealing.

A :class:`Callback` overrides the hooks it needs; each receives a :class:`TrainState`. The hooks
of one epoch run in this order::

    on_epoch_start(state)
    on_step_start(state)                 # before every optimizer step; state.step counts from 0
    on_epoch_end(state, record)          # may add numbers to the record (validation metrics)
    # fit: the best checkpoint and early stopping read record[config.monitor]; then
    # checkpoint_last.pt is written
    on_epoch_recorded(state, record)     # the final record, after the checkpoints

``fit``'s own validation on ``valid_data`` (``valid_elbo``, ``valid_bound``) is in the record
before any ``on_epoch_end``. A callback that adds numbers to the record does so in
``on_epoch_end``; one that only reads the record (a report, a log) uses ``on_epoch_recorded``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from pvae.infer.objectives import Objective


@dataclass
class TrainState:
    """What a callback sees of a run.

    Attributes:
        model: the module that owns the model and guide (``vae`` for ``vae.model``), or
            ``None`` for plain functions.
        train_data: the training data as passed to ``fit``.
        epoch: the epoch about to run (``on_epoch_start``, ``on_step_start``) or just run
            (``on_epoch_end``, ``on_epoch_recorded``), counted from 0.
        device: where training runs.
        objective: the training objective (its ``beta`` weights the latent terms).
        step: the step about to run within the epoch, from 0 (``on_step_start``).
        steps_per_epoch: ``ceil(len(train_data) / batch_size)``.
    """

    model: torch.nn.Module | None
    train_data: Any
    epoch: int
    device: torch.device
    objective: Objective
    step: int = 0
    steps_per_epoch: int = 1


class Callback:
    """Base class: every hook does nothing. Override the ones you need."""

    def on_epoch_start(self, state: TrainState) -> None:
        """Before the epoch's first step."""

    def on_step_start(self, state: TrainState) -> None:
        """Before each step's objective is evaluated (``state.step`` is that step)."""

    def on_epoch_end(self, state: TrainState, record: dict[str, float]) -> None:
        """After the epoch's steps and ``fit``'s validation, before the best checkpoint and
        early stopping read ``record[config.monitor]``: add validation numbers here."""

    def on_epoch_recorded(self, state: TrainState, record: dict[str, float]) -> None:
        """After the epoch's checkpoints are written, with the epoch's final record."""


class ValidMetrics(Callback):
    """Adds ``fn()``'s numbers (``{"valid_accuracy": 0.91}``) to every epoch's record, computed
    without gradients; ``config.monitor`` can select one for the best checkpoint and early
    stopping. ``fit(valid_metrics=fn)`` is ``fit(callbacks=[ValidMetrics(fn)])``."""

    def __init__(self, fn: Callable[[], dict[str, Any]]) -> None:
        self.fn = fn

    def on_epoch_end(self, state: TrainState, record: dict[str, float]) -> None:
        with torch.no_grad():
            record.update({key: float(value) for key, value in self.fn().items()})


class EpochEndHook(Callback):
    """Calls ``fn(record)`` with each epoch's final record, after its checkpoints are written.
    ``fit(on_epoch_end=fn)`` is ``fit(callbacks=[EpochEndHook(fn)])``."""

    def __init__(self, fn: Callable[[dict[str, float]], None]) -> None:
        self.fn = fn

    def on_epoch_recorded(self, state: TrainState, record: dict[str, float]) -> None:
        self.fn(record)


KL_SCHEDULES = ("linear", "logistic", "cyclical")


def kl_weight(progress: float, epochs: float, schedule: str = "linear", cycles: int = 4) -> float:
    """The KL weight beta after ``progress`` epochs of training (fractions count).

    - ``linear`` [1, 2]: ``beta = min(1, progress / epochs)``.
    - ``logistic`` [1]: ``beta = sigmoid(10 (progress / epochs - 1/2))`` (0.007 at the start,
      0.993 at ``epochs``), then 1. Bowman et al.'s ``1 / (1 + exp(-k (step - x0)))`` with
      the midpoint ``x0`` at half the window and ``k`` scaled to it.
    - ``cyclical`` [3]: ``cycles`` cycles of ``2 * epochs`` epochs each; in every cycle beta
      grows linearly over the first half (R = 0.5, as Fu et al.) and is 1 over the second;
      1 after the last cycle.
    """
    if schedule not in KL_SCHEDULES:
        raise ValueError(f"unknown KL schedule {schedule!r}; choose from {', '.join(KL_SCHEDULES)}")
    if progress >= (2 * cycles if schedule == "cyclical" else 1) * epochs:
        return 1.0
    if schedule == "linear":
        return min(1.0, progress / epochs)
    if schedule == "logistic":
        return 1.0 / (1.0 + math.exp(-10.0 * (progress / epochs - 0.5)))
    return min(1.0, (progress % (2 * epochs)) / epochs)  # cyclical


class KLAnnealing(Callback):
    """KL annealing: the objective's ``beta`` follows :func:`kl_weight` step by step (in
    fractions of an epoch), and is 1 from the end of each epoch on, so that validation and the
    returned objective use the plain bound. ``fit`` adds it for ``config.kl_anneal_epochs > 0``
    with ``config.kl_anneal_schedule`` and ``config.kl_anneal_cycles``.

    References:
        [1] Bowman, Vilnis, Vinyals, Dai, Jozefowicz, Bengio. Generating Sentences from a
            Continuous Space. CoNLL 2016. arXiv:1511.06349
        [2] Sonderby, Raiko, Maaloe, Sonderby, Winther. Ladder Variational Autoencoders.
            NeurIPS 2016. arXiv:1602.02282
        [3] Fu, Li, Liu, Gao, Celikyilmaz, Carin. Cyclical Annealing Schedule: A Simple
            Approach to Mitigating KL Vanishing. NAACL 2019. arXiv:1903.10145
    """

    def __init__(self, epochs: float, schedule: str = "linear", cycles: int = 4) -> None:
        if not epochs > 0:
            raise ValueError(f"KL annealing needs a positive number of epochs, got {epochs}")
        if schedule not in KL_SCHEDULES:
            raise ValueError(
                f"unknown KL schedule {schedule!r}; choose from {', '.join(KL_SCHEDULES)}"
            )
        if isinstance(cycles, bool) or not isinstance(cycles, int) or cycles < 1:
            raise ValueError(f"cycles must be a positive integer, got {cycles!r}")
        self.epochs, self.schedule, self.cycles = epochs, schedule, cycles

    def on_step_start(self, state: TrainState) -> None:
        progress = state.epoch + state.step / state.steps_per_epoch
        state.objective.beta = kl_weight(progress, self.epochs, self.schedule, self.cycles)

    def on_epoch_end(self, state: TrainState, record: dict[str, float]) -> None:
        state.objective.beta = 1.0
