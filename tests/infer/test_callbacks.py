import math

import pytest
import torch

from pvae.infer.callbacks import Callback, KLAnnealing, TrainState, ValidMetrics, kl_weight
from pvae.infer.checkpoint import load_checkpoint
from pvae.infer.objectives import ELBO
from pvae.infer.train import BEST, LAST, fit
from pvae.models import VAE


def small_data(n=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.bernoulli(torch.rand(n, 1, 28, 28, generator=g) * 0.3, generator=g)


def small_vae(seed=0):
    torch.manual_seed(seed)
    return VAE(latent_dim=4, hidden=(32,))


class Recorder(Callback):
    """Logs every hook with the epoch (and step), and what was on disk at the time."""

    def __init__(self, directory=None):
        self.events = []
        self.states = []
        self.records = []
        self.directory = directory

    def _saved_epoch(self):
        if self.directory is None or not (self.directory / LAST).exists():
            return None
        return load_checkpoint(self.directory / LAST)["epoch"]

    def on_epoch_start(self, state):
        self.events.append(("start", state.epoch))
        self.states.append(state)

    def on_step_start(self, state):
        self.events.append(("step", state.epoch, state.step))

    def on_epoch_end(self, state, record):
        self.events.append(("end", state.epoch, self._saved_epoch()))

    def on_epoch_recorded(self, state, record):
        self.events.append(("recorded", state.epoch, self._saved_epoch()))
        self.records.append(record)


def test_hooks_run_in_order_around_the_checkpoints(tmp_path):
    x = small_data()
    vae = small_vae()
    recorder = Recorder(tmp_path)
    result = fit(
        vae.model,
        vae.guide,
        x,
        epochs=2,
        batch_size=32,
        progress=False,
        checkpoint_dir=tmp_path,
        callbacks=[recorder],
    )
    # on_epoch_end runs before the epoch's checkpoint is written, on_epoch_recorded after it.
    assert recorder.events == [
        ("start", 0),
        ("step", 0, 0),
        ("step", 0, 1),
        ("end", 0, None),
        ("recorded", 0, 1),
        ("start", 1),
        ("step", 1, 0),
        ("step", 1, 1),
        ("end", 1, 1),
        ("recorded", 1, 2),
    ]
    state = recorder.states[0]
    assert isinstance(state, TrainState)
    assert state.model is vae and state.train_data is x and state.steps_per_epoch == 2
    assert state.device == torch.device("cpu") and state.objective.name == "elbo"
    assert recorder.records == result.history  # the final records, as returned


def test_a_callback_adds_the_monitored_metric_and_the_user_hook_sees_it(tmp_path):
    scores = iter([0.2, 0.7, 0.4])
    seen_by_hook = []

    class Score(Callback):
        def on_epoch_end(self, state, record):
            record["valid_score"] = next(scores)

    x = small_data()
    vae = small_vae()
    result = fit(
        vae.model,
        vae.guide,
        x,
        epochs=3,
        batch_size=32,
        progress=False,
        checkpoint_dir=tmp_path,
        callbacks=[Score()],
        on_epoch_end=lambda record: seen_by_hook.append(record["valid_score"]),
        monitor="valid_score",
    )
    assert seen_by_hook == [0.2, 0.7, 0.4]
    assert result.best_epoch == 2 and result.best_valid == 0.7
    assert load_checkpoint(tmp_path / BEST)["epoch"] == 2


def test_valid_metrics_callback_runs_without_gradients_before_the_user_callbacks():
    order = []

    def metrics():
        order.append(("metrics", torch.is_grad_enabled()))
        return {"valid_accuracy": torch.tensor(0.5)}

    class After(Callback):
        def on_epoch_end(self, state, record):
            order.append(("after", record["valid_accuracy"]))

    vae = small_vae()
    result = fit(
        vae.model,
        vae.guide,
        small_data(),
        epochs=1,
        batch_size=64,
        progress=False,
        callbacks=[ValidMetrics(metrics), After()],
        monitor="valid_accuracy",
    )
    assert order == [("metrics", False), ("after", 0.5)]
    assert result.history[0]["valid_accuracy"] == 0.5 and result.best_epoch == 1


def test_monitor_needs_a_callback_that_adds_to_the_record():
    vae = small_vae()
    watcher = Recorder()
    with pytest.raises(ValueError, match="needs valid_metrics"):
        fit(
            vae.model,
            vae.guide,
            small_data(),
            epochs=1,
            progress=False,
            monitor="valid_accuracy",
            on_epoch_end=lambda record: None,  # reads the record, adds nothing
        )

    class Other(Callback):
        def on_epoch_end(self, state, record):
            record["valid_other"] = 1.0

    with pytest.raises(ValueError, match="'valid_accuracy' is not in the epoch record"):
        fit(
            vae.model,
            vae.guide,
            small_data(),
            epochs=1,
            progress=False,
            monitor="valid_accuracy",
            callbacks=[Other(), watcher],
        )


def test_kl_annealing_sets_beta_before_every_step_and_ends_at_one():
    betas = []

    class Beta(Callback):
        def on_step_start(self, state):
            betas.append(state.objective.beta)

    objective = ELBO()
    vae = small_vae()
    fit(
        vae.model,
        vae.guide,
        small_data(),
        objective=objective,
        epochs=3,
        batch_size=16,
        progress=False,
        kl_anneal_epochs=2.5,
        callbacks=[Beta()],
    )
    expected = [min(1.0, (epoch + step / 4) / 2.5) for epoch in range(3) for step in range(4)]
    assert betas == expected
    assert objective.beta == 1.0
    with pytest.raises(ValueError, match="positive number of epochs"):
        KLAnnealing(0)


# -- KL schedules ------------------------------------------------------------------------------


def test_linear_schedule():
    assert [kl_weight(p, 4.0, "linear") for p in (0, 1, 2, 3.9, 4, 10)] == pytest.approx(
        [0.0, 0.25, 0.5, 0.975, 1.0, 1.0]
    )
    assert kl_weight(1.0, 4.0) == 0.25  # linear is the default


def test_logistic_schedule():
    epochs = 3.0
    assert kl_weight(0.0, epochs, "logistic") == pytest.approx(1 / (1 + math.exp(5)))
    assert kl_weight(0.0, epochs, "logistic") == pytest.approx(0.0067, abs=1e-4)
    assert kl_weight(epochs / 2, epochs, "logistic") == pytest.approx(0.5)
    assert kl_weight(0.999 * epochs, epochs, "logistic") == pytest.approx(0.9933, abs=1e-3)
    assert kl_weight(epochs, epochs, "logistic") == 1.0  # 1 from the end of the window on
    assert kl_weight(7 * epochs, epochs, "logistic") == 1.0
    values = [kl_weight(epochs * i / 20, epochs, "logistic") for i in range(21)]
    assert values == sorted(values) and len(set(values)) == 21
    # Symmetric about the midpoint: beta(mid + d) = 1 - beta(mid - d).
    for d in (0.3, 0.9, 1.4):
        low, high = (kl_weight(epochs / 2 + s * d, epochs, "logistic") for s in (-1, 1))
        assert low + high == pytest.approx(1.0)


def test_cyclical_schedule():
    epochs, cycles = 2.0, 3  # cycles of 4 epochs: a 2-epoch ramp, then 2 epochs at 1
    for cycle in range(cycles):
        start = cycle * 2 * epochs
        ramp = [kl_weight(start + f * epochs, epochs, "cyclical", cycles) for f in (0, 0.25, 0.5)]
        assert ramp == pytest.approx([0.0, 0.25, 0.5])
        held = [kl_weight(start + f * epochs, epochs, "cyclical", cycles) for f in (1, 1.5, 1.99)]
        assert held == [1.0, 1.0, 1.0]
    # After the last cycle (12 epochs): 1, with no new ramp.
    assert [kl_weight(p, epochs, "cyclical", cycles) for p in (12, 12.5, 14, 100)] == [1.0] * 4
    # With one cycle it is the linear ramp, then 1.
    assert [kl_weight(p, epochs, "cyclical", 1) for p in (0, 1, 2, 3, 4, 5)] == pytest.approx(
        [0.0, 0.5, 1.0, 1.0, 1.0, 1.0]
    )


@pytest.mark.parametrize("progress", [0.0, 0.5, 1.0, 5.0, 100.0])
def test_unknown_schedule_raises_at_any_progress(progress):
    with pytest.raises(ValueError, match="unknown KL schedule 'cosine'"):
        kl_weight(progress, 1.0, "cosine")


def test_kl_annealing_follows_the_schedule_step_by_step():
    class Objective:
        beta = 1.0

    annealing = KLAnnealing(2.0, "cyclical", cycles=2)
    state = TrainState(None, None, 0, torch.device("cpu"), Objective(), steps_per_epoch=4)
    betas = []
    for epoch in range(10):
        for step in range(4):
            state.epoch, state.step = epoch, step
            annealing.on_step_start(state)
            betas.append(state.objective.beta)
        annealing.on_epoch_end(state, {})
        assert state.objective.beta == 1.0  # validation sees the plain bound
    expected = [kl_weight(e + s / 4, 2.0, "cyclical", 2) for e in range(10) for s in range(4)]
    assert betas == expected
    assert betas[:8] == pytest.approx([i / 8 for i in range(8)])
    assert betas[16:24] == pytest.approx([i / 8 for i in range(8)])  # the second cycle
    assert betas[32:] == [1.0] * 8
    for bad in ("cosine", "Linear"):
        with pytest.raises(ValueError, match="unknown KL schedule"):
            KLAnnealing(1.0, bad)
    for cycles in (0, 1.5, True):
        with pytest.raises(ValueError, match="cycles"):
            KLAnnealing(1.0, "cyclical", cycles=cycles)


@pytest.mark.parametrize("objective", ["iwae", "pyro"])
def test_kl_annealing_refuses_an_objective_without_a_weighted_kl(objective):
    """Pyro's ELBOs (M2's and the SSVAE's objectives) and IWAE ignore beta: annealing them
    would silently train the plain bound."""
    import pyro

    vae = small_vae()
    chosen = pyro.infer.Trace_ELBO() if objective == "pyro" else objective
    with pytest.raises(ValueError, match="KL annealing .* has none that it could weight"):
        fit(
            vae.model,
            vae.guide,
            small_data(),
            objective=chosen,
            epochs=1,
            progress=False,
            kl_anneal_epochs=1.0,
        )
