"""PSIS k-hat, ESS and InferenceData on a linear-Gaussian model whose posterior and marginal
are known in closed form (the bound ladder: tests/evaluation/test_ladder.py), and the ArviZ
functions a user calls on it: az.summary, az.plot_posterior, az.loo, az.plot_khat."""

import math
import subprocess
import sys

import pytest
import torch

from pvae.diagnostics import (
    ImportanceDiagnostics,
    importance_diagnostics,
    importance_loo,
    importance_weights,
    pareto_khat,
    to_inference_data,
)

# arviz 0.23's plot functions call a matplotlib 3.11 API deprecated for 3.13.
MATPLOTLIB_ALIAS_DEPRECATION = "ignore:Passing a dict or None as alias_mapping:DeprecationWarning"


@pytest.fixture
def lg(linear_gaussian):
    """tests/conftest.py's linear-Gaussian model, with ``narrow_guide`` 10x narrower than the
    posterior."""
    linear_gaussian.narrow_shrink = 0.1
    return linear_gaussian


@pytest.mark.statistical
def test_khat_and_ess_separate_good_and_bad_guides(lg):
    n, s = 30, 4000
    x = lg.data(n)
    # The exact guide's log weights are constant up to float32 rounding (~2e-5 nats, a few
    # distinct values): pareto_khat gives them -inf without ArviZ's fit, which would divide
    # 0 by 0 on the ties (RuntimeWarning, an error here) at some seeds (3, for one).
    exact = importance_diagnostics(lg.model, lg.guide, x, num_samples=s)
    diagonal = importance_diagnostics(lg.model, lg.diagonal_guide, x, num_samples=s)
    narrow = importance_diagnostics(lg.model, lg.narrow_guide, x, num_samples=s)
    assert exact.log_weights.shape == (s, n) and exact.khat.shape == (n,)
    # The exact posterior: constant weights (k-hat -inf by convention), ESS = S.
    assert (exact.khat < 0.5).all()
    torch.testing.assert_close(exact.ess, torch.full((n,), float(s), dtype=torch.float64))
    torch.testing.assert_close(
        exact.log_likelihood, lg.marginal().log_prob(x).double(), atol=1e-4, rtol=0
    )
    # A guide ten times narrower than the posterior: weights with tail index k = 1 - 0.1^2.
    # Its mean and covariance are those of the posterior up to the shrink, so the k-hat of
    # each datum is an independent draw of one sampling distribution; measured on 4000 data
    # at S = 4000: mean 0.95, sd 0.14, P(k-hat <= 0.7) = 0.025 (se 0.0025). The number of
    # data at or below 0.7 is then Binomial(30, 0.025): P(more than 6) < 3e-5 even at
    # p = 0.03, and a median at or below 0.7 (15 of 30) is out of reach. The diagonal guide
    # (right marginals): k-hat mean 0.08, max 0.37 over the same 4000 data.
    assert narrow.share_above(0.7) >= 0.8
    assert float(narrow.khat.median()) > 0.7
    assert (diagonal.khat < 0.7).all()
    # ESS ordering: exact > diagonal (right marginals, no correlation) > narrow.
    assert (exact.ess > diagonal.ess).all() and (diagonal.ess > narrow.ess).all()
    assert narrow.summary()["share_khat_above_0.7"] == narrow.share_above(0.7)


def test_pareto_khat_needs_a_tail():
    with pytest.raises(ValueError, match="S >= 50"):
        pareto_khat(torch.randn(10, 3))


def test_pareto_khat_of_tied_weights_is_minus_infinity_without_warnings():
    # Weights within float32 rounding of a constant, with ties: ArviZ's Pareto fit would
    # warn (0/0); setup.cfg turns that into an error.
    tied = -3.0 + 4.7e-7 * torch.randint(0, 6, (4000, 3)).double()
    varying = torch.randn(4000, 1, dtype=torch.float64)
    khat = pareto_khat(torch.cat([tied, varying], 1))
    assert (khat[:3] == -math.inf).all() and math.isfinite(float(khat[3]))


@pytest.fixture
def arviz_agg():
    """ArviZ with matplotlib's non-interactive Agg backend; closes the figures after."""
    import arviz as az
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    yield az
    plt.close("all")


@pytest.mark.statistical
def test_inference_data_follows_arviz_layout(lg, tmp_path):
    import arviz as az

    x = lg.data(5)
    idata = to_inference_data(lg.model, lg.diagonal_guide, x, num_samples=200)
    groups = {"posterior", "log_likelihood", "sample_stats", "observed_data"}
    assert set(idata.groups()) == groups
    for group in ("posterior", "log_likelihood", "sample_stats"):
        for name, variable in idata[group].data_vars.items():
            assert variable.dims[:3] == ("chain", "draw", "datum"), (group, name)
    z = idata.posterior["z"]
    assert z.dims == ("chain", "draw", "datum", "z_dim_0") and z.shape == (1, 200, 5, 2)
    assert idata.log_likelihood["x"].shape == idata.sample_stats["log_weight"].shape
    assert idata.observed_data["x"].dims == ("datum", "x_dim_0")
    # log p(x_n | z_s) of each draw, against the closed form.
    mean = torch.as_tensor(z.values[0]) @ lg.W.T + lg.b
    expected = torch.distributions.Normal(mean, lg.s).log_prob(x).sum(-1)
    torch.testing.assert_close(
        torch.as_tensor(idata.log_likelihood["x"].values[0]), expected.double()
    )
    # The draws are the guide's: their mean is the guide mean within 5 stderr.
    mu, scale_tril = lg.posterior(x)
    sd = scale_tril.diagonal()
    sample_mean = torch.as_tensor(z.values[0]).mean(0)
    assert ((sample_mean - mu).abs() < 5 * sd / math.sqrt(200)).all()
    # The normalized importance weights sum to 1 per datum; their ESS is ImportanceDiagnostics'.
    w = importance_weights(idata)
    assert w.dims == ("chain", "draw", "datum")
    torch.testing.assert_close(
        torch.as_tensor(w.sum(("chain", "draw")).values), torch.ones(5, dtype=torch.float64)
    )
    diagnostics = ImportanceDiagnostics.from_inference_data(idata)
    torch.testing.assert_close(
        diagnostics.ess, torch.as_tensor(1 / (w**2).sum(("chain", "draw")).values)
    )
    assert (diagnostics.ess <= 200 + 1e-9).all()

    path = tmp_path / "diagnostics.nc"
    idata.to_netcdf(str(path))
    loaded = az.from_netcdf(str(path))
    assert loaded.posterior["z"].shape == (1, 200, 5, 2)
    assert loaded.log_likelihood["x"].shape == (1, 200, 5)


@pytest.mark.statistical
def test_arviz_summary_with_one_chain_and_with_split_chains(lg, arviz_agg):
    az = arviz_agg
    x = lg.data(5)
    one = to_inference_data(lg.model, lg.diagonal_guide, x, num_samples=200)
    summary = az.summary(one)
    assert len(summary) == 10 and summary["r_hat"].isna().all()  # one chain: no R-hat
    split = to_inference_data(lg.model, lg.diagonal_guide, x, num_samples=200, num_chains=2)
    assert split.posterior["z"].shape == (2, 100, 5, 2)
    summary = az.summary(split)
    # Independent draws split into two chains: R-hat is 1 up to Monte Carlo noise (its sd is
    # about 1 / S = 0.005 for split R-hat of 200 independent draws; 0.1 is 20 sd).
    assert ((summary["r_hat"] - 1).abs() < 0.1).all()
    with pytest.raises(ValueError, match="multiple of num_chains"):
        to_inference_data(lg.model, lg.diagonal_guide, x, num_samples=201, num_chains=2)


@pytest.mark.statistical
@pytest.mark.filterwarnings(MATPLOTLIB_ALIAS_DEPRECATION)
def test_arviz_plot_posterior_and_plot_khat(lg, arviz_agg):
    az = arviz_agg
    x = lg.data(5)
    idata = to_inference_data(lg.model, lg.diagonal_guide, x, num_samples=200)
    axes = az.plot_posterior(idata, var_names=["z"])
    assert sum(bool(ax.get_title()) for ax in axes.flat) == 10  # 5 data x 2 dims
    axes = az.plot_posterior(idata, var_names=["z"], coords={"datum": [0]})
    assert axes.size == 2
    loo = importance_loo(idata)
    ax = az.plot_khat(loo, show_hlines=True, show_bins=True)
    offsets = ax.collections[0].get_offsets()
    torch.testing.assert_close(
        torch.as_tensor(offsets[:, 1].data, dtype=torch.float64),
        pareto_khat(ImportanceDiagnostics.from_inference_data(idata).log_weights),
    )


@pytest.mark.statistical
def test_arviz_loo_and_importance_loo(lg):
    import arviz as az

    x = lg.data(5)
    idata = to_inference_data(lg.model, lg.diagonal_guide, x, num_samples=200)
    log_likelihood = torch.as_tensor(idata.log_likelihood["x"].values[0])
    log_weights = torch.as_tensor(idata.sample_stats["log_weight"].values[0])
    # az.loo: conditional PSIS-LOO; its k-hat is that of the ratios 1 / p(x_n | z_s).
    loo = az.loo(idata, pointwise=True)
    assert loo.n_samples == 200 and loo.n_data_points == 5
    torch.testing.assert_close(torch.as_tensor(loo.pareto_k.values), pareto_khat(-log_likelihood))
    # importance_loo: the k-hat of the importance weights, and log p(x_n) by PSIS.
    ours = importance_loo(idata)
    assert ours.pareto_k.dims == ("datum",) and ours.loo_i.dims == ("datum",)
    torch.testing.assert_close(torch.as_tensor(ours.pareto_k.values), pareto_khat(log_weights))
    assert "elpd_loo" in str(ours)
    # The diagonal guide's weights have sd 0.03 nats, so the estimate is within 5 sd / sqrt(S)
    # of log p(x_n) for each datum.
    error = torch.as_tensor(ours.loo_i.values) - lg.marginal().log_prob(x).double()
    tolerance = 5 * log_weights.std(0) / math.sqrt(200)
    assert (error.abs() < tolerance).all()
    assert ours.elpd_loo == pytest.approx(float(ours.loo_i.sum()))
    lppd = torch.logsumexp(log_likelihood, 0) - math.log(200)
    assert ours.p_loo == pytest.approx(float(lppd.sum()) - ours.elpd_loo)
    # The exact guide: constant weights, k-hat -inf, and log p(x_n) to float32 precision.
    exact = importance_loo(to_inference_data(lg.model, lg.guide, x, num_samples=200))
    assert (exact.pareto_k.values == -math.inf).all() and not exact.warning
    torch.testing.assert_close(
        torch.as_tensor(exact.loo_i.values),
        lg.marginal().log_prob(x).double(),
        atol=1e-4,
        rtol=0,
    )


def test_importing_pvae_does_not_import_arviz():
    code = (
        "import sys, pvae, pvae.diagnostics, pvae.evaluation, pvae.evaluation.ais;"
        "import pvae.evaluation.collapse;"
        "sys.exit('arviz' in sys.modules or 'matplotlib' in sys.modules)"
    )
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
