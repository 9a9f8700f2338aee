"""Training semi-supervised models, whose batches are either labelled or unlabelled.

:class:`SemiSupervisedELBO` is one Pyro ``ELBO`` that sums a discrete label out exactly
(``TraceEnum_ELBO``) on unlabelled batches (``model(x)``) and scores labelled ones
(``model(x, y)``) with ``Trace_ELBO``, where there is nothing to enumerate. The data stream
comes from :class:`pvae.data.semisupervised.SemiSupervisedData`. Any model whose ``model`` and
``guide`` take ``(x, y=None)`` and enumerate ``y`` in the guide when it is ``None`` (M2, the
semi-supervised text VAE) trains with :func:`fit_semisupervised`.

:class:`SemiSupervisedObjective` is the objective ``fit`` gets: that ELBO on a batch of one
mode, and on a :class:`~pvae.data.semisupervised.MixedStep` (the ``"step"`` schedule) the
sum of the unlabelled program's loss and ``w`` times the labelled one's.
"""

from __future__ import annotations

from typing import Any

import pyro
import torch

from pvae.data.semisupervised import MixedStep, SemiSupervisedData
from pvae.infer.objectives import ObjectiveValue, PyroObjective, _minibatch_factor


class SemiSupervisedELBO(pyro.infer.ELBO):
    """``TraceEnum_ELBO`` (y summed out exactly) on unlabelled batches, ``Trace_ELBO`` on
    labelled ones (calling ``TraceEnum_ELBO`` on them would only warn). Pass it as
    ``fit(..., objective=SemiSupervisedELBO())``."""

    def __init__(self, num_particles: int = 1) -> None:
        super().__init__(num_particles=num_particles, max_plate_nesting=1)
        self.unlabelled = pyro.infer.TraceEnum_ELBO(
            num_particles=num_particles, max_plate_nesting=1
        )
        self.labelled = pyro.infer.Trace_ELBO(num_particles=num_particles, max_plate_nesting=1)

    def _pick(self, args: tuple, kwargs: dict) -> pyro.infer.ELBO:
        y = args[1] if len(args) > 1 else kwargs.get("y")
        return self.unlabelled if y is None else self.labelled

    def differentiable_loss(self, model, guide, *args, **kwargs) -> torch.Tensor:
        return self._pick(args, kwargs).differentiable_loss(model, guide, *args, **kwargs)

    def loss(self, model, guide, *args, **kwargs) -> float:
        return self._pick(args, kwargs).loss(model, guide, *args, **kwargs)

    def loss_and_grads(self, model, guide, *args, **kwargs) -> float:
        return self._pick(args, kwargs).loss_and_grads(model, guide, *args, **kwargs)

    def _get_trace(self, model, guide, args, kwargs):  # pragma: no cover - never called
        return self._pick(args, kwargs)._get_trace(model, guide, args, kwargs)


def _mixed_step(args: tuple) -> MixedStep | None:
    return args[0] if len(args) == 1 and isinstance(args[0], MixedStep) else None


class SemiSupervisedObjective(PyroObjective):
    """A :class:`SemiSupervisedELBO` (or another Pyro ELBO) as ``fit``'s objective, which
    also scores a :class:`~pvae.data.semisupervised.MixedStep`.

    On a step of both programs the loss is ``loss(x_u) + w loss(x_l, y_l)``, each program's
    ``"data"`` plate scaled by N / its own size (:func:`pvae.infer.trace.plate_scale`), so its
    gradient is that of one unlabelled minibatch plus ``w`` times that of one labelled
    minibatch. ``bound`` is ``-loss`` over the unlabelled plate's factor N / B and
    ``data_plate`` the unlabelled plate: the step covers the B unlabelled units (the
    labelled units count at their weight in the bound, not in the units).
    """

    def __init__(self, elbo: pyro.infer.ELBO | None = None) -> None:
        super().__init__(elbo if elbo is not None else SemiSupervisedELBO())

    def loss(self, model, guide, *args, **kwargs) -> float:
        """The ELBO's ``loss`` (a Pyro ELBO's interface, unscaled), of a
        :class:`~pvae.data.semisupervised.MixedStep` too."""
        step = _mixed_step(args)
        if step is None:
            return self.elbo.loss(model, guide, *args, **kwargs)
        labelled = self.elbo.loss(model, guide, *step.labelled, **kwargs)
        return self.elbo.loss(model, guide, *step.unlabelled, **kwargs) + (
            step.labelled_weight * labelled
        )

    def max_plate_nesting(self, model, guide, args, kwargs) -> int:
        step = _mixed_step(tuple(args))
        return super().max_plate_nesting(
            model, guide, step.unlabelled if step is not None else args, kwargs
        )

    def __call__(
        self, model, guide, *args, num_data: int | None = None, scale: float = 1.0, **kwargs
    ) -> ObjectiveValue:
        step = _mixed_step(args)
        if step is None:
            return super().__call__(model, guide, *args, num_data=num_data, scale=scale, **kwargs)
        unlabelled = super().__call__(
            model, guide, *step.unlabelled, num_data=num_data, scale=scale, **kwargs
        )
        labelled = super().__call__(
            model, guide, *step.labelled, num_data=num_data, scale=scale, **kwargs
        )
        loss = unlabelled.loss + step.labelled_weight * labelled.loss
        factor = _minibatch_factor(unlabelled.data_plate, num_data, scale)
        return ObjectiveValue(
            loss=loss, bound=-loss.detach() / factor, data_plate=unlabelled.data_plate
        )


def fit_semisupervised(model: Any, data: Any, **fit_kwargs: Any) -> Any:
    """``pvae.infer.train.fit`` of ``model.model``/``model.guide`` with
    :class:`SemiSupervisedObjective` (:class:`SemiSupervisedELBO`). ``data`` is usually a
    :class:`~pvae.data.semisupervised.SemiSupervisedData` of either schedule; returns
    ``fit``'s ``FitResult``."""
    from pvae.infer.train import fit

    return fit(model.model, model.guide, data, objective=SemiSupervisedObjective(), **fit_kwargs)


def semisupervised_training_setup(
    model: Any,
    train: Any,
    valid: Any,
    objective: SemiSupervisedObjective,
    *,
    num_labels: int,
    seed: int,
    labelled_schedule: str,
) -> dict[str, Any]:
    """``fit`` arguments of a semi-supervised model (M2, the semi-supervised text VAE):
    ``num_labels`` labelled data (class balanced, drawn with ``seed``) among the unlabelled
    rest of ``train`` (:class:`SemiSupervisedData` with ``schedule=labelled_schedule``) and
    ``objective``. With a labelled ``valid`` set, every epoch records ``valid_bound`` (on its
    data without labels) and ``valid_accuracy`` (``model.accuracy(valid)``), which picks the
    best checkpoint and early stopping."""
    from pvae.infer.callbacks import ValidMetrics

    setup: dict[str, Any] = dict(
        train_data=SemiSupervisedData(
            train, num_labels, model.num_classes, seed=seed, schedule=labelled_schedule
        ),
        objective=objective,
        valid_data=None,
    )
    if valid is not None:
        setup["valid_data"] = valid.without_labels()

        def valid_accuracy() -> dict[str, float]:
            return {"valid_accuracy": model.accuracy(valid)}

        setup["callbacks"] = [ValidMetrics(valid_accuracy)]
        setup["monitor"] = "valid_accuracy"
    return setup
