"""One suite over the model registry: every registered model, with its registered smoke
config, builds, runs forward with the right shapes, takes two training steps, round-trips a
checkpoint through a run folder, samples without its encoder, evaluates and is diagnosed.

A new model earns all of it by registering with a smoke config (``@register_model(name,
smoke={...})``); nothing here names a model.
"""

from __future__ import annotations

import functools
import json
import math
import os
import re

import pyro
import pyro.poutine as poutine
import pytest
import torch

from pvae.infer.trace import latent_sites
from pvae.infer.train import TrainConfig
from pvae.models.registry import (
    available_models,
    build_model,
    get_model_class,
    smoke_config,
    smoke_dataset,
)
from pvae.runs import TrainSpec, diagnose_run, evaluate_run, load_run, sample_run, train_run

MODELS = available_models()


def test_every_registered_model_has_a_smoke_config():
    assert MODELS
    for name in MODELS:
        assert isinstance(smoke_config(name), dict)


def test_registry_rejects_unknown_names_and_options():
    with pytest.raises(ValueError, match="unknown model 'nope'"):
        build_model("nope")
    with pytest.raises(ValueError, match="unknown option wings; options: input_shape"):
        build_model("vae", wings=2)


def _test_batch(name: str, size: int = 8):
    """``size`` test units of the model's smoke dataset, as one batch, and its model options."""
    from pvae.data import load_dataset

    data = load_dataset(smoke_dataset(name), "test", size=size, size_seed=0, progress=False)
    return next(iter(data.batches(size, shuffle=False))), data.model_options()


@functools.cache
def _test_units(name: str) -> int:
    """Units of the model's smoke test split (one graph: 1)."""
    from pvae.data import load_dataset

    return len(load_dataset(smoke_dataset(name), "test", progress=False))


def _smoke_model(name: str, data_options: dict):
    cls = get_model_class(name)
    options = {key: data_options[key] for key in cls.data_keys if key in data_options}
    return build_model(name, **options, **smoke_config(name))


@pytest.mark.parametrize("name", MODELS)
def test_forward_shapes_and_finite_scores(name):
    batch, data_options = _test_batch(name)
    torch.manual_seed(0)
    model = _smoke_model(name, data_options)
    args = model.batch_args(batch)
    guide_trace = poutine.trace(model.guide).get_trace(*args)
    model_trace = poutine.trace(poutine.replay(model.model, trace=guide_trace)).get_trace(*args)
    observed = [s for s in model_trace.nodes.values() if s["type"] == "sample" and s["is_observed"]]
    assert observed, "the model observes the data"
    for site in latent_sites(guide_trace):
        # One row per datum; a dataset of one graph puts its nodes in the "data" plate.
        (frame,) = [f for f in site["cond_indep_stack"] if f.name == "data"]
        rows = 8 if _test_units(name) >= 8 else frame.size
        assert site["value"].shape[0] == rows, f"{site['name']}: one row per datum"
    assert torch.isfinite(model_trace.log_prob_sum() - guide_trace.log_prob_sum())


@pytest.fixture(scope="module", params=MODELS)
def smoke_run(request, tmp_path_factory):
    """A run folder of each registered model: 64 images, one epoch of two steps."""
    name = request.param
    out = tmp_path_factory.mktemp(name) / "run"
    spec = TrainSpec(
        model=name,
        dataset=smoke_dataset(name),
        model_options=smoke_config(name),
        train=TrainConfig(epochs=1, batch_size=32, seed=0),
        train_size=64,
        eval_samples=5,
        eval_size=20,
        num_labels=20,
        out=out,
        progress=False,
    )
    with pyro.settings.context(module_local_params=True):
        metrics = train_run(spec)
    return name, out, metrics


def test_two_training_steps_give_a_complete_run_folder(smoke_run):
    name, out, metrics = smoke_run
    assert json.loads((out / "status.json").read_text())["status"] == "complete"
    assert [r["epoch"] for r in metrics["history"]] == [1]
    assert math.isfinite(metrics["history"][0]["train_bound"])
    assert math.isfinite(metrics["test_nll"]) and metrics["test_nll"] > 0
    assert metrics["eval_size"] == min(20, _test_units(name))
    report = (out / "report.md").read_text()
    assert f"# {name} on {smoke_dataset(name)}" in report and "test NLL" in report
    figures = re.findall(r"^!\[.*\]\(([^()]+)\)$", report, flags=re.MULTILINE)
    assert "loss_curve.png" in figures
    for name in figures:
        assert (out / name).stat().st_size > 0


def test_checkpoint_round_trip(smoke_run, data_dir):
    name, out, _ = smoke_run
    model, config = load_run(out, "best")
    assert config["model"] == name
    clone = build_model(name, **config["model_config"])
    clone.load_state_dict(model.state_dict())
    assert clone.config == model.config
    for a, b in zip(model.state_dict().values(), clone.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_sampling_does_not_use_the_encoder(smoke_run, tmp_path):
    """With every parameter that the guide uses set to NaN, samples stay finite."""
    name, out, _ = smoke_run
    model, _ = load_run(out, "best")
    batch, _ = _test_batch(name, size=2)
    guide_params = _guide_only_parameters(model, batch)
    with torch.no_grad():
        for p in guide_params:
            p.fill_(float("nan"))
    try:
        samples = model.sample(6, generator=torch.Generator().manual_seed(0))
    except NotImplementedError as error:  # a conditional model, p(y | x) (text_classifier)
        pytest.skip(f"{name} draws no data: {error}")
    if isinstance(samples, list):  # sentences
        assert len(samples) == 6 and all(isinstance(s, str) for s in samples)
        path = sample_run(out, num=4, seed=1, out=tmp_path / "s.txt")
        assert len(path.read_text().splitlines()) == 4
    else:
        assert samples.shape[0] == 6 and torch.isfinite(samples).all()
        path = sample_run(out, num=4, seed=1, out=tmp_path / "s.png")
        assert path.stat().st_size > 0


def _guide_only_parameters(model, batch) -> list[torch.nn.Parameter]:
    """Parameters whose gradient the guide reaches but the model's decoder does not."""
    if isinstance(batch, (tuple, list)) and len(batch) == 2:  # (x, y): labels hidden
        batch = (batch[0], torch.zeros_like(batch[1]))
    args = model.batch_args(batch)
    guide_trace = poutine.trace(model.guide).get_trace(*args)
    if not latent_sites(guide_trace):  # a model without latents (the language model)
        return []
    loss = -guide_trace.log_prob_sum()
    if not loss.requires_grad:  # a guide without parameters (variance_lenet's q(e) = N(0, I))
        return []
    params = [p for p in model.parameters() if p.requires_grad]
    grads = torch.autograd.grad(loss, params, allow_unused=True, retain_graph=True)
    used_by_guide = {id(p) for p, g in zip(params, grads, strict=True) if g is not None}
    model_trace = poutine.trace(poutine.replay(model.model, trace=guide_trace)).get_trace(*args)
    observed = sum(
        s["fn"].log_prob(s["value"]).sum()
        for s in model_trace.nodes.values()
        if s["type"] == "sample" and s["is_observed"] and s["name"] != "y_aux"
    )
    grads = torch.autograd.grad(observed, params, allow_unused=True)
    used_by_decoder = {id(p) for p, g in zip(params, grads, strict=True) if g is not None}
    return [p for p in params if id(p) in used_by_guide - used_by_decoder]


def test_evaluate_reports_the_model_metrics(smoke_run):
    name, out, metrics = smoke_run
    result = evaluate_run(out, num_samples=5, size=20, progress=False)
    units = min(20, _test_units(name))
    assert math.isfinite(result["nll"]) and result["eval_size"] == units
    for key in metrics["model_metrics"]:
        assert key in result
    assert (out / f"evaluation_test_K5_n{units}.json").exists()


def test_diagnose_quick_runs_and_states_what_it_skips(smoke_run):
    name, out, _ = smoke_run
    if _test_units(name) < 2:
        pytest.skip(f"{name}: the diagnostics need two test data; {smoke_dataset(name)} has one")
    metrics = diagnose_run(
        out, num_data=6, num_samples=60, ais_steps=5, ais_chains=2, bdmc_data=2, progress=False
    )
    assert metrics["num_data"] == 6
    assert math.isfinite(metrics["elbo"]["mean"])
    assert ("ais" in metrics) != ("ais" in metrics["skipped"])
    report = (out / "report.md").read_text()
    assert "## Diagnostics (`pvae diagnose`)" in report
    for what, reason in metrics["skipped"].items():
        assert f"{what} skipped: {reason}" in report
    umask = os.umask(0o022)
    os.umask(umask)
    assert (out / "diagnostics.json").stat().st_mode & 0o777 == 0o666 & ~umask
