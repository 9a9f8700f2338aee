"""PSIS k-hat, ESS and InferenceData on a linear-Gaussian model whose posterior and marginal
are known in closed form (the bound ladder: tests/evaluation/test_ladder.py)."""

import math
import subprocess
import sys
import warnings

import pytest
import torch

from pvae.diagnostics import (
    importance_diagnostics,
    pareto_khat,
    to_inference_data,
)


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
    with warnings.catch_warnings():
        # The exact guide's log weights are constant up to float32 rounding (~2e-5 nats);
        # ArviZ's Pareto fit on that spread warns (overflow, 0/0) at some seeds before
        # pareto_khat replaces its k-hat by -inf. Only this guide's fit is degenerate.
        warnings.filterwarnings("ignore", category=RuntimeWarning, module="arviz")
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


@pytest.mark.statistical
@pytest.mark.filterwarnings(
    # arviz 0.23's plot_posterior calls a matplotlib 3.11 API deprecated for 3.13.
    "ignore:Passing a dict or None as alias_mapping:DeprecationWarning",
)
def test_inference_data_structure_and_arviz_functions(lg, tmp_path):
    import arviz as az
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = lg.data(5)
    idata = to_inference_data(lg.model, lg.diagonal_guide, x, num_samples=200)
    assert set(idata.groups()) == {"posterior", "sample_stats", "observed_data"}
    z = idata.posterior["z"]
    assert z.dims == ("chain", "draw", "datum", "z_dim_0") and z.shape == (1, 200, 5, 2)
    assert idata.sample_stats["log_weight"].shape == (1, 200, 5)
    assert idata.sample_stats["khat"].dims == ("datum",)
    assert (idata.sample_stats["ess"].values <= 200 + 1e-9).all()
    # The samples are draws of the guide: their mean is the guide mean within 5 stderr.
    mu, scale_tril = lg.posterior(x)
    sd = scale_tril.diagonal()
    sample_mean = torch.as_tensor(z.values[0].mean(0))
    assert ((sample_mean - mu).abs() < 5 * sd / math.sqrt(200)).all()

    summary = az.summary(idata, var_names=["z"], kind="stats")
    assert len(summary) == 10
    axes = az.plot_posterior(idata, var_names=["z"], coords={"datum": [0]})
    assert axes.size == 2
    az.plot_khat(idata.sample_stats["khat"].values, show_hlines=True)
    plt.close("all")

    path = tmp_path / "diagnostics.nc"
    idata.to_netcdf(str(path))
    loaded = az.from_netcdf(str(path))
    assert loaded.posterior["z"].shape == (1, 200, 5, 2)


def test_importing_pvae_does_not_import_arviz():
    code = (
        "import sys, pvae, pvae.diagnostics, pvae.evaluation, pvae.evaluation.ais;"
        "import pvae.evaluation.collapse;"
        "sys.exit('arviz' in sys.modules or 'matplotlib' in sys.modules)"
    )
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
