"""Annealed importance sampling (AIS) and bidirectional Monte Carlo (BDMC) for log p(x).

AIS [1] moves K chains per datum through intermediate densities between a normalized start
density p_0(z) (the prior p(z), or the guide q(z | x)) and the unnormalized posterior
p(x, z), along the geometric path::

    f_t(z) = p_0(z)^(1 - beta_t) p(x, z)^beta_t,        0 = beta_0 < ... < beta_T = 1

With the prior as p_0 this is p(z) p(x | z)^beta_t. Each chain carries the log weight::

    log w = sum_{t=1..T} [log f_t(z_{t-1}) - log f_{t-1}(z_{t-1})]
          = sum_t (beta_t - beta_{t-1}) [log p(x, z_{t-1}) - log p_0(z_{t-1})]

where z_t is drawn by an HMC transition that leaves f_t invariant. E[w] = p(x), so
``log mean_k w_k`` is a stochastic lower bound of log p(x) (Jensen) that is exact as T grows.

Run backwards from an exact posterior sample (available for data simulated from the model),
the same construction gives unbiased weights for 1 / p(x), hence a stochastic *upper* bound.
BDMC [2] brackets log p(x) between the two on simulated data; the gap bounds the error of
forward AIS on such data [3].

HMC step sizes are adapted per datum during the run, as Wu et al. [3] do (after the HMC of
the deeplearning.net tutorial they build on): a moving average of the acceptance rate over
the chains of a datum multiplies the step size by 1.02 when above ``target_accept`` and by
0.98 below it, clipped to [1e-4, 0.5].

Batched over data and chains: the model runs once per gradient evaluation inside a
``"particles"`` plate of size K (chains = particles), conditioned on the current latents.
Any model whose latent sites are continuous and sit in the ``"data"`` plate works; latents
with constrained support run in unconstrained space through ``biject_to(support)``.

References:
    [1] Neal. Annealed Importance Sampling. Statistics and Computing 11, 2001.
        arXiv:physics/9803008
    [2] Grosse, Ghahramani, Adams. Sandwiching the marginal likelihood using bidirectional
        Monte Carlo. 2015. arXiv:1511.02543
    [3] Wu, Burda, Salakhutdinov, Grosse. On the Quantitative Analysis of Decoder-Based
        Generative Models. ICLR 2017. arXiv:1611.04273
"""

from __future__ import annotations

import math
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field

import pyro.poutine as poutine
import torch
from torch.distributions import biject_to
from tqdm.auto import tqdm

from pvae.evaluation.importance import PerDatumEstimate
from pvae.infer.trace import (
    DATA_PLATE,
    data_frame,
    guess_max_plate_nesting,
    latent_sites,
    reduce_to_particle_data,
    scored_sites,
    site_log_prob,
    trace_model_guide,
    vectorize,
)

SCHEDULES = ("sigmoid", "linear")

# Step-size adaptation constants of Wu et al. [3] (from the deeplearning.net HMC tutorial).
STEP_SIZE_INCREASE = 1.02
STEP_SIZE_DECREASE = 0.98
STEP_SIZE_MIN = 1e-4
STEP_SIZE_MAX = 0.5
ACCEPT_SLOWNESS = 0.9


def annealing_schedule(
    num_steps: int, schedule: str = "sigmoid", delta: float = 4.0
) -> torch.Tensor:
    """Inverse temperatures ``beta_0 = 0 < ... < beta_T = 1``, shape ``(T + 1,)``, float64.

    ``"sigmoid"`` (Grosse et al. [2]): ``s_t = sigmoid(delta (2t/T - 1))`` rescaled to [0, 1],
    which spends more steps near both ends; ``"linear"``: evenly spaced.
    """
    if int(num_steps) < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")
    t = torch.linspace(0.0, 1.0, int(num_steps) + 1, dtype=torch.float64)
    if schedule == "linear" or num_steps == 1:
        return t
    s = torch.sigmoid(delta * (2.0 * t - 1.0))
    return (s - s[0]) / (s[-1] - s[0])


def _logmeanexp(log_w: torch.Tensor, dim: int = 0) -> torch.Tensor:
    return torch.logsumexp(log_w, dim=dim) - math.log(log_w.shape[dim])


@dataclass
class AISResult(PerDatumEstimate):
    """Output of :func:`ais_log_likelihood` (or one direction of :func:`bdmc`).

    ``log_weights`` has shape ``(K, N)`` (chains, data). For ``direction="forward"`` they
    estimate p(x) and :attr:`values` is ``log mean_k w_k``, a stochastic lower bound; for
    ``"reverse"`` they estimate 1 / p(x) and :attr:`values` is ``-log mean_k w_k``, a
    stochastic upper bound.
    """

    log_weights: torch.Tensor
    num_steps: int
    schedule: str
    direction: str = "forward"
    step_size: torch.Tensor | None = None  # (N,) final adapted HMC step size per datum
    acceptance_rate: torch.Tensor | None = None  # (N,) mean acceptance over the run
    extra: dict = field(default_factory=dict)

    @property
    def num_chains(self) -> int:
        return self.log_weights.shape[0]

    @property
    def values(self) -> torch.Tensor:
        """Per-datum estimate of log p(x), shape ``(N,)``."""
        estimate = _logmeanexp(self.log_weights, 0)
        return estimate if self.direction == "forward" else -estimate

    @property
    def ess(self) -> torch.Tensor:
        """Effective sample size ``1 / sum_k wbar_k^2`` of the normalized weights, ``(N,)``."""
        w = torch.softmax(self.log_weights, dim=0)
        return 1.0 / (w**2).sum(0)

    @property
    def chain_stderr(self) -> torch.Tensor:
        """Delta-method standard error of :attr:`values` from the spread over chains, ``(N,)``:
        ``sd_k(w_k) / (sqrt(K) mean_k(w_k))``, the relative error of the mean weight."""
        w = torch.exp(self.log_weights - self.log_weights.max(0, keepdim=True).values)
        k = w.shape[0]
        if k < 2:
            return torch.full_like(w[0], float("nan"))
        return w.std(0, unbiased=True) / (math.sqrt(k) * w.mean(0))

    def __repr__(self) -> str:
        return (
            f"AISResult({self.direction}, mean={self.mean:.3f}, stderr={self.stderr:.3f}, "
            f"T={self.num_steps}, K={self.num_chains}, N={self.values.numel()})"
        )


@dataclass
class _Site:
    name: str
    event_dim: int
    transform: torch.distributions.Transform


class _AnnealedTarget:
    """Per-(chain, datum) log densities of the AIS path, evaluated by running the model (and
    the guide) conditioned on the current latents. Latents are held unconstrained, ``u``."""

    def __init__(
        self,
        model: Callable,
        guide: Callable | None,
        x: torch.Tensor,
        args: tuple,
        num_chains: int,
    ) -> None:
        with torch.no_grad():
            if guide is not None:
                model_trace, guide_trace = trace_model_guide(model, guide, (x, *args))
                nesting = guess_max_plate_nesting(model_trace, guide_trace)
            else:
                model_trace = poutine.trace(model).get_trace(x, *args)
                nesting = guess_max_plate_nesting(model_trace)
        self.nesting = max(1, nesting)
        self.num_dims = self.nesting + 1
        self.data_dim = data_frame(model_trace).dim
        self.model = vectorize(model, num_chains, self.nesting)
        self.guide = None if guide is None else vectorize(guide, num_chains, self.nesting)
        self.args = (x, *args)
        self.num_chains = num_chains
        self.num_data = x.shape[0]
        model_latents = {s["name"] for s in latent_sites(model_trace)}
        if guide is not None:
            guide_latents = {s["name"] for s in latent_sites(guide_trace)}
            if guide_latents != model_latents:
                raise ValueError(
                    f"the guide's latent sites {sorted(guide_latents)} differ from the model's "
                    f"{sorted(model_latents)}; AIS from the guide needs the same latents"
                )
        self.sites: list[_Site] = []
        for site in latent_sites(model_trace):
            if site["fn"].support.is_discrete:
                raise ValueError(
                    f"latent site {site['name']!r} is discrete; HMC-based AIS needs continuous "
                    "latents (marginalize discrete ones in the model, or use log_likelihood)"
                )
            if not any(f.name == DATA_PLATE for f in site["cond_indep_stack"]):
                raise ValueError(
                    f"latent site {site['name']!r} is outside the 'data' plate: AIS per datum "
                    "needs every latent inside it"
                )
            try:
                transform = biject_to(site["fn"].support)
            except NotImplementedError:
                raise ValueError(
                    f"latent site {site['name']!r} has support {site['fn'].support} with no "
                    "bijection to unconstrained space; AIS cannot run HMC on it"
                ) from None
            self.sites.append(_Site(site["name"], site["fn"].event_dim, transform))

    # -- shapes -----------------------------------------------------------------------------
    def _reduce(self, log_p: torch.Tensor, name: str) -> torch.Tensor:
        return reduce_to_particle_data(
            log_p, {"name": name}, num_dims=self.num_dims, data_dim=self.data_dim
        )

    def per_chain_datum(self, values: dict[str, torch.Tensor]) -> torch.Tensor:
        """Sums each tensor over its event dims and extra plates: shape ``(K, N)``."""
        total = 0.0
        for site in self.sites:
            v = values[site.name]
            if site.event_dim:
                v = v.sum(dim=tuple(range(-site.event_dim, 0)))
            total = total + self._reduce(v, site.name)
        return total

    def broadcast(
        self, per_datum: torch.Tensor, like: torch.Tensor, event_dim: int
    ) -> torch.Tensor:
        """Right-aligns a ``(K or 1, N)`` tensor with a site value's particle and data dims."""
        batch_dims = like.dim() - event_dim
        shape = [1] * batch_dims
        shape[batch_dims - self.num_dims] = per_datum.shape[0]
        shape[batch_dims + self.data_dim] = per_datum.shape[1]
        return per_datum.reshape(shape + [1] * event_dim)

    # -- samples -----------------------------------------------------------------------------
    def initial(self, from_guide: bool) -> dict[str, torch.Tensor]:
        """Unconstrained draws from p_0: the (vectorized) prior or guide."""
        fn = self.guide if from_guide else self.model
        with torch.no_grad():
            trace = poutine.trace(fn).get_trace(*self.args)
        return {s.name: s.transform.inv(trace.nodes[s.name]["value"]).detach() for s in self.sites}

    def unconstrain(self, latents: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Latent values of shape ``(N, ...)`` -> unconstrained, expanded to K chains."""
        out = {}
        for s in self.sites:
            if s.name not in latents:
                raise ValueError(f"missing latent {s.name!r} in the initial state")
            u = s.transform.inv(latents[s.name].detach())
            batch_dims = u.dim() - s.event_dim
            # Pad the batch dims to the model's plates, then put the chains in front.
            u = u.reshape((1,) * (self.num_dims - 1 - batch_dims) + tuple(u.shape))
            out[s.name] = u.expand(self.num_chains, *u.shape).clone()
        return out

    # -- densities ---------------------------------------------------------------------------
    def log_densities(self, u: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """``(log p_0(z), log p(x, z))`` at z = T(u), each with log|dT/du|, shapes ``(K, N)``."""
        z = {}
        log_jac = 0.0
        for s in self.sites:
            z[s.name] = s.transform(u[s.name])
            log_jac = log_jac + self._reduce(
                s.transform.log_abs_det_jacobian(u[s.name], z[s.name]), s.name
            )
        trace = poutine.trace(poutine.condition(self.model, data=z)).get_trace(*self.args)
        names = {s.name for s in self.sites}
        log_prior = 0.0
        log_lik = 0.0
        frame_dim = self.data_dim
        for site in scored_sites(trace):
            log_p = reduce_to_particle_data(
                site_log_prob(site), site, num_dims=self.num_dims, data_dim=frame_dim
            )
            if site["name"] in names:
                log_prior = log_prior + log_p
            else:
                log_lik = log_lik + log_p
        log_joint = log_prior + log_lik + log_jac
        if self.guide is None:
            return log_prior + log_jac, log_joint
        guide_trace = poutine.trace(poutine.condition(self.guide, data=z)).get_trace(*self.args)
        log_q = 0.0
        for site in scored_sites(guide_trace):
            log_q = log_q + reduce_to_particle_data(
                site_log_prob(site), site, num_dims=self.num_dims, data_dim=frame_dim
            )
        return log_q + log_jac, log_joint

    def value_and_grad(
        self, u: dict[str, torch.Tensor], beta: float
    ) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """``(log p_0, log p(x, z), grad_u log f_beta)`` at ``u``."""
        with torch.enable_grad():
            leaves = {k: v.detach().requires_grad_(True) for k, v in u.items()}
            log_p0, log_joint = self.log_densities(leaves)
            log_f = (1.0 - beta) * log_p0 + beta * log_joint
            grads = torch.autograd.grad(log_f.sum(), list(leaves.values()))
        grad = {k: g.detach() for k, g in zip(leaves, grads, strict=True)}
        return log_p0.detach(), log_joint.detach(), grad


def _hmc_transition(
    target: _AnnealedTarget,
    u: dict[str, torch.Tensor],
    log_f0: torch.Tensor,
    grad0: dict[str, torch.Tensor],
    beta: float,
    step_size: torch.Tensor,
    leapfrog_steps: int,
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """One HMC step leaving f_beta invariant, per (chain, datum); returns (u, accept prob)."""
    sizes = {
        s.name: target.broadcast(step_size[None, :], u[s.name], s.event_dim) for s in target.sites
    }
    momentum = {k: torch.randn_like(v) for k, v in u.items()}
    kinetic0 = 0.5 * target.per_chain_datum({k: p**2 for k, p in momentum.items()})
    p = {k: momentum[k] + 0.5 * sizes[k] * grad0[k] for k in u}
    q = dict(u)
    for i in range(leapfrog_steps):
        q = {k: q[k] + sizes[k] * p[k] for k in q}
        log_p0, log_joint, grad = target.value_and_grad(q, beta)
        factor = 0.5 if i == leapfrog_steps - 1 else 1.0
        p = {k: p[k] + factor * sizes[k] * grad[k] for k in p}
    log_f1 = (1.0 - beta) * log_p0 + beta * log_joint
    kinetic1 = 0.5 * target.per_chain_datum({k: v**2 for k, v in p.items()})
    log_accept = (log_f1 - kinetic1) - (log_f0 - kinetic0)
    log_accept = torch.nan_to_num(log_accept, nan=-math.inf, posinf=-math.inf).clamp(max=0.0)
    accept = torch.rand_like(log_accept).log() < log_accept
    new = {}
    for s in target.sites:
        mask = target.broadcast(accept, u[s.name], s.event_dim)
        new[s.name] = torch.where(mask, q[s.name], u[s.name])
    return new, log_accept.exp()


def _run_ais(
    target: _AnnealedTarget,
    u: dict[str, torch.Tensor],
    betas: torch.Tensor,
    *,
    leapfrog_steps: int,
    step_size: float,
    target_accept: float,
    adapt_step_size: bool,
    progress: bool,
    desc: str,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Runs the chains through ``betas`` (increasing: forward; decreasing: reverse)."""
    n = target.num_data
    log_w = torch.zeros(target.num_chains, n, dtype=torch.float64)
    sizes = torch.full((n,), float(step_size))
    avg_accept = torch.full((n,), float(target_accept))
    accept_sum = torch.zeros(n)
    num_transitions = 0
    steps = len(betas) - 1
    for t in tqdm(range(1, steps + 1), desc=desc, disable=not progress, unit="step"):
        beta_prev, beta = float(betas[t - 1]), float(betas[t])
        log_p0, log_joint, grad = target.value_and_grad(u, beta)
        log_w += (beta - beta_prev) * (log_joint - log_p0).double()
        if t == steps:  # the last transition does not change the weights
            break
        log_f = (1.0 - beta) * log_p0 + beta * log_joint
        u, accept_prob = _hmc_transition(target, u, log_f, grad, beta, sizes, leapfrog_steps)
        rate = accept_prob.mean(0)
        accept_sum += rate
        num_transitions += 1
        if adapt_step_size:
            avg_accept = ACCEPT_SLOWNESS * avg_accept + (1.0 - ACCEPT_SLOWNESS) * rate
            factor = torch.where(avg_accept > target_accept, STEP_SIZE_INCREASE, STEP_SIZE_DECREASE)
            sizes = (sizes * factor).clamp(STEP_SIZE_MIN, STEP_SIZE_MAX)
    mean_accept = accept_sum / max(1, num_transitions)
    return log_w, sizes, mean_accept


def _check_data(x: torch.Tensor, args: tuple) -> None:
    if not isinstance(x, torch.Tensor) or x.dim() < 1 or x.shape[0] == 0:
        raise ValueError(f"x must be a tensor holding at least one datum, got {type(x).__name__}")
    for a in args:
        if isinstance(a, torch.Tensor) and a.dim() > 0 and a.shape[0] != x.shape[0]:
            raise ValueError("extra arguments must have the same number of data as x")


def _seeded(seed: int | None):
    if seed is None:
        return nullcontext()
    return _ForkedSeed(seed)


class _ForkedSeed:
    """Seeds torch's global generator inside the block and restores it afterwards."""

    def __init__(self, seed: int) -> None:
        self.seed = int(seed)

    def __enter__(self) -> None:
        self._fork = torch.random.fork_rng(devices=[])
        self._fork.__enter__()
        torch.manual_seed(self.seed)

    def __exit__(self, *exc) -> None:
        self._fork.__exit__(*exc)


def _validate(
    num_steps: int, num_chains: int, leapfrog_steps: int, step_size: float, target_accept: float
) -> None:
    if int(num_chains) < 1:
        raise ValueError(f"num_chains must be >= 1, got {num_chains}")
    if int(leapfrog_steps) < 1:
        raise ValueError(f"leapfrog_steps must be >= 1, got {leapfrog_steps}")
    if not step_size > 0:
        raise ValueError(f"step_size must be positive, got {step_size}")
    if not 0.0 < target_accept < 1.0:
        raise ValueError(f"target_accept must be in (0, 1), got {target_accept}")
    annealing_schedule(num_steps)  # validates num_steps


@torch.no_grad()
def ais_log_likelihood(
    model: Callable,
    x: torch.Tensor,
    *args,
    num_steps: int = 1000,
    num_chains: int = 16,
    guide: Callable | None = None,
    schedule: str = "sigmoid",
    leapfrog_steps: int = 10,
    step_size: float = 0.05,
    target_accept: float = 0.65,
    adapt_step_size: bool = True,
    initial_latents: dict[str, torch.Tensor] | None = None,
    reverse: bool = False,
    progress: bool = False,
    seed: int | None = None,
) -> AISResult:
    """AIS estimate of log p(x_n) for every datum of ``x`` [1, 3].

    Args:
        model: ``model(x, *args)`` with its latents in ``pyro.plate("data", ...)``.
        x: a batch of data, ``(N, ...)``; all of it goes through the model at once.
        num_steps: T, the number of intermediate distributions.
        num_chains: K, the number of chains per datum (a particle plate).
        guide: start from ``q(z | x)`` instead of the prior (path ``q^(1-b) p(x, z)^b``).
        schedule: ``"sigmoid"`` (default) or ``"linear"`` spacing of beta.
        leapfrog_steps, step_size: HMC settings; ``step_size`` is the initial value, adapted
            per datum toward ``target_accept`` when ``adapt_step_size``.
        initial_latents: for ``reverse=True``: exact posterior samples ``{name: (N, ...)}``.
        reverse: run from beta=1 (starting at ``initial_latents``) down to 0; the estimate
            is then a stochastic upper bound (see :func:`bdmc`).
        seed: seeds torch's generator for this call only (restored afterwards).

    Returns:
        :class:`AISResult` with ``log_weights`` ``(K, N)``, ``values`` ``(N,)``, ``ess``.
    """
    _check_data(x, args)
    _validate(num_steps, num_chains, leapfrog_steps, step_size, target_accept)
    betas = annealing_schedule(num_steps, schedule)
    with _seeded(seed):
        target = _AnnealedTarget(model, guide, x, args, int(num_chains))
        if reverse:
            if initial_latents is None:
                raise ValueError("reverse AIS needs initial_latents: exact posterior samples")
            u = target.unconstrain(initial_latents)
            betas = betas.flip(0)
        else:
            u = target.initial(from_guide=guide is not None)
        log_w, sizes, accept = _run_ais(
            target,
            u,
            betas,
            leapfrog_steps=int(leapfrog_steps),
            step_size=step_size,
            target_accept=target_accept,
            adapt_step_size=adapt_step_size,
            progress=progress,
            desc="reverse AIS" if reverse else "AIS",
        )
    return AISResult(
        log_weights=log_w,
        num_steps=int(num_steps),
        schedule=schedule,
        direction="reverse" if reverse else "forward",
        step_size=sizes,
        acceptance_rate=accept,
    )


@dataclass
class BDMCResult:
    """Forward and reverse AIS on data simulated from the model [2].

    ``lower`` (forward, ``(N,)``) and ``upper`` (reverse) bracket log p(x_n) up to Monte Carlo
    error; ``gap = upper - lower`` bounds the error of forward AIS on such data.
    """

    x: torch.Tensor
    latents: dict[str, torch.Tensor]
    forward: AISResult
    reverse: AISResult

    @property
    def lower(self) -> torch.Tensor:
        return self.forward.values

    @property
    def upper(self) -> torch.Tensor:
        return self.reverse.values

    @property
    def gap(self) -> torch.Tensor:
        return self.upper - self.lower

    @property
    def lower_mean(self) -> float:
        return float(self.lower.mean())

    @property
    def upper_mean(self) -> float:
        return float(self.upper.mean())

    @property
    def gap_mean(self) -> float:
        return float(self.gap.mean())

    def __repr__(self) -> str:
        return (
            f"BDMCResult(lower={self.lower_mean:.3f}, upper={self.upper_mean:.3f}, "
            f"gap={self.gap_mean:.3f}, T={self.forward.num_steps}, N={self.lower.numel()})"
        )


@torch.no_grad()
def simulate(
    model: Callable, example_x: torch.Tensor, num_data: int, *args
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Draws ``(x_n, z_n) ~ p(x, z)`` for ``n < num_data`` by running the model unconditioned.

    ``example_x`` fixes the shape of one datum (its values are ignored). The model must have
    one observed site, holding ``x`` (possibly reshaped). Returns ``(x, {latent: value})``.
    """
    if int(num_data) < 1:
        raise ValueError(f"num_data must be >= 1, got {num_data}")
    template = example_x[:1].expand(int(num_data), *example_x.shape[1:]).clone()
    conditioned = poutine.trace(model).get_trace(template, *args)
    observed = [s for s in scored_sites(conditioned) if s["is_observed"]]
    if len(observed) != 1:
        raise ValueError(
            f"simulate/bdmc need a model with exactly one observed site, found "
            f"{[s['name'] for s in observed]}"
        )
    trace = poutine.trace(poutine.uncondition(model)).get_trace(template, *args)
    value = trace.nodes[observed[0]["name"]]["value"]
    if value.numel() != template.numel():
        raise ValueError(
            f"the observed site {observed[0]['name']!r} has {value.numel()} values, x has "
            f"{template.numel()}: simulate needs the observed site to hold x"
        )
    x = value.reshape(template.shape).to(template.dtype)
    observed_names = {s["name"] for s in observed}
    latents = {
        s["name"]: s["value"].detach()
        for s in latent_sites(trace)
        if s["name"] not in observed_names
    }
    return x, latents


def bdmc(
    model: Callable,
    num_data: int,
    num_steps: int = 1000,
    num_chains: int = 16,
    *args,
    example_x: torch.Tensor,
    guide: Callable | None = None,
    schedule: str = "sigmoid",
    leapfrog_steps: int = 10,
    step_size: float = 0.05,
    target_accept: float = 0.65,
    progress: bool = False,
    seed: int | None = None,
) -> BDMCResult:
    """Bidirectional Monte Carlo [2]: log p(x) sandwiched on ``num_data`` simulated data.

    Simulates ``(x_n, z_n) ~ p(x, z)`` (the model run with its observed site sampled), runs
    forward AIS (stochastic lower bound) and reverse AIS started from the exact posterior
    sample ``z_n`` (stochastic upper bound) with the same schedule, and returns both.
    ``example_x`` gives the shape of one datum; extra ``args`` (``num_data`` rows each) are
    passed to the model. See :func:`ais_log_likelihood` for the other arguments.
    """
    with _seeded(seed):
        x, latents = simulate(model, example_x, num_data, *args)
        common = dict(
            num_steps=num_steps,
            num_chains=num_chains,
            guide=guide,
            schedule=schedule,
            leapfrog_steps=leapfrog_steps,
            step_size=step_size,
            target_accept=target_accept,
            progress=progress,
        )
        forward = ais_log_likelihood(model, x, *args, **common)
        reverse = ais_log_likelihood(
            model, x, *args, initial_latents=latents, reverse=True, **common
        )
    return BDMCResult(x=x, latents=latents, forward=forward, reverse=reverse)
