"""The semi-supervised text VAE, its supervised baseline and the score-function estimators.

The registry suite (``test_suite.py``) already builds, trains, saves, samples, evaluates and
diagnoses ``ss_text_vae`` and ``text_classifier``; here: the sampled unlabelled objectives agree
with exact enumeration in expectation (value and classifier gradient), their baselines lower
the gradient variance, the accuracy metric, the supervised baseline learns, the decoder
structures, the KL weight, and the input checks. A tiny model on made-up sentences keeps every
test within seconds.
"""

from __future__ import annotations

import dataclasses
import math

import pyro
import pytest
import torch

from pvae.data.text import SPECIALS, TextDataset, Vocabulary
from pvae.infer.baselines import RUNNING_AVERAGE_PREFIX, LeaveOneOutELBO, ScoreFunctionELBO
from pvae.infer.train import fit
from pvae.models.ss_text_vae import LabelledSentenceDecoder, SSTextVAE
from pvae.models.text_classifier import TextClassifier, accuracy, confusion_counts

WORDS = tuple(f"w{i}" for i in range(12))
VOCABULARY = Vocabulary((*SPECIALS, *WORDS))
TINY = dict(embed_dim=4, hidden_dim=6, latent_dim=2, num_classes=3)


def tiny_data(seed: int, n: int = 6, num_classes: int = 3) -> TextDataset:
    """``n`` random sentences of 2..5 words with random labels."""
    generator = torch.Generator().manual_seed(seed)
    sentences = []
    for _ in range(n):
        length = int(torch.randint(2, 6, (1,), generator=generator))
        ids = torch.randint(len(WORDS), (length,), generator=generator)
        sentences.append([WORDS[int(i)] for i in ids])
    labels = torch.randint(num_classes, (n,), generator=generator).tolist()
    return TextDataset.from_sentences(sentences, VOCABULARY, labels, num_classes=num_classes)


def tiny_model(seed: int, **options) -> SSTextVAE:
    torch.manual_seed(seed)
    return SSTextVAE(vocabulary=VOCABULARY.to_list(), **{**TINY, **options})


def with_options(model: SSTextVAE, **options) -> SSTextVAE:
    """The same parameters under other options."""
    clone = SSTextVAE(dataclasses.replace(model.config, **options))
    clone.load_state_dict(model.state_dict())
    return clone


def classifier_gradient(model: SSTextVAE) -> torch.Tensor:
    return torch.cat([p.grad.flatten() for p in model.classifier.parameters()])


def draws(model: SSTextVAE, elbo, x: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` independent estimates of the unlabelled loss ``(n,)`` and of its gradient for the
    classifier's parameters ``(n, P)``."""
    losses, gradients = [], []
    for _ in range(n):
        model.zero_grad()
        loss = elbo.differentiable_loss(model.model, model.guide, x)
        loss.backward()
        losses.append(loss.detach())
        gradients.append(classifier_gradient(model))
    return torch.stack(losses), torch.stack(gradients)


def mean_and_stderr(values: torch.Tensor) -> tuple[float, float]:
    return float(values.mean()), float(values.std() / math.sqrt(values.shape[0]))


def total_variance(gradients: torch.Tensor) -> tuple[float, float]:
    """The trace of the gradients' covariance and its standard error: the mean of the squared
    distances to the mean gradient, and their sd / sqrt(n)."""
    squared = ((gradients - gradients.mean(0)) ** 2).sum(-1)
    n = gradients.shape[0]
    return float(squared.mean() * n / (n - 1)), float(squared.std() / math.sqrt(n))


# -- the estimators ---------------------------------------------------------------------------
@pytest.mark.statistical
def test_sampled_unlabelled_objectives_agree_with_enumeration_in_expectation(seed):
    """Mean loss and mean classifier gradient (projected on fixed random directions) of each
    sampled estimator equal those of exact enumeration over the 3 classes within 4 standard
    errors of their difference. z stays sampled in both, so both are Monte Carlo means."""
    x = tiny_data(seed).tokens
    enumerated = tiny_model(seed)
    n = 150
    exact_loss, exact_grad = draws(enumerated, enumerated.unlabelled_objective(), x, n)
    directions = torch.randn(exact_grad.shape[1], 3, generator=torch.Generator().manual_seed(seed))
    for estimator in ("sample_ema", "sample_vimco"):
        sampled = with_options(enumerated, unlabelled=estimator)
        loss, grad = draws(sampled, sampled.unlabelled_objective(), x, n)
        pairs = [(exact_loss, loss)] + [
            (exact_grad @ directions[:, i], grad @ directions[:, i]) for i in range(3)
        ]
        for exact_values, values in pairs:
            (m0, s0), (m1, s1) = mean_and_stderr(exact_values), mean_and_stderr(values)
            assert abs(m1 - m0) < 4 * math.hypot(s0, s1), (estimator, m0, s0, m1, s1)


@pytest.mark.statistical
def test_baselines_lower_the_classifier_gradient_variance(seed):
    """Over 100 draws at the same number of samples of y (K = 2), the total variance of the
    classifier's gradient with either baseline is below that of REINFORCE without a baseline
    by more than 4 standard errors of the difference."""
    x = tiny_data(seed).tokens
    vimco = tiny_model(seed, unlabelled="sample_vimco")
    ema = with_options(vimco, unlabelled="sample_ema")
    n = 100
    # vimco's guide asks for no baseline: Pyro's TraceGraph_ELBO is then plain REINFORCE.
    _, plain = draws(vimco, ScoreFunctionELBO(num_particles=2), x, n)
    _, leave_one_out = draws(vimco, vimco.unlabelled_objective(), x, n)
    moving_average = ema.unlabelled_objective()
    draws(ema, moving_average, x, 30)  # the average warms up
    _, averaged = draws(ema, moving_average, x, n)
    v0, s0 = total_variance(plain)
    for gradients in (leave_one_out, averaged):
        v, s = total_variance(gradients)
        assert v + 4 * math.hypot(s, s0) < v0, (v, s, v0, s0)


def test_the_moving_average_is_one_number_for_any_batch_size(seed, monkeypatch):
    """Batches of different sizes share the average: before each step every position holds
    the mean of the stored values, so the baseline is the moving average of the batches'
    mean costs."""
    from pyro.infer import tracegraph_elbo

    model = tiny_model(seed, unlabelled="sample_ema", label_samples=1)
    elbo = model.unlabelled_objective()
    data = tiny_data(seed, n=7).tokens
    store = pyro.get_param_store()
    key = RUNNING_AVERAGE_PREFIX + "y"
    for x in (data, data[:3], data[:5], data):
        elbo.differentiable_loss(model.model, model.guide, x).backward()
        assert store[key].shape == (x.shape[0],)
    seen = []
    compute_elbo = tracegraph_elbo._compute_elbo

    def recording(model_trace, guide_trace):
        seen.append(store[key].clone())
        return compute_elbo(model_trace, guide_trace)

    monkeypatch.setattr(tracegraph_elbo, "_compute_elbo", recording)
    store[key] = torch.arange(7.0)
    elbo.differentiable_loss(model.model, model.guide, data[:2])
    assert torch.equal(seen[0], torch.full((2,), 3.0))


def test_leave_one_out_needs_two_samples():
    with pytest.raises(ValueError, match="num_particles >= 2"):
        LeaveOneOutELBO(num_particles=1)


@pytest.mark.parametrize("estimator", ["sample_ema", "sample_vimco"])
def test_estimators_report_the_elbo_as_their_value(seed, estimator):
    """The value of ``differentiable_loss`` is the negative ELBO estimate that ``loss`` gives
    from the same draws: the surrogate only changes the gradient."""
    x = tiny_data(seed).tokens
    model = tiny_model(seed, unlabelled=estimator)
    elbo = model.unlabelled_objective()
    pyro.set_rng_seed(seed)
    loss = elbo.differentiable_loss(model.model, model.guide, x)
    pyro.set_rng_seed(seed)
    value = elbo.loss(model.model, model.guide, x)
    assert loss.requires_grad
    assert float(loss.detach()) == pytest.approx(value, rel=1e-5)


# -- the model --------------------------------------------------------------------------------
def test_decoder_structures():
    """``label``: the label joins every input and z alone sets the initial state; ``both``:
    [z; e(y)] does both."""
    torch.manual_seed(0)
    label = LabelledSentenceDecoder(16, 4, 6, 2, 3, structure="label")
    both = LabelledSentenceDecoder(16, 4, 6, 2, 3, structure="both")
    assert label.lstm.input_size == 4 + 3 and both.lstm.input_size == 4 + 2 + 3
    z = torch.randn(1, 2)
    one_hots = torch.eye(3)
    codes = torch.cat([z.expand(3, -1), one_hots], -1)
    h_label, _ = label.initial_state(codes, 3)
    h_both, _ = both.initial_state(codes, 3)
    assert torch.allclose(h_label[0, 0], h_label[0, 1])  # y does not reach the initial state
    assert not torch.allclose(h_both[0, 0], h_both[0, 1])
    x = torch.tensor([[5, 6, 2]]).expand(3, -1)
    logits = label(x, codes)
    assert logits.shape == (3, 3, 14)
    assert not torch.allclose(logits[0], logits[1])  # ... but every input does
    with pytest.raises(ValueError, match="structure must be one of"):
        LabelledSentenceDecoder(16, 4, 6, 2, 3, structure="init")


@pytest.mark.parametrize("condition", ["label", "both"])
def test_sentences_for_each_label_from_one_z(seed, condition):
    model = tiny_model(seed, decoder_condition=condition, max_decode_length=6)
    z = model.prior_sample(1).expand(3, -1)
    sentences = model.decode_labelled(z, torch.arange(3))
    assert len(sentences) == 3 and all(isinstance(s, str) for s in sentences)
    assert len(model.sample(5)) == 5


def test_kl_weight_masks_or_scales_z_in_training_only(seed):
    x = tiny_data(seed).tokens
    y = torch.zeros(x.shape[0], dtype=torch.long)
    for weight, expected in ((0.0, "mask"), (0.5, "scale"), (1.0, None)):
        model = tiny_model(seed, kl_weight=weight)
        guide = pyro.poutine.trace(model.guide).get_trace(x, y)
        site = guide.nodes["z"]
        if expected == "mask":
            assert site["mask"] is False
        elif expected == "scale":
            assert site["scale"] == 0.5
        else:
            assert site["mask"] is None and site["scale"] == 1.0
        model.eval()  # validation and evaluation score the plain bound
        site = pyro.poutine.trace(model.guide).get_trace(x, y).nodes["z"]
        assert site["mask"] is None and site["scale"] == 1.0


def test_enumeration_decodes_every_class_in_parallel(seed):
    x = tiny_data(seed).tokens
    model = tiny_model(seed)
    guide = pyro.poutine.trace(pyro.poutine.enum(model.guide, first_available_dim=-2)).get_trace(x)
    assert guide.nodes["y"]["value"].shape == (3, 1)
    assert guide.nodes["z"]["value"].shape == (3, x.shape[0], 2)


def test_input_checks(seed):
    x = tiny_data(seed).tokens
    model = tiny_model(seed)
    with pytest.raises(ValueError, match="labels must lie in 0..2"):
        model.model(x, torch.full((x.shape[0],), 3))
    with pytest.raises(ValueError, match="labels must be integers"):
        model.guide(x, torch.zeros(x.shape[0] + 1, dtype=torch.long))
    with pytest.raises(ValueError, match="token ids"):
        model.model(x.float())
    mixed = torch.tensor([0, -1, 1, 2, 0, 1])
    with pytest.raises(ValueError, match="all labelled or all unlabelled"):
        model.batch_args((x, mixed))
    assert len(model.batch_args((x, torch.full((6,), -1)))) == 1
    bad = [
        ({"unlabelled": "sample"}, "unlabelled must be one of"),
        ({"decoder_condition": "init"}, "decoder_condition must be one of"),
        ({"unlabelled": "sample_vimco", "label_samples": 1}, "needs label_samples >= 2"),
        ({"label_samples": 0}, "label_samples must be >= 1"),
        ({"alpha": -1.0}, "alpha must be"),
        ({"kl_weight": float("nan")}, "kl_weight must be"),
        ({"baseline_decay": 1.0}, "baseline_decay must be in"),
        ({"num_classes": 1}, "num_classes must be >= 2"),
    ]
    for options, message in bad:
        with pytest.raises(ValueError, match=message):
            tiny_model(seed, **options)
    classifier = TextClassifier(vocabulary=VOCABULARY.to_list(), num_classes=3)
    with pytest.raises(ValueError, match="needs labelled sentences"):
        classifier.batch_args((x, mixed))
    with pytest.raises(NotImplementedError, match="cannot draw sentences"):
        classifier.sample(2)


# -- accuracy and the supervised baseline -------------------------------------------------------
class FirstWordClassifier(torch.nn.Module):
    """Predicts class ``(first token id) mod C``."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.anchor = torch.nn.Parameter(torch.zeros(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.one_hot(x[:, 0] % self.num_classes, self.num_classes).float()


def test_accuracy_and_confusion_counts():
    sentences = [["w0"], ["w1"], ["w2"], ["w3"], ["w4", "w5"], ["w6"]]
    # token ids 4..9 for w0..w5: predictions (id mod 3) = 1, 2, 0, 1, 2, 1 (w6 has id 10)
    labels = [1, 2, 1, -1, 0, 1]
    data = TextDataset.from_sentences(sentences, VOCABULARY, labels, num_classes=3)
    counts = confusion_counts(FirstWordClassifier(3), data, 3, batch_size=4)
    expected = torch.zeros(3, 3, dtype=torch.int64)
    for true, predicted in ((1, 1), (2, 2), (1, 0), (0, 2), (1, 1)):
        expected[true, predicted] += 1
    assert torch.equal(counts, expected)
    assert accuracy(FirstWordClassifier(3), data, 3) == pytest.approx(3 / 5)
    model = tiny_model(0)
    model.classifier = FirstWordClassifier(3)
    assert model.accuracy(data) == pytest.approx(3 / 5)
    assert model.metrics(data) == {"test_accuracy": pytest.approx(3 / 5)}
    with pytest.raises(ValueError, match="accuracy needs labelled data"):
        accuracy(FirstWordClassifier(3), data.without_labels(), 3)


def keyword_data(seed: int, n: int) -> TextDataset:
    """Sentences of random filler words with one keyword that gives the class (w0, w1, w2)."""
    generator = torch.Generator().manual_seed(seed)
    sentences, labels = [], []
    for _ in range(n):
        label = int(torch.randint(3, (1,), generator=generator))
        filler = torch.randint(3, len(WORDS), (3,), generator=generator).tolist()
        position = int(torch.randint(4, (1,), generator=generator))
        words = [WORDS[i] for i in filler]
        words.insert(position, WORDS[label])
        sentences.append(words)
        labels.append(label)
    return TextDataset.from_sentences(sentences, VOCABULARY, labels, num_classes=3)


def test_supervised_baseline_trains(seed):
    """text_classifier, trained by ``fit`` through its ``training_setup`` on 60 of 300
    labelled sentences, classifies held-out sentences by their keyword."""
    train, valid = keyword_data(seed, 300), keyword_data(seed + 1, 90)
    torch.manual_seed(seed)
    model = TextClassifier(
        vocabulary=VOCABULARY.to_list(), num_classes=3, embed_dim=8, hidden_dim=16
    )
    setup = model.training_setup(train, valid, num_labels=60, seed=seed)
    assert len(setup["train_data"]) == 60
    assert torch.bincount(setup["train_data"].labels).tolist() == [20, 20, 20]
    result = fit(
        model.model, model.guide, **setup, epochs=25, batch_size=20, lr=1e-2, progress=False
    )
    best = max(r["valid_accuracy"] for r in result.history)
    assert best > 0.9
    assert result.history[-1]["valid_bound"] > result.history[0]["valid_bound"]


def test_confusion_matrix_figure(tmp_path):
    from pvae.figures import plot_confusion_matrix

    counts = torch.tensor([[5, 1], [2, 7]])
    path = plot_confusion_matrix(counts, tmp_path / "c.png", class_names=["neg", "pos"])
    assert path.stat().st_size > 0
    with pytest.raises(ValueError, match="square matrix"):
        plot_confusion_matrix(torch.ones(2, 3), tmp_path / "d.png")
    with pytest.raises(ValueError, match="1 class names for 2 classes"):
        plot_confusion_matrix(counts, tmp_path / "e.png", class_names=["a"])


def test_pvae_sample_refuses_the_classifier_in_one_line(tmp_path, capsys):
    from pvae.cli import main
    from pvae.infer.train import TrainConfig
    from pvae.runs import TrainSpec, train_run

    out = tmp_path / "run"
    spec = TrainSpec(
        model="text_classifier",
        dataset="sst2",
        model_options={"embed_dim": 4, "hidden_dim": 4},
        train=TrainConfig(epochs=1, batch_size=32, seed=0),
        train_size=64,
        eval_samples=1,
        eval_size=10,
        num_labels=20,
        out=out,
        progress=False,
    )
    with pyro.settings.context(module_local_params=True):
        metrics = train_run(spec)
    assert 0 <= metrics["test_accuracy"] <= 1 and metrics["test_nll"] > 0
    assert (out / "confusion_matrix.png").exists()
    assert main(["sample", str(out)]) != 0
    assert "cannot draw sentences" in capsys.readouterr().err
