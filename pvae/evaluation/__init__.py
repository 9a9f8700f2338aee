"""Evaluation of trained models: importance-sampled log-likelihood (and, in submodules, AIS,
bidirectional Monte Carlo and posterior-collapse metrics)."""

from pvae.evaluation.importance import LogLikelihood, log_importance_weights, log_likelihood

__all__ = ["LogLikelihood", "log_importance_weights", "log_likelihood"]
