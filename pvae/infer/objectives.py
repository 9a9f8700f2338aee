"""Training objectives: the ELBO, the importance-weighted bound, and its DReG estimator.

Each objective is a callable ``objective(model, guide, *args, num_data=N, **kwargs)`` returning
an :class:`ObjectiveValue`: a differentiable ``loss`` to minimise and ``bound``, the value of the
bound summed over the minibatch (nats, detached). ``num_data`` is the number of independent units
in the dataset: the sites in the ``"data"`` plate are scaled by ``N / plate size``
(:func:`pvae.infer.trace.plate_scale`); ``scale=`` instead multiplies them by a fixed factor.
Any Pyro ``ELBO`` instance (``TraceEnum_ELBO`` for enumerated discrete latents, for example) is
accepted too, through :class:`PyroObjective`.

References:
    [1] Kingma, Welling. Auto-Encoding Variational Bayes. ICLR 2014. arXiv:1312.6114
    [2] Burda, Grosse, Salakhutdinov. Importance Weighted Autoencoders. ICLR 2016. arXiv:1509.00519
    [3] Tucker, Lawson, Gu, Maddison. Doubly Reparameterized Gradient Estimators for Monte Carlo
        Objectives. ICLR 2019. arXiv:1810.04152
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pyro.poutine as poutine
import torch
from pyro.infer import ELBO as PyroELBO
from pyro.infer.inspect import get_dependencies
from pyro.poutine.indep_messenger import CondIndepStackFrame
from torch.distributions import kl_divergence

from pvae.infer.trace import (
    DataScaleMessenger,
    RecordingMessenger,
    check_site_match,
    data_frame,
    latent_sites,
    per_datum_log_weights,
    plate_scale,
    probe_max_plate_nesting,
    record_model_guide,
    reduce_to_particle_data,
    scored_sites,
    site_log_prob,
    site_structure,
    trace_model_guide,
    vectorize,
)


class _RecentPairs(OrderedDict):
    """What an objective caches per ``(model, guide)`` pair, for the ``maxsize`` pairs used
    most recently: the keys are usually bound methods, which keep their module (and its
    parameters) alive, so an objective reused across many models holds only a few."""

    def __init__(self, maxsize: int = 8) -> None:
        super().__init__()
        self.maxsize = maxsize

    def get(self, key, default=None):
        if key not in self:
            return default
        self.move_to_end(key)
        return self[key]

    def __setitem__(self, key, value) -> None:
        super().__setitem__(key, value)
        self.move_to_end(key)
        if len(self) > self.maxsize:
            self.popitem(last=False)


@dataclass
class ObjectiveValue:
    loss: torch.Tensor  # differentiable surrogate, minimised
    bound: torch.Tensor  # detached: the bound, summed over the minibatch's data (nats)
    # The "data" plate's frame (its size, and full_size where Pyro subsamples): how many units
    # ``bound`` sums over (plate_scale(data_plate, num_data).units). None: no data plate seen.
    data_plate: CondIndepStackFrame | None = None


class Objective:
    """Base class. ``beta`` weights the latent terms (KL annealing, beta-VAE)."""

    name = "objective"
    #: whether ``beta`` weights the latent terms (KL annealing needs it); Pyro's ELBOs and the
    #: importance-weighted bounds have no KL term to weight
    weights_latents = False
    #: the Pyro ELBO that scores the pair, if any: its semantics decide which sites may be
    #: missing from the guide (:func:`pvae.infer.trace.check_site_match`)
    pyro_elbo: PyroELBO | None = None

    def __init__(self, num_particles: int = 1) -> None:
        if int(num_particles) < 1:
            raise ValueError(f"num_particles must be >= 1, got {num_particles}")
        self.num_particles = int(num_particles)
        self.beta = 1.0
        # Keyed on (model, guide): bound methods compare and hash by (__self__, __func__).
        self._nesting: _RecentPairs[int] = _RecentPairs()

    def max_plate_nesting(self, model: Callable, guide: Callable, args, kwargs) -> int:
        key = (model, guide)
        nesting = self._nesting.get(key)
        if nesting is None:
            nesting = probe_max_plate_nesting(model, guide, args, kwargs, pyro_elbo=self.pyro_elbo)
            self._nesting[key] = nesting
        return nesting

    def __call__(
        self, model, guide, *args, num_data: int | None = None, scale: float = 1.0, **kwargs
    ) -> ObjectiveValue:
        raise NotImplementedError


def _minibatch_factor(
    frame: CondIndepStackFrame | None, num_data: int | None, scale: float
) -> float:
    """The factor the data plate's sites carry: read from the plate with ``num_data``
    (Pyro's own subsampling included), else the fixed ``scale``."""
    if num_data is None:
        return scale
    if scale != 1.0:
        raise ValueError("pass num_data (scaling read from the data plate) or scale, not both")
    return plate_scale(frame, num_data).total if frame is not None else 1.0


def _check_reparameterized(guide_trace) -> None:
    for site in latent_sites(guide_trace):
        if not site["fn"].has_rsample or site["infer"].get("enumerate"):
            raise ValueError(
                f"guide site {site['name']!r} is not reparameterizable; train it with a Pyro "
                "objective instead, e.g. objective=pyro.infer.TraceEnum_ELBO(max_plate_nesting=1)"
            )


class ELBO(Objective):
    """The evidence lower bound E_q[log p(x, z) - log q(z | x)] [1].

    ``beta`` weights the latent terms (``weights_latents``): KL annealing and the beta-VAE.

    With ``analytic_kl=True`` the latent terms of a site are replaced by
    ``-KL(q(z_s | .) || p(z_s | pa_s))`` wherever a KL is registered and valid: every model
    parent of ``z_s`` is sampled before ``z_s`` in the guide (found once with
    :func:`pyro.infer.inspect.get_dependencies`).
    """

    name = "elbo"
    weights_latents = True

    def __init__(
        self, num_particles: int = 1, analytic_kl: bool = True, *, cache_structure: bool = True
    ) -> None:
        super().__init__(num_particles)
        self.analytic_kl = analytic_kl
        self._kl_sites: _RecentPairs[frozenset[str]] = _RecentPairs()
        # The fast path (see _ScoringPlan): only for the ELBO itself, whose
        # subclasses' penalties may read trace sites the lean tracer does not record.
        self.cache_structure = cache_structure and type(self)._penalty is ELBO._penalty
        self._plans: _RecentPairs[_ScoringPlan] = _RecentPairs()
        #: steps scored by the generic path and by a cached plan (the tests read them)
        self.path_counts = {"generic": 0, "planned": 0}

    def _eligible_kl_sites(self, model, guide, args, kwargs, guide_trace) -> frozenset[str]:
        key = (model, guide)
        cached = self._kl_sites.get(key)
        if cached is not None:
            return cached
        eligible: set[str] = set()
        if self.analytic_kl:
            try:
                deps = get_dependencies(model, args, kwargs)["prior_dependencies"]
            except Exception:  # models get_dependencies cannot trace: no analytic KL
                deps = None
            order = [s["name"] for s in latent_sites(guide_trace)]
            for position, name in enumerate(order):
                if deps is None or name not in deps:
                    continue
                parents = set(deps[name]) - {name}
                if parents <= set(order[:position]):
                    eligible.add(name)
        self._kl_sites[key] = frozenset(eligible)
        return self._kl_sites[key]

    def __call__(
        self, model, guide, *args, num_data: int | None = None, scale: float = 1.0, **kwargs
    ) -> ObjectiveValue:
        nesting = self.max_plate_nesting(model, guide, args, kwargs)
        particles = self.num_particles if self.num_particles > 1 else None
        scaling = DataScaleMessenger(num_data, scale=scale)
        key = (model, guide)
        plan = self._plans.get(key) if self.cache_structure else None
        if plan is not None:
            model_trace, guide_trace = record_model_guide(
                model,
                guide,
                args,
                kwargs,
                scaling,
                num_particles=particles,
                max_plate_nesting=nesting,
            )
            structure = (site_structure(model_trace), site_structure(guide_trace))
            if structure != plan.structure:  # the sites changed: the generic path decides
                check_site_match(model_trace, guide_trace)
                plan = None
        else:
            with scaling:
                model_trace, guide_trace = trace_model_guide(
                    model, guide, args, kwargs, num_particles=particles, max_plate_nesting=nesting
                )
            structure = None
        # Terms are grouped by scale and multiplied once per group: fewer autograd nodes.
        observed: dict[float, torch.Tensor] = {}
        latent: dict[float, torch.Tensor] = {}
        if plan is not None:
            self.path_counts["planned"] += 1
            plan.score(model_trace.nodes, guide_trace.nodes, observed, latent)
        else:
            self.path_counts["generic"] += 1
            terms = self._generic_terms(
                model, guide, args, kwargs, model_trace, guide_trace, observed, latent
            )
            if self.cache_structure:
                if structure is None:
                    structure = (site_structure(model_trace), site_structure(guide_trace))
                self._plans[key] = _ScoringPlan(structure, terms)
        observed_total = _scaled_sum(observed)
        latent_total = _scaled_sum(latent)
        elbo = observed_total + latent_total
        weight = self._latent_weight()
        surrogate = elbo if weight == 1.0 else observed_total + weight * latent_total
        if self.num_particles > 1:
            elbo, surrogate = elbo / self.num_particles, surrogate / self.num_particles
        factor = _minibatch_factor(scaling.frame, num_data, scale)
        loss = -surrogate
        penalty = self._penalty(
            model, guide, args, kwargs, model_trace, guide_trace, scaling.frame, factor
        )
        if penalty is not None:
            loss = loss + penalty
        return ObjectiveValue(loss=loss, bound=elbo.detach() / factor, data_plate=scaling.frame)

    def _generic_terms(
        self, model, guide, args, kwargs, model_trace, guide_trace, observed, latent
    ) -> list[tuple[str, str]]:
        """Scores the traces site by site into ``observed`` and ``latent`` (the generic path,
        with its checks) and returns what it did, in order: the plan of later steps with the
        same site structure."""
        _check_reparameterized(guide_trace)
        kl_sites = self._eligible_kl_sites(model, guide, args, kwargs, guide_trace)
        terms: list[tuple[str, str]] = []
        used_kl: set[str] = set()
        for site in scored_sites(model_trace):
            target = observed if site["is_observed"] else latent
            if not site["is_observed"] and site["name"] in kl_sites:
                try:
                    kl = kl_divergence(guide_trace.nodes[site["name"]]["fn"], site["fn"])
                except NotImplementedError:
                    kl = None
                if kl is not None:
                    _accumulate(latent, site["scale"], -_mask(kl, site).sum())
                    used_kl.add(site["name"])
                    terms.append(("kl", site["name"]))
                    continue
            _accumulate(target, site["scale"], site_log_prob(site).sum())
            terms.append(("observed" if site["is_observed"] else "model", site["name"]))
        for site in latent_sites(guide_trace):
            if site["name"] not in used_kl:
                _accumulate(latent, site["scale"], -site_log_prob(site).sum())
                terms.append(("guide", site["name"]))
        return terms

    # Hooks for objectives that reweight or extend the ELBO
    # (pvae.infer.info.InfoVAEObjective): the bound stays the ELBO's, only the loss changes.
    def _latent_weight(self) -> float:
        """The weight of the latent terms (the KL) in the loss: ``beta``."""
        return self.beta

    def _penalty(
        self, model, guide, args, kwargs, model_trace, guide_trace, frame, factor: float
    ) -> torch.Tensor | None:
        """A term added to the loss (not to the bound); ``factor`` is the data plate's
        minibatch scale. None: nothing."""
        return None


class _ScoringPlan:
    """The ELBO's fast path: what the generic path did for one (model, guide) pair, replayed
    while the site structure stays the same.

    The first step of a pair (and any step whose sites differ from the plan's, by
    :func:`~pvae.infer.trace.site_structure`: another site, an observed latent, another
    distribution type, a tensor scale, a mask, other plates) runs the generic path: the full
    ``poutine.trace``/``poutine.replay`` traces, the site-matching and reparameterization
    checks, the analytic-KL eligibility and ``kl_divergence``'s dispatch with its fallback.
    Later steps record the sites with one lean messenger
    (:func:`~pvae.infer.trace.record_model_guide`), compare their structure with the plan's,
    and compute the same terms in the same order, so the loss and its gradients are the
    generic path's to the bit.
    """

    def __init__(self, structure: tuple, terms: list[tuple[str, str]]) -> None:
        self.structure = structure
        self.terms = terms

    def score(self, model_sites: dict, guide_sites: dict, observed: dict, latent: dict) -> None:
        for kind, name in self.terms:
            if kind == "kl":
                site = model_sites[name]
                kl = kl_divergence(guide_sites[name]["fn"], site["fn"])
                _accumulate(latent, site["scale"], -_mask(kl, site).sum())
            elif kind == "guide":
                site = guide_sites[name]
                _accumulate(latent, site["scale"], -site_log_prob(site).sum())
            else:
                site = model_sites[name]
                target = observed if kind == "observed" else latent
                _accumulate(target, site["scale"], site_log_prob(site).sum())


def _accumulate(groups: dict, scale, term: torch.Tensor) -> None:
    if isinstance(scale, torch.Tensor) and scale.numel() > 1:  # per-element scale: apply now
        term, scale = term * scale, 1.0
    key = float(scale)
    groups[key] = groups[key] + term if key in groups else term


def _scaled_sum(groups: dict) -> torch.Tensor | float:
    total = None
    for scale, term in groups.items():
        term = term if scale == 1.0 else scale * term
        total = term if total is None else total + term
    return 0.0 if total is None else total


def _mask(value: torch.Tensor, site: dict[str, Any]) -> torch.Tensor:
    mask = site["mask"]
    if mask is None or mask is True:
        return value
    if mask is False:
        return torch.zeros_like(value)
    return torch.where(mask, value, value.new_zeros(()))


class IWAE(Objective):
    """The importance-weighted bound of Burda et al. [2], per datum inside the data plate::

        L_K = sum_n E[log (1/K) sum_k p(x_n, z_kn) / q(z_kn | x_n)],  z_kn ~ q(z | x_n)

    ``estimator="dreg"`` uses the doubly-reparameterized gradient of Tucker et al. [3] for the
    guide's parameters (weights w_k^2 on the pathwise term, no score term), which keeps its
    signal-to-noise ratio from vanishing as K grows; the model's gradient is the usual one.
    DReG requires a guide whose latents are all reparameterized and parameters that the model
    and guide do not share. With one latent site the guide runs once per step under DReG; with
    several it runs three times (sample, pathwise log q at re-weighted samples, direct log q),
    because later sites' distributions depend on earlier samples.
    """

    name = "iwae"

    def __init__(
        self, num_particles: int = 5, estimator: str = "standard", *, cache_structure: bool = True
    ) -> None:
        super().__init__(num_particles)
        if estimator not in ("standard", "dreg"):
            raise ValueError(f"estimator must be 'standard' or 'dreg', got {estimator!r}")
        self.estimator = estimator
        # The fast path, as the ELBO's (_ScoringPlan): once a pair's site structure has passed
        # the checks, steps with the same structure are traced by one lean messenger per run
        # and skip the checks; any other structure takes the generic path again.
        self.cache_structure = cache_structure
        self._structures: _RecentPairs[tuple] = _RecentPairs()
        #: steps traced by the generic path and by the lean one (the tests read them)
        self.path_counts = {"generic": 0, "planned": 0}

    def _known(self, key, model_trace, guide_trace) -> bool:
        """Whether the lean traces have the structure already checked for ``key``."""
        structure = (site_structure(model_trace), site_structure(guide_trace))
        return structure == self._structures.get(key)

    def _remember(self, key, model_trace, guide_trace) -> None:
        self.path_counts["generic"] += 1
        if self.cache_structure:
            self._structures[key] = (site_structure(model_trace), site_structure(guide_trace))

    def __call__(
        self, model, guide, *args, num_data: int | None = None, scale: float = 1.0, **kwargs
    ) -> ObjectiveValue:
        if self.estimator == "dreg":
            return self._dreg(model, guide, args, kwargs, num_data, scale)
        nesting = self.max_plate_nesting(model, guide, args, kwargs)
        key = (model, guide)
        known = False
        if key in self._structures:
            model_trace, guide_trace = record_model_guide(
                model,
                guide,
                args,
                kwargs,
                DataScaleMessenger(),
                num_particles=self.num_particles,
                max_plate_nesting=nesting,
            )
            known = self._known(key, model_trace, guide_trace)
            if not known:
                check_site_match(model_trace, guide_trace)
        else:
            model_trace, guide_trace = trace_model_guide(
                model,
                guide,
                args,
                kwargs,
                num_particles=self.num_particles,
                max_plate_nesting=nesting,
            )
        if known:
            self.path_counts["planned"] += 1
        else:
            _check_reparameterized(guide_trace)
            self._remember(key, model_trace, guide_trace)
        log_w = per_datum_log_weights(model_trace, guide_trace, max_plate_nesting=nesting)
        bound = (torch.logsumexp(log_w, dim=0) - math.log(self.num_particles)).sum()
        frame = data_frame(model_trace)
        scale = _minibatch_factor(frame, num_data, scale)
        return ObjectiveValue(loss=-scale * bound, bound=bound.detach(), data_plate=frame)

    def _dreg(self, model, guide, args, kwargs, num_data, scale: float) -> ObjectiveValue:
        nesting = self.max_plate_nesting(model, guide, args, kwargs)
        k = self.num_particles
        vmodel = vectorize(model, k, nesting)
        vguide = vectorize(guide, k, nesting)
        key = (model, guide)
        lean = key in self._structures
        if lean:
            with RecordingMessenger(DataScaleMessenger()) as recorder:
                vguide(*args, **kwargs)
            guide_trace = recorder.trace
        else:
            guide_trace = poutine.trace(vguide).get_trace(*args, **kwargs)
            _check_reparameterized(guide_trace)
        names = [s["name"] for s in latent_sites(guide_trace)]
        num_dims = nesting + 1
        data_dim = data_frame(guide_trace).dim

        # Gradients flowing into each sample are multiplied by its normalised weight w_k once
        # the weights are known (ScaleGrad reads them at backward time).
        weights: dict[str, torch.Tensor] = {}
        scaled = {}
        for name in names:
            site = guide_trace.nodes[name]
            scaled[name] = _ScaleGrad.apply(
                site["value"], weights, site["fn"].event_dim, num_dims, data_dim
            )
        detached = {name: guide_trace.nodes[name]["value"].detach() for name in names}

        if len(names) == 1 and _REUSE_SINGLE_SITE_TRACE:
            # One latent site: its distribution depends on no other sample, so the first
            # trace's distribution object scores the re-weighted samples (pathwise) and the
            # detached ones (direct) without running the guide again.
            (name,) = names
            site = guide_trace.nodes[name]
            pathwise_guide = _with_values(guide_trace, scaled)
            direct_log_q = {name: site_log_prob(site, detached[name])}
        else:
            # Later sites' distributions depend on earlier samples: re-run the guide so that
            # those dependencies see the re-weighted (and the detached) samples too.
            pathwise_guide = poutine.trace(
                poutine.replay(vguide, trace=_with_values(guide_trace, scaled))
            ).get_trace(*args, **kwargs)
            direct_guide = poutine.trace(
                poutine.replay(vguide, trace=_with_values(guide_trace, detached))
            ).get_trace(*args, **kwargs)
            direct_log_q = {name: site_log_prob(direct_guide.nodes[name]) for name in names}
        # Replayed, not conditioned, on the samples: the sites stay latent, so the model's
        # latents can be checked against the guide's.
        if lean:
            with RecordingMessenger(DataScaleMessenger(), replay=pathwise_guide) as recorder:
                vmodel(*args, **kwargs)
            model_trace = recorder.trace
            lean = self._known(key, model_trace, guide_trace)
        else:
            model_trace = poutine.trace(poutine.replay(vmodel, trace=pathwise_guide)).get_trace(
                *args, **kwargs
            )
        if lean:
            self.path_counts["planned"] += 1
        else:
            check_site_match(model_trace, pathwise_guide)
            _check_reparameterized(guide_trace)
            self._remember(key, model_trace, guide_trace)
        log_w = per_datum_log_weights(model_trace, pathwise_guide, max_plate_nesting=nesting)
        # + log q_phi(sg z): cancels the direct (score) dependence of log q on phi.
        direct = 0.0
        for name in names:
            direct = direct + reduce_to_particle_data(
                direct_log_q[name], guide_trace.nodes[name], num_dims=num_dims, data_dim=data_dim
            )
        surrogate_log_w = log_w + direct - direct.detach()
        normalized = torch.softmax(log_w.detach(), dim=0)  # (K, B)
        weights["w"] = normalized
        bound = (torch.logsumexp(log_w.detach(), dim=0) - math.log(k)).sum()
        frame = data_frame(model_trace)
        loss = -_minibatch_factor(frame, num_data, scale) * (normalized * surrogate_log_w).sum()
        return ObjectiveValue(loss=loss, bound=bound, data_plate=frame)


def _with_values(trace, values: dict[str, torch.Tensor]):
    """A copy of ``trace`` whose sites named in ``values`` hold those values (to replay)."""
    copy = trace.copy()
    for name, value in values.items():
        copy.nodes[name] = {**trace.nodes[name], "value": value}
    return copy


# DReG with one latent site scores it from the first guide trace; the tests switch this off
# to check that the shortcut gives the gradients of the general path (three guide runs).
_REUSE_SINGLE_SITE_TRACE = True


class _ScaleGrad(torch.autograd.Function):
    """Identity whose backward multiplies the incoming gradient by per-(particle, datum) weights.

    The weights are read from ``holder["w"]`` (shape ``(K, B)``) at backward time, because they
    are only known after the model has been scored.
    """

    @staticmethod
    def forward(ctx, value, holder, event_dim, num_dims, data_dim):
        ctx.holder = holder
        ctx.event_dim = event_dim
        ctx.num_dims = num_dims
        ctx.data_dim = data_dim
        return value.view_as(value)

    @staticmethod
    def backward(ctx, grad):
        w = ctx.holder["w"]  # (K, B): particle dim and data dim
        batch_dims = grad.dim() - ctx.event_dim
        # Right-align (K, B) with the particle dim (-num_dims) and the data plate's dim.
        shape = [1] * batch_dims
        shape[batch_dims - ctx.num_dims] = w.shape[0]
        shape[batch_dims + ctx.data_dim] = w.shape[1]
        w = w.reshape(shape + [1] * ctx.event_dim)
        return grad * w, None, None, None, None


class PyroObjective(Objective):
    """Any Pyro ``ELBO`` (``Trace_ELBO``, ``TraceEnum_ELBO``, ``RenyiELBO``...) as an objective."""

    def __init__(self, elbo: PyroELBO) -> None:
        super().__init__(getattr(elbo, "num_particles", 1))
        self.elbo = self.pyro_elbo = elbo
        self.name = type(elbo).__name__

    def __call__(
        self, model, guide, *args, num_data: int | None = None, scale: float = 1.0, **kwargs
    ) -> ObjectiveValue:
        model_scaling = DataScaleMessenger(num_data, scale=scale)
        guide_scaling = DataScaleMessenger(num_data, scale=scale)

        def scaled_model(*a, **k):
            with model_scaling:
                return model(*a, **k)

        def scaled_guide(*a, **k):
            with guide_scaling:
                return guide(*a, **k)

        if torch.is_grad_enabled():
            loss = self.elbo.differentiable_loss(scaled_model, scaled_guide, *args, **kwargs)
        else:
            # Validation and probes: some ELBOs (TraceEnum_ELBO) refuse differentiable_loss
            # when nothing requires grad.
            loss = torch.as_tensor(self.elbo.loss(scaled_model, scaled_guide, *args, **kwargs))
        frame = model_scaling.frame if model_scaling.frame is not None else guide_scaling.frame
        factor = _minibatch_factor(frame, num_data, scale)
        return ObjectiveValue(loss=loss, bound=-loss.detach() / factor, data_plate=frame)


def make_objective(
    objective: str | Objective | PyroELBO,
    num_particles: int = 1,
    *,
    estimator: str = "standard",
    analytic_kl: bool = True,
    options: dict[str, Any] | None = None,
) -> Objective:
    """Builds an objective from a name (``"elbo"``, ``"iwae"``, ``"dreg"``, ``"infovae"``) or
    wraps a Pyro ELBO. ``options``: keyword options of the named objective (``infovae``: those
    of :class:`pvae.infer.info.InfoVAEObjective`: ``alpha``, ``mmd_lambda``, ``kernel``, ``bandwidth``)."""
    if isinstance(objective, Objective):
        return objective
    if isinstance(objective, PyroELBO):
        return PyroObjective(objective)
    if options and objective != "infovae":
        raise ValueError(f"objective {objective!r} takes no options, got {sorted(options)}")
    if objective == "elbo":
        return ELBO(num_particles, analytic_kl=analytic_kl)
    if objective == "iwae":
        return IWAE(num_particles, estimator=estimator)
    if objective == "dreg":
        return IWAE(num_particles, estimator="dreg")
    if objective == "infovae":
        from pvae.infer.info import InfoVAEObjective  # imports this module

        return InfoVAEObjective(num_particles, analytic_kl=analytic_kl, **(options or {}))
    raise ValueError(
        f"unknown objective {objective!r}; choose 'elbo', 'iwae', 'dreg' or 'infovae', or pass "
        "a Pyro ELBO"
    )
