"""Evaluation of trained models, numbers only: importance-sampled log-likelihood (and, in
submodules, AIS, bidirectional Monte Carlo, the bound ladder and posterior-collapse metrics).
Figures of these numbers live in :mod:`pvae.figures`."""

from pvae.evaluation.importance import (
    LogLikelihood,
    log_importance_weights,
    log_likelihood,
    mean_and_stderr,
)

__all__ = ["LogLikelihood", "log_importance_weights", "log_likelihood", "mean_and_stderr"]
from pvae.evaluation.ais import AISResult, BDMCResult, ais_log_likelihood, bdmc, simulate  # noqa: E402

__all__ += ["AISResult", "BDMCResult", "ais_log_likelihood", "bdmc", "simulate"]
from pvae.evaluation.collapse import (  # noqa: E402
    ActiveUnits,
    active_units,
    kl_per_dimension,
    mutual_information,
    posterior_means,
)

__all__ += [
    "ActiveUnits",
    "active_units",
    "kl_per_dimension",
    "mutual_information",
    "posterior_means",
]
from pvae.evaluation.ladder import BoundLadder, LadderRow, bound_ladder, iwae_bounds  # noqa: E402

__all__ += ["BoundLadder", "LadderRow", "bound_ladder", "iwae_bounds"]
from pvae.evaluation.mmd import mmd  # noqa: E402

__all__ += ["mmd"]
