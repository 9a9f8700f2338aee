"""Writes ``tutorials/09_conv_draw.ipynb`` (without outputs) from the cells below.

Run ``.venv/bin/python tutorials/src/make_09.py`` after editing, and commit both files. The
notebook is executed by ``tests/test_tutorials.py`` with ``PVAE_SMOKE=1``.
"""

from __future__ import annotations

from pathlib import Path

import nbformat
from nbcells import notebook_from

NOTEBOOK = Path(__file__).resolve().parents[1] / "09_conv_draw.ipynb"

CELLS: list[tuple[str, str]] = [
    (
        "md",
        """\
# Conceptual compression with convolutional DRAW

Convolutional DRAW [1] writes an image in T steps. At each step a latent map `z_t` is drawn
from a learned prior that reads the decoder's state, a convolutional LSTM takes it in, and
its output is added to a canvas; the image is Bernoulli with the canvas as logits:

    z_t ~ p(z_t | h_{t-1}),   h_t = LSTM_dec(z_t, h_{t-1}),   canvas_t = canvas_{t-1} + write(h_t)

The guide runs an encoder LSTM beside the same decoder: it reads the image and the error of
the canvas so far. Each step has one `pyro.sample` site (`"z_1"`, ..., `"z_T"`), so pvae's
ELBO, importance-sampled `log p(x)` and diagnostics apply unchanged.

The paper's point: the KL of step t is the cost, in nats, of sending `z_t`, and the first
steps carry the global shape (the *concept*), the later ones the details. Sending only the
first k latents and drawing the rest from the prior is a lossy code. This tutorial trains a
small model on Omniglot, measures the rate by step and shows the decodings from the first k
latents.

With `PVAE_SMOKE=1` (as the test suite runs it) everything is shrunk to run in seconds and
the pictures mean nothing; without it the notebook takes about ten minutes on one CPU core.
`benchmarks/conv_draw.py` measures test NLLs beside pvae's VAE and IWAE
(`benchmarks/results/conv_draw.md`).

**References**

[1] Gregor, Besse, Rezende, Danihelka, Wierstra. *Towards Conceptual Compression*. NeurIPS
2016. https://arxiv.org/abs/1604.08772""",
    ),
    (
        "code",
        """\
import os
import tempfile

import pyro
import torch
from IPython.display import Image, display

from pvae.data import load_dataset
from pvae.infer.train import fit
from pvae.models import build_model
from pvae.models.conv_draw import compression_rows, plot_compression

SMOKE = os.environ.get("PVAE_SMOKE") == "1"
# Sizes: the smoke setting only checks that every cell runs.
TRAIN_SIZE = 200 if SMOKE else 10_000
EPOCHS = 1 if SMOKE else 3
STEPS, CHANNELS = (3, 8) if SMOKE else (4, 16)
torch.set_num_threads(1)
torch.manual_seed(0)

train = load_dataset("omniglot", "train", size=TRAIN_SIZE, size_seed=0, progress=False)
test = load_dataset("omniglot", "test", size=100, size_seed=0, progress=False)
x = next(iter(test.batches(100, shuffle=False)))[0]

model = build_model(
    "conv_draw", steps=STEPS, channels=CHANNELS, latent_channels=4, levels=2
)  # latent maps of 4 x 7 x 7 per step
model.initialize(train.model_options())  # the canvas starts at logit(mean image)
with pyro.settings.context(module_local_params=True):
    # The KL weight grows from 0 to 1 over the first epoch: at full weight from the start, a
    # short run collapses the posterior (q = p, no nats sent) before the decoder reads z.
    result = fit(
        model.model,
        model.guide,
        train,
        epochs=EPOCHS,
        batch_size=32,
        kl_anneal_epochs=1,
        progress=False,
    )
print(f"last epoch's training bound: {result.history[-1]['train_bound']:.1f} nats per image")""",
    ),
    (
        "md",
        """\
## The rate by step

`rate_by_step(x)` is `KL(q(z_t | x, z_<t) || p(z_t | z_<t))` for every image and step, along
one draw of the guide: the nats that step t costs. Their sum is the ELBO's KL term, and
`-log p(x | z)` of the full canvas is what the remaining pixels cost.""",
    ),
    (
        "code",
        """\
rates = model.rate_by_step(x).mean(0)
sent = rates.cumsum(0)
for t, (rate, total) in enumerate(zip(rates.tolist(), sent.tolist(), strict=True), start=1):
    print(f"step {t}: {rate:6.2f} nats   first {t} steps: {total:6.2f} nats")""",
    ),
    (
        "md",
        """\
## Decoding from the first k latents

`reconstruct_from_first(x, k)` takes the first k latents from the guide (their means) and
draws the other T - k from the prior. Below, each row is a test image (first column), then
its decodings for k = 0 (a sample: nothing sent) to k = T (the reconstruction). With a
trained model the first columns already keep the character's rough shape; the pixel error
falls as more nats are sent.""",
    ),
    (
        "code",
        """\
out = tempfile.mkdtemp()
rows = compression_rows(model, x[:8])
display(Image(plot_compression(rows, rates, os.path.join(out, "compression.png"))))
for k in range(model.steps + 1):
    decoded = model.reconstruct_from_first(x, k, torch.Generator().manual_seed(k))
    error = (decoded - x).abs().mean()
    print(f"k = {k}: {float(sent[k - 1]) if k else 0.0:6.2f} nats sent, mean |error| {error:.3f}")""",
    ),
    (
        "md",
        """\
The command line trains the same model and puts these figures in the run's report:

    pvae train --model conv_draw --dataset omniglot --hidden 16 --latent-dim 4 \\
        --model-option steps=4 --kl-anneal 1 --batch-size 32 --epochs 10 --out runs/conv_draw""",
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
