"""The InfoVAE objective (pvae.infer.info): its loss is the (1 - alpha)-weighted ELBO's plus
N (alpha + lambda - 1) MMD^2_u across the batch, computed by hand on a tiny model; its bound
is the ELBO; it trains the zoo's models (vae, svae, the text VAEs, a hierarchical VAE) through
``fit``; bad weights are refused; and Pyro's ``Trace_MMD`` is not this objective."""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
import pytest
import torch
from pyro.contrib.gp.kernels import RBF
from pyro.infer import Trace_MMD
from torch import nn

from pvae.data import load_dataset
from pvae.evaluation.mmd import mmd
from pvae.infer.info import InfoVAEObjective, latent_codes
from pvae.infer.objectives import ELBO, make_objective
from pvae.infer.trace import trace_model_guide
from pvae.infer.train import TrainConfig, fit
from pvae.models.registry import build_model, get_model_class, smoke_config, smoke_dataset
from pvae.runs import TrainSpec


class Tiny(nn.Module):
    """z_n ~ N(0, I_2), x_n ~ N(W z_n, I_3); q(z_n | x_n) = N(A x_n, diag softplus(s)^2)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.w = nn.Parameter(torch.randn(3, 2))
        self.a = nn.Parameter(torch.randn(2, 3) * 0.3)
        self.s = nn.Parameter(torch.randn(2) * 0.3)

    def scale(self) -> torch.Tensor:
        return nn.functional.softplus(self.s)

    def model(self, x: torch.Tensor) -> None:
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(torch.zeros(2), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(z @ self.w.T, 1.0).to_event(1), obs=x)

    def guide(self, x: torch.Tensor) -> None:
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(x @ self.a.T, self.scale()).to_event(1))


@pytest.mark.parametrize("alpha,mmd_lambda,kernel", [(0.0, 50.0, "rbf"), (0.6, 3.0, "imq")])
def test_loss_is_the_weighted_elbo_plus_the_weighted_mmd_by_hand(alpha, mmd_lambda, kernel):
    tiny, num_data = Tiny(), 40
    x = torch.randn(6, 3)
    objective = InfoVAEObjective(alpha=alpha, mmd_lambda=mmd_lambda, kernel=kernel)
    objective(tiny.model, tiny.guide, x, num_data=num_data)  # probes (plates, priors) draw too
    torch.manual_seed(1)
    value = objective(tiny.model, tiny.guide, x, num_data=num_data)
    # By hand, with the same draws: the guide's z (one rsample), then the prior's (one more).
    torch.manual_seed(1)
    loc, scale = x @ tiny.a.T, tiny.scale()
    z = loc + scale * torch.randn(6, 2)
    prior = torch.randn(6, 2)
    log_lik = dist.Normal(z @ tiny.w.T, 1.0).log_prob(x).sum()
    kl = (0.5 * (loc**2 + scale**2 - 1) - scale.log()).sum()
    factor = num_data / 6
    expected = -factor * (log_lik - (1 - alpha) * kl) + num_data * (alpha + mmd_lambda - 1) * mmd(
        z, prior, kernel=kernel
    )
    torch.testing.assert_close(value.loss, expected)
    # The bound is the plain ELBO, per minibatch, whatever the weights.
    torch.testing.assert_close(value.bound, (log_lik - kl).detach())
    elbo = ELBO()
    elbo(tiny.model, tiny.guide, x, num_data=num_data)
    torch.manual_seed(1)
    elbo = elbo(tiny.model, tiny.guide, x, num_data=num_data)
    torch.testing.assert_close(value.bound, elbo.bound)
    # The gradient carries the MMD: the guide's differs from the weighted ELBO's alone.
    grad = torch.autograd.grad(value.loss, [tiny.a])[0]
    objective_without_mmd = InfoVAEObjective(alpha=alpha, mmd_lambda=1 - alpha)
    objective_without_mmd(tiny.model, tiny.guide, x, num_data=num_data)
    torch.manual_seed(1)
    plain = objective_without_mmd(tiny.model, tiny.guide, x, num_data=num_data)
    assert not torch.allclose(grad, torch.autograd.grad(plain.loss, [tiny.a])[0])


def test_the_defaults_and_the_named_settings():
    objective = make_objective("infovae")
    assert isinstance(objective, InfoVAEObjective)
    assert (objective.kl_weight, objective.mmd_weight) == (1.0, 999.0)
    mmd_vae = make_objective("infovae", options={"alpha": 1, "mmd_lambda": 784})
    assert (mmd_vae.kl_weight, mmd_vae.mmd_weight) == (0.0, 784.0)
    beta_vae = make_objective("infovae", options={"alpha": 0.75, "mmd_lambda": 0.25})
    assert (beta_vae.kl_weight, beta_vae.mmd_weight) == (0.25, 0.0)


def test_zero_mmd_weight_is_the_beta_weighted_elbo():
    tiny, x = Tiny(), torch.randn(5, 3)
    torch.manual_seed(2)
    info = InfoVAEObjective(alpha=0.75, mmd_lambda=0.25)(tiny.model, tiny.guide, x, scale=3.0)
    elbo = ELBO()
    elbo.beta = 0.25
    torch.manual_seed(2)
    torch.testing.assert_close(info.loss, elbo(tiny.model, tiny.guide, x, scale=3.0).loss)


@pytest.mark.parametrize(
    "options,match",
    [
        ({"alpha": 0.5, "mmd_lambda": 0.03}, "negative"),  # one library's defaults
        ({"alpha": 1.5}, "alpha"),
        ({"mmd_lambda": 0.0}, "mmd_lambda"),
        ({"alpha": float("nan")}, "alpha"),
        ({"kernel": "laplace"}, "kernel"),
        ({"bandwidth": -1.0}, "bandwidth"),
        ({"bandwidth": "mean"}, "bandwidth"),
        ({"wings": 2}, "wings"),
    ],
)
def test_bad_weights_are_a_clear_error(options, match):
    with pytest.raises((ValueError, TypeError), match=match):
        make_objective("infovae", options=options)


def test_the_run_spec_validates_objective_options():
    with pytest.raises(ValueError, match="negative"):
        TrainSpec(objective="infovae", objective_options={"alpha": 0.5, "mmd_lambda": 0.03})
    with pytest.raises(ValueError, match="takes no options"):
        TrainSpec(objective="elbo", objective_options={"alpha": 1.0})
    spec = TrainSpec(objective="infovae", objective_options={"alpha": 1.0, "kernel": "imq"})
    assert spec.objective_options["kernel"] == "imq"


def _smoke(name: str, size: int = 24):
    data = load_dataset(smoke_dataset(name), "train", size=size, size_seed=0, progress=False)
    options = data.model_options()
    keys = get_model_class(name).data_keys
    torch.manual_seed(0)
    model = build_model(name, **{k: options[k] for k in keys if k in options}, **smoke_config(name))
    return model, data


@pytest.mark.parametrize("name", ["vae", "svae", "sentence_vae", "vmf_text_vae", "vae2"])
def test_it_trains_the_zoo_models_through_fit(name):
    model, data = _smoke(name)
    before = [p.detach().clone() for p in model.parameters()]
    objective = InfoVAEObjective(alpha=1.0, mmd_lambda=100.0, bandwidth="median")
    with pyro.settings.context(module_local_params=True):
        result = fit(
            model.model,
            model.guide,
            data,
            objective=objective,
            config=TrainConfig(epochs=1, batch_size=8, seed=0),
            progress=False,
        )
    assert torch.isfinite(torch.tensor(result.history[-1]["train_bound"]))
    changed = [not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True)]
    assert any(changed)


def test_prior_draws_come_from_the_models_prior_site():
    """svae: the codes and the prior draws lie on the sphere (the uniform prior), not in R^d."""
    model, data = _smoke("svae")
    x = next(iter(data.batches(16, shuffle=False)))
    x = model.batch_args(x)
    model_trace, guide_trace = trace_model_guide(model.model, model.guide, x)
    codes, draws, names = latent_codes(model_trace, guide_trace)
    assert names == ["z"] and codes.shape == draws.shape == (1, 16, 3)
    torch.testing.assert_close(draws.norm(dim=-1), torch.ones(1, 16))
    torch.testing.assert_close(codes.norm(dim=-1), torch.ones(1, 16))


def test_particles_give_one_mmd_each_and_a_single_datum_none():
    tiny = Tiny()
    value = InfoVAEObjective(num_particles=3, mmd_lambda=10.0)(
        tiny.model, tiny.guide, torch.randn(5, 3)
    )
    assert torch.isfinite(value.loss)
    torch.manual_seed(3)
    one = InfoVAEObjective(mmd_lambda=10.0)(tiny.model, tiny.guide, torch.randn(1, 3))
    torch.manual_seed(3)
    torch.testing.assert_close(one.loss, ELBO()(tiny.model, tiny.guide, torch.randn(1, 3)).loss)


def test_pyros_trace_mmd_is_not_the_aggregate_posterior_mmd():
    """The pitfall: Pyro's Trace_MMD compares its *particles*, each the whole batch's codes as
    one vector, with as many prior draws; InfoVAE's MMD compares the data's codes with the
    prior across the batch. Codes whose aggregate is N(0, I) (each datum a narrow posterior
    around its own prior draw) have InfoVAE MMD ~ 0 but a large Trace_MMD penalty."""
    batch, dim = 200, 2
    centres = torch.randn(batch, dim, generator=torch.Generator().manual_seed(0))

    def model(x):
        with pyro.plate("data", batch):
            pyro.sample("z", dist.Normal(torch.zeros(dim), 1.0).to_event(1))

    def guide(x):
        with pyro.plate("data", batch):
            pyro.sample("z", dist.Normal(centres, 1e-3).to_event(1))

    model_trace, guide_trace = trace_model_guide(model, guide, (None,))
    codes, draws, _ = latent_codes(model_trace, guide_trace)
    ours = InfoVAEObjective().mmd_term(codes, draws).item()
    # The U-statistic's standard error at B = 200 is ~0.003 here; 0.02 is far above it.
    assert abs(ours) < 0.02

    def penalty(scale: float) -> float:
        kernel = RBF(input_dim=batch * dim, lengthscale=torch.tensor(float(batch * dim) ** 0.5))
        elbo = Trace_MMD(
            kernel=kernel,
            mmd_scale=scale,
            num_particles=10,
            vectorize_particles=True,
            max_plate_nesting=1,
        )
        pyro.set_rng_seed(0)
        return elbo.loss(model, guide, None)

    trace_mmd = penalty(1.0) - penalty(0.0)  # same draws: the MMD term alone
    assert trace_mmd > 0.3


def test_hierarchical_priors_are_drawn_ancestrally():
    model, data = _smoke("vae2")
    x = model.batch_args(next(iter(data.batches(8, shuffle=False))))
    objective = InfoVAEObjective(mmd_lambda=10.0)
    calls = []
    original = objective._ancestral_draws

    def counted(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    objective._ancestral_draws = counted
    with poutine.block():
        value = objective(model.model, model.guide, *x)
    assert torch.isfinite(value.loss) and calls
    calls.clear()
    simple, simple_data = _smoke("vae")
    objective(simple.model, simple.guide, *simple.batch_args(next(iter(simple_data.batches(8)))))
    assert not calls


def test_the_cli_trains_with_infovae_and_refuses_bad_weights(tmp_path, capsys):
    import json

    from pvae.cli import main

    tiny = ["--model", "vae", "--dataset", "mnist", "--train-size", "100", "--epochs", "1"]
    tiny += ["--eval-size", "10", "--eval-samples", "2", "--latent-dim", "2", "--hidden", "8"]
    tiny += ["--no-progress", "--objective", "infovae"]
    bad = ["--objective-option", "alpha=0.5", "--objective-option", "mmd_lambda=0.03"]
    try:
        code = main(["train", *tiny, *bad, "--out", str(tmp_path / "bad")])
    except SystemExit as exit_:
        code = exit_.code
    assert code == 2 and "negative" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()
    options = ["--objective-option", "alpha=1", "--objective-option", "kernel=imq"]
    assert main(["train", *tiny, *options, "--out", str(tmp_path / "run")]) == 0
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["objective"] == "infovae"
    assert config["objective_options"] == {"alpha": 1, "kernel": "imq"}
    assert "alpha=1, kernel=imq" in (tmp_path / "run" / "report.md").read_text()
