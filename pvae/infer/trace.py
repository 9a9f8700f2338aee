"""Trace utilities shared by the objectives and the evaluators.

Everything in pvae that scores a model/guide pair goes through these helpers, so there is one
definition of "a latent site", "the data plate", "the particle dimension" and "a per-datum log
weight" in the library.

The only contract a user's model must honour is Pyro's own: data sit in a plate named
``"data"`` and the likelihood sites are marked with ``obs=``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pyro
import pyro.poutine as poutine
import torch
from pyro.poutine.messenger import Messenger
from pyro.poutine.trace_struct import Trace
from pyro.poutine.util import site_is_subsample

DATA_PLATE = "data"
PARTICLE_PLATE = "particles"


class DataScaleMessenger(Messenger):
    """Multiplies the scale of every sample site inside the ``"data"`` plate by ``scale``.

    This implements minibatch scaling N/B for models written with
    ``pyro.plate("data", x.shape[0])``, leaving sites outside the plate (global latents)
    unscaled. Plates that already subsample themselves (``subsample_size``) are left alone.
    """

    def __init__(self, scale: float) -> None:
        super().__init__()
        self.scale = scale

    def _process_message(self, msg: dict[str, Any]) -> None:
        if msg["type"] != "sample":
            return
        for frame in msg["cond_indep_stack"]:
            if frame.name == DATA_PLATE and (
                frame.full_size is None or frame.full_size == frame.size
            ):
                msg["scale"] = self.scale * msg["scale"]
                return


@contextmanager
def data_scale(scale: float) -> Iterator[None]:
    """Context manager form of :class:`DataScaleMessenger`."""
    if scale == 1.0:
        yield
        return
    with DataScaleMessenger(scale):
        yield


def is_scored(site: dict[str, Any]) -> bool:
    """A sample site that contributes a log-density (not a plate's subsample site)."""
    return (
        site["type"] == "sample"
        and not site_is_subsample(site)
        and not site["infer"].get("_do_not_score")
    )


def latent_sites(trace: Trace) -> list[dict[str, Any]]:
    return [s for s in trace.nodes.values() if is_scored(s) and not s["is_observed"]]


def scored_sites(trace: Trace) -> list[dict[str, Any]]:
    return [s for s in trace.nodes.values() if is_scored(s)]


def guess_max_plate_nesting(*traces: Trace) -> int:
    """The largest number of vectorized plates any site of the traces sits in."""
    nesting = 0
    for trace in traces:
        for site in trace.nodes.values():
            if site["type"] != "sample":
                continue
            dims = [-f.dim for f in site["cond_indep_stack"] if f.vectorized and f.dim is not None]
            nesting = max([nesting, *dims])
    return nesting


def data_frame(trace: Trace):
    """The ``"data"`` plate's frame in ``trace``; ``ValueError`` if the model has none."""
    for site in trace.nodes.values():
        if site["type"] != "sample":
            continue
        for frame in site["cond_indep_stack"]:
            if frame.name == DATA_PLATE:
                return frame
    raise ValueError(
        "the model has no pyro.plate named 'data': wrap the per-datum sites in "
        "`with pyro.plate('data', x.shape[0]):` so pvae can score each datum"
    )


def vectorize(fn: Callable, num_particles: int, max_plate_nesting: int) -> Callable:
    """Runs ``fn`` inside a ``"particles"`` plate at dim ``-(max_plate_nesting + 1)``."""

    def vectorized(*args, **kwargs):
        with pyro.plate(PARTICLE_PLATE, num_particles, dim=-(max_plate_nesting + 1)):
            return fn(*args, **kwargs)

    return vectorized


def trace_model_guide(
    model: Callable,
    guide: Callable,
    args: tuple,
    kwargs: dict | None = None,
    *,
    num_particles: int | None = None,
    max_plate_nesting: int = 1,
    scale: float = 1.0,
) -> tuple[Trace, Trace]:
    """Runs the guide, then the model replayed against it; returns ``(model_trace, guide_trace)``.

    With ``num_particles`` both run inside a particle plate at dim ``-(max_plate_nesting + 1)``.
    ``scale`` multiplies the sites in the data plate (minibatch scaling N/B).
    """
    kwargs = kwargs or {}
    if num_particles is not None:
        model = vectorize(model, num_particles, max_plate_nesting)
        guide = vectorize(guide, num_particles, max_plate_nesting)
    with data_scale(scale):
        guide_trace = poutine.trace(guide).get_trace(*args, **kwargs)
        model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(
            *args, **kwargs
        )
    return model_trace, guide_trace


def probe_max_plate_nesting(
    model: Callable, guide: Callable, args: tuple, kwargs: dict | None = None
) -> int:
    """Runs the guide and the replayed model once on ``args`` (no gradients) and returns their
    plate nesting, at least 1 (the data plate); ``ValueError`` if the model has no "data" plate.

    Pass one datum (``x[:1]``) when only the nesting is wanted: it is the same for any batch.
    """
    with torch.no_grad():
        model_trace, guide_trace = trace_model_guide(model, guide, args, kwargs)
    data_frame(model_trace)  # fail early and clearly without a data plate
    return max(1, guess_max_plate_nesting(model_trace, guide_trace))


def site_log_prob(site: dict[str, Any], value: torch.Tensor | None = None) -> torch.Tensor:
    """Unscaled log-density of a site at its value (or ``value``), masked like Pyro does."""
    log_p = site["fn"].log_prob(site["value"] if value is None else value)
    mask = site["mask"]
    if mask is not None and mask is not True:
        if mask is False:
            return torch.zeros_like(log_p)
        log_p = torch.where(mask, log_p, log_p.new_zeros(()))
    return log_p


def reduce_to_particle_data(
    log_p: torch.Tensor, site: dict[str, Any], *, num_dims: int, data_dim: int | None
) -> torch.Tensor:
    """Sums every plate dim of ``log_p`` except the particle dim and the data dim.

    ``log_p`` has the site's batch shape (right-aligned with ``num_dims`` plate dims, the
    leftmost being the particle plate). Returns shape ``(K_or_1, B_or_1)``.
    """
    if log_p.dim() > num_dims:
        raise ValueError(
            f"site {site['name']!r} has batch shape {tuple(log_p.shape)} with more dims than its "
            f"plates ({num_dims}); declare extra batch dims as event dims with .to_event()"
        )
    log_p = log_p.reshape((1,) * (num_dims - log_p.dim()) + log_p.shape)
    keep = {0}
    if data_dim is not None:
        keep.add(num_dims + data_dim)
    others = [d for d in range(num_dims) if d not in keep]
    if others:
        log_p = log_p.sum(dim=others, keepdim=True)
    return log_p.reshape(
        log_p.shape[0], log_p.shape[num_dims + data_dim] if data_dim is not None else 1
    )


def per_datum_log_weights(
    model_trace: Trace, guide_trace: Trace, *, max_plate_nesting: int
) -> torch.Tensor:
    """log p(x_n, z_kn) - log q(z_kn | x_n) of vectorized traces, shape ``(K, B)``.

    Every latent site must sit inside the ``"data"`` plate: importance weighting per datum
    is not defined for global latents.
    """
    num_dims = max_plate_nesting + 1
    frame = data_frame(model_trace)
    total = 0.0
    for trace, sign in ((model_trace, 1.0), (guide_trace, -1.0)):
        for site in scored_sites(trace):
            if not any(f.name == DATA_PLATE for f in site["cond_indep_stack"]):
                raise ValueError(
                    f"site {site['name']!r} is outside the 'data' plate: per-datum importance "
                    "weights need every latent and observed site inside it"
                )
            log_p = reduce_to_particle_data(
                site_log_prob(site), site, num_dims=num_dims, data_dim=frame.dim
            )
            total = total + sign * log_p
    return total
