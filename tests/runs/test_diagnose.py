"""diagnose_model end to end on a tiny VAE (metrics, files and figures), and the summary table
that ``pvae diagnose`` prints and ``report.md`` holds."""

import json
import math

import pyro
import torch

from pvae.runs.diagnose import diagnose_model, summary_rows, summary_text
from pvae.runs.report import append_diagnostics


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


def _metrics(**changes):
    """Metrics shaped like ``diagnose_model``'s (after JSON cleaning: inf and nan are None)."""
    metrics = {
        "num_data": 20,
        "num_samples": 200,
        "seconds": 31.4,
        "skipped": {},
        "ladder": [
            {
                "bound": "ELBO",
                "mean": -95.3,
                "stderr": 3.1,
                "minus_reference": -6.1,
                "minus_reference_stderr": 0.25,
            },
            {
                "bound": "IWAE (K=10)",
                "mean": -91.2,
                "stderr": 3.0,
                "minus_reference": -2.0,
                "minus_reference_stderr": 0.2,
            },
            {
                "bound": "AIS (T=100)",
                "mean": -89.2,
                "stderr": 3.0,
                "minus_reference": 0.0,
                "minus_reference_stderr": 0.0,
            },
        ],
        "importance": {"share_khat_above_0.5": 0.95, "share_khat_above_0.7": 0.4},
        "bdmc": {"num_data": 5, "steps": 100, "gap_mean": 0.28, "gap_stderr": 0.16},
        "active_units": {"count": 12, "total": 50, "threshold": 0.01},
        "mutual_information": 2.91,
        "mutual_information_max": math.log(20),
        "kl_total": 25.04,
    }
    metrics.update(changes)
    return metrics


def test_summary_rows_hold_the_headline_numbers():
    rows = {name: (value, note) for name, value, note in summary_rows(_metrics())}
    assert list(rows) == [
        "ELBO",
        "IWAE (K=10)",
        "AIS (T=100)",
        "PSIS k-hat > 0.5",
        "PSIS k-hat > 0.7",
        "BDMC gap",
        "active units",
        "mutual information I(x; z)",
        "KL(q(z | x) || p(z))",
    ]
    assert rows["ELBO"] == ("-95.30 ± 3.10 nats", "6.10 ± 0.25 below AIS (T=100) (paired)")
    assert rows["PSIS k-hat > 0.5"][0] == "95 % of data"
    assert rows["PSIS k-hat > 0.7"][0] == "40 % of data"
    assert rows["BDMC gap"][0] == "0.28 ± 0.16 nats"
    assert rows["active units"][0] == "12 / 50"
    assert rows["mutual information I(x; z)"] == ("2.91 nats", "at most log 20 = 3.00")


def test_summary_text_is_a_short_table_with_what_was_skipped():
    metrics = _metrics(skipped={"ais": "AIS needs continuous latents; 'y' is discrete"})
    del metrics["bdmc"]
    metrics["ladder"][1]["minus_reference_stderr"] = None  # a nan, cleaned for JSON
    text = summary_text(metrics, "runs/m2")
    lines = text.splitlines()
    assert len(lines) < 20
    assert lines[0] == ("Diagnostics of runs/m2: 20 test data, 200 importance samples each, 31 s")
    assert lines[2].split() == ["diagnostic", "value", "note"]
    assert set(lines[3]) == {"-", " "}
    assert "BDMC gap" not in text  # not run: no row
    assert any(line.startswith("IWAE (K=10)") and "2.00 ± n/a below" in line for line in lines)
    assert "ais skipped: AIS needs continuous latents; 'y' is discrete" in lines
    assert lines[-1].startswith("All numbers: runs/m2/diagnostics.json")


def test_report_holds_the_summary_table_once(tmp_path):
    (tmp_path / "report.md").write_text("# vae on mnist\n\nbody\n")
    rows = summary_rows(_metrics())
    for _ in range(2):  # a second diagnosis replaces the section
        append_diagnostics(tmp_path, [("Bound ladder", "ladder.png")], ["ais skipped: x"], rows)
    report = (tmp_path / "report.md").read_text()
    assert report.startswith("# vae on mnist\n\nbody\n")
    assert report.count("| diagnostic | value | note |") == 1
    assert "| ELBO | -95.30 ± 3.10 nats | 6.10 ± 0.25 below AIS (T=100) (paired) |" in report
    assert "| KL(q(z \\| x) \\|\\| p(z)) | 25.04 nats | mean over data |" in report
    assert "- ais skipped: x" in report and "![Bound ladder](ladder.png)" in report


def test_the_ais_schedule_reaches_ais_and_bdmc_in_both_paths(tmp_path, monkeypatch):
    import pytest

    import pvae.evaluation.ais as ais
    from pvae.models import VAE

    seen = []

    def recording(fn):
        def wrapper(*args, **kwargs):
            seen.append((fn.__name__, kwargs.get("schedule")))
            return fn(*args, **kwargs)

        return wrapper

    monkeypatch.setattr(ais, "ais_log_likelihood", recording(ais.ais_log_likelihood))
    monkeypatch.setattr(ais, "bdmc", recording(ais.bdmc))
    with pyro.settings.context(module_local_params=True):
        vae = VAE(input_shape=(1, 4, 4), latent_dim=2, hidden=(8,))
        x = torch.bernoulli(torch.full((6, 1, 4, 4), 0.3))
        small = dict(num_samples=60, ks=(1, 10), ais_steps=6, ais_chains=2, bdmc_data=2)
        small.update(ais_leapfrog_steps=1, progress=False)
        for sharded in (False, True):
            seen.clear()
            metrics, _ = diagnose_model(
                vae,
                x,
                None,
                tmp_path / str(sharded),
                ais_schedule="linear",
                sharded=sharded,
                **small,
            )
            # bdmc runs its own AIS passes: every call, direct or nested, got "linear"
            assert {name for name, _ in seen} == {"ais_log_likelihood", "bdmc"}
            assert all(schedule == "linear" for _, schedule in seen), seen
            assert metrics["ais"]["schedule"] == "linear" == metrics["bdmc"]["schedule"]
        with pytest.raises(ValueError, match="ais_schedule must be one of"):
            diagnose_model(vae, x, None, tmp_path / "bad", ais_schedule="cosine", **small)
