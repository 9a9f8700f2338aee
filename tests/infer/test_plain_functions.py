"""Models written as plain functions (``pyro.param``) after ``fit``: hard to misuse.

``fit`` trains their ``pyro.param`` values in a private store (``result.param_state``).
Evaluating ``model``/``guide`` outside that store used to create fresh, untrained parameters
silently, and a second ``fit`` restarted them. ``result.model``/``result.guide`` run inside the
run's store; ``log_likelihood`` warns when its tracing creates parameters; ``fit`` continues
the parameters of bound callables (or of ``param_state=``).
"""

import warnings

import pyro
import pyro.distributions as dist
import pytest
import torch

from pvae.evaluation import log_likelihood, mean_and_stderr
from pvae.infer.train import fit
from pvae.models import VAE

D, LATENT = 4, 2


def model(x):
    """A Laplace VAE with a linear decoder: z ~ Laplace(0, 1), x ~ N(W z + b, 0.5)."""
    w = pyro.param("decoder_w", torch.zeros(D, LATENT))
    b = pyro.param("decoder_b", torch.zeros(D))
    with pyro.plate("data", x.shape[0]):
        z = pyro.sample("z", dist.Laplace(torch.zeros(LATENT), 1.0).to_event(1))
        pyro.sample("x", dist.Normal(z @ w.T + b, 0.5).to_event(1), obs=x)


def guide(x):
    a = pyro.param("encoder_a", torch.zeros(D, LATENT))
    c = pyro.param("encoder_c", torch.zeros(LATENT))
    log_scale = pyro.param("encoder_log_scale", torch.zeros(LATENT))
    with pyro.plate("data", x.shape[0]):
        pyro.sample("z", dist.Normal(x @ a + c, log_scale.exp()).to_event(1))


def data(n=128):
    g = torch.Generator().manual_seed(1)
    z = torch.distributions.Laplace(0.0, 1.0).sample((n, LATENT))
    w = torch.randn(D, LATENT, generator=g)
    return z @ w.T + 2.0 + 0.5 * torch.randn(n, D, generator=g)


@pytest.fixture(scope="module")
def trained():
    with pyro.get_param_store().scope():
        x = data()
        result = fit(model, guide, x, epochs=15, batch_size=32, lr=0.05, progress=False)
    return x, result


def test_bound_callables_evaluate_with_the_trained_parameters(trained):
    x, result = trained
    pyro.set_rng_seed(3)
    bound = log_likelihood(result.model, result.guide, x, num_samples=50)
    pyro.set_rng_seed(3)
    with result.params():
        scoped = log_likelihood(model, guide, x, num_samples=50)
    torch.testing.assert_close(bound, scoped, rtol=0, atol=0)  # the same draws, the same values
    assert "decoder_w" not in pyro.get_param_store()  # nothing leaked into the global store


def test_log_likelihood_warns_when_it_creates_parameters(trained):
    x, result = trained
    pyro.set_rng_seed(3)
    with pytest.warns(UserWarning, match="'decoder_w'") as record:
        fresh = log_likelihood(model, guide, x, num_samples=50)
    assert "result.model" in str(record[0].message)  # says what to do
    assert len(pyro.get_param_store()) == 0  # the fresh parameters are removed again
    pyro.set_rng_seed(3)
    trained_values = log_likelihood(result.model, result.guide, x, num_samples=50)
    # The untrained model is far worse: the paired per-datum difference is many standard
    # errors (over data) above zero.
    difference = mean_and_stderr(trained_values - fresh)
    assert difference["mean"] > 10 * difference["stderr"]


def test_no_warning_for_parameters_that_modules_own():
    """A PyroModule (module_local_params off) and pyro.module register the modules' own,
    trained tensors in the store: not fresh parameters, no warning."""
    torch.manual_seed(0)
    vae = VAE(latent_dim=2, hidden=(8,))
    x = torch.bernoulli(torch.full((4, 1, 28, 28), 0.3))

    def module_model(x_):
        pyro.module("decoder", vae.decoder)
        vae.model(x_)

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        log_likelihood(vae.model, vae.guide, x, num_samples=2)
        log_likelihood(module_model, vae.guide, x, num_samples=2)


@pytest.mark.parametrize("how", ["bound callables", "param_state"])
def test_a_second_fit_continues_the_parameters(trained, how):
    x, result = trained
    before = {k: v.detach().clone() for k, v in result.param_state["params"].items()}
    assert before["decoder_b"].abs().max() > 0.5  # trained away from its initial zeros
    lr = 1e-6  # Adam moves each parameter by at most ~lr per step: 4 steps
    if how == "bound callables":
        again = fit(result.model, result.guide, x, epochs=1, batch_size=32, lr=lr, progress=False)
    else:
        again = fit(
            model,
            guide,
            x,
            param_state=result.param_state,
            epochs=1,
            batch_size=32,
            lr=lr,
            progress=False,
        )
    assert again.param_state is result.param_state  # the same parameters, trained in place
    for name, value in before.items():
        torch.testing.assert_close(again.param_state["params"][name], value, rtol=0, atol=1e-4)
    # Without either, a second fit starts from the initial values again.
    restarted = fit(model, guide, x, epochs=1, batch_size=32, lr=lr, progress=False)
    assert restarted.param_state["params"]["decoder_b"].abs().max() < 1e-4


def test_bound_callables_of_different_runs_are_refused(trained):
    x, result = trained
    other = fit(model, guide, x[:32], epochs=1, batch_size=32, progress=False)
    with pytest.raises(ValueError, match="different parameter stores"):
        fit(result.model, other.guide, x, epochs=1, progress=False)
    with pytest.raises(ValueError, match="different parameter stores"):
        fit(result.model, result.guide, x, param_state=other.param_state, epochs=1, progress=False)


def test_fit_documents_continued_training():
    assert "param_state=result.param_state" in fit.__doc__
    assert "result.model" in fit.__doc__
