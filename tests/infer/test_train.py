import math
import random

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.poutine.indep_messenger import CondIndepStackFrame
from pyro.poutine.messenger import Messenger
from pyro.poutine.util import site_is_subsample

from pvae.infer.checkpoint import CheckpointError
from pvae.infer.objectives import ELBO, IWAE
from pvae.infer.trace import plate_scale
from pvae.infer.train import LAST, TrainConfig, TrainingError, burda_lr_factor, fit
from pvae.models import VAE


def small_data(n=256, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.bernoulli(torch.rand(n, 1, 28, 28, generator=g) * 0.3)


def small_vae(seed=0):
    torch.manual_seed(seed)
    return VAE(latent_dim=4, hidden=(32,))


def states_equal(a, b):
    return all(torch.equal(a[k], b[k]) for k in a) and a.keys() == b.keys()


def test_training_improves_the_bound_and_validates():
    x = small_data()
    vae = small_vae()
    result = fit(
        vae.model, vae.guide, x, valid_data=x[:64], epochs=4, batch_size=32, progress=False
    )
    bounds = [h["train_bound"] for h in result.history]
    assert len(bounds) == 4 and bounds[-1] > bounds[0] + 20  # nats per image, far above noise
    assert {"valid_elbo", "valid_bound", "lr", "time"} <= set(result.history[-1])
    assert result.best_epoch is not None


@pytest.mark.parametrize("objective,k", [("iwae", 3), ("dreg", 3)])
def test_importance_weighted_training_runs(objective, k):
    x = small_data(128)
    vae = small_vae()
    result = fit(
        vae.model,
        vae.guide,
        x,
        valid_data=x[:32],
        objective=objective,
        num_particles=k,
        epochs=2,
        batch_size=32,
        progress=False,
    )
    assert result.history[-1]["train_bound"] > result.history[0]["train_bound"]
    # The validation IWAE bound is at least the ELBO on average (same data, K=3 > 1).
    assert result.history[-1]["valid_bound"] > result.history[-1]["valid_elbo"] - 1.0


def test_resume_is_bit_exact_at_epoch_and_mid_epoch_boundaries(tmp_path):
    x = small_data()
    full = small_vae()
    fit(
        full.model,
        full.guide,
        x,
        epochs=3,
        batch_size=64,
        seed=3,
        progress=False,
        checkpoint_dir=tmp_path / "full",
    )
    # Stop after 2 epochs, then resume to 3.
    part = small_vae()
    fit(
        part.model,
        part.guide,
        x,
        epochs=2,
        batch_size=64,
        seed=3,
        progress=False,
        checkpoint_dir=tmp_path / "part",
    )
    resumed = small_vae(seed=99)  # a different initialisation: the checkpoint must win
    fit(
        resumed.model,
        resumed.guide,
        x,
        epochs=3,
        batch_size=64,
        seed=3,
        progress=False,
        checkpoint_dir=tmp_path / "part",
        resume=True,
    )
    assert states_equal(full.state_dict(), resumed.state_dict())

    # Mid-epoch: checkpoint every step, interrupt by raising after step 6, resume.
    interrupted = small_vae()
    calls = {"n": 0}

    def crashing_model(x_):
        calls["n"] += 1
        if calls["n"] == 8:  # the probe, then 6 good steps, then a crash in the 7th step
            raise KeyboardInterrupt
        return interrupted.model(x_)

    with pytest.raises(KeyboardInterrupt):
        fit(
            crashing_model,
            interrupted.guide,
            x,
            epochs=3,
            batch_size=64,
            seed=3,
            progress=False,
            checkpoint_dir=tmp_path / "mid",
            checkpoint_every=1,
        )
    again = small_vae(seed=7)
    fit(
        again.model,
        again.guide,
        x,
        epochs=3,
        batch_size=64,
        seed=3,
        progress=False,
        checkpoint_dir=tmp_path / "mid",
        resume=True,
        checkpoint_every=1,
    )
    assert states_equal(full.state_dict(), again.state_dict())


def test_resume_refuses_another_model_and_corrupt_files(tmp_path):
    x = small_data(64)
    vae = small_vae()
    fit(vae.model, vae.guide, x, epochs=1, batch_size=32, progress=False, checkpoint_dir=tmp_path)
    other = VAE(latent_dim=5, hidden=(32,))
    with pytest.raises(CheckpointError, match="different configuration"):
        fit(
            other.model,
            other.guide,
            x,
            epochs=2,
            batch_size=32,
            progress=False,
            checkpoint_dir=tmp_path,
            resume=True,
        )
    (tmp_path / LAST).write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="corrupt"):
        fit(
            vae.model,
            vae.guide,
            x,
            epochs=2,
            batch_size=32,
            progress=False,
            checkpoint_dir=tmp_path,
            resume=True,
        )


def test_non_finite_loss_is_a_clear_error():
    x = small_data(64)
    vae = small_vae()

    def broken_model(x_):
        with pyro.plate("data", x_.shape[0]):
            pyro.sample("z", dist.Normal(torch.zeros(4), 1.0).to_event(1))
            pyro.factor("nan", torch.full((x_.shape[0],), float("nan")))

    # With Pyro's validation off (its default in production) the NaN reaches the loss.
    with pyro.validation_enabled(False), pytest.raises(TrainingError, match="non-finite loss"):
        fit(broken_model, vae.guide, x, epochs=1, batch_size=32, progress=False)


def test_plain_function_models_train_in_a_private_param_store():
    # A linear-Gaussian model/guide written with pyro.param only.
    x = torch.randn(200, 3) + 2.0

    def model(x_):
        loc = pyro.param("loc", torch.zeros(3))
        with pyro.plate("data", x_.shape[0]):
            z = pyro.sample("z", dist.Normal(torch.zeros(1), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(loc + z, 1.0).to_event(1), obs=x_)

    def guide(x_):
        # The exact posterior is N((sum(x - loc)) / 4, 0.5^2): linear in x with an intercept,
        # so the ELBO's optimum is the maximum-likelihood loc = mean(x).
        w = pyro.param("w", torch.zeros(3, 1))
        c = pyro.param("c", torch.zeros(1))
        with pyro.plate("data", x_.shape[0]):
            pyro.sample("z", dist.Normal(x_ @ w + c, 0.5).to_event(1))

    pyro.get_param_store().clear()
    result = fit(model, guide, x, epochs=60, batch_size=50, lr=0.1, progress=False)
    assert "loc" not in pyro.get_param_store()  # nothing leaked into the global store
    with result.params():
        loc = pyro.param("loc").detach()
    torch.testing.assert_close(loc, x.mean(0), atol=0.3, rtol=0)


def test_config_validation_and_schedules():
    with pytest.raises(ValueError, match="epochs"):
        TrainConfig(epochs=0)
    with pytest.raises(ValueError, match="lr_schedule"):
        TrainConfig(lr_schedule="sometimes")
    # Burda et al.: stage i lasts 3^i epochs at 10^(-i/7) of the initial rate.
    factors = [burda_lr_factor(e) for e in range(13)]
    assert factors[0] == 1.0
    assert factors[1] == factors[3] == pytest.approx(10 ** (-1 / 7))
    assert factors[4] == factors[12] == pytest.approx(10 ** (-2 / 7))


def test_plain_function_model_with_pyro_module_resumes_exactly(tmp_path):
    """Resuming must update the same tensors that pyro.module-registered networks use."""
    x = small_data(128)

    def run(epochs, directory, resume=False):
        torch.manual_seed(0)
        vae = small_vae()
        encoder, decoder = vae.encoder, vae.decoder

        def model(x_):
            pyro.module("decoder", decoder)
            with pyro.plate("data", x_.shape[0]):
                z = pyro.sample("z", dist.Normal(torch.zeros(4), 1.0).to_event(1))
                logits = decoder(z).reshape(x_.shape)
                pyro.sample("x", dist.Bernoulli(logits=logits).to_event(3), obs=x_)

        def guide(x_):
            pyro.module("encoder", encoder)
            loc, scale = encoder(x_.reshape(x_.shape[0], -1))
            with pyro.plate("data", x_.shape[0]):
                pyro.sample("z", dist.Normal(loc, scale).to_event(1))

        fit(
            model,
            guide,
            x,
            epochs=epochs,
            batch_size=32,
            seed=1,
            progress=False,
            checkpoint_dir=directory,
            resume=resume,
        )
        return {**encoder.state_dict(), **{"d" + k: v for k, v in decoder.state_dict().items()}}

    full = run(2, tmp_path / "full")
    run(1, tmp_path / "part")
    resumed = run(2, tmp_path / "part", resume=True)
    assert states_equal(full, resumed)


def test_valid_metrics_pick_the_best_checkpoint_and_stop_early(tmp_path):
    from pvae.infer.checkpoint import load_checkpoint
    from pvae.infer.train import BEST

    x = small_data(64)
    vae = small_vae()
    scores = iter([0.1, 0.5, 0.3, 0.2, 0.9])
    result = fit(
        vae.model,
        vae.guide,
        x,
        epochs=5,
        batch_size=32,
        progress=False,
        checkpoint_dir=tmp_path,
        valid_metrics=lambda: {"valid_score": next(scores)},
        monitor="valid_score",
        early_stopping_patience=2,
    )
    # Epoch 2 is best; epochs 3 and 4 do not improve on it, so patience 2 stops after epoch 4
    # (before the better epoch 5 is ever seen).
    assert [h["valid_score"] for h in result.history] == [0.1, 0.5, 0.3, 0.2]
    assert result.best_epoch == 2 and result.best_valid == 0.5 and result.stopped_early
    assert load_checkpoint(tmp_path / BEST)["epoch"] == 2


def test_monitor_must_be_in_the_record():
    x = small_data(64)
    vae = small_vae()
    with pytest.raises(ValueError, match="needs valid_metrics"):
        fit(vae.model, vae.guide, x, epochs=1, progress=False, monitor="valid_accuracy")
    with pytest.raises(ValueError, match="'valid_accuracy' is not in the epoch record"):
        fit(
            vae.model,
            vae.guide,
            x,
            epochs=1,
            progress=False,
            monitor="valid_accuracy",
            valid_metrics=lambda: {"valid_other": 1.0},
        )


def test_pyro_elbo_with_enumeration_validates_with_that_elbo():
    """pvae's ELBO refuses enumerated guides; fit validates a Pyro ELBO objective with itself."""

    def model(x):
        locs = pyro.param("locs", torch.tensor([-1.0, 1.0]))
        with pyro.plate("data", x.shape[0]):
            c = pyro.sample("c", dist.Categorical(logits=torch.zeros(2)))
            pyro.sample("x", dist.Normal(locs[c], 1.0), obs=x)

    def guide(x):
        logits = pyro.param("logits", torch.zeros(2))
        with pyro.plate("data", x.shape[0]):
            pyro.sample("c", dist.Categorical(logits=logits), infer={"enumerate": "parallel"})

    g = torch.Generator().manual_seed(0)
    x = torch.cat([torch.randn(100, generator=g) - 2, torch.randn(100, generator=g) + 2])
    valid = x[::7]
    elbo = pyro.infer.TraceEnum_ELBO(max_plate_nesting=1)
    result = fit(
        model, guide, x, valid_data=valid, objective=elbo, epochs=3, batch_size=50, progress=False
    )
    last = result.history[-1]
    assert "valid_elbo" not in last
    # Enumeration makes the bound exact (no sampling): recompute it from the trained params.
    with result.params():
        expected = -elbo.loss(model, guide, valid) / len(valid)
    assert last["valid_bound"] == pytest.approx(expected, rel=1e-6)
    assert result.best_epoch is not None


def test_values_outside_their_support_are_one_line_errors_not_divergence():
    """Distribution validation (Pyro's default) rejects an observation outside its support:
    fit reports it in one line with where it happened, not as a non-finite loss."""

    def model(x):
        rate = pyro.param("rate", torch.tensor(1.0), constraint=dist.constraints.positive)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("x", dist.Poisson(rate), obs=x)

    def guide(x):
        pass

    counts = torch.poisson(torch.full((64,), 3.0), generator=torch.Generator().manual_seed(0))
    halves = counts.clone()
    halves[32:] += 0.5  # outside a Poisson's support, in the second (unshuffled) half only
    options = dict(epochs=1, batch_size=32, progress=False)
    with pytest.raises(ValueError, match=r"^epoch 1, step 1: .*support") as error:
        fit(model, guide, halves, **options)
    assert "\n" not in str(error.value)
    with pytest.raises(ValueError, match=r"^the first batch: .*support") as error:
        fit(model, guide, halves.flip(0), **options)
    assert "\n" not in str(error.value)
    # It is the validation that catches it: without it, Poisson.log_prob(3.5) is finite.
    with pyro.validation_enabled(False):
        result = fit(model, guide, halves, **options)
    assert math.isfinite(result.history[-1]["train_bound"])


# -- minibatch scaling from the "data" plate ------------------------------------------------


class SiteScales(Messenger):
    """Records the final scale of every sample site, after every other handler."""

    def __init__(self):
        super().__init__()
        self.scales = {}

    def _postprocess_message(self, msg):
        if msg["type"] == "sample" and not site_is_subsample(msg):
            self.scales.setdefault(msg["name"], set()).add(float(msg["scale"]))


class RecordingELBO(ELBO):
    """pvae's ELBO that keeps, for each training step, its value and the sites' scales."""

    def __init__(self):
        super().__init__()
        self.steps = []

    def __call__(self, model, guide, *args, **kwargs):
        spy = SiteScales()
        with spy:
            value = super().__call__(model, guide, *args, **kwargs)
        if torch.is_grad_enabled():
            self.steps.append((value, spy.scales))
        return value


def node_model(x):
    loc = pyro.param("loc", torch.zeros(x.shape[-1]))
    with pyro.plate("data", x.shape[0]):
        z = pyro.sample("z", dist.Normal(torch.zeros(1), 1.0).to_event(1))
        pyro.sample("x", dist.Normal(loc + z, 1.0).to_event(1), obs=x)


def node_guide(x):
    w = pyro.param("w", torch.zeros(x.shape[-1], 1))
    with pyro.plate("data", x.shape[0]):
        pyro.sample("z", dist.Normal(x @ w, 0.5).to_event(1))


class OneGraph:
    """A dataset of one graph (one independent unit) whose 50 nodes fill the "data" plate."""

    def __init__(self, nodes=50, features=3):
        self.x = torch.randn(nodes, features, generator=torch.Generator().manual_seed(0)) + 1.0

    def __len__(self):
        return 1

    def batches(self, batch_size, *, shuffle=True, generator=None):
        yield self.x


def test_one_graph_whose_nodes_fill_the_data_plate_is_not_scaled():
    objective = RecordingELBO()
    result = fit(node_model, node_guide, OneGraph(), objective=objective, epochs=3, progress=False)
    assert len(objective.steps) == 3
    for (value, scales), record in zip(objective.steps, result.history, strict=True):
        assert scales == {"z": {1.0}, "x": {1.0}}
        # Scale 1: the loss is the unscaled negative ELBO of the whole graph, and the
        # bound per unit is the graph's bound (one unit, not 50 nodes).
        assert value.loss.item() == -value.bound.item()
        assert record["train_bound"] == value.bound.item()


def test_image_batches_are_scaled_by_n_over_b_including_the_last_short_batch():
    x = torch.randn(10, 3, generator=torch.Generator().manual_seed(1))
    objective = RecordingELBO()
    result = fit(
        node_model, node_guide, x, objective=objective, epochs=2, batch_size=4, progress=False
    )
    scales = [s for _, s in objective.steps]
    expected = [{"z": {10 / 4}, "x": {10 / 4}}] * 2 + [{"z": {10 / 2}, "x": {10 / 2}}]
    assert scales == expected * 2
    # The bound is unscaled: train_bound is its sum over the epoch per datum.
    for epoch in range(2):
        values = objective.steps[3 * epoch : 3 * epoch + 3]
        total = sum(float(value.bound) for value, _ in values)
        assert result.history[epoch]["train_bound"] == pytest.approx(total / 10, rel=1e-12)


def test_a_plate_that_pyro_subsamples_keeps_pyros_scale_only():
    n, b = 20, 5

    def model(x):
        loc = pyro.param("loc", torch.zeros(3))
        with pyro.plate("data", n, subsample_size=b) as index:
            z = pyro.sample("z", dist.Normal(torch.zeros(1), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(loc + z, 1.0).to_event(1), obs=x[index])

    def guide(x):
        w = pyro.param("w", torch.zeros(3, 1))
        with pyro.plate("data", n, subsample_size=b) as index:
            pyro.sample("z", dist.Normal(x[index] @ w, 0.5).to_event(1))

    x = torch.randn(n, 3, generator=torch.Generator().manual_seed(2))
    objective = RecordingELBO()
    result = fit(model, guide, x, objective=objective, epochs=2, batch_size=n, progress=False)
    for _, scales in objective.steps:
        assert scales == {"z": {n / b}, "x": {n / b}}  # Pyro's N / B, not (N / B) ** 2
    # The bound is per subsampled datum.
    value = objective.steps[-1][0]
    assert result.history[-1]["train_bound"] == pytest.approx(float(value.bound) / b, rel=1e-12)
    # The importance-weighted objectives honour Pyro's factor too.
    with result.params():
        iwae = IWAE(2)(model, guide, x, num_data=n)
    assert iwae.loss.item() == pytest.approx(-(n / b) * iwae.bound.item(), rel=1e-12)


def test_plate_scale_rule():
    def frame(size, full_size=None):
        return CondIndepStackFrame("data", -1, size, 0, full_size if full_size else size)

    assert plate_scale(frame(32), 1000) == (1000 / 32, 1000 / 32, 32)
    assert plate_scale(frame(8), 1000) == (125.0, 125.0, 8)  # a short last batch
    assert plate_scale(frame(50), 1) == (1.0, 1.0, 1)  # one graph's nodes
    assert plate_scale(frame(5, 20), 20) == (1.0, 4.0, 5)  # Pyro subsamples itself
    with pytest.raises(ValueError, match="not both"):
        ELBO()(node_model, node_guide, torch.zeros(4, 3), num_data=4, scale=2.0)


# -- the caller's random state ------------------------------------------------------------


def draws():
    return torch.rand(1).item(), random.random(), float(np.random.rand())


def seed_all(seed):
    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed)


def test_fit_leaves_the_callers_random_state_alone():
    x = small_data(64)
    seed_all(11)
    expected = draws()
    seed_all(11)
    vae = VAE(latent_dim=4, hidden=(32,))
    seed_all(11)
    first = fit(vae.model, vae.guide, x, epochs=1, batch_size=32, seed=5, progress=False)
    assert draws() == expected
    # ... and when fit raises.
    seed_all(11)
    with pytest.raises(ValueError, match="needs valid_metrics"):
        fit(vae.model, vae.guide, x, epochs=1, progress=False, monitor="valid_accuracy")
    assert draws() == expected

    def failing(x_):
        vae.model(x_)
        raise RuntimeError("in the model")

    seed_all(11)
    with pytest.raises(RuntimeError, match="in the model"):
        fit(failing, vae.guide, x, epochs=1, progress=False)
    assert draws() == expected
    # Inside fit the stream is config.seed's whatever the caller's state.
    again = VAE(latent_dim=4, hidden=(32,))
    again.load_state_dict(small_vae_state(11))
    seed_all(99)
    second = fit(again.model, again.guide, x, epochs=1, batch_size=32, seed=5, progress=False)
    assert second.history[0]["train_bound"] == first.history[0]["train_bound"]


def small_vae_state(seed):
    torch.manual_seed(seed)
    return VAE(latent_dim=4, hidden=(32,)).state_dict()
