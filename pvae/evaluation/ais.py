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
Starting from the guide (``guide=``) is the recommended mode for held-out data: the path
is shorter and the same T gives a tighter estimate; the prior start is the one BDMC uses.

Run backwards from an exact posterior sample (available for data simulated from the model),
the same construction gives unbiased weights for 1 / p(x), hence a stochastic *upper* bound.
BDMC [2] brackets log p(x) between the two on simulated data; the gap bounds the error of
forward AIS on such data [3].

HMC step sizes. The weights are exactly valid (E[w] = p(x)) because no step size depends on
the chains whose weights are kept: a short *pilot* AIS run (``tune_steps`` temperatures on
the sigmoid schedule, or the linear one for ``schedule="linear"``, after 10 transitions at beta = 0, with its own chains whose
weights are dropped) adapts a step size per datum toward ``target_accept`` (default 0.8, as
Stan's; on a latent-Gaussian model the error at T = 1,000 measured 0.075 / 0.062 / 0.052
nats at targets 0.5 / 0.65 / 0.8: with few leapfrog steps, smaller steps mix better)
(``log eps += 1.5 (accept - target)`` after each transition), and the main run *replays*
the pilot's step sizes, smoothed and interpolated in beta, as a fixed schedule. The pilot
also takes the warm-up out of the main run (an in-run adaptation from a fixed start spends
the first ~100 transitions getting there). In the main run every chain and transition then
multiplies its datum's step size by a uniform factor in ``[1 - jitter, 1 + jitter]``
(default [0.5, 1.5]): with a fixed number of leapfrog steps, chains on a near-Gaussian
posterior otherwise resonate (the trajectory returns near its start while the acceptance
rate stays high, so no adaptation sees it) and stop mixing for long runs of temperatures.
A random step size keeps every transition f_t-invariant [4], so the estimator stays valid.

Schedule. By default (``schedule="adaptive"``) the same pilot run also places the main run's
temperatures: with transitions that sampled f_t exactly, the log weight's variance would be
``sum_t (beta_t - beta_{t-1})^2 V(beta_{t-1})``, ``V(beta) = Var_{f_beta}[log p(x, z) - log
p_0(z)]``, smallest over T-step schedules when every step covers the same thermodynamic
length ``sqrt(V) dbeta`` [5, 6]. The pilot records V at its temperatures (over each datum's
chains, averaged over the data) and the main run's schedule equalizes that length (with 10%
of the temperatures placed as the sigmoid's, for robustness). On a latent-Gaussian model
with z in R^20 and x in R^100 the sigmoid's exact-transition variance is 3.6x the optimum,
the pilot's schedule within 4% of it. The schedule is fixed before the main run, from chains
whose weights are dropped, so the weights stay exactly valid. Not adopted, measured on that
model at T = 1,000 (variance of log w, two seeds): jittering the number of leapfrog steps
(L in 5..15 per transition: 2.08 / 2.48 against 2.18 / 2.35 without) and partial momentum
refreshment (p <- 0.5 p + sqrt(0.75) xi: 2.59 / 2.27; 0.9: 4.48, slower energy mixing); a
diagonal mass matrix cannot help where the posterior's correlations are not axis-aligned
(its exact diagonal lowers that posterior's condition number only from 6.6 to 6.0).

Speed. The model (and guide) are traced once, with :func:`torch.fx` (``make_fx``), into one
plain function of the unconstrained latents that returns ``log p_0``, ``log p(x, z)`` and both
gradients; the loop calls that function and none of Pyro. Each temperature reuses the last
leapfrog step's gradients (the gradient of f_beta is ``(1 - beta) grad log p_0 + beta grad
log p(x, z)`` for any beta), so a run costs ``1 + (T - 1) L`` gradient evaluations. The
traced function is checked against the model at a second point and replaced by the
model itself if they differ (a model whose control flow depends on z's values); short runs
(``num_steps * leapfrog_steps < 1000``) are not traced.

Batched over data and chains: the model runs inside a ``"particles"`` plate of size K
(chains = particles), conditioned on the current latents. Any model whose latent sites are
continuous and sit in the ``"data"`` plate works; latents with constrained support run in
unconstrained space through ``biject_to(support)``.

References:
    [1] Neal. Annealed Importance Sampling. Statistics and Computing 11, 2001.
        arXiv:physics/9803008
    [2] Grosse, Ghahramani, Adams. Sandwiching the marginal likelihood using bidirectional
        Monte Carlo. 2015. arXiv:1511.02543
    [3] Wu, Burda, Salakhutdinov, Grosse. On the Quantitative Analysis of Decoder-Based
        Generative Models. ICLR 2017. arXiv:1611.04273
    [4] Neal. MCMC using Hamiltonian dynamics. Handbook of MCMC, 2011, section 5.4.2.2
        (randomly chosen step sizes). arXiv:1206.1901
    [5] Grosse, Maddison, Salakhutdinov. Annealing between distributions by averaging
        moments. NIPS 2013 (the asymptotically optimal schedule moves at constant speed in
        the Fisher metric, i.e. equal thermodynamic length per step).
    [6] Zhou, Johansen, Aston. Toward automatic model comparison: an adaptive sequential
        Monte Carlo approach. JCGS 2016. arXiv:1303.3123
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field

import pyro
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
#: ``schedule=`` values of :func:`ais_log_likelihood`: the fixed ones, and ``"adaptive"``, the
#: pilot run's equal-thermodynamic-length schedule (:meth:`StepSizeTuning.schedule`).
ADAPTIVE = "adaptive"
RUN_SCHEDULES = (ADAPTIVE, *SCHEDULES)

# Step-size tuning (the pilot run; see the module docstring).
STEP_SIZE_MIN = 1e-4
STEP_SIZE_MAX = 0.5
TUNE_GAIN = 1.5  # log eps += TUNE_GAIN * (acceptance - target) after each pilot transition
TUNE_WARMUP = 10  # pilot transitions at beta = 0 before it anneals
TUNE_SMOOTHING = 5  # moving-average window (pilot temperatures) of the replayed log eps
SCHEDULE_MIX = 0.1  # share of the adaptive schedule's temperatures placed as the sigmoid's
TRACE_MIN_GRADIENTS = 1000  # trace the density when num_steps * leapfrog_steps reaches this


def default_tune_steps(num_steps: int) -> int:
    """Pilot temperatures for a run of ``num_steps``: T / 10, at least 10, at most 200."""
    return int(min(max(10, int(num_steps) // 10), 200))


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


def _sigmoid_position(betas: torch.Tensor, delta: float = 4.0) -> torch.Tensor:
    """The inverse of the sigmoid schedule: the fraction ``t / T`` at which it reaches
    ``betas`` (float64, in [0, 1])."""
    s0, s1 = torch.sigmoid(torch.tensor([-delta, delta], dtype=torch.float64))
    s = (betas * (s1 - s0) + s0).clamp(s0, s1)
    return ((torch.logit(s) / delta + 1.0) / 2.0).clamp(0.0, 1.0)


def _moving_average(values: torch.Tensor, window: int = 0) -> torch.Tensor:
    """Centered moving average over dim 0 of ``(J, N)`` values, the ends padded by repeats."""
    window = min(window or TUNE_SMOOTHING, len(values))
    if window <= 1:
        return values
    half = window // 2
    padded = torch.cat(
        [values[:1].expand(half, -1), values, values[-1:].expand(window - 1 - half, -1)]
    )
    return padded.unfold(0, window, 1).mean(-1)[: len(values)]


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

    # -- one flat state (K, N, D) -------------------------------------------------------------
    def layout(self, template: dict[str, torch.Tensor]) -> None:
        """Records how each site's unconstrained value maps to columns of a ``(K, N, D)``
        tensor (chains, data, all latent coordinates), from one value per site."""
        self._layout = []
        start = 0
        for s in self.sites:
            shape = tuple(template[s.name].shape)
            batch_dims = len(shape) - s.event_dim
            chain_dim, data_dim = batch_dims - self.num_dims, batch_dims + self.data_dim
            if (
                chain_dim < 0
                or shape[chain_dim] != self.num_chains
                or shape[data_dim] != (self.num_data)
            ):
                raise ValueError(
                    f"latent site {s.name!r} has shape {shape}: AIS needs its chain and data "
                    f"dims at {chain_dim} and {data_dim}"
                )
            rest = tuple(n for i, n in enumerate(shape) if i not in (chain_dim, data_dim))
            size = math.prod(rest)
            self._layout.append((s.name, start, start + size, chain_dim, data_dim, rest))
            start += size
        self.num_coords = start

    def flatten(self, values: dict[str, torch.Tensor]) -> torch.Tensor:
        k, n = self.num_chains, self.num_data
        parts = [
            values[name].movedim((cd, dd), (0, 1)).reshape(k, n, end - begin)
            for name, begin, end, cd, dd, _ in self._layout
        ]
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=-1)

    def unflatten(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        k, n = self.num_chains, self.num_data
        return {
            name: flat[..., begin:end].reshape(k, n, *rest).movedim((0, 1), (cd, dd))
            for name, begin, end, cd, dd, rest in self._layout
        }

    def density(self, flat: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """``(log p_0, log p(x, z), grad log p_0, grad log p(x, z))`` at ``u = flat``: values
        ``(K, N)``, gradients ``(K, N, D)`` with respect to ``u``."""
        with torch.enable_grad():
            leaf = flat.detach().requires_grad_(True)
            log_p0, log_joint = self.log_densities(self.unflatten(leaf))
            (grad_joint,) = torch.autograd.grad(log_joint.sum(), leaf, retain_graph=True)
            (grad_p0,) = torch.autograd.grad(log_p0.sum(), leaf, allow_unused=True)
        if grad_p0 is None:
            grad_p0 = torch.zeros_like(leaf)
        return log_p0.detach(), log_joint.detach(), grad_p0.detach(), grad_joint.detach()

    def traced_density(self, example: torch.Tensor) -> Callable | None:
        """:meth:`density` traced once into a plain torch function of ``u``: ``make_fx``
        records the aten ops of the model, the guide and both backward passes (Pyro's
        validation off while tracing), and TorchScript runs the frozen graph without Python
        per op. ``None`` if it cannot be traced, or if the function differs from
        :meth:`density` at a second point (control flow that depends on z's values)."""
        try:
            from torch.fx.experimental.proxy_tensor import make_fx

            with pyro.validation_enabled(False), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                graph = make_fx(lambda u: self.density(u), _error_on_data_dependent_ops=False)(
                    example
                )
                graph.graph.eliminate_dead_code()
                graph.recompile()
                function = graph
                try:
                    function = torch.jit.freeze(
                        torch.jit.trace(graph, example, check_trace=False).eval()
                    )
                except Exception:  # noqa: BLE001 - the fx graph alone still skips Pyro
                    function = graph
                probe = 0.5 * example + 0.25
                ours, theirs = function(probe), self.density(probe)
        except Exception:  # noqa: BLE001 - any failure to trace falls back to the model
            return None
        for a, b in zip(ours, theirs, strict=True):
            scale = float(b.abs().max()) if b.numel() and torch.isfinite(b).all() else 1.0
            if a.shape != b.shape or not torch.allclose(
                a, b, rtol=1e-4, atol=1e-4 * max(1.0, scale), equal_nan=True
            ):
                return None
        return function


_State = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


def _hmc_transition(
    density: Callable,
    u: torch.Tensor,
    state: _State,
    beta: float,
    step_size: torch.Tensor,
    leapfrog_steps: int,
) -> tuple[torch.Tensor, _State, torch.Tensor]:
    """One HMC step leaving f_beta invariant for every (chain, datum), on the flat ``u``
    ``(K, N, D)`` with step sizes ``(K, N, 1)``; ``state`` holds the densities and gradients
    at ``u`` (:meth:`_AnnealedTarget.density`). Returns (u, its state, accept prob ``(K, N)``).
    """
    log_p0, log_joint, grad_p0, grad_joint = state
    a, b = 1.0 - beta, beta
    momentum = torch.randn_like(u)
    kinetic0 = 0.5 * (momentum * momentum).sum(-1)
    p = momentum + (0.5 * step_size) * (a * grad_p0 + b * grad_joint)
    q = u
    new = state
    for i in range(leapfrog_steps):
        q = q + step_size * p
        new = density(q)
        factor = 0.5 if i == leapfrog_steps - 1 else 1.0
        p = p + (factor * step_size) * (a * new[2] + b * new[3])
    kinetic1 = 0.5 * (p * p).sum(-1)
    log_accept = (a * new[0] + b * new[1] - kinetic1) - (a * log_p0 + b * log_joint - kinetic0)
    log_accept = torch.nan_to_num(log_accept, nan=-math.inf, posinf=-math.inf).clamp(max=0.0)
    accept = torch.rand_like(log_accept).log() < log_accept
    coords = accept.unsqueeze(-1)
    u = torch.where(coords, q, u)
    state = (
        torch.where(accept, new[0], log_p0),
        torch.where(accept, new[1], log_joint),
        torch.where(coords, new[2], grad_p0),
        torch.where(coords, new[3], grad_joint),
    )
    return u, state, log_accept.exp()


def _jittered(step_size: torch.Tensor, num_chains: int, jitter: float) -> torch.Tensor:
    """Per-datum step sizes ``(N,)`` -> ``(K, N, 1)``, each times U(1 - jitter, 1 + jitter)."""
    sizes = step_size.expand(num_chains, -1).unsqueeze(-1)
    if jitter == 0.0:
        return sizes
    return sizes * (1.0 + jitter * (2.0 * torch.rand_like(sizes) - 1.0))


def _run_ais(
    density: Callable,
    u: torch.Tensor,
    betas: torch.Tensor,
    step_sizes: torch.Tensor,
    *,
    leapfrog_steps: int,
    jitter: float,
    progress: bool,
    desc: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Runs the chains through ``betas`` (increasing: forward; decreasing: reverse), the
    transition at ``betas[t]`` with the per-datum step sizes ``step_sizes[t - 1]``.
    Returns the log weights ``(K, N)`` and the mean acceptance per datum ``(N,)``."""
    num_chains, n = u.shape[0], u.shape[1]
    log_w = torch.zeros(num_chains, n, dtype=torch.float64)
    accept_sum = torch.zeros(n)
    steps = len(betas) - 1
    values = betas.tolist()
    state = density(u)
    for t in tqdm(range(1, steps + 1), desc=desc, disable=not progress, unit="step"):
        beta_prev, beta = values[t - 1], values[t]
        log_w += (beta - beta_prev) * (state[1] - state[0]).double()
        if t == steps:  # the last transition does not change the weights
            break
        sizes = _jittered(step_sizes[t - 1], num_chains, jitter)
        u, state, accept_prob = _hmc_transition(density, u, state, beta, sizes, leapfrog_steps)
        accept_sum += accept_prob.mean(0)
    return log_w, accept_sum / max(1, steps - 1)


@dataclass
class StepSizeTuning:
    """A pilot run's step sizes: ``log_step_size[j]`` ``(N,)`` at inverse temperature
    ``betas[j]`` (increasing), smoothed; :meth:`at` interpolates them (piecewise linear in
    beta, constant beyond the ends). ``log_weight_var[j]``, the variance of the log weight's
    increments there, gives the adaptive annealing schedule (:meth:`schedule`)."""

    betas: torch.Tensor  # (J,) float64
    log_step_size: torch.Tensor  # (J, N)
    acceptance_rate: torch.Tensor  # (N,) over the pilot's annealing transitions
    # (J,): Var[log p(x, z) - log p_0(z)] over the pilot's chains at betas[j], mean over data
    log_weight_var: torch.Tensor | None = None

    def at(self, betas: torch.Tensor) -> torch.Tensor:
        """Step sizes ``(len(betas), N)`` at ``betas``."""
        knots = self.betas.to(betas.dtype)
        j = torch.searchsorted(knots, betas.contiguous()).clamp(1, len(knots) - 1)
        lo, hi = knots[j - 1], knots[j]
        frac = ((betas - lo) / (hi - lo).clamp_min(1e-12)).clamp(0.0, 1.0).float()[:, None]
        log_eps = (1.0 - frac) * self.log_step_size[j - 1] + frac * self.log_step_size[j]
        return log_eps.exp()

    def schedule(self, num_steps: int, mix: float = SCHEDULE_MIX) -> torch.Tensor:
        """Inverse temperatures ``(T + 1,)`` at equal steps of thermodynamic length.

        With exact transitions the log weight's variance is ``sum_t (beta_t - beta_{t-1})^2
        V(beta_{t-1})``, ``V(beta) = Var_{f_beta}[log p(x, z) - log p_0(z)]``; over schedules of
        T steps it is smallest, ``Lambda^2 / T`` with ``Lambda = int_0^1 sqrt(V) dbeta``, when
        every step covers the same length ``sqrt(V) dbeta`` [5, 6]. ``V`` is the pilot's
        (:attr:`log_weight_var`, smoothed, linear in between); a share ``mix`` of the
        temperatures is placed as the sigmoid schedule's, so that a noisy or vanishing ``V``
        (an exact guide) still gives a sensible schedule. Falls back to the sigmoid when the
        pilot recorded no finite ``V``.
        """
        base = annealing_schedule(num_steps, "sigmoid")
        v = self.log_weight_var
        if v is None or not bool(torch.isfinite(v).all()) or int(num_steps) < 2:
            return base
        rate = _moving_average(v.double().clamp_min(0.0).sqrt()[:, None])[:, 0]
        knots = self.betas.double()
        # A fine grid, dense near both ends, on which to integrate and invert.
        grid = torch.cat([knots, annealing_schedule(max(4 * int(num_steps), 4000), "sigmoid")])
        grid = torch.unique(grid)  # sorted
        j = torch.searchsorted(knots, grid).clamp(1, len(knots) - 1)
        lo, hi = knots[j - 1], knots[j]
        frac = ((grid - lo) / (hi - lo).clamp_min(1e-300)).clamp(0.0, 1.0)
        r = (1.0 - frac) * rate[j - 1] + frac * rate[j]
        length = torch.cat([r.new_zeros(1), torch.cumsum(0.5 * (r[1:] + r[:-1]) * grid.diff(), 0)])
        if not float(length[-1]) > 0.0:
            return base
        share = (1.0 - mix) * length / length[-1] + mix * _sigmoid_position(grid)
        levels = torch.linspace(0.0, 1.0, int(num_steps) + 1, dtype=torch.float64)
        k = torch.searchsorted(share, levels).clamp(1, len(grid) - 1)
        s_lo, s_hi = share[k - 1], share[k]
        w = ((levels - s_lo) / (s_hi - s_lo).clamp_min(1e-300)).clamp(0.0, 1.0)
        betas = grid[k - 1] + w * (grid[k] - grid[k - 1])
        betas[0], betas[-1] = 0.0, 1.0
        if not bool((betas.diff() > 0).all()):
            return base
        return betas


def _tune(
    target: _AnnealedTarget,
    density: Callable,
    *,
    from_guide: bool,
    tune_steps: int,
    schedule: str,
    leapfrog_steps: int,
    step_size: float,
    target_accept: float,
    jitter: float,
    progress: bool,
    adapt: bool = True,
) -> StepSizeTuning:
    """The pilot run: fresh chains from p_0 (weights not kept) anneal through ``tune_steps``
    temperatures after :data:`TUNE_WARMUP` transitions at beta = 0, adapting a step size per
    datum after every transition (with ``adapt``) and recording the variance of the log
    weight's increments; returns the smoothed log step sizes and those variances per
    temperature."""
    u = target.flatten(target.initial(from_guide))
    state = density(u)
    log_eps = torch.full((target.num_data,), math.log(step_size))
    bounds = (math.log(STEP_SIZE_MIN), math.log(STEP_SIZE_MAX))
    gain = TUNE_GAIN if adapt else 0.0
    pilot = annealing_schedule(tune_steps, schedule)
    betas = [0.0] * TUNE_WARMUP + pilot[1:].tolist()
    records, variances, accept_sum = [], [], torch.zeros(target.num_data)
    for i, beta in enumerate(tqdm(betas, desc="AIS tuning", disable=not progress, unit="step")):
        sizes = _jittered(log_eps.exp(), target.num_chains, jitter)
        u, state, accept_prob = _hmc_transition(density, u, state, beta, sizes, leapfrog_steps)
        rate = accept_prob.mean(0)
        log_eps = (log_eps + gain * (rate - target_accept)).clamp(*bounds)
        if i >= TUNE_WARMUP - 1:  # the last warm-up transition gives the beta = 0 knot
            records.append(log_eps)
            increment = (state[1] - state[0]).double()  # (K, N)
            # Over each datum's chains; with one chain, over the data.
            if increment.shape[0] > 1:
                variances.append(increment.var(0).mean())
            else:
                variances.append(increment.var() if increment.numel() > 1 else increment.sum() * 0)
        if i >= TUNE_WARMUP:
            accept_sum += rate
    log_step = _moving_average(torch.stack(records))  # (tune_steps + 1, N) at pilot[0..]
    return StepSizeTuning(
        pilot,
        log_step,
        accept_sum / max(1, len(betas) - TUNE_WARMUP),
        torch.stack(variances),
    )


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


@dataclass(frozen=True)
class _Settings:
    """The options of one AIS or BDMC call, checked once here (``ValueError`` on bad input)."""

    num_steps: int
    num_chains: int
    schedule: str
    leapfrog_steps: int
    step_size: float
    target_accept: float
    adapt_step_size: bool
    jitter: float
    tune_steps: int | None
    trace: bool | None
    progress: bool

    def __post_init__(self) -> None:
        if self.schedule not in RUN_SCHEDULES:
            raise ValueError(f"schedule must be one of {RUN_SCHEDULES}, got {self.schedule!r}")
        if int(self.num_chains) < 1:
            raise ValueError(f"num_chains must be >= 1, got {self.num_chains}")
        if int(self.leapfrog_steps) < 1:
            raise ValueError(f"leapfrog_steps must be >= 1, got {self.leapfrog_steps}")
        if not self.step_size > 0:
            raise ValueError(f"step_size must be positive, got {self.step_size}")
        if not 0.0 < self.target_accept < 1.0:
            raise ValueError(f"target_accept must be in (0, 1), got {self.target_accept}")
        if not 0.0 <= self.jitter < 1.0:
            raise ValueError(f"jitter must be in [0, 1), got {self.jitter}")
        if self.tune_steps is not None and int(self.tune_steps) < 1:
            raise ValueError(f"tune_steps must be >= 1, got {self.tune_steps}")
        annealing_schedule(self.num_steps)  # validates num_steps


class _Sampler:
    """What the runs of one (model, guide, x, K) share: the annealed target, its density
    function (traced or not) and the pilot run (step sizes and schedule)."""

    def __init__(
        self,
        model: Callable,
        guide: Callable | None,
        x: torch.Tensor,
        args: tuple,
        settings: _Settings,
    ) -> None:
        num_steps = settings.num_steps
        self.target = _AnnealedTarget(model, guide, x, args, int(settings.num_chains))
        self.from_guide = guide is not None
        self.start = self.target.initial(self.from_guide)
        self.target.layout(self.start)
        self.leapfrog_steps = int(settings.leapfrog_steps)
        self.jitter = float(settings.jitter)
        self.step_size = float(settings.step_size)
        self.schedule = settings.schedule
        self.progress = settings.progress
        trace = settings.trace
        if trace is None:
            trace = int(num_steps) * self.leapfrog_steps >= TRACE_MIN_GRADIENTS
        traced = self.target.traced_density(self.target.flatten(self.start)) if trace else None
        self.traced = traced is not None
        self.density = traced if traced is not None else self.target.density
        self.adapt_step_size = bool(settings.adapt_step_size)
        self.tuning = None
        if self.adapt_step_size or self.schedule == ADAPTIVE:
            tune_steps = settings.tune_steps
            steps = default_tune_steps(num_steps) if tune_steps is None else int(tune_steps)
            self.tuning = _tune(
                self.target,
                self.density,
                from_guide=self.from_guide,
                tune_steps=steps,
                schedule="sigmoid" if self.schedule == ADAPTIVE else self.schedule,
                leapfrog_steps=self.leapfrog_steps,
                step_size=self.step_size,
                target_accept=settings.target_accept,
                jitter=self.jitter,
                progress=self.progress,
                adapt=self.adapt_step_size,
            )

    def betas(self, num_steps: int) -> torch.Tensor:
        """The main run's inverse temperatures ``(T + 1,)``, increasing."""
        if self.schedule == ADAPTIVE:
            return self.tuning.schedule(num_steps)
        return annealing_schedule(num_steps, self.schedule)

    def run(self, betas: torch.Tensor, latents: dict[str, torch.Tensor] | None) -> AISResult:
        """Forward AIS from p_0 (``latents=None``) or reverse AIS from ``latents``."""
        reverse = latents is not None
        if reverse:
            u = self.target.flatten(self.target.unconstrain(latents))
            betas = betas.flip(0)
        else:
            u = self.target.flatten(self.start)
        inner = betas[1:-1]
        if self.adapt_step_size:
            sizes = self.tuning.at(inner)
        else:
            sizes = torch.full((len(inner), self.target.num_data), self.step_size)
        log_w, accept = _run_ais(
            self.density,
            u,
            betas,
            sizes,
            leapfrog_steps=self.leapfrog_steps,
            jitter=self.jitter,
            progress=self.progress,
            desc="reverse AIS" if reverse else "AIS",
        )
        extra: dict = {"traced": self.traced}
        if self.tuning is not None:
            extra["tuning"] = self.tuning
            extra["betas"] = betas
        last = sizes[-1] if len(sizes) else torch.full((self.target.num_data,), self.step_size)
        return AISResult(
            log_weights=log_w,
            num_steps=len(betas) - 1,
            schedule=self.schedule,
            direction="reverse" if reverse else "forward",
            step_size=last,
            acceptance_rate=accept,
            extra=extra,
        )


@torch.no_grad()
def ais_log_likelihood(
    model: Callable,
    x: torch.Tensor,
    *args,
    num_steps: int = 1000,
    num_chains: int = 16,
    guide: Callable | None = None,
    schedule: str = ADAPTIVE,
    leapfrog_steps: int = 10,
    step_size: float = 0.05,
    target_accept: float = 0.8,
    adapt_step_size: bool = True,
    initial_latents: dict[str, torch.Tensor] | None = None,
    reverse: bool = False,
    progress: bool = False,
    seed: int | None = None,
    jitter: float = 0.5,
    tune_steps: int | None = None,
    trace: bool | None = None,
) -> AISResult:
    """AIS estimate of log p(x_n) for every datum of ``x`` [1, 3].

    Args:
        model: ``model(x, *args)`` with its latents in ``pyro.plate("data", ...)``.
        x: a batch of data, ``(N, ...)``; all of it goes through the model at once.
        num_steps: T, the number of intermediate distributions.
        num_chains: K, the number of chains per datum (a particle plate).
        guide: start from ``q(z | x)`` instead of the prior (path ``q^(1-b) p(x, z)^b``);
            recommended on held-out data (a shorter path: tighter at the same T).
        schedule: ``"adaptive"`` (default: the pilot run's equal-thermodynamic-length
            schedule, see the module docstring; it runs a pilot even without
            ``adapt_step_size``), or the fixed ``"sigmoid"`` or ``"linear"`` spacing.
        leapfrog_steps, step_size: HMC settings; with ``adapt_step_size`` ``step_size`` is
            where the pilot run starts, and the main run replays the pilot's per-datum step
            sizes (the weights stay exactly unbiased, see the module docstring); without it
            ``step_size`` is used throughout.
        initial_latents: for ``reverse=True``: exact posterior samples ``{name: (N, ...)}``.
        reverse: run from beta=1 (starting at ``initial_latents``) down to 0; the estimate
            is then a stochastic upper bound (see :func:`bdmc`).
        seed: seeds torch's generator for this call only (restored afterwards).
        jitter: each chain and transition multiplies its step size by U(1 - jitter,
            1 + jitter) (0 turns it off).
        tune_steps: the pilot run's temperatures (default :func:`default_tune_steps`).
        trace: trace the model into a plain function of z (default: when
            ``num_steps * leapfrog_steps >= 1000``); ``result.extra["traced"]`` says whether
            the traced function was used.

    Returns:
        :class:`AISResult` with ``log_weights`` ``(K, N)``, ``values`` ``(N,)``, ``ess``;
        ``extra["tuning"]`` holds the pilot's :class:`StepSizeTuning` and ``extra["betas"]``
        the main run's schedule (when a pilot ran).
    """
    _check_data(x, args)
    settings = _Settings(
        num_steps=num_steps,
        num_chains=num_chains,
        schedule=schedule,
        leapfrog_steps=leapfrog_steps,
        step_size=step_size,
        target_accept=target_accept,
        adapt_step_size=adapt_step_size,
        jitter=jitter,
        tune_steps=tune_steps,
        trace=trace,
        progress=progress,
    )
    if reverse and initial_latents is None:
        raise ValueError("reverse AIS needs initial_latents: exact posterior samples")
    with _seeded(seed):
        sampler = _Sampler(model, guide, x, args, settings)
        return sampler.run(sampler.betas(num_steps), initial_latents if reverse else None)


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
    schedule: str = ADAPTIVE,
    leapfrog_steps: int = 10,
    step_size: float = 0.05,
    target_accept: float = 0.8,
    progress: bool = False,
    seed: int | None = None,
    jitter: float = 0.5,
    tune_steps: int | None = None,
    trace: bool | None = None,
) -> BDMCResult:
    """Bidirectional Monte Carlo [2]: log p(x) sandwiched on ``num_data`` simulated data.

    Simulates ``(x_n, z_n) ~ p(x, z)`` (the model run with its observed site sampled), runs
    forward AIS (stochastic lower bound) and reverse AIS started from the exact posterior
    sample ``z_n`` (stochastic upper bound) with the same schedule, and returns both.
    ``example_x`` gives the shape of one datum; extra ``args`` (``num_data`` rows each) are
    passed to the model. See :func:`ais_log_likelihood` for the other arguments.
    The forward and reverse runs share one pilot run (:func:`ais_log_likelihood`), made with
    chains of their own, and one traced density.
    """
    settings = _Settings(
        num_steps=num_steps,
        num_chains=num_chains,
        schedule=schedule,
        leapfrog_steps=leapfrog_steps,
        step_size=step_size,
        target_accept=target_accept,
        adapt_step_size=True,
        jitter=jitter,
        tune_steps=tune_steps,
        trace=trace,
        progress=progress,
    )
    with _seeded(seed), torch.no_grad():
        x, latents = simulate(model, example_x, num_data, *args)
        sampler = _Sampler(model, guide, x, args, settings)
        betas = sampler.betas(num_steps)
        forward = sampler.run(betas, None)
        reverse = sampler.run(betas, latents)
    return BDMCResult(x=x, latents=latents, forward=forward, reverse=reverse)
