"""The model's and the guide's latent sites must match wherever pvae scores a model/guide pair.

A latent of the model that the guide does not sample is drawn from the prior when the model is
replayed, and its log-density is never weighed against a guide's: the ELBO, the importance
weights, AIS and the diagnostics are then wrong without any sign. pvae checks the two traces
once per call (:func:`pvae.infer.trace.check_site_match`) and names the sites.
"""

import pyro
import pyro.distributions as dist
import pytest
import torch

from pvae.diagnostics import importance_diagnostics
from pvae.evaluation import log_likelihood
from pvae.evaluation.ais import ais_log_likelihood
from pvae.evaluation.collapse import kl_per_dimension
from pvae.infer.objectives import ELBO, IWAE
from pvae.infer.trace import check_site_match, trace_model_guide
from pvae.infer.train import fit


def model(x):
    with pyro.plate("data", x.shape[0]):
        z = pyro.sample("z", dist.Normal(torch.zeros(2), 1.0).to_event(1))
        pyro.sample("x", dist.Normal(z.sum(-1, keepdim=True), 1.0).to_event(1), obs=x)


def guide(x):
    loc = pyro.param("loc", torch.zeros(2))
    with pyro.plate("data", x.shape[0]):
        pyro.sample("z", dist.Normal(loc, 1.0).to_event(1))


def typo_guide(x):  # "w" for "z"
    loc = pyro.param("loc", torch.zeros(2))
    with pyro.plate("data", x.shape[0]):
        pyro.sample("w", dist.Normal(loc, 1.0).to_event(1))


def empty_guide(x):
    pyro.param("loc", torch.zeros(2))


def discrete_model(x):
    """A model-only discrete latent ``c`` (a mixture) the guide does not sample."""
    with pyro.plate("data", x.shape[0]):
        c = pyro.sample("c", dist.Categorical(logits=torch.zeros(2)))
        z = pyro.sample("z", dist.Normal(torch.zeros(2), 1.0).to_event(1))
        loc = z.sum(-1, keepdim=True) + 3.0 * (2 * c.unsqueeze(-1) - 1)
        pyro.sample("x", dist.Normal(loc, 1.0).to_event(1), obs=x)


def observed_y_model(x):
    """``y`` observed in the model, sampled by ``y_guide``: the guide scores a site the
    model does not replay."""
    with pyro.plate("data", x.shape[0]):
        z = pyro.sample("z", dist.Normal(torch.zeros(2), 1.0).to_event(1))
        pyro.sample("y", dist.Bernoulli(0.5), obs=torch.ones(x.shape[0]))
        pyro.sample("x", dist.Normal(z.sum(-1, keepdim=True), 1.0).to_event(1), obs=x)


def y_guide(x):
    loc = pyro.param("loc", torch.zeros(2))
    with pyro.plate("data", x.shape[0]):
        pyro.sample("y", dist.Bernoulli(0.5))
        pyro.sample("z", dist.Normal(loc, 1.0).to_event(1))


X = torch.linspace(-2.0, 2.0, 16).unsqueeze(-1)

# (model, guide, the sites the message must name)
MISMATCHES = [
    pytest.param(model, typo_guide, ["'z'", "'w'"], id="typo"),
    pytest.param(model, empty_guide, ["'z'"], id="empty-guide"),
    pytest.param(discrete_model, guide, ["'c'"], id="model-only-discrete"),
    pytest.param(observed_y_model, y_guide, ["'y'"], id="guide-site-observed-in-model"),
]


@pytest.mark.parametrize("model_fn,guide_fn,sites", MISMATCHES)
def test_shared_tracing_refuses_mismatched_sites(model_fn, guide_fn, sites):
    with pytest.raises(ValueError, match="latent sites") as error:
        trace_model_guide(model_fn, guide_fn, (X,))
    for site in sites:
        assert site in str(error.value)
    with pytest.raises(ValueError, match="latent sites"):
        trace_model_guide(model_fn, guide_fn, (X,), num_particles=3, max_plate_nesting=1)


@pytest.mark.parametrize("model_fn,guide_fn,sites", MISMATCHES)
@pytest.mark.parametrize(
    "objective",
    [ELBO(), ELBO(num_particles=2), IWAE(3), IWAE(3, estimator="dreg")],
    ids=["elbo", "elbo-2", "iwae", "dreg"],
)
def test_objectives_refuse_mismatched_sites(objective, model_fn, guide_fn, sites):
    with pytest.raises(ValueError, match="latent sites") as error:
        objective(model_fn, guide_fn, X, num_data=len(X))
    for site in sites:
        assert site in str(error.value)


@pytest.mark.parametrize("model_fn,guide_fn,sites", MISMATCHES)
def test_evaluators_refuse_mismatched_sites(model_fn, guide_fn, sites):
    with pytest.raises(ValueError, match="latent sites"):
        log_likelihood(model_fn, guide_fn, X, num_samples=4)
    with pytest.raises(ValueError, match="latent sites"):
        importance_diagnostics(model_fn, guide_fn, X, num_samples=4)


def test_ais_and_collapse_metrics_refuse_a_typo_guide():
    with pytest.raises(ValueError, match="latent sites"):
        ais_log_likelihood(model, X, num_steps=2, num_chains=2, guide=typo_guide)
    with pytest.raises(ValueError, match="latent sites"):
        kl_per_dimension(model, X, guide=typo_guide)


@pytest.mark.parametrize("model_fn,guide_fn,sites", MISMATCHES)
def test_fit_refuses_mismatched_sites_before_training(model_fn, guide_fn, sites):
    with pytest.raises(ValueError, match="latent sites") as error:
        fit(model_fn, guide_fn, X, epochs=1, batch_size=8, progress=False)
    for site in sites:
        assert site in str(error.value)


def test_fit_with_a_pyro_elbo_refuses_what_pyro_only_warns_about():
    # Trace_ELBO draws the model-only "c" from the prior and scores log p(c) without a
    # log q(c): Pyro warns "Found vars in model but not guide"; pvae refuses at the probe.
    with pytest.raises(ValueError, match="'c'"):
        fit(
            discrete_model,
            guide,
            X,
            objective=pyro.infer.Trace_ELBO(),
            epochs=1,
            batch_size=8,
            progress=False,
        )


def test_model_side_enumeration_is_allowed_for_traceenum_elbo_only():
    """Pyro's semantics: a model latent marked for enumeration need not be in the guide when
    the ELBO enumerates it (TraceEnum_ELBO sums it out exactly)."""

    def enumerated_model(x):
        locs = pyro.param("locs", torch.tensor([-1.0, 1.0]))
        with pyro.plate("data", x.shape[0]):
            c = pyro.sample(
                "c", dist.Categorical(logits=torch.zeros(2)), infer={"enumerate": "parallel"}
            )
            pyro.sample("x", dist.Normal(locs[c], 1.0), obs=x)

    def no_latent_guide(x):
        pass

    x = X.squeeze(-1)
    elbo = pyro.infer.TraceEnum_ELBO(max_plate_nesting=1)
    result = fit(
        enumerated_model, no_latent_guide, x, objective=elbo, epochs=2, batch_size=8, progress=False
    )
    # Enumeration makes the bound the exact log-likelihood: check it against the mixture's.
    with result.params():
        locs = pyro.param("locs").detach()
        expected = -elbo.loss(enumerated_model, no_latent_guide, x)
    mixture = dist.MixtureSameFamily(
        dist.Categorical(logits=torch.zeros(2)), dist.Normal(locs, 1.0)
    )
    assert expected == pytest.approx(float(mixture.log_prob(x).sum()), rel=1e-5)
    # pvae's own objectives do not enumerate: the same pair is refused.
    with pytest.raises(ValueError, match="'c'"):
        fit(enumerated_model, no_latent_guide, x, epochs=1, batch_size=8, progress=False)
    with pytest.raises(ValueError, match="'c'"):
        fit(
            enumerated_model,
            no_latent_guide,
            x,
            objective=pyro.infer.Trace_ELBO(),
            epochs=1,
            batch_size=8,
            progress=False,
        )


def test_auxiliary_guide_sites_follow_pyros_rule():
    """A guide-only site marked ``is_auxiliary`` is Pyro's way to say "not in the model" (an
    AutoGuide's joint latent); pvae's importance weights cannot use it, a Pyro ELBO can."""

    def auxiliary_guide(x):
        loc = pyro.param("loc", torch.zeros(2))
        with pyro.plate("data", x.shape[0]):
            shift = pyro.sample(
                "shift", dist.Normal(0.0, 0.1), infer={"is_auxiliary": True}
            ).unsqueeze(-1)
            pyro.sample("z", dist.Normal(loc + shift, 1.0).to_event(1))

    with pytest.raises(ValueError, match="'shift'"):
        trace_model_guide(model, auxiliary_guide, (X,))
    model_trace = pyro.poutine.trace(model).get_trace(X)
    guide_trace = pyro.poutine.trace(auxiliary_guide).get_trace(X)
    check_site_match(model_trace, guide_trace, pyro_elbo=pyro.infer.Trace_ELBO())  # no error
    result = fit(
        model,
        auxiliary_guide,
        X,
        objective=pyro.infer.Trace_ELBO(),
        epochs=1,
        batch_size=8,
        progress=False,
    )
    assert len(result.history) == 1


def test_matching_sites_pass_including_m2s_labelled_and_unlabelled_batches():
    from pvae.models import M2

    model_trace, guide_trace = trace_model_guide(model, guide, (X,))
    check_site_match(model_trace, guide_trace)
    m2 = M2(latent_dim=2, hidden=(16,))
    x = torch.rand(4, *m2.input_shape)
    y = torch.tensor([0, 1, 2, 3]) % m2.num_classes
    # Unlabelled: the guide samples (enumerates, under TraceEnum_ELBO) y, the model draws it.
    model_trace, guide_trace = trace_model_guide(m2.model, m2.guide, (x,))
    assert not model_trace.nodes["y"]["is_observed"] and "y" in guide_trace.nodes
    # Labelled: the model observes y, the guide conditions on it.
    model_trace, guide_trace = trace_model_guide(m2.model, m2.guide, (x, y))
    assert model_trace.nodes["y"]["is_observed"] and "y" not in guide_trace.nodes
    values = log_likelihood(m2.model, m2.guide, x, y, num_samples=4)
    assert torch.isfinite(values).all()
