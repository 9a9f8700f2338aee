"""PSIS k-hat, ESS and InferenceData on a linear-Gaussian model whose posterior and marginal
are known in closed form (the bound ladder: tests/evaluation/test_ladder.py)."""

import math
import subprocess
import sys

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


def test_khat_and_ess_separate_good_and_bad_guides(lg):
    x = lg.data(10)
    exact = importance_diagnostics(lg.model, lg.guide, x, num_samples=1000)
    diagonal = importance_diagnostics(lg.model, lg.diagonal_guide, x, num_samples=1000)
    narrow = importance_diagnostics(lg.model, lg.narrow_guide, x, num_samples=1000)
    assert exact.log_weights.shape == (1000, 10) and exact.khat.shape == (10,)
    # The exact posterior: constant weights (k-hat -inf by convention), ESS = S.
    assert (exact.khat < 0.5).all()
    torch.testing.assert_close(exact.ess, torch.full((10,), 1000.0, dtype=torch.float64))
    torch.testing.assert_close(
        exact.log_likelihood, lg.marginal().log_prob(x).double(), atol=1e-4, rtol=0
    )
    # A guide ten times narrower than the posterior: heavy-tailed weights.
    assert narrow.share_above(0.7) >= 0.8
    assert float(narrow.khat.median()) > 0.7
    # ESS ordering: exact > diagonal (right marginals, no correlation) > narrow.
    assert (exact.ess > diagonal.ess).all() and (diagonal.ess > narrow.ess).all()
    assert narrow.summary()["share_khat_above_0.7"] == narrow.share_above(0.7)


def test_pareto_khat_needs_a_tail():
    with pytest.raises(ValueError, match="S >= 50"):
        pareto_khat(torch.randn(10, 3))


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
    # The samples are draws of the guide: their mean is the guide mean within 4 stderr.
    mu, scale_tril = lg.posterior(x)
    sd = scale_tril.diagonal()
    sample_mean = torch.as_tensor(z.values[0].mean(0))
    assert ((sample_mean - mu).abs() < 4 * sd / math.sqrt(200)).all()

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
