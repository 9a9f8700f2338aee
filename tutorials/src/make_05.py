"""Writes ``tutorials/05_semisupervised_text.ipynb`` (without outputs) from the cells below.

Run ``.venv/bin/python tutorials/src/make_05.py`` after editing, and commit both files. The
notebook is executed by ``tests/test_tutorials.py`` with ``PVAE_SMOKE=1``.
"""

from __future__ import annotations

from pathlib import Path

import nbformat
from nbcells import notebook_from

NOTEBOOK = Path(__file__).resolve().parents[1] / "05_semisupervised_text.ipynb"

CELLS: list[tuple[str, str]] = [
    (
        "md",
        """\
# Semi-supervised text classification with a VAE

Labels are expensive, sentences are cheap. The semi-supervised sequential VAE (SSVAE) of Xu et
al. [1] carries Kingma et al.'s M2 [2] over to text: a generative model of a sentence `x`, its
class `y` and a continuous code `z`,

    y ~ Categorical(1/C, ..., 1/C),   z ~ N(0, I),   x ~ p(x | y, z)  (an LSTM decoder)

trained on a few labelled sentences and many unlabelled ones. For an unlabelled sentence the
class is a latent variable, and the guide's classifier `q(y | x)` must infer it, so the
classifier learns from the unlabelled sentences too. Xu et al.'s point is that the decoder must
*see* the label at every step, or the LSTM decoder models the sentence without it and the
unlabelled sentences teach the classifier nothing.

This tutorial, on TREC question classification (6 classes),

1. builds `ss_text_vae` and looks at its model and guide;
2. trains it from 100 labels among the unlabelled questions, and the same classifier on the
   100 labelled questions alone (`text_classifier`), and compares their accuracies;
3. compares the three ways to handle the unlabelled term: summing `y` out exactly
   (*enumeration*, C decoder passes per sentence) and sampling `y` with a score-function
   gradient and a baseline, a moving average or a leave-one-out mean of other samples [1, 3];
4. decodes sentences for every class from the same `z`.

With `PVAE_SMOKE=1` (as the test suite runs it) everything is shrunk to run in seconds and the
numbers mean nothing; without it the notebook takes a few minutes on a two-core CPU.
`benchmarks/ss_text.py` runs the same comparison over label counts and seeds.

**References**

[1] Xu, Sun, Deng, Tan. *Variational Autoencoder for Semi-supervised Text Classification*.
AAAI 2017. https://arxiv.org/abs/1603.02514

[2] Kingma, Rezende, Mohamed, Welling. *Semi-Supervised Learning with Deep Generative Models*.
NeurIPS 2014. https://arxiv.org/abs/1406.5298

[3] Mnih, Rezende. *Variational Inference for Monte Carlo Objectives*. ICML 2016.
https://arxiv.org/abs/1602.06725

[4] Felhi, Le Roux, Seddah. *Challenging the Semi-Supervised VAE Framework for Text
Classification*. 2021. https://arxiv.org/abs/2109.12969""",
    ),
    (
        "code",
        """\
import os
import time

import pyro
import torch

from pvae.data import load_dataset
from pvae.infer.baselines import ScoreFunctionELBO
from pvae.infer.train import fit
from pvae.models import build_model

SMOKE = os.environ.get("PVAE_SMOKE") == "1"
# Sizes: the smoke setting only checks that every cell runs.
TRAIN_SIZE = 200 if SMOKE else 2000  # TREC questions used (labelled and unlabelled)
NUM_LABELS = 30 if SMOKE else 100
EPOCHS = 1 if SMOKE else 4
SIZES = dict(embed_dim=16, hidden_dim=16) if SMOKE else dict(embed_dim=64, hidden_dim=64)
DRAWS = 4 if SMOKE else 24  # gradient draws per estimator

torch.set_num_threads(1)
pyro.settings.set(module_local_params=True)
print(f"smoke={SMOKE}: {TRAIN_SIZE} questions, {NUM_LABELS} labels, {EPOCHS} epochs")""",
    ),
    (
        "md",
        """\
## Data

`trec` holds 5,452 training questions (pvae keeps 545 of them apart as the validation split)
and 500 test questions, each with one of six coarse classes. The vocabulary comes from the
training split; `max_vocab` keeps its 2,000 most frequent tokens (the rest become `<unk>`),
which makes the decoder's softmax cheap. Batches are `(x, y)`: token ids padded with 0, and
the labels.""",
    ),
    (
        "code",
        """\
full = load_dataset("trec", "train", max_vocab=2000, progress=False)
vocabulary = full.vocabulary
train = full.subset(TRAIN_SIZE, seed=0)
valid = load_dataset("trec", "valid", vocabulary=vocabulary, progress=False)
test = load_dataset("trec", "test", vocabulary=vocabulary, progress=False)
if SMOKE:
    valid, test = valid.subset(100), test.subset(100)
print(train, valid, test, sep="\\n")
for sentence, label in zip(train.sentences(5), train.labels[:5].tolist(), strict=True):
    print(label, sentence)
print("class counts:", torch.bincount(train.labels, minlength=6).tolist())""",
    ),
    (
        "md",
        """\
## The model and its guide

`build_model("ss_text_vae", ...)` takes the vocabulary and the number of classes from the
dataset (`train.model_options()`). The model is M2's story with an LSTM decoder that reads the
one-hot label at every step (`decoder_condition="label"`; `"both"` feeds `z` at every step
too, the paper's second structure). The guide is the classifier `q(y | x)` and a Gaussian
`q(z | x, y)`.

`model(x, y)` is a labelled batch: `y` is observed, and the classification loss
`alpha * log q(y | x)` is added as the observed site `"y_aux"`. `model(x)` is an unlabelled
one: `y` is a latent variable. With `unlabelled="enumerate"` the guide marks it for parallel
enumeration, so `TraceEnum_ELBO` runs the decoder once per class and sums the classes out
exactly: below, `z` gets a leading dimension of 6.""",
    ),
    (
        "code",
        """\
options = dict(train.model_options(), **SIZES, latent_dim=16)
torch.manual_seed(0)
ssvae = build_model("ss_text_vae", **options)
x, y = next(iter(train.batches(8, shuffle=False)))
labelled = pyro.poutine.trace(ssvae.model).get_trace(x, y)
sites = [name for name, site in labelled.nodes.items() if site["type"] == "sample"]
print("labelled batch, model sites:", sites)
enumerated = pyro.poutine.trace(pyro.poutine.enum(ssvae.guide, first_available_dim=-2)).get_trace(x)
shapes = {name: tuple(enumerated.nodes[name]["value"].shape) for name in ("y", "z")}
print("unlabelled batch, guide sites:", shapes)""",
    ),
    (
        "md",
        """\
## Training from 100 labels, beside the classifier alone

`training_setup(train, valid, num_labels=..., seed=...)` returns what `fit` needs: a
`SemiSupervisedData` stream with `num_labels` class-balanced labelled questions (drawn by the
seed) among the unlabelled rest, the objective (`TraceEnum_ELBO` on unlabelled batches,
`Trace_ELBO` on labelled ones), and the validation accuracy of `q(y | x)`, which picks the best
epoch. This is what `pvae train --model ss_text_vae --dataset trec --num-labels 100` does.

Here, as in `benchmarks/ss_text.py`, the labelled questions are visited more than once per
epoch (`labelled_repeats`), so that a few epochs hold enough labelled steps, and the
validation bound is skipped to save time. The supervised baseline, `text_classifier`, is the
same classifier trained on the same labelled questions for as many passes over them.""",
    ),
    (
        "code",
        """\
from pvae.data.semisupervised import SemiSupervisedData

REPEATS = max(1, len(train) // NUM_LABELS)  # about one labelled batch per unlabelled batch


def train_and_report(model, setup, epochs):
    start = time.perf_counter()
    result = fit(
        model.model, model.guide, **setup, epochs=epochs, batch_size=64, lr=2e-3, progress=False
    )
    accuracies = [round(r["valid_accuracy"], 3) for r in result.history]
    seconds = time.perf_counter() - start
    print(f"{type(model).__name__}: valid accuracy per epoch {accuracies} ({seconds:.0f} s)")


setup = ssvae.training_setup(train, valid, num_labels=NUM_LABELS, seed=0)
setup["train_data"] = SemiSupervisedData(train, NUM_LABELS, 6, labelled_repeats=REPEATS, seed=0)
setup["valid_data"] = None
train_and_report(ssvae, setup, EPOCHS)

torch.manual_seed(0)
classifier = build_model("text_classifier", **dict(train.model_options(), **SIZES))
setup = classifier.training_setup(train, valid, num_labels=NUM_LABELS, seed=0)
train_and_report(classifier, setup, EPOCHS * REPEATS)
print(
    f"test accuracy: SSVAE {ssvae.accuracy(test):.3f}, classifier alone "
    f"{classifier.accuracy(test):.3f} (last epoch of each)"
)""",
    ),
    (
        "md",
        """\
With so few labels and a small budget the two are often within noise of each other: the
benchmark's table (`benchmarks/results/ss_text.md`) says, over seeds, where the unlabelled
questions helped. Felhi et al. [4] found that the KL term of z can be dropped without losing
accuracy: try `build_model("ss_text_vae", ..., kl_weight=0)` (or `pvae train ...
--model-option kl_weight=0`).

## Enumerate or sample the label?

Enumeration costs one decoder pass per class. Sampling `y ~ q(y | x)` costs one pass per
sample, but the classifier's gradient then comes from the score function
`grad log q(y | x) * (ELBO(x, y, z) - b)`, whose variance depends on the baseline `b`:

- `sample_ema`: Pyro's `TraceGraph_ELBO` with the guide's `infer={"baseline":
  {"use_decaying_avg_baseline": True}}` (a moving average of the cost);
- `sample_vimco`: `K` samples per sentence, each with the mean ELBO of the others as its
  baseline (a leave-one-out baseline in the spirit of VIMCO [3]).

Below: the total variance of the classifier's gradient over repeated draws on one batch, and
the time per step, for each. REINFORCE without a baseline (Pyro's `TraceGraph_ELBO` on a guide
that asks for none) is the reference.""",
    ),
    (
        "code",
        """\
from dataclasses import replace

x, _ = next(iter(train.batches(64, generator=torch.Generator().manual_seed(1))))


def classifier_gradients(model, elbo, draws, warm=0):
    grads, seconds = [], 0.0
    with pyro.get_param_store().scope():  # the moving average lives in the param store
        for i in range(warm + draws):
            model.zero_grad()
            start = time.perf_counter()
            elbo.differentiable_loss(model.model, model.guide, x).backward()
            if i >= warm:
                seconds += time.perf_counter() - start
                grads.append(torch.cat([p.grad.flatten() for p in model.classifier.parameters()]))
    grads = torch.stack(grads)
    return float(((grads - grads.mean(0)) ** 2).sum(-1).mean()), seconds / draws


for name, estimator, elbo in [
    ("enumerate", "enumerate", None),
    ("REINFORCE, no baseline, K=2", "sample_vimco", ScoreFunctionELBO(num_particles=2)),
    ("moving average, K=2", "sample_ema", None),
    ("leave-one-out, K=2", "sample_vimco", None),
]:
    clone = type(ssvae)(replace(ssvae.config, unlabelled=estimator, label_samples=2))
    clone.load_state_dict(ssvae.state_dict())
    warm = 10 if estimator == "sample_ema" else 0
    elbo = elbo or clone.unlabelled_objective()
    variance, seconds = classifier_gradients(clone, elbo, DRAWS, warm)
    print(f"{name:30s} total variance {variance:10.4g}   {1000 * seconds:6.0f} ms per step")""",
    ),
    (
        "md",
        """\
Enumeration has the smallest variance (only `z` is sampled) and, with six classes, the highest
cost per step. The leave-one-out baseline removes most of the score function's variance, the
moving average much less: one number for all sentences cannot follow the cost, which grows with
the sentence's length. Both sampled estimators are unbiased: `tests/models/test_ss_text_vae.py`
checks that their means agree with enumeration.

## Sentences for each class from the same z

Decoding the same `z` with each label shows what the decoder has learnt about the classes
(after a few epochs, not much; the model is small).""",
    ),
    (
        "code",
        """\
z = ssvae.prior_sample(2, torch.Generator().manual_seed(0))
for i in range(2):
    sentences = ssvae.decode_labelled(z[i : i + 1].expand(6, -1), torch.arange(6))
    for c, sentence in enumerate(sentences):
        print(f"z{i} y={c}: {sentence}")""",
    ),
    (
        "md",
        """\
In our full-size run the two codes decode to the same questions, one per label: the decoder
reads the label at every step and has learnt to ignore `z` (posterior collapse, as with the
plain sentence VAE). For the classifier that is no loss: the unlabelled term works through the
label. `kl_weight=0` (Felhi et al. [4]) removes the KL term of `z` altogether.""",
    ),
]


def build() -> nbformat.NotebookNode:
    return notebook_from(CELLS)


if __name__ == "__main__":
    notebook = build()
    # Stable cell ids, so that regenerating an unchanged notebook gives an identical file.
    for index, cell in enumerate(notebook.cells):
        cell["id"] = f"cell-{index:02d}"
    nbformat.write(notebook, NOTEBOOK)
    print(f"wrote {NOTEBOOK}")
