"""Writes ``tutorials/07_associative_compression.ipynb`` (without outputs) from the cells below.

Run ``.venv/bin/python tutorials/src/make_07.py`` after editing, and commit both files. The
notebook is executed by ``tests/test_tutorials.py`` with ``PVAE_SMOKE=1``.
"""

from __future__ import annotations

from pathlib import Path

import nbformat
from nbcells import notebook_from

NOTEBOOK = Path(__file__).resolve().parents[1] / "07_associative_compression.ipynb"

CELLS: list[tuple[str, str]] = [
    (
        "md",
        """\
# Associative compression: a prior conditioned on the dataset

A VAE sends every image on its own: the code `z` of an image costs
`KL(q(z | x) || N(0, I))` nats, the price of telling the receiver *where in the whole latent
space* the image lies. With a decoder strong enough to model the pixels by itself (an
autoregressive PixelCNN) that price buys little, and the VAE stops paying it: the KL collapses
to zero and the codes say nothing about the images.

An associative compression network (ACN, Graves, Menick and van den Oord [1]) sends the dataset
as a *sequence*, each image after a similar one. The prior of an image's code is a learned
network `p(z | z')` conditioned on the code `z'` of one of its nearest neighbours in the
training set's latent space:

    z'  = the code of one of the K nearest training codes of x's own code
    z  ~ p(z | z')      a mixture of Gaussians whose parameters an MLP computes from z'
    x  ~ p(x | z)

The code now only has to say how this image differs from its neighbour, which is cheap, so
the encoder can keep codes informative even beside a powerful decoder.

This tutorial

1. trains `acn` and `vae` with the same MLP networks on MNIST and looks at the **memory** of
   training codes and its nearest-neighbour search;
2. compares how **informative** the codes are: KL per image, active units, and how well a
   K-nearest-neighbour vote of the codes predicts the digit;
3. computes the cost of sending the test set in a **nearest-neighbour order** (the
   compression view), against coding every image on its own;
4. lets ACN **daydream**: encode, sample a new code from the prior given it, decode, repeat;
5. swaps the decoder for a small gated **PixelCNN**, where the VAE's KL is expected to collapse.

With `PVAE_SMOKE=1` (as the test suite runs it) everything is shrunk to run in seconds and the
numbers mean nothing; without it the notebook takes several minutes on a two-core CPU.
`benchmarks/acn.py` runs the comparison at a larger size (`benchmarks/results/acn.md`).

**References**

[1] Graves, Menick, van den Oord. *Associative Compression Networks for Representation
Learning*. 2018. https://arxiv.org/abs/1804.02476

[2] van den Oord, Kalchbrenner, Vinyals, Espeholt, Graves, Kavukcuoglu. *Conditional Image
Generation with PixelCNN Decoders*. NeurIPS 2016. https://arxiv.org/abs/1606.05328

[3] Burda, Grosse, Salakhutdinov. *Importance Weighted Autoencoders*. ICLR 2016 (active
units). https://arxiv.org/abs/1509.00519""",
    ),
    (
        "code",
        """\
import os

import matplotlib.pyplot as plt
import pyro
import torch

from pvae.data import load_dataset
from pvae.evaluation import active_units
from pvae.infer.train import fit
from pvae.models import build_model
from pvae.models.acn import chain_coding_cost, nearest_neighbours

SMOKE = os.environ.get("PVAE_SMOKE") == "1"
TRAIN_SIZE = 500 if SMOKE else 10000  # MNIST training images (dynamically binarized)
TEST_SIZE = 100 if SMOKE else 1000
EPOCHS = 1 if SMOKE else 3
HIDDEN, LATENT = (32, 8) if SMOKE else (400, 32)
torch.set_num_threads(1)
pyro.settings.set(module_local_params=True)

train = load_dataset("mnist", "train", size=TRAIN_SIZE, progress=False)
test = load_dataset("mnist", "test", size=TEST_SIZE, progress=False)
x_test, y_test = next(iter(test.batches(TEST_SIZE, shuffle=False)))
print(len(train), "training images,", len(test), "test images")""",
    ),
    (
        "md",
        """\
## Training, and the memory

ACN's `training_setup` gives the model a **memory**: one code per training image (the guide's
mean), a buffer of the model, so checkpoints hold it. The training batches carry the images'
indices, so the guide writes each batch's codes into the memory as it encodes them, and a
callback re-encodes the whole training set at every epoch's end. The neighbour search is exact
and runs in chunks, so 60,000 codes never need a 60,000 x 60,000 matrix (for millions of codes,
`search="faiss"` uses faiss's index with the same results).

The VAE gets the same encoder and decoder, and `Normal(0, I)` as its prior.""",
    ),
    (
        "code",
        """\
def train_model(name, **options):
    torch.manual_seed(0)
    model = build_model(name, latent_dim=LATENT, hidden=[HIDDEN], **options)
    model.initialize(train.model_options())
    setup = model.training_setup(train, seed=0)
    fit(
        model.model,
        model.guide,
        train_data=setup.get("train_data", train),
        callbacks=setup.get("callbacks", ()),
        epochs=EPOCHS,
        batch_size=100,
        seed=0,
        progress=False,
    )
    return model.eval()


acn = train_model("acn", prior_hidden=[HIDDEN], neighbours=5, components=3)
vae = train_model("vae")
print("memory:", tuple(acn.memory.shape), "codes; labels kept beside them:", acn.memory_labels[:10])""",
    ),
    (
        "md",
        """\
Each test image's code has nearest training codes; ACN's prior for the test image is
`p(z | c)` with `c` the nearest one. The neighbours of a code are similar images:""",
    ),
    (
        "code",
        """\
with torch.no_grad():
    codes = acn.encode_mean(x_test[:6])
distances, nearest = nearest_neighbours(codes, acn.memory, 5)
train_images = torch.cat([x for x, _ in train.batches(1000, shuffle=False)])
fig, axes = plt.subplots(6, 6, figsize=(5, 5))
for row in range(6):
    images = [x_test[row], *train_images[nearest[row]]]
    for col, image in enumerate(images):
        axes[row, col].imshow(image[0], cmap="gray")
        axes[row, col].axis("off")
axes[0, 0].set_title("test", fontsize=8)
axes[0, 1].set_title("its 5 nearest training codes", fontsize=8, loc="left")
plt.show()""",
    ),
    (
        "md",
        """\
## How informative are the codes?

Three measures, for both models on the test images:

- **KL per image** (nats): the cost of the code under the model's own prior
  (`Normal(0, I)` for the VAE, `p(z | nearest training code)` for ACN, the `test_kl` of
  `acn.metrics`);
- **active units** [3]: latent dimensions whose posterior mean varies over the data;
- **KNN accuracy**: a 5-nearest-neighbour vote of the training codes' labels, for each test
  code. Informative codes put images of one digit close together.""",
    ),
    (
        "code",
        """\
@torch.no_grad()
def informativeness(model, name):
    loc, scale = model.encode(x_test)
    if name == "acn":
        kl = model.metrics(test)["test_kl"]
    else:  # analytic KL(q(z | x) || N(0, I))
        kl = float((0.5 * (loc**2 + scale**2 - 1) - scale.log()).sum(-1).mean())
    train_codes = torch.cat([model.encode_mean(x) for x, _ in train.batches(1000, shuffle=False)])
    _, nearest = nearest_neighbours(loc, train_codes, 5)
    votes = torch.nn.functional.one_hot(train.labels[nearest], 10).sum(1).argmax(-1)
    accuracy = float((votes == y_test).float().mean())
    units = active_units(lambda x: model.encode_mean(x), x_test).count
    return kl, units, accuracy


print(f"{'model':6} {'KL (nats)':>10} {'active units':>13} {'KNN accuracy':>13}")
for name, model in [("vae", vae), ("acn", acn)]:
    kl, units, accuracy = informativeness(model, name)
    print(f"{name:6} {kl:10.2f} {units:>10}/{LATENT} {accuracy:13.3f}")""",
    ),
    (
        "md",
        """\
ACN's codes cost far fewer nats than the VAE's (the prior given a neighbour is sharp where
`N(0, I)` cannot be), while its units stay active and its codes still cluster by digit. In
`benchmarks/results/acn.md` (5,000 images, 10 epochs, three seeds) the VAE paid about 24 nats
per code and ACN about 10, with all 32 units active in both and almost the same KNN accuracy
(0.93 and 0.92).

## The compression view: sending the test set in a nearest-neighbour order

ACN's training story is a code for a whole dataset: send the images one after the other, each
in an order where the next is close to the previous in latent space, and code each image's
code under `p(z | predecessor's code)`. `neighbour_chain` builds a greedy nearest-neighbour
order; `chain_coding_cost` returns each image's ELBO code length in that order, beside the
same images coded independently under `N(0, I)` (the first image of the chain has no
predecessor and uses `N(0, I)`). The receiver decodes the images in order and re-encodes each
to get the conditioning code, so the conditioning costs nothing; the order is free too when the
data are a set.""",
    ),
    (
        "code",
        """\
cost = chain_coding_cost(acn, x_test, num_samples=5, generator=torch.Generator().manual_seed(0))
print(f"chain order:  {cost.chain_nats:.1f} nats per image")
print(f"independent:  {cost.independent_nats:.1f} nats per image (ACN's networks under N(0, I))")
print(
    f"KL in the chain {float(cost.kl_chain.mean()):.1f} vs independent "
    f"{float(cost.kl_independent.mean()):.1f} nats"
)

fig, axes = plt.subplots(1, 16, figsize=(10, 1))
for ax, index in zip(axes, cost.order[:16], strict=False):
    ax.imshow(x_test[index, 0], cmap="gray")
    ax.axis("off")
fig.suptitle("the first 16 test images in the transmission order", fontsize=8)
plt.show()""",
    ),
    (
        "md",
        """\
The reconstruction term is the same in both codes; the difference is the KL. The chain order
visits images of one digit in runs, so most codes are sent relative to a similar image.

## Daydreams

A daydream starts from a training code `c_0` and repeats: draw `z ~ p(z | c_t)`, decode it to
an image, and re-encode that image to the next code `c_{t+1}`. The chain wanders through the
data's neighbourhoods, changing style and sometimes digit.""",
    ),
    (
        "code",
        """\
chains = acn.daydream(torch.arange(6), 10, torch.Generator().manual_seed(0))
fig, axes = plt.subplots(6, 10, figsize=(6, 3.6))
for row in range(6):
    for col in range(10):
        axes[row, col].imshow(chains.images[row, col, 0], cmap="gray")
        axes[row, col].axis("off")
plt.show()""",
    ),
    (
        "md",
        """\
## An autoregressive decoder

`architecture="pixelcnn"` replaces the MLP decoder of both models by a small gated PixelCNN
[2]: each pixel's Bernoulli logit depends on the pixels above and to its left (a vertical and a
horizontal stack of masked convolutions, without the blind spot of a single masked stack) and on
`z`. Such a decoder can model the digits without `z`, and a VAE then has every reason to stop
paying for its code. Training is slower (convolutions over every pixel), and sampling is pixel
by pixel.

How `z` enters matters as much as the prior. By default it adds a bias to every layer's gates,
the same at every pixel: it can say *what* (thick strokes, a slant) but not *where* the ink
goes. `pixelcnn_spatial=S` also maps `z` to S maps the size of the image (an MLP, like the MLP
decoder) that every layer reads through a 1 x 1 convolution: van den Oord et al.'s
location-dependent conditioning. In `benchmarks/results/acn_collapse.md`, on 5,000 images, the
per-layer bias alone left both models' codes unused (the decoder gained under 2 nats from its
code, whatever the prior, the number of layers, or a KL warm-up), and the spatial maps changed
that. We use them here.""",
    ),
    (
        "code",
        """\
PIXELCNN = dict(
    architecture="pixelcnn",
    pixelcnn_layers=2 if SMOKE else 3,
    pixelcnn_channels=8 if SMOKE else 16,
    pixelcnn_spatial=2 if SMOKE else 4,
)
acn_pixelcnn = train_model("acn", prior_hidden=[HIDDEN], neighbours=5, components=3, **PIXELCNN)
vae_pixelcnn = train_model("vae", **PIXELCNN)
print(f"{'model':14} {'KL (nats)':>10} {'active units':>13} {'KNN accuracy':>13}")
for name, model in [("vae+pixelcnn", vae_pixelcnn), ("acn+pixelcnn", acn_pixelcnn)]:
    kl, units, accuracy = informativeness(model, name[:3])
    print(f"{name:14} {kl:10.2f} {units:>10}/{LATENT} {accuracy:13.3f}")""",
    ),
    (
        "md",
        """\
Compare these numbers with the MLP decoders' above. The KL says little here: ACN's prior
predicts a code from its neighbour's, so a code can be cheap *and* informative. What the
benchmark measures instead is how much the decoder uses the code (`code_use_nats` in
`benchmarks/acn.py`: log p(x | z) with the image's own code minus with another image's).
In the benchmark (5,000 images, 10 epochs), with this 3 x 16 PixelCNN, 4 spatial maps, learned
posterior scales and this prior network (seed 0), ACN's decoder gains 16 nats from its code at a
KL of 1.1 nats, the VAE's 14 at 3.5; with the paper's unit-variance posteriors and its prior
network (three seeds) 29 against 10 nats, at 1.7 against 2.6, and the test set sent in
nearest-neighbour order costs about 92 nats per image against the VAE's 95. A few samples from
ACN with the PixelCNN decoder (drawn pixel by pixel):""",
    ),
    (
        "code",
        """\
samples = acn_pixelcnn.sample(8, torch.Generator().manual_seed(0))
fig, axes = plt.subplots(1, 8, figsize=(6, 0.9))
for ax, image in zip(axes, samples, strict=True):
    ax.imshow(image[0], cmap="gray")
    ax.axis("off")
plt.show()""",
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
