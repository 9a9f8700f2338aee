"""diagnose_model end to end on a tiny VAE: metrics, files and figures."""

import json
import math

import pyro
import torch

from pvae.runs.diagnose import diagnose_model


def test_diagnose_model_writes_metrics_netcdf_and_figures(tmp_path):
    from pvae.models import VAE

    with pyro.settings.context(module_local_params=True):
        vae = VAE(input_shape=(1, 6, 6), latent_dim=3, hidden=(16,))
        x = torch.bernoulli(torch.full((12, 1, 6, 6), 0.3))
        labels = torch.arange(12) % 3
        metrics, figures = diagnose_model(
            vae,
            x,
            labels,
            tmp_path,
            num_data=10,
            num_samples=100,
            ks=(1, 10, 100, 1000),
            ais_steps=20,
            ais_chains=2,
            ais_leapfrog_steps=2,
            bdmc_data=3,
            progress=False,
        )
    saved = json.loads((tmp_path / "diagnostics.json").read_text())
    assert saved["num_data"] == 10 and metrics["num_data"] == 10
    # K=1000 > num_samples is skipped; AIS closes the ladder.
    assert [r["bound"] for r in saved["ladder"]] == [
        "ELBO",
        "IWAE (K=10)",
        "IWAE (K=100)",
        "AIS (T=20)",
    ]
    assert saved["elbo"]["mean"] <= saved["iwae"]["100"]["mean"]
    assert set(saved["bdmc"]) >= {"lower_mean", "upper_mean", "gap_mean"}
    assert 0 <= saved["active_units"]["count"] <= 3 and len(saved["kl_per_dimension"]) == 3
    assert -0.1 <= saved["mutual_information"] <= math.log(10) + 1e-6
    assert 0.0 <= saved["importance"]["share_khat_above_0.7"] <= 1.0
    for _, name in figures:
        assert (tmp_path / name).stat().st_size > 1000
    titles = [t for t, _ in figures]
    assert len(titles) == 6 and "Bound ladder" in titles
    import arviz as az

    idata = az.from_netcdf(str(tmp_path / "diagnostics.nc"))
    assert idata.posterior["z"].shape == (1, 100, 10, 3)
