"""Training semi-supervised models, whose batches are either labelled or unlabelled.

:class:`SemiSupervisedELBO` is one Pyro ``ELBO`` that sums a discrete label out exactly
(``TraceEnum_ELBO``) on unlabelled batches (``model(x)``) and scores labelled ones
(``model(x, y)``) with ``Trace_ELBO``, where there is nothing to enumerate. The data stream
comes from :class:`pvae.data.semisupervised.SemiSupervisedData`. Any model whose ``model`` and
``guide`` take ``(x, y=None)`` and enumerate ``y`` in the guide when it is ``None`` (M2, the
semi-supervised text VAE) trains with :func:`fit_semisupervised`.
"""

from __future__ import annotations

from typing import Any

import pyro
import torch


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


def fit_semisupervised(model: Any, data: Any, **fit_kwargs: Any) -> Any:
    """``pvae.infer.train.fit`` of ``model.model``/``model.guide`` with
    :class:`SemiSupervisedELBO`. ``data`` is usually a
    :class:`~pvae.data.semisupervised.SemiSupervisedData`; returns ``fit``'s ``FitResult``."""
    from pvae.infer.train import fit

    return fit(model.model, model.guide, data, objective=SemiSupervisedELBO(), **fit_kwargs)
