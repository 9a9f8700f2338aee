"""The typed description of a training run: what ``pvae train`` parses its flags into."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pvae.data.semisupervised import SCHEDULES
from pvae.infer.train import TrainConfig

OBJECTIVES = ("elbo", "iwae", "dreg", "infovae")


@dataclass
class TrainSpec:
    """Everything that defines a run of :func:`pvae.runs.train_run`.

    ``model_options`` are constructor options of the registered ``model`` (the dataset
    supplies the rest, e.g. ``input_shape``); ``train`` holds the optimisation, the seed and
    the device; ``eval_samples``/``eval_size`` the test evaluation (``eval_samples`` ``None``:
    the model's ``default_eval_samples``); ``objective_options`` are keyword options of the
    objective (``infovae``: ``alpha``, ``mmd_lambda``, ``kernel``, ``bandwidth``, see
    :class:`pvae.infer.info.InfoVAEObjective`); ``train_size`` keeps only
    the first N training units (smoke runs, with a validation set of ``max(100, N // 5)``);
    ``num_labels`` and ``labelled_schedule`` (``"epoch"`` or ``"step"``, see
    :class:`~pvae.data.semisupervised.SemiSupervisedData`) go to models whose
    ``training_setup`` takes them (M2, the SSVAE).
    """

    model: str = "vae"
    dataset: str = "mnist"
    model_options: dict[str, Any] = field(default_factory=dict)
    objective: str = "elbo"
    num_particles: int = 1
    objective_options: dict[str, Any] = field(default_factory=dict)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval_samples: int | None = None
    eval_size: int | None = None
    train_size: int | None = None
    num_labels: int = 100
    labelled_schedule: str = "epoch"
    out: Path | None = None
    resume: bool = False
    progress: bool = True
    command: str = ""

    def __post_init__(self) -> None:
        if self.objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {', '.join(OBJECTIVES)}")
        if self.objective_options:
            from pvae.infer.objectives import make_objective

            make_objective(self.objective, 1, options=self.objective_options)  # validates
        for name in ("num_particles", "eval_samples", "num_labels", "eval_size", "train_size"):
            value = getattr(self, name)
            if value is None and name in ("eval_size", "train_size", "eval_samples"):
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.labelled_schedule not in SCHEDULES:
            raise ValueError(
                f"labelled_schedule must be one of {', '.join(SCHEDULES)}, "
                f"got {self.labelled_schedule!r}"
            )
        if not isinstance(self.train, TrainConfig):
            raise ValueError(f"train must be a TrainConfig, got {type(self.train).__name__}")
        if "input_shape" in self.model_options:
            raise ValueError("the dataset sets the input shape; do not pass input_shape")

    @property
    def run_dir(self) -> Path:
        """``out``, or ``runs/<model>-<dataset>-<objective>``."""
        return Path(self.out or f"runs/{self.model}-{self.dataset}-{self.objective}")

    def train_dict(self) -> dict[str, Any]:
        """The run's training options as saved in ``config.json``."""
        keys = (
            "epochs",
            "batch_size",
            "lr",
            "lr_schedule",
            "clip_norm",
            "kl_anneal_epochs",
            "kl_anneal_schedule",
            "kl_anneal_cycles",
            "early_stopping_patience",
            "seed",
            "device",
            "checkpoint_every",
            "precision",
            "fused_adam",
        )
        values = dataclasses.asdict(self.train)
        return {key: values[key] for key in keys}
