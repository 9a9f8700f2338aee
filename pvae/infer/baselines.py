"""Score-function (REINFORCE) gradients with baselines, for guides with sampled discrete sites.

When a discrete latent such as a class label ``y ~ q(y | x)`` is *sampled* rather than summed
out, the gradient of the ELBO with respect to q's parameters has a score-function term
``E_q[grad log q(y | x) (c(y) - b)]``, with ``c`` the per-datum ELBO that ``y`` influences and
``b`` a baseline that does not depend on ``y``: any such ``b`` leaves the gradient unbiased,
and a ``b`` close to ``c`` lowers its variance [1, 2]. Two estimators, both Pyro ``ELBO`` s:

- :class:`ScoreFunctionELBO`: Pyro's ``TraceGraph_ELBO`` (Rao-Blackwellised downstream costs,
  the baselines a site asks for with ``infer={"baseline": {...}}``) as a pvae objective. With
  ``use_decaying_avg_baseline`` it keeps one running average per site, the exponential moving
  average of the batch's mean cost (see the class).
- :class:`LeaveOneOutELBO`: K draws of the guide per datum, averaged; the baseline of draw k is
  the mean ELBO of the datum's K - 1 other draws, the leave-one-out baseline of VIMCO [3]
  applied to the ELBO instead of the multi-sample bound, as in [4]. Pyro's baselines are fixed
  before the cost of the other draws is known, so this one is a surrogate of its own.

Both are Pyro ``ELBO`` s with ``differentiable_loss``, whose *value* is the negative ELBO
estimate and whose *gradient* is the estimator's surrogate: ``fit`` (through
:class:`~pvae.infer.objectives.PyroObjective`) reports the bound while training with the
estimator.

References:
    [1] Williams. Simple Statistical Gradient-Following Algorithms for Connectionist
        Reinforcement Learning. Machine Learning 1992.
    [2] Mnih, Gregor. Neural Variational Inference and Learning in Belief Networks. ICML 2014.
        arXiv:1402.0030
    [3] Mnih, Rezende. Variational Inference for Monte Carlo Objectives. ICML 2016.
        arXiv:1602.06725
    [4] Kool, van Hoof, Welling. Buy 4 REINFORCE Samples, Get a Baseline for Free! ICLR 2019
        workshop DeepRLStructPred.
"""

from __future__ import annotations

import pyro
import torch
from pyro.distributions.util import is_identically_zero
from pyro.infer.enum import get_importance_trace
from pyro.infer.tracegraph_elbo import TraceGraph_ELBO
from pyro.infer.util import torch_item

from pvae.infer.trace import DATA_PLATE, data_frame, reduce_to_particle_data

__all__ = ["LeaveOneOutELBO", "ScoreFunctionELBO"]

RUNNING_AVERAGE_PREFIX = "__baseline_avg_downstream_cost_"
"""Pyro's name (``TraceGraph_ELBO``) of a site's decaying-average baseline in the param store."""


class ScoreFunctionELBO(TraceGraph_ELBO):
    """Pyro's ``TraceGraph_ELBO`` as a pvae objective: adds ``differentiable_loss`` (value: the
    negative ELBO estimate; gradient: Pyro's surrogate, baselines and their losses included).

    A guide site sampled with ``infer={"baseline": {"use_decaying_avg_baseline": True,
    "baseline_beta": beta}}`` gets Pyro's decaying-average baseline. Pyro keeps that average
    per element of the site's batch shape, i.e. one per *position* in the minibatch, which
    fails when the batch size changes (the last, smaller batch) and gives each position only
    the costs of the random sentences that happened to sit there. Here every position holds
    the average over the batch before each step, so the baseline is the exponential moving
    average, with decay ``beta``, of the batch's mean cost: one number per site, and any batch
    size works. It starts at 0 and lives in Pyro's param store (``fit`` keeps that store per
    run and in its checkpoints).
    """

    def __init__(
        self, num_particles: int = 1, max_plate_nesting: int = 1, vectorize_particles: bool = True
    ) -> None:
        super().__init__(
            num_particles=num_particles,
            max_plate_nesting=max_plate_nesting,
            vectorize_particles=vectorize_particles and num_particles > 1,
        )

    def _loss_and_surrogate_loss_particle(self, model_trace, guide_trace):
        store = pyro.get_param_store()
        for name, site in guide_trace.nodes.items():
            options = site["infer"].get("baseline", {}) if site["type"] == "sample" else {}
            key = RUNNING_AVERAGE_PREFIX + name
            if options.get("use_decaying_avg_baseline") and key in store:
                shape = site["log_prob"].shape
                average = store[key].detach().mean()
                store[key] = average.expand(shape).clone()
        return super()._loss_and_surrogate_loss_particle(model_trace, guide_trace)

    def differentiable_loss(self, model, guide, *args, **kwargs) -> torch.Tensor:
        elbo, surrogate_loss = self._loss_and_surrogate_loss(model, guide, args, kwargs)
        return surrogate_loss + (-elbo - surrogate_loss).detach()


class LeaveOneOutELBO(pyro.infer.ELBO):
    """The ELBO averaged over K draws of the guide per datum, whose non-reparameterised guide
    sites get the score-function gradient with a leave-one-out baseline.

    For datum n and draw k (vectorised in a particle plate), ``c_kn`` is the datum's ELBO term
    ``sum_sites log p - sum_sites log q`` (scaled as the sites are: minibatch scale, weights).
    The surrogate is::

        (1/K) sum_kn [ sum_model log p_kn - sum_guide entropy_kn
                       + sum_{non-reparam guide sites} log q(y_kn) * stop_grad(c_kn - b_kn) ]
        b_kn = (1 / (K - 1)) sum_{j != k} c_jn

    ``b_kn`` depends on draws independent of ``y_kn``, so the gradient is unbiased; the
    reparameterised sites keep their pathwise gradients (``entropy`` as Pyro's ``score_parts``).
    Every latent site must sit in the ``"data"`` plate (the baseline is per datum).

    :param num_particles: K >= 2.
    :param max_plate_nesting: the model's plates (the particle plate goes left of them).
    """

    def __init__(self, num_particles: int = 2, max_plate_nesting: int = 1) -> None:
        if isinstance(num_particles, bool) or int(num_particles) < 2:
            raise ValueError(
                f"a leave-one-out baseline needs num_particles >= 2, got {num_particles}"
            )
        super().__init__(
            num_particles=int(num_particles),
            max_plate_nesting=max_plate_nesting,
            vectorize_particles=True,
        )

    def _get_trace(self, model, guide, args, kwargs):
        return get_importance_trace("flat", self.max_plate_nesting, model, guide, args, kwargs)

    def _terms(self, model, guide, args, kwargs) -> tuple[torch.Tensor, torch.Tensor]:
        """``(elbo, surrogate)``, each ``(K, B)``: per draw and datum."""
        ((model_trace, guide_trace),) = list(self._get_traces(model, guide, args, kwargs))
        num_dims = self.max_plate_nesting  # Pyro counts the particle plate in it
        data_dim = data_frame(model_trace).dim

        def per_datum(value: torch.Tensor, site: dict) -> torch.Tensor:
            if not any(f.name == DATA_PLATE for f in site["cond_indep_stack"]):
                raise ValueError(
                    f"site {site['name']!r} is outside the 'data' plate: the leave-one-out "
                    "baseline is per datum"
                )
            return reduce_to_particle_data(value, site, num_dims=num_dims, data_dim=data_dim)

        elbo, surrogate, scores = 0.0, 0.0, []
        for site in model_trace.nodes.values():
            if site["type"] == "sample":
                log_p = per_datum(site["log_prob"], site)
                elbo, surrogate = elbo + log_p, surrogate + log_p
        for site in guide_trace.nodes.values():
            if site["type"] != "sample":
                continue
            parts = site["score_parts"]
            elbo = elbo - per_datum(parts.log_prob, site)
            if not is_identically_zero(parts.entropy_term):
                surrogate = surrogate - per_datum(parts.entropy_term, site)
            if not is_identically_zero(parts.score_function):
                scores.append(per_datum(parts.score_function, site))
        if scores:
            cost = elbo.detach()
            k = cost.shape[0]
            baseline = (cost.sum(0, keepdim=True) - cost) / (k - 1)
            for score in scores:
                surrogate = surrogate + score * (cost - baseline)
        return elbo, surrogate

    def differentiable_loss(self, model, guide, *args, **kwargs) -> torch.Tensor:
        elbo, surrogate = self._terms(model, guide, args, kwargs)
        loss = -elbo.sum() / self.num_particles
        surrogate_loss = -surrogate.sum() / self.num_particles
        return surrogate_loss + (loss - surrogate_loss).detach()

    def loss(self, model, guide, *args, **kwargs) -> float:
        with torch.no_grad():
            elbo, _ = self._terms(model, guide, args, kwargs)
            return torch_item(-elbo.sum() / self.num_particles)

    def loss_and_grads(self, model, guide, *args, **kwargs) -> float:
        loss = self.differentiable_loss(model, guide, *args, **kwargs)
        loss.backward()
        return torch_item(loss)
