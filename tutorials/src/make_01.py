"""Writes ``tutorials/01_first_vae.ipynb`` (without outputs) from the cells below.

Run ``.venv/bin/python tutorials/src/make_01.py`` after editing, and commit both files. The
notebook is executed by ``tests/test_tutorials.py`` with ``PVAE_SMOKE=1``.
"""

from __future__ import annotations

from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

NOTEBOOK = Path(__file__).resolve().parents[1] / "01_first_vae.ipynb"

CELLS: list[tuple[str, str]] = [
    (
        "md",
        """\
# Your first VAE: a model and a guide as plain functions

A variational autoencoder [1] is a generative model `p(x, z) = p(z) p(x | z)` with a neural
network in the likelihood, trained together with an amortised posterior approximation
`q(z | x)` (the *guide*, a second network) by maximising the evidence lower bound (ELBO).

In Pyro a model and a guide are just Python functions that call `pyro.sample`. This tutorial
writes them as **plain functions**, with the networks as ordinary `torch.nn.Module`s registered
by `pyro.module` and one extra parameter created by `pyro.param`. Then it

1. trains them with `pvae.infer.train.fit` on (a part of) MNIST,
2. estimates the test log-likelihood `log p(x)` by importance sampling [2],
3. looks at samples and reconstructions, and
4. compares the result with pvae's built-in `pvae.models.VAE`, which is the same model written as a
   `PyroModule`.

With `PVAE_SMOKE=1` in the environment (as the test suite runs it) everything is shrunk to run in
seconds; without it, the notebook takes about a quarter of an hour on a two-core CPU.

**References**

[1] Kingma, Welling. *Auto-Encoding Variational Bayes*. ICLR 2014. https://arxiv.org/abs/1312.6114

[2] Burda, Grosse, Salakhutdinov. *Importance Weighted Autoencoders*. ICLR 2016.
https://arxiv.org/abs/1509.00519""",
    ),
    (
        "code",
        """\
%matplotlib inline
import copy
import math
import os

import matplotlib.pyplot as plt
import pyro
import pyro.distributions as dist
import torch
from torch import nn

from pvae.data import load_dataset
from pvae.evaluation import LogLikelihood, log_likelihood
from pvae.infer.train import TrainConfig, fit
from pvae.models import VAE

SMOKE = os.environ.get("PVAE_SMOKE") == "1"
# Sizes: the smoke setting only checks that every cell runs.
TRAIN_SIZE = 1_000 if SMOKE else 20_000
VALID_SIZE = 200 if SMOKE else 2_000
TEST_SIZE = 100 if SMOKE else 1_000
EPOCHS = 2 if SMOKE else 10
EVAL_SAMPLES = 50 if SMOKE else 500  # K importance samples per test image
LATENT_DIM, HIDDEN = 16, 256

torch.manual_seed(0)
print(f"smoke={SMOKE}: {TRAIN_SIZE} training images, {EPOCHS} epochs")""",
    ),
    (
        "md",
        """\
## Data

`load_dataset` returns an in-memory dataset of images `(N, 1, 28, 28)` in `[0, 1]`. MNIST's
training split is binarised *dynamically* (a fresh Bernoulli draw of every pixel each time a
batch is made), the validation and test splits *statically* (once, with a fixed seed), as in
[2]. It reads `mnist.npz` from `$PVAE_DATA_DIR` (or downloads it, verifying its checksum).""",
    ),
    (
        "code",
        """\
train = load_dataset("mnist", "train", size=TRAIN_SIZE, progress=False)
valid = load_dataset("mnist", "valid", size=VALID_SIZE, progress=False)
test = load_dataset("mnist", "test", size=TEST_SIZE, progress=False)
x_test = test.images  # statically binarised: the same pixels on every run
print(train, valid, test, sep="\\n")


def show_images(images, title="", nrow=8):
    \"\"\"A grid of images (n, 1, 28, 28) with values in [0, 1].\"\"\"
    images = images.detach().cpu()[: nrow * nrow]
    rows = math.ceil(len(images) / nrow)
    fig, axes = plt.subplots(rows, nrow, figsize=(nrow * 0.6, rows * 0.6))
    for ax, image in zip(axes.flat, images, strict=False):  # axes may outnumber images
        ax.imshow(image[0], cmap="gray", vmin=0, vmax=1)
    for ax in axes.flat:
        ax.set_axis_off()
    fig.suptitle(title)
    plt.show()


show_images(x_test[:32], "test images", nrow=8)""",
    ),
    (
        "md",
        """\
## The networks

Two ordinary PyTorch modules. The encoder maps an image to the mean and standard deviation of
`q(z | x) = Normal(mu(x), diag sigma(x)^2)`; the decoder maps a latent code to the logits of
independent Bernoulli pixels. They know nothing about Pyro.""",
    ),
    (
        "code",
        """\
class Encoder(nn.Module):
    def __init__(self, latent_dim: int, hidden: int) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(28 * 28, hidden), nn.ReLU())
        self.loc = nn.Linear(hidden, latent_dim)
        self.scale = nn.Sequential(nn.Linear(hidden, latent_dim), nn.Softplus())

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.body(x.reshape(*x.shape[:-3], -1))  # (..., 1, 28, 28) -> (..., 784)
        return self.loc(h), self.scale(h) + 1e-4


class Decoder(nn.Module):
    def __init__(self, latent_dim: int, hidden: int) -> None:
        super().__init__()
        # No bias in the last layer: the pixel bias is a pyro.param below.
        self.net = nn.Sequential(
            nn.Linear(latent_dim, hidden), nn.ReLU(), nn.Linear(hidden, 28 * 28, bias=False)
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z).reshape(*z.shape[:-1], 1, 28, 28)


torch.manual_seed(0)  # the initial weights (the built-in VAE below starts from the same seed)
encoder = Encoder(LATENT_DIM, HIDDEN)
decoder = Decoder(LATENT_DIM, HIDDEN)""",
    ),
    (
        "md",
        """\
## The model and the guide, as plain functions

The **model** tells the generative story for a batch `x` of shape `(B, 1, 28, 28)`:

    z_n ~ Normal(0, I)                                    site "z", shape (B, D)
    x_n ~ Bernoulli(logits = decoder(z_n) + pixel_bias)   site "x", observed

The **guide** draws the same site `"z"` from the encoder's Gaussian. Two things make them work
with every pvae tool:

* the data sit in `pyro.plate("data", B)`: `fit` scales the minibatch by `N / B` through it, and
  `log_likelihood` finds the per-datum weights there;
* the likelihood is marked by `obs=x`.

Shapes are written with `*z.shape[:-1]` rather than `B`, so the same functions also run with an
extra leading dimension of importance samples, which `log_likelihood` adds.

Parameters:

* `pyro.module("decoder", decoder, update_module_params=True)` registers the module's weights in
  Pyro's parameter store, where `fit`'s optimizer finds them. `update_module_params=True` matters
  when training resumes from a checkpoint: `fit` then restores the parameter store with *new*
  tensors, and this flag makes the module adopt them (without it a resumed run would keep
  training a stale copy of the weights: the optimizer steps the restored tensors, which the
  module never uses).
* `pyro.param("pixel_bias", init)` creates a free parameter the first time it runs and returns the
  stored value afterwards. We initialise it to the logit of the mean training image, as [2] do.""",
    ),
    (
        "code",
        """\
mean_image = train.images.mean(0).clamp(1e-3, 1 - 1e-3)
pixel_bias_init = torch.log(mean_image) - torch.log1p(-mean_image)  # logit, (1, 28, 28)


def model(x: torch.Tensor) -> None:
    \"\"\"p(x, z) = p(z) p(x | z) for a batch x of shape (B, 1, 28, 28).\"\"\"
    pyro.module("decoder", decoder, update_module_params=True)
    pixel_bias = pyro.param("pixel_bias", lambda: pixel_bias_init.clone())
    with pyro.plate("data", x.shape[0]):
        z = pyro.sample("z", dist.Normal(x.new_zeros(LATENT_DIM), 1.0).to_event(1))
        logits = decoder(z) + pixel_bias
        pyro.sample("x", dist.Bernoulli(logits=logits).to_event(3), obs=x)


def guide(x: torch.Tensor) -> None:
    \"\"\"q(z | x) = Normal(mu(x), diag sigma(x)^2).\"\"\"
    pyro.module("encoder", encoder, update_module_params=True)
    loc, scale = encoder(x)
    with pyro.plate("data", x.shape[0]):
        pyro.sample("z", dist.Normal(loc, scale).to_event(1))""",
    ),
    (
        "md",
        """\
Before training, run both once and look at the shapes of every site (`pyro.poutine.trace`).
This is the cheapest way to catch a misplaced plate or a wrong `to_event`. We run them inside a
scratch parameter store (`scope()`), so that this check leaves no parameters behind.""",
    ),
    (
        "code",
        """\
x_batch = next(train.batches(8, generator=torch.Generator().manual_seed(0)))[0]
with pyro.get_param_store().scope():
    guide_trace = pyro.poutine.trace(guide).get_trace(x_batch)
    model_trace = pyro.poutine.trace(pyro.poutine.replay(model, trace=guide_trace)).get_trace(
        x_batch
    )
    print(model_trace.format_shapes())""",
    ),
    (
        "md",
        """\
## Training

`fit(model, guide, data, ...)` runs stochastic variational inference with the ELBO (the default
`objective="elbo"`, with the KL term in closed form where Pyro can compute it). Plain functions
train the `pyro.param` values they create, here the modules' weights and `pixel_bias`, inside a
**private** parameter store: the global store stays empty, and the trained values are kept in
`result.param_state`. `with result.params(): ...` makes them current again.

We keep a copy of the weights to check that training changed them.""",
    ),
    (
        "code",
        """\
config = TrainConfig(epochs=EPOCHS, batch_size=100, lr=1e-3, seed=0)
encoder_before = copy.deepcopy(encoder.state_dict())
decoder_before = copy.deepcopy(decoder.state_dict())

result = fit(model, guide, train, valid_data=valid, config=config, progress=False)

for name, before, module in (
    ("encoder", encoder_before, encoder),
    ("decoder", decoder_before, decoder),
):
    changed = [k for k, v in before.items() if not torch.equal(v, module.state_dict()[k])]
    print(f"{name}: {len(changed)} of {len(before)} tensors changed by training")
    assert len(changed) == len(before), f"{name} was not trained"

print("parameters trained:", list(result.param_state["params"]))
print("global parameter store after fit:", list(pyro.get_param_store().keys()))
with result.params():
    assert not torch.equal(pyro.param("pixel_bias"), pixel_bias_init)
for record in result.history:
    print(
        f"epoch {record['epoch']}: train ELBO {record['train_bound']:.1f}, "
        f"valid ELBO {record['valid_elbo']:.1f} nats per image"
    )""",
    ),
    (
        "code",
        """\
fig, ax = plt.subplots(figsize=(5, 3))
epochs = [r["epoch"] for r in result.history]
ax.plot(epochs, [r["train_bound"] for r in result.history], marker="o", label="train ELBO")
ax.plot(epochs, [r["valid_elbo"] for r in result.history], marker="s", label="valid ELBO")
ax.set_xlabel("epoch")
ax.set_ylabel("nats per image")
ax.legend()
plt.show()""",
    ),
    (
        "md",
        """\
## Test log-likelihood

The ELBO is a lower bound on `log p(x)`. With K samples `z_k ~ q(z | x)`, the importance-sampled
estimate [2]

    log p(x) ≈ log (1/K) Σ_k p(x, z_k) / q(z_k | x)

is a tighter bound that approaches `log p(x)` as K grows. `log_likelihood` computes it for every
test image; `LogLikelihood` summarises it with the standard error of the mean over images.

The model reads `pixel_bias` from the parameter store, so we evaluate **inside**
`result.params()`: outside it, `pyro.param("pixel_bias", init)` would silently create a fresh,
untrained parameter in the global store.""",
    ),
    (
        "code",
        """\
pyro.set_rng_seed(1)
with result.params():
    plain_values = log_likelihood(model, guide, x_test, num_samples=EVAL_SAMPLES)
plain_ll = LogLikelihood(plain_values, EVAL_SAMPLES)
print(
    f"plain functions: test NLL {-plain_ll.mean:.2f} ± {plain_ll.stderr:.2f} nats "
    f"(K={EVAL_SAMPLES}, {len(x_test)} images)"
)""",
    ),
    (
        "md",
        """\
## Samples and reconstructions

Samples come from the prior and the decoder alone (the encoder is not used); we show the mean
image `sigmoid(logits)` rather than a Bernoulli draw, which is easier to read.""",
    ),
    (
        "code",
        """\
with torch.no_grad(), result.params():
    pixel_bias = pyro.param("pixel_bias")
    z = torch.randn(64, LATENT_DIM, generator=torch.Generator().manual_seed(0))
    samples = torch.sigmoid(decoder(z) + pixel_bias)
    loc, _ = encoder(x_test[:32])
    reconstructions = torch.sigmoid(decoder(loc) + pixel_bias)
show_images(samples, "samples from the prior (plain functions)")
pairs = torch.stack([x_test[:32], reconstructions], dim=1).reshape(-1, 1, 28, 28)
show_images(pairs, "test images (odd columns) and their reconstructions (even columns)")""",
    ),
    (
        "md",
        """\
## The same model, built in: `pvae.models.VAE`

pvae's `VAE` is this model written as a `PyroModule` with `model` and `guide` methods; its
parameters live in the module, so `fit(vae.model, vae.guide, ...)` needs no parameter store at
all. We give it the same sizes, initialise its output bias the same way, and train it with the
same configuration and data stream.

Both estimates are made on the same test images, so we compare them image by image: the standard
error of the *difference* is much smaller than either standard error alone. In fact `VAE` builds
the same layers in the same order as our `Encoder` and `Decoder` (its last decoder layer's bias
plays the role of `pixel_bias`), so from the same seed the two runs start from the same weights,
see the same batches and noise, and should agree up to floating-point rounding (which grows a
little over training: different but equivalent operations, such as our separate `pixel_bias`,
round differently): a strong check that the plain functions above are the model of [1]. (Should
pvae's networks change, expect agreement within the paired standard error instead.)""",
    ),
    (
        "code",
        """\
torch.manual_seed(0)
vae = VAE(latent_dim=LATENT_DIM, hidden=[HIDDEN])
vae.initialize(train.model_options())  # the output bias from the mean training image
vae_result = fit(vae.model, vae.guide, train, valid_data=valid, config=config, progress=False)

pyro.set_rng_seed(1)
vae.eval()
vae_values = log_likelihood(vae.model, vae.guide, x_test, num_samples=EVAL_SAMPLES)
vae_ll = LogLikelihood(vae_values, EVAL_SAMPLES)
difference = LogLikelihood(vae_values - plain_values, EVAL_SAMPLES)

print(f"{'':28s} {'test NLL':>9s} {'± stderr':>9s} {'last valid ELBO':>16s}")
for name, ll, fitted in (
    ("plain functions", plain_ll, result),
    ("pvae.models.VAE", vae_ll, vae_result),
):
    valid_elbo = fitted.history[-1]["valid_elbo"]
    print(f"{name:28s} {-ll.mean:9.2f} {ll.stderr:9.2f} {valid_elbo:16.2f}")
# A model that ignores z: independent pixels with the mean training image's probabilities.
baseline = -dist.Bernoulli(logits=pixel_bias_init).to_event(3).log_prob(x_test)
print(f"{'pixels independent of z':28s} {baseline.mean():9.2f}")
print(
    f"NLL(plain) - NLL(VAE) = {difference.mean:.2f} ± {difference.stderr:.2f} nats "
    "(paired over test images)"
)
print(f"largest per-image difference: {(vae_values - plain_values).abs().max():.2e} nats")""",
    ),
    (
        "code",
        """\
show_images(vae.sample(64, generator=torch.Generator().manual_seed(0)), "samples (pvae.models.VAE)")""",
    ),
    (
        "md",
        """\
Both versions should also sit clearly below the NLL of the baseline that ignores `z` (every pixel an independent coin with the mean image's probability): the latent code
is what lets the decoder draw digits rather than a blur.

## Where next

* `fit(..., objective="iwae", num_particles=5)` trains the same functions with the importance
  weighted bound [2]; `objective="dreg"` uses its doubly-reparameterised gradient.
* `fit(..., checkpoint_dir="ckpt")` writes a checkpoint every epoch; `resume=True` continues a
  killed run bit for bit (this is where `update_module_params=True` is needed).
* From the shell, `pvae train --model vae --dataset mnist --out runs/vae` trains a registered model
  and writes a run folder with metrics, figures and a report.""",
    ),
]


def build() -> nbformat.NotebookNode:
    cells = [
        new_markdown_cell(text) if kind == "md" else new_code_cell(text) for kind, text in CELLS
    ]
    notebook = new_notebook(cells=cells)
    notebook.metadata["kernelspec"] = {
        "display_name": "Python 3 (ipykernel)",
        "language": "python",
        "name": "python3",
    }
    notebook.metadata["language_info"] = {"name": "python"}
    return notebook


def main() -> None:
    notebook = build()
    # Stable cell ids, so that regenerating an unchanged notebook gives an identical file.
    for index, cell in enumerate(notebook.cells):
        cell["id"] = f"cell-{index:02d}"
    nbformat.validate(notebook)
    nbformat.write(notebook, NOTEBOOK)
    print(f"wrote {NOTEBOOK}")


if __name__ == "__main__":
    main()
