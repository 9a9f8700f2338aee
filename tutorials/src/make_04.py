"""Writes ``tutorials/04_text_vaes.ipynb`` (without outputs) from the cells below.

Run ``.venv/bin/python tutorials/src/make_04.py`` after editing, and commit both files. The
notebook is executed by ``tests/test_tutorials.py`` with ``PVAE_SMOKE=1``.
"""

from __future__ import annotations

from pathlib import Path

import nbformat
from nbcells import notebook_from

NOTEBOOK = Path(__file__).resolve().parents[1] / "04_text_vaes.ipynb"

CELLS: list[tuple[str, str]] = [
    (
        "md",
        """\
# Text VAEs: posterior collapse, and how to prevent it

A sentence VAE [1] encodes a sentence `x` into a code `z` and decodes it with an LSTM language
model conditioned on `z`. Text is where VAEs are hardest: the decoder is autoregressive, strong
enough to model a sentence without any code, and it learns to ignore `z` (*posterior
collapse*). This tutorial, on Penn Treebank,

1. loads the data: the vocabulary and length-bucketed batches of token ids;
2. trains a plain `sentence_vae` and watches it collapse: the KL term goes to zero;
3. prevents the collapse four ways: KL annealing [1], word dropout [1], free bits [2], and the
   von Mises-Fisher posterior of fixed concentration, `vmf_text_vae` [3];
4. compares their perplexities with the LSTM language model `lstm_lm`, saying which numbers
   are bounds;
5. decodes sentences: from the prior (greedy, sampled with a temperature, beam search),
   reconstructions, and a homotopy between two test sentences.

The real run, whose outputs are shown, trains six small models (embeddings 64, LSTMs of 64
units, 32 latent dimensions) for four epochs on the first 6,000 of PTB's 42,068 training
sentences; it took 22 minutes on two CPU cores shared with other jobs (one thread, about 12
minutes of CPU time). Such models are far from the papers' (their perplexities are near 100,
ours several times that): the point is the behaviour of the KL term, not the numbers. With
`PVAE_SMOKE=1` (as the test suite runs it) everything shrinks to run in seconds and the numbers
mean nothing.

**References**

[1] Bowman, Vilnis, Vinyals, Dai, Jozefowicz, Bengio. *Generating Sentences from a Continuous
Space*. CoNLL 2016. https://arxiv.org/abs/1511.06349

[2] Kingma, Salimans, Jozefowicz, Chen, Sutskever, Welling. *Improving Variational Inference
with Inverse Autoregressive Flow*. NeurIPS 2016. https://arxiv.org/abs/1606.04934

[3] Xu, Durrett. *Spherical Latent Spaces for Stable Variational Autoencoders*. EMNLP 2018.
https://arxiv.org/abs/1808.10805

[4] He, Spokoyny, Neubig, Berg-Kirkpatrick. *Lagging Inference Networks and Posterior Collapse
in Variational Autoencoders*. ICLR 2019. https://arxiv.org/abs/1901.05534

[5] Li, He, Neubig, Berg-Kirkpatrick, Yang. *A Surprisingly Effective Fix for Deep Latent
Variable Modeling of Text*. EMNLP 2019. https://arxiv.org/abs/1909.00868""",
    ),
    (
        "code",
        """\
%matplotlib inline
import math
import os
import time

import matplotlib.pyplot as plt
import pyro
import torch
from torch.distributions import kl_divergence

from pvae.data import load_dataset
from pvae.data.text import TextDataset
from pvae.evaluation import active_units, mutual_information
from pvae.infer.callbacks import Callback
from pvae.infer.train import TrainConfig, fit
from pvae.models import build_model
from pvae.runs import evaluate_model

pyro.settings.set(module_local_params=True)  # parameters live in the modules
SMOKE = os.environ.get("PVAE_SMOKE") == "1"
# The smoke setting (the test suite) only checks that every cell runs.
TRAIN_SIZE = 200 if SMOKE else 6_000  # sentences, the first ones of PTB's training split
VALID_SIZE = 50 if SMOKE else 500
TEST_SIZE = 40 if SMOKE else 300
EPOCHS = 1 if SMOKE else 4
ANNEAL_EPOCHS = 1 if SMOKE else 2  # the logistic KL weight reaches 1 after this many epochs
EVAL_SAMPLES = 5 if SMOKE else 20  # K importance samples per test sentence
SIZES = dict(embed_dim=64, hidden_dim=64, latent_dim=32)
if SMOKE:
    SIZES = dict(embed_dim=8, hidden_dim=8, latent_dim=4, max_decode_length=12)
BATCH = 32
torch.manual_seed(0)
start_time = time.perf_counter()
print(f"smoke={SMOKE}: {TRAIN_SIZE} training sentences, {EPOCHS} epochs, sizes {SIZES}")""",
    ),
    (
        "md",
        """\
## 1. Penn Treebank

`load_dataset("ptb", split)` reads Mikolov's preprocessing of PTB (lower case, numbers as `N`,
rare words already `<unk>`; 42,068 / 3,370 / 3,761 sentences) into a `TextDataset`. The
vocabulary is built from the whole training split, even when `size` keeps only the first
sentences, and the other splits must be read *with it* (`vocabulary=`), or the same word would
get different ids. Ids 0-3 are `<pad>`, `<bos>`, `<eos>`, `<unk>`.

A sentence is stored as its ids followed by `<eos>`; its length counts the `<eos>`, which a
language model must predict too. A batch `(x, y)` holds `x`, int64 `(B, T)` padded with
`<pad>` to the batch's longest sentence (and `y`, labels, all `-1` for PTB). Shuffled epochs
are *bucketed*: sentences of similar length are batched together, so little of each batch is
padding (the models mask it, so it changes no loss, only the time spent).""",
    ),
    (
        "code",
        """\
train = load_dataset("ptb", "train", size=TRAIN_SIZE, progress=False)
vocab = train.vocabulary
valid = load_dataset("ptb", "valid", vocabulary=vocab, size=VALID_SIZE, progress=False)
test = load_dataset("ptb", "test", vocabulary=vocab, size=TEST_SIZE, progress=False)
print(train, valid, test, sep="\\n")
print(f"{vocab}: {vocab.tokens[:10]} ...")
print(f"{train.num_tokens} training tokens (words + <eos>), {test.num_tokens} test tokens")
for sentence in train.sentences(4)[1:]:  # the file's first line is a list of rare words
    print("  ", sentence)

x, _ = next(iter(train.batches(6, generator=torch.Generator().manual_seed(0))))
print("a batch of ids:", tuple(x.shape), "lengths", (x != 0).sum(-1).tolist())
print(x[:2])


def padding_fraction(data):
    \"\"\"The share of <pad> in one shuffled epoch's batches.\"\"\"
    pads = total = 0
    for xb, _ in data.batches(BATCH, generator=torch.Generator().manual_seed(0)):
        pads, total = pads + int((xb == 0).sum()), total + xb.numel()
    return pads / total


unbucketed = TextDataset(train.tokens, vocab, bucket=1)
print(
    f"padding in an epoch: {padding_fraction(train):.1%} bucketed, "
    f"{padding_fraction(unbucketed):.1%} without buckets"
)""",
    ),
    (
        "md",
        """\
## 2. The sentence VAE, and its collapse

`sentence_vae` is Bowman et al.'s model [1]: `z ~ N(0, I)`; an LSTM decoder predicts each word
from the previous ones and `z` (fed to its initial state and to every input); the guide is an
LSTM encoder whose state at `<eos>` gives `q(z | x) = N(mu(x), diag sigma(x)^2)`. It maximises

    ELBO(x) = E_q(z|x)[ log p(x | z) ] - KL( q(z | x) || p(z) )  <=  log p(x),
    log p(x | z) = sum_t log p(x_t | x_<t, z).

Why it collapses: the decoder sees `x_<t`, so it can model the sentence as a plain language
model, `p(x | z) = p(x)`. Early in training the code is still noise, so the decoder learns to
do without it; then `q(z | x) = p(z)` for every `x` makes `KL = 0` at no cost to the first term,
and the encoder gets no signal to leave (He et al. [4]: the inference network lags). Since the
mean KL bounds the information the code carries, `I(x; z) <= E_x KL(q(z | x) || p(z))`,
a KL of zero means `z` says nothing about `x`.

We record the KL during training: a small `Callback` computes the mean analytic
`KL(q(z | x) || p(z))` over the validation sentences every few steps (only the encoder runs,
so it is cheap) and at each epoch's end, where it joins `fit`'s record beside `valid_elbo`.""",
    ),
    (
        "code",
        """\
class KLTrace(Callback):
    \"\"\"Mean KL(q(z | x) || p(z)) of the sentences ``x`` every ``every`` steps (with the KL
    weight beta then in force) and after each epoch (``record["valid_kl"]``).\"\"\"

    def __init__(self, x, every):
        self.x, self.every = x, every
        self.epochs, self.kl, self.beta = [], [], []  # beta: at the steps only

    def mean_kl(self, model):
        with torch.no_grad():
            return float(kl_divergence(model.posterior(self.x), model.prior()).mean())

    def on_step_start(self, state):
        if state.step % self.every == 0:
            self.epochs.append(state.epoch + state.step / state.steps_per_epoch)
            self.kl.append(self.mean_kl(state.model))
            self.beta.append((self.epochs[-1], state.objective.beta))

    def on_epoch_end(self, state, record):
        record["valid_kl"] = self.mean_kl(state.model)
        self.epochs.append(state.epoch + 1.0)
        self.kl.append(record["valid_kl"])


def train_text_model(name, *, anneal_epochs=0.0, **options):
    \"\"\"Builds the registered model ``name`` (seed 0) and trains it; returns it in eval mode
    (no word dropout), with fit's result and the KL trace (``None`` for the language model).\"\"\"
    sizes = {k: v for k, v in SIZES.items() if name != "lstm_lm" or k != "latent_dim"}
    torch.manual_seed(0)
    model = build_model(name, vocabulary=vocab.to_list(), **sizes, **options)
    trace = KLTrace(valid.tokens, every=10) if name != "lstm_lm" else None
    config = TrainConfig(
        epochs=EPOCHS,
        batch_size=BATCH,
        lr=3e-3,
        clip_norm=5.0,
        seed=0,
        kl_anneal_epochs=anneal_epochs,
        kl_anneal_schedule="logistic",
    )
    result = fit(
        model.model,
        model.guide,
        train,
        valid_data=valid,
        config=config,
        progress=False,
        callbacks=[trace] if trace else [],
    )
    model.eval()  # fit leaves the modules as it found them: in training mode
    return model, result, trace


def collapse_metrics(model):
    \"\"\"Active units (Var_x E_q[z_u | x] > 0.01) and I(x; z) on the validation sentences.\"\"\"
    units = active_units(model, valid.tokens)
    mi = mutual_information(model, valid.tokens, num_samples=10)
    return units, mi


plain, plain_result, plain_trace = train_text_model("sentence_vae")
for record in plain_result.history:
    print(
        f"epoch {record['epoch']}: valid ELBO {record['valid_elbo']:.2f} nats per sentence, "
        f"KL {record['valid_kl']:.3f} nats (after {record['time']:.0f}s)"
    )
units, mi = collapse_metrics(plain)
print(f"largest KL during training {max(plain_trace.kl):.2f}, at the end {plain_trace.kl[-1]:.3f}")
print(f"{units}; I(x; z) = {mi:.3f} nats (at most log N = {math.log(len(valid)):.2f})")""",
    ),
    (
        "md",
        """\
A collapsed model decodes every code to the same sentence: here are greedy decodings of five
draws from the prior and of the guide's mean codes of three test sentences. (What the
decoder writes is its idea of a typical PTB sentence, whatever `z` is.)""",
    ),
    (
        "code",
        """\
print("from the prior (greedy):")
for sentence in plain.sample(5, generator=torch.Generator().manual_seed(0)):
    print("  ", sentence)
# Test sentences of moderate length (6 to 15 words) to reconstruct.
words = (test.tokens != 0).sum(-1) - 1
moderate = torch.nonzero((words >= 6) & (words <= 15)).flatten().tolist()
moderate = moderate if len(moderate) >= 3 else [0, 1, 2]
x_show = test.tokens[moderate[:3]]
texts = [test.sentences()[i] for i in moderate[:3]]
print("reconstructions (greedy, from the guide's mean):")
for original, decoded in zip(texts, plain.reconstruct(x_show), strict=True):
    print(f"   {original}\\n     -> {decoded}")""",
    ),
    (
        "md",
        """\
## 3. Four ways to keep the code

Each variant changes one thing and keeps the networks, the data and the seed:

- **KL annealing** [1]: train with `ELBO_beta = E_q[log p(x | z)] - beta KL`, with `beta` rising
  from 0 to 1, so the encoder learns to put information in `z` before the KL is charged in
  full. `TrainConfig(kl_anneal_epochs=2, kl_anneal_schedule="logistic")` is Bowman's logistic
  schedule, `beta = sigmoid(10 (epoch / 2 - 1/2))`, then 1 (`"linear"` and `"cyclical"` [Fu et
  al. 2019] exist too). Validation always uses `beta = 1`, the true bound.
- **Word dropout** [1]: during training each input word of the decoder becomes `<unk>` with
  probability `p` (`word_dropout=0.5`), so the decoder cannot lean on `x_<t` alone and has to
  read `z`. Evaluation uses every word.
- **Free bits** [2]: the KL of latent unit `u` (averaged over the batch) is not penalised below
  `lambda` nats (`free_bits=0.125`: up to 4 nats over 32 units). pvae implements it as a
  zero-valued surrogate, so every reported bound is the true ELBO.
- **vMF with fixed kappa** [3]: `vmf_text_vae` puts `z` on the unit sphere in `R^32`, with a
  uniform prior and `q(z | x) = vMF(mu(x), kappa)` of fixed concentration. By symmetry of the
  sphere, `KL(vMF(mu, kappa) || Uniform)` is the same for every direction `mu`: a constant
  the optimiser cannot lower, so the posterior cannot collapse. `kappa` sets the constant
  (below: 5.8 nats at `kappa = 25`, near the KL Xu & Durrett report for their PTB model).

The language model `lstm_lm` (no latent, the same decoder without `z`) is trained beside them:
it is what a collapsed VAE turns into.""",
    ),
    (
        "code",
        """\
variants = {"plain": (plain, plain_result, plain_trace)}
variants["annealing"] = train_text_model("sentence_vae", anneal_epochs=ANNEAL_EPOCHS)
variants["word dropout"] = train_text_model("sentence_vae", word_dropout=0.5)
variants["free bits"] = train_text_model("sentence_vae", free_bits=0.125)
variants["vMF"] = train_text_model("vmf_text_vae", kappa=25.0)
lm, lm_result, _ = train_text_model("lstm_lm")

vmf = variants["vMF"][0]
kl_vmf = kl_divergence(vmf.posterior(valid.tokens[:4]), vmf.prior())
print("vMF: KL of four sentences (one constant):", [round(v, 4) for v in kl_vmf.tolist()])
assert torch.allclose(kl_vmf, kl_vmf[0].expand(4))
print(f"{time.perf_counter() - start_time:.0f}s so far")""",
    ),
    (
        "code",
        """\
fig, (ax_kl, ax_bound) = plt.subplots(1, 2, figsize=(12, 4.5), layout="constrained")
for name, (_, result, trace) in variants.items():
    (line,) = ax_kl.plot(trace.epochs, trace.kl, label=name)
    epochs = [r["epoch"] for r in result.history]
    ax_bound.plot(
        epochs, [r["valid_elbo"] for r in result.history], "o-", color=line.get_color(), label=name
    )
ax_beta = ax_kl.twinx()  # the annealed model's KL weight, on its own axis
ax_beta.plot(*zip(*variants["annealing"][2].beta, strict=True), ":", color="gray")
ax_beta.set_ylim(0, 1.05)
ax_beta.set_ylabel("beta of 'annealing' (dotted)")
ax_kl.set_yscale("symlog", linthresh=1.0)  # linear below 1 nat, logarithmic above
ax_kl.set_xlabel("epoch")
ax_kl.set_ylabel("mean KL(q(z|x) || p(z)), nats per sentence")
ax_kl.set_title("KL term on validation sentences")
ax_kl.legend()
epochs = [r["epoch"] for r in lm_result.history]
ax_bound.plot(epochs, [r["valid_elbo"] for r in lm_result.history], "k--", label="LSTM-LM (exact)")
ax_bound.set_xlabel("epoch")
ax_bound.set_ylabel("nats per sentence")
ax_bound.set_title("validation ELBO (log p(x) for the LM)")
ax_bound.legend()
plt.show()

print(f"{'':14s} {'valid ELBO':>10s} {'KL':>7s} {'active units':>13s} {'I(x; z)':>8s}")
for name, (model, result, _) in variants.items():
    units, mi = collapse_metrics(model)
    last = result.history[-1]
    print(
        f"{name:14s} {last['valid_elbo']:10.2f} {last['valid_kl']:7.2f} "
        f"{units.count:>6d} of {units.variances.numel():<3d} {mi:8.2f}"
    )
print(f"{'LSTM-LM':14s} {lm_result.history[-1]['valid_elbo']:10.2f}  (exact log p(x))")""",
    ),
    (
        "md",
        """\
How to read it. The KL term is the price of the code, and an upper bound on the information
it carries, `I(x; z)`. In the run shown:

- **plain**: the KL starts at a few nats (those of the randomly initialised encoder) and is
  gone within a fifth of an epoch: collapse, with no active unit and `I(x; z) = 0`.
- **annealing**: while `beta` is near 0 the code is almost free and the KL shoots up (the
  encoder puts as much of the sentence into `z` as it likes); as `beta` grows the KL falls,
  and it is gone before `beta` reaches 1. At this budget annealing delays the collapse, it does
  not prevent it (nor at a full budget: Li et al. [5] report a KL of 0.0 on PTB for a VAE
  trained with Bowman's annealing).
- **word dropout**: the KL collapses at first, then creeps back up late in training, a little:
  with half of its inputs hidden, the decoder slowly finds the code useful.
- **free bits** and **vMF** keep a KL by construction (the vMF's is the constant above; free
  bits only removes the pressure below `lambda`, it does not push the KL up to it), and their
  codes carry information: the largest `I(x; z)` in the table. For the vMF, `active units`
  counts coordinates of the mean direction that vary over sentences, a weaker notion than for
  a Gaussian.

A larger KL is not a better model: the ELBO charges the KL in full, and only a decoder that
uses the code earns it back. Here the collapsed models reach the language model's exact
`log p(x)` (they *are* language models, with an unused encoder), while the models that keep a
code trail it by a few nats, and word dropout pays for training on damaged inputs. Whether a
code pays for itself is the question of the next section.

## 4. Perplexity

The number the text literature reports is perplexity per token,

    PPL = exp( - sum_n log p(x_n) / sum_n T_n ),

with `T_n` the sentence's words **plus its `<eos>`**. For the language model, `log p(x)` is
exact. A VAE's `log p(x)` has no closed form; `pvae.runs.evaluate_model` estimates it by
importance sampling with `K` samples from the guide,

    log p(x) ~= log (1/K) sum_k p(x, z_k) / q(z_k | x),   z_k ~ q(z | x),

which is a lower bound in expectation for every `K` (the ELBO at `K = 1`) and tightens as `K`
grows. So a VAE's NLL and perplexity are **upper bounds** (in expectation), the LM's are
exact: if a VAE beats the LM, it does so for sure (up to the noise of the estimate); if it
loses, part of the gap may be the bound's. Below, every model is evaluated on the same test
sentences, the VAEs at `K = 1` (the ELBO) and at `K = EVAL_SAMPLES`.""",
    ),
    (
        "code",
        """\
def evaluate(model, k):
    return evaluate_model(model, test, num_samples=k, progress=False, seed=0)


rows = []
for name, (model, _, trace) in variants.items():
    elbo, iw = evaluate(model, 1), evaluate(model, EVAL_SAMPLES)
    rows.append((name, elbo, iw, trace.kl[-1]))
exact = evaluate(lm, 1)  # no latent: the ELBO is log p(x), K = 1 suffices
print(f"test: {len(test)} sentences, {test.num_tokens} tokens (with <eos>); K = {EVAL_SAMPLES}")
print(
    f"{'':14s} {'NLL (ELBO)':>11s} {'NLL (K)':>15s} {'PPL (ELBO)':>11s} {'PPL (K)':>8s} {'KL':>6s}"
)
for name, elbo, iw, kl in rows:
    print(
        f"{name:14s} {elbo['nll']:11.2f} {iw['nll']:8.2f} ± {iw['nll_stderr']:4.2f} "
        f"{elbo['perplexity']:11.1f} {iw['perplexity']:8.1f} {kl:6.2f}"
    )
print(
    f"{'LSTM-LM':14s} {exact['nll']:11.2f} {exact['nll']:8.2f} ± {exact['nll_stderr']:4.2f} "
    f"{exact['perplexity']:11.1f} {exact['perplexity']:8.1f}  (exact)"
)""",
    ),
    (
        "md",
        """\
NLL is in nats per sentence; `±` is the standard error over sentences, large because
sentences differ in length. The models see the same sentences, so their *differences* are
much better determined than that. The gap between the two NLL columns is what `K` samples
recover over the ELBO: roughly nothing for a collapsed model (its `q(z | x)` is the prior and
`z` is ignored) and most for the models with a large KL.

In the run shown no VAE beats the language model: the collapsed ones match it, and the free
bits and vMF models, which keep a code, are a little worse even at `K = 20`. Their bounds are
the loosest (the largest gain from `K`), so part of that gap may be the bound's; the rest is the
short training. Xu & Durrett [3] report the vMF VAE *below* the LSTM-LM (perplexity 98
against 114, bounds, their Table 3) with all of PTB and far longer training;
`benchmarks/text_ptb.py` asks the same question of pvae's models at a larger budget.

## 5. Decoding

`model.decode(z, method=...)` turns codes into sentences: `"greedy"` (the most likely word at
every step), `"sample"` (with a `temperature`: below 1 sharper, above 1 flatter) and `"beam"`
(the most likely sentence among `beam_size` hypotheses). `model.sample(n)` decodes prior
draws greedily, `model.reconstruct(x)` decodes the guide's mean code of `x`, and
`model.homotopy(x1, x2)` decodes points on the line between two sentences' codes (for the
vMF, projected back onto the sphere), as in Bowman et al.'s Section 5.2. We use the vMF
model, whose code is never collapsed. `pvae sample RUN` prints prior sentences of a trained
run folder the same way.

Expect little from models this small and this briefly trained: the most probable continuation
is usually a frequent word, so greedy and beam decoding write `the <unk> of the ...` and
greedy decoding can loop until `max_decode_length`; sampling at temperature 1 gives varied
but ungrammatical sentences, and lower temperatures fall back towards the frequent words.""",
    ),
    (
        "code",
        """\
generator = torch.Generator().manual_seed(0)
z = vmf.prior_sample(4, generator=generator)
print("prior draws, greedy:")
for sentence in vmf.decode(z, method="greedy"):
    print("  ", sentence)
print("the same draws, beam search (5 hypotheses):")
for sentence in vmf.decode(z, method="beam", beam_size=5):
    print("  ", sentence)
for temperature in (0.5, 1.0):  # the same random numbers at both temperatures
    print(f"the same draws, sampled at temperature {temperature}:")
    for sentence in vmf.decode(
        z, method="sample", temperature=temperature, generator=torch.Generator().manual_seed(1)
    ):
        print("  ", sentence)
print("the LSTM-LM, sampled at temperature 1 (it has no code):")
for sentence in lm.sample(4, generator=torch.Generator().manual_seed(0)):
    print("  ", sentence)""",
    ),
    (
        "code",
        """\
print("reconstructions (greedy, from the guide's mean code):")
recon = {name: variants[name][0].reconstruct(x_show) for name in ("free bits", "vMF")}
for i, original in enumerate(texts):
    print(f"   {original}")
    for name, decoded in recon.items():
        print(f"     {name:>9s} -> {decoded[i]}")

first, second = moderate[0], moderate[1]
print("\\nhomotopy (greedy):")
print("  from:", test.sentences()[first])
for sentence in vmf.homotopy(test.tokens[first], test.tokens[second], steps=7):
    print("       ", sentence)
print("    to:", test.sentences()[second])
print(f"\\nthe whole notebook: {time.perf_counter() - start_time:.0f}s")""",
    ),
    (
        "md",
        """\
What the code holds at this stage is coarse: the reconstructions differ from sentence to
sentence (in length, in an opening such as `mr. <unk>` or `but he said`), but they do not
reproduce the content, and the homotopy moves between a few such sentences in jumps rather
than word by word. Readable reconstructions and smooth homotopies need the full corpus and
many more epochs (below).""",
    ),
    (
        "md",
        """\
## Where next

- From the shell, `pvae train --model sentence_vae --dataset ptb --kl-anneal 10 --kl-schedule
  logistic --model-option word_dropout=0.5 --out runs/svae-ptb` runs the same recipe on all
  of PTB (`pvae.runs.train_run` in Python) and writes a run folder whose report holds the test
  NLL, the perplexity, sentences from the prior, reconstructions and a homotopy;
  `pvae evaluate` and `pvae sample` read it.
- `inputless=True` replaces every decoder input word by `<unk>`, at test time too: the decoder
  must then take everything from `z` (Bowman's and Xu & Durrett's inputless setting).
- `vmf_text_vae` with `learn_kappa=True` predicts `kappa(x)` per sentence: its KL is free again,
  and so is collapse.""",
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
