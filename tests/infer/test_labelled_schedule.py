"""The labelled-data schedules keep the objective of an epoch (SemiSupervisedObjective).

The ``"step"`` schedule adds a labelled minibatch to every step at the weight ``w`` of
:meth:`SemiSupervisedData.labelled_weight`; summed over an epoch's steps, the objective must
have the expectation of the ``"epoch"`` schedule's (the labelled set as its own batches). A toy
model without a continuous latent makes every loss deterministic, so when an epoch's labelled
draws are whole passes the two sums agree exactly, and both equal the closed form
``(N / B) sum_n U(x_n) + R ceil(L / B) (N / L) sum_l f(x_l, y_l)``. M2 itself (z sampled, a
partial last pass) is compared in expectation, with a tolerance from the standard errors, and
the same test run with ``w = 1`` must fail it.
"""

from __future__ import annotations

import math
from pathlib import Path

import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
import pytest
import torch

from pvae.cli import main
from pvae.data import ImageDataset
from pvae.data.semisupervised import SemiSupervisedData, labelled_or_unlabelled
from pvae.infer.semisupervised import SemiSupervisedObjective, fit_semisupervised
from pvae.models import build_model

NUM_CLASSES = 3


class Toy(torch.nn.Module):
    """y ~ Categorical(1/C), x | y ~ Normal(mu_y, I); q(y | x) = softmax(W x + b), enumerated on
    unlabelled batches; labelled ones add ``alpha log q(y | x)`` (M2's ``"y_aux"``). Nothing is
    sampled, so every loss is a number, not an estimate."""

    def __init__(self, dim: int = 2, alpha: float = 3.0) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(0)
        self.mu = torch.nn.Parameter(torch.randn(NUM_CLASSES, dim, generator=generator))
        self.classifier = torch.nn.Linear(dim, NUM_CLASSES)
        self.alpha = alpha

    def model(self, x: torch.Tensor, y: torch.Tensor | None = None) -> None:
        x = x.flatten(1)
        with pyro.plate("data", x.shape[0]):
            label = pyro.sample("y", dist.Categorical(logits=torch.zeros(NUM_CLASSES)), obs=y)
            pyro.sample("x", dist.Normal(self.mu[label], 1.0).to_event(1), obs=x)
            if y is not None:
                with poutine.scale(scale=self.alpha):
                    pyro.sample("y_aux", dist.Categorical(logits=self.classifier(x)), obs=y)

    def guide(self, x: torch.Tensor, y: torch.Tensor | None = None) -> None:
        x = x.flatten(1)
        with pyro.plate("data", x.shape[0]):
            if y is None:
                pyro.sample(
                    "y",
                    dist.Categorical(logits=self.classifier(x)),
                    infer={"enumerate": "parallel"},
                )


def toy_data(n: int) -> ImageDataset:
    """``n`` two-dimensional points (as images of shape (1, 1, 2)) with labels 0..C-1."""
    generator = torch.Generator().manual_seed(1)
    points = torch.randn(n, 1, 1, 2, generator=generator)
    return ImageDataset(points, torch.arange(n) % NUM_CLASSES)


def epoch_objective(model, data, batch_size: int, generator_seed: int) -> float:
    """The objective summed over one epoch's steps, at fixed parameters (no optimizer step)."""
    objective = SemiSupervisedObjective()
    total = 0.0
    generator = torch.Generator().manual_seed(generator_seed)
    with torch.no_grad():
        for batch in data.batches(batch_size, generator=generator):
            args = labelled_or_unlabelled(batch, "test")
            total += float(objective(model.model, model.guide, *args, num_data=len(data)).loss)
    return total


def per_unit(model, x: torch.Tensor, y: torch.Tensor | None = None) -> float:
    """The unscaled loss of one unit: U(x) or f(x, y)."""
    args = (x[None],) if y is None else (x[None], y[None])
    with torch.no_grad():
        return float(SemiSupervisedObjective()(model.model, model.guide, *args, num_data=1).loss)


@pytest.mark.parametrize(
    "num_data,num_labelled,batch_size,labelled_batch_size,repeats",
    [(24, 6, 6, None, 1), (24, 12, 4, None, 1), (24, 6, 6, 3, 2), (30, 9, 10, 3, 1)],
)
def test_the_objective_of_an_epoch_is_the_same_under_both_schedules(
    num_data, num_labelled, batch_size, labelled_batch_size, repeats
):
    model = Toy()
    dataset = toy_data(num_data)
    schedules = {
        schedule: SemiSupervisedData(
            dataset,
            num_labelled,
            NUM_CLASSES,
            labelled_repeats=repeats,
            seed=2,
            schedule=schedule,
            labelled_batch_size=labelled_batch_size,
        )
        for schedule in ("epoch", "step")
    }
    step = schedules["step"]
    steps = math.ceil(num_data / batch_size)
    draws = steps * (labelled_batch_size or min(batch_size, num_labelled))
    assert draws % num_labelled == 0  # whole passes: the labelled sum is exact, not only on average
    labelled = step.labelled_set
    closed_form = (num_data / batch_size) * sum(per_unit(model, x) for x in dataset.images) + (
        repeats
        * math.ceil(num_labelled / batch_size)
        * (num_data / num_labelled)
        * sum(per_unit(model, x, y) for x, y in zip(labelled.images, labelled.labels, strict=True))
    )
    for schedule, data in schedules.items():
        for generator_seed in (0, 1):
            got = epoch_objective(model, data, batch_size, generator_seed)
            assert got == pytest.approx(closed_form, rel=1e-5), schedule
    # The labelled part is not negligible: weighting it by 1 instead of w would be seen.
    labelled_part = closed_form - (num_data / batch_size) * sum(
        per_unit(model, x) for x in dataset.images
    )
    assert abs(labelled_part * (1 / step.labelled_weight(batch_size) - 1)) > 1e-3 * abs(closed_form)


def tiny_m2_and_data(seed: int) -> tuple[torch.nn.Module, ImageDataset]:
    generator = torch.Generator().manual_seed(seed)
    images = (torch.rand(50, 1, 3, 3, generator=generator) < 0.4).float()
    dataset = ImageDataset(images, torch.arange(50) % NUM_CLASSES)
    torch.manual_seed(seed)
    model = build_model(
        "m2", input_shape=(1, 3, 3), latent_dim=2, hidden=[8], num_classes=NUM_CLASSES, alpha=4.0
    )
    model.initialize(dataset.model_options())
    return model, dataset


def epoch_objectives(model, data, batch_size: int, repeats: int, seed: int) -> torch.Tensor:
    totals = []
    for r in range(repeats):
        pyro.set_rng_seed(seed * 10_000 + r)
        totals.append(epoch_objective(model, data, batch_size, generator_seed=r))
    return torch.tensor(totals, dtype=torch.float64)


@pytest.mark.statistical
def test_m2_epoch_objective_has_the_same_expectation_under_both_schedules(seed, monkeypatch):
    """M2 samples z, and 5 steps of 6 labelled units are 3 1/3 passes over 9 labels: the two
    schedules agree in expectation only. 100 epochs each at fixed parameters; the difference
    of the means within 4 standard errors, and with ``w = 1`` (every step's labelled
    minibatch at full weight) the same comparison fails by far."""
    model, dataset = tiny_m2_and_data(seed)
    batch_size, repeats = 10, 100
    kwargs = dict(num_classes=NUM_CLASSES, seed=seed)
    epoch = SemiSupervisedData(dataset, 9, **kwargs)
    step = SemiSupervisedData(dataset, 9, **kwargs, schedule="step", labelled_batch_size=6)
    a = epoch_objectives(model, epoch, batch_size, repeats, seed)
    b = epoch_objectives(model, step, batch_size, repeats, seed)
    stderr = math.sqrt(a.var() / repeats + b.var() / repeats)
    print(f"z = {float(a.mean() - b.mean()) / stderr:.2f}")
    assert abs(float(a.mean() - b.mean())) < 4 * stderr
    monkeypatch.setattr(SemiSupervisedData, "labelled_weight", lambda self, batch_size: 1.0)
    wrong = epoch_objectives(model, step, batch_size, 20, seed)
    wrong_stderr = math.sqrt(a.var() / repeats + wrong.var() / 20)
    print(f"z(w = 1) = {float(a.mean() - wrong.mean()) / wrong_stderr:.1f}")
    assert abs(float(a.mean() - wrong.mean())) > 20 * wrong_stderr


def test_training_setup_passes_the_schedule_to_m2_and_the_text_model():
    from pvae.data.text import SPECIALS, TextDataset, Vocabulary

    model, dataset = tiny_m2_and_data(0)
    setup = model.training_setup(dataset, num_labels=9, labelled_schedule="step")
    assert setup["train_data"].schedule == "step"
    assert isinstance(setup["objective"], SemiSupervisedObjective)
    result = fit(model, setup, epochs=1, batch_size=10)
    assert len(result.history) == 1 and math.isfinite(result.history[0]["train_bound"])

    words = [f"w{i}" for i in range(8)]
    vocabulary = Vocabulary((*SPECIALS, *words))
    generator = torch.Generator().manual_seed(0)
    sentences = [
        [words[int(i)] for i in torch.randint(8, (int(length),), generator=generator)]
        for length in torch.randint(2, 6, (24,), generator=generator)
    ]
    text = TextDataset.from_sentences(
        sentences, vocabulary, [i % NUM_CLASSES for i in range(24)], num_classes=NUM_CLASSES
    )
    text_model = build_model(
        "ss_text_vae",
        vocabulary=vocabulary.to_list(),
        embed_dim=4,
        hidden_dim=6,
        latent_dim=2,
        num_classes=NUM_CLASSES,
    )
    setup = text_model.training_setup(text, num_labels=6, labelled_schedule="step")
    assert setup["train_data"].schedule == "step"
    result = fit(text_model, setup, epochs=1, batch_size=8)
    assert math.isfinite(result.history[0]["train_bound"])


def fit(model, setup: dict, **options):
    from pvae.infer.train import fit as fit_

    return fit_(model.model, model.guide, **setup, progress=False, seed=0, **options)


def test_fit_semisupervised_trains_with_the_step_schedule():
    """The toy's classifier learns from 6 labels under the "step" schedule."""
    model = Toy(alpha=20.0)
    dataset = toy_data(60)
    centres = model.mu.detach()[dataset.labels].view(-1, 1, 1, 2)
    dataset.images[:] = 3 * centres + 0.3 * dataset.images
    data = SemiSupervisedData(dataset, 6, NUM_CLASSES, schedule="step")
    fit_semisupervised(
        model,
        data,
        epochs=15,
        batch_size=20,
        lr=0.05,
        progress=False,
        seed=0,
        batch_args=lambda batch: labelled_or_unlabelled(batch, "toy"),
    )
    with torch.no_grad():
        guess = model.classifier(dataset.images.flatten(1)).argmax(-1)
    assert float((guess == dataset.labels).float().mean()) > 0.9


def test_pvae_train_records_the_labelled_schedule(tmp_path: Path, capsys):
    out = tmp_path / "run"
    argv = ["train", "--model", "m2", "--train-size", "100", "--epochs", "1", "--eval-size"]
    argv += ["20", "--eval-samples", "2", "--batch-size", "50", "--hidden", "16"]
    argv += ["--latent-dim", "2", "--num-labels", "20", "--labelled-schedule", "step"]
    assert main([*argv, "--no-progress", "--out", str(out)]) == 0
    capsys.readouterr()
    import json

    config = json.loads((out / "config.json").read_text())
    assert config["labelled_schedule"] == "step"
    # A resume must keep the schedule (the data order of the epochs already trained).
    bad = [*argv, "--no-progress", "--out", str(out), "--resume"]
    bad[bad.index("step")] = "epoch"
    try:
        code = main(bad)
    except SystemExit as exit_:
        code = exit_.code
    assert code == 2 and "--labelled-schedule step" in capsys.readouterr().err
