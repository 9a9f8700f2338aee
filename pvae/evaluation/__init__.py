"""Evaluation of trained models: importance-sampled log-likelihood (and, in submodules, AIS,
bidirectional Monte Carlo and posterior-collapse metrics)."""

from pvae.evaluation.importance import LogLikelihood, log_importance_weights, log_likelihood

__all__ = ["LogLikelihood", "log_importance_weights", "log_likelihood"]
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
