"""Writes ``tutorials/11_infovae.ipynb`` (without outputs) from the cells below.

Run ``.venv/bin/python tutorials/src/make_11.py`` after editing, and commit both files. The
notebook is executed by ``tests/test_tutorials.py`` with ``PVAE_SMOKE=1``.
"""

from __future__ import annotations

from pathlib import Path

import nbformat
from nbcells import notebook_from

NOTEBOOK = Path(__file__).resolve().parents[1] / "11_infovae.ipynb"

CELLS: list[tuple[str, str]] = [
    (
        "md",
        """\
# InfoVAE: keeping the code when the decoder could do without it

With a decoder flexible enough to model the images alone (an autoregressive PixelCNN), the
ELBO's KL term can push every `q(z | x)` onto the prior: the code is ignored. Zhao, Song and
Ermon [1] reweight the ELBO and add a divergence between the *aggregate* posterior
`q(z) = E_x q(z | x)` and the prior, maximising per datum

    L = E_q[log p(x | z)] - (1 - alpha) KL(q(z | x) || p(z)) - (alpha + lambda - 1) MMD(q(z), p(z))

In pvae this is an objective, `objective="infovae"` (`pvae.infer.info.InfoVAEObjective`),
usable with any model whose latents sit in the `"data"` plate (`vae`, `svae`, the text
VAEs): each step, the MMD compares the minibatch's codes (one per datum) with as many draws
of the model's own prior (on the sphere for `svae`). The reported bound stays the plain
ELBO, a true lower bound on `log p(x)`.

| setting | objective |
|---|---|
| `alpha=0, mmd_lambda=1` | the ELBO |
| `alpha=1-beta, mmd_lambda=beta` | the beta-VAE (MMD weight 0) |
| `alpha=0, mmd_lambda>1` | the ELBO plus `(lambda - 1)` MMD (pvae's default: 1000) |
| `alpha=1, mmd_lambda>0` | the MMD-VAE: reconstruction and MMD, no KL |

Two pitfalls. Pyro's `Trace_MMD` is *not* this objective: it computes the MMD between its
particles, each particle the whole batch's codes as one vector, so it never compares the
data's codes with the prior across the batch. And weights with `alpha + lambda < 1` (one
library's defaults, `alpha=0.5, lambda=0.03`) give the MMD a negative weight, pushing `q(z)`
away from the prior: pvae refuses them.

With `PVAE_SMOKE=1` (as the test suite runs it) everything is shrunk to run in seconds and
the numbers mean nothing; without it the notebook takes a few minutes on one CPU core.
`benchmarks/info_vae.py` runs the comparison at a larger budget
(`benchmarks/results/info_vae.md`).

**References**

[1] Zhao, Song, Ermon. *InfoVAE: Balancing Learning and Inference in Variational
Autoencoders*. AAAI 2019. https://arxiv.org/abs/1706.02262""",
    ),
    (
        "code",
        """\
import os

import pyro
import torch

from pvae.data import load_dataset
from pvae.evaluation import active_units
from pvae.evaluation.collapse import mutual_information
from pvae.infer.objectives import make_objective
from pvae.infer.train import fit
from pvae.models import build_model

SMOKE = os.environ.get("PVAE_SMOKE") == "1"
# Sizes: the smoke setting only checks that every cell runs.
TRAIN_SIZE = 200 if SMOKE else 4000
EPOCHS = 1 if SMOKE else 2
LAYERS, CHANNELS = (2, 4) if SMOKE else (3, 16)
torch.set_num_threads(1)

for options in [
    {"alpha": 0, "mmd_lambda": 1},
    {"alpha": 0.75, "mmd_lambda": 0.25},
    {"alpha": 0, "mmd_lambda": 1000},
    {"alpha": 1, "mmd_lambda": 1000},
]:
    objective = make_objective("infovae", options=options)
    print(options, "KL weight", objective.kl_weight, "MMD weight", objective.mmd_weight)
try:
    make_objective("infovae", options={"alpha": 0.5, "mmd_lambda": 0.03})
except ValueError as error:
    print("refused:", error)""",
    ),
    (
        "md",
        """\
## The ELBO and the MMD-VAE with a PixelCNN decoder

The same network three times (an MLP encoder, a gated PixelCNN decoder, 16 latent
dimensions), the same data and seed: with the ELBO, and with the MMD-VAE (`alpha=1`, no KL)
at a weak and a strong MMD weight.""",
    ),
    (
        "code",
        """\
train = load_dataset("mnist", "train", size=TRAIN_SIZE, progress=False)
test = load_dataset("mnist", "test", progress=False).subset(200, seed=0)
x = next(iter(test.batches(200, shuffle=False)))[0]


def trained(objective):
    torch.manual_seed(0)
    model = build_model(
        "vae",
        input_shape=[1, 28, 28],
        latent_dim=16,
        hidden=[200],
        architecture="pixelcnn",
        pixelcnn_layers=LAYERS,
        pixelcnn_channels=CHANNELS,
    )
    with pyro.settings.context(module_local_params=True):
        fit(
            model.model,
            model.guide,
            train,
            objective=objective,
            epochs=EPOCHS,
            batch_size=50,
            seed=0,
            progress=False,
        )
    return model.eval()


models = {"ELBO": trained("elbo")}
for lam in (10, 1000):
    options = {"alpha": 1, "mmd_lambda": lam}
    models[f"alpha=1, lambda={lam}"] = trained(make_objective("infovae", options=options))""",
    ),
    (
        "md",
        """\
## Is the code used?

`mutual_information` estimates `I(x; z)` under the aggregate posterior of the 200 test images
(at most `log 200 = 5.3` nats); active units count the latent dimensions whose posterior mean
varies with x; the KL is `KL(q(z | x) || N(0, I))` per image. A collapsed code has all three
near zero. In `benchmarks/results/info_vae.md` (8000 images, 2 epochs) the ELBO kept 11 of 32
units and 0.30 nats; `lambda=10` used the code fully (I(x; z) at its ceiling) but with a
near-deterministic guide far from the prior (KL over 1000 nats, a useless likelihood bound);
`lambda=1000` collapsed as much as the ELBO: the MMD is zero for a collapsed code, so it adds
no reason to use z.""",
    ),
    (
        "code",
        """\
with torch.no_grad():
    for name, model in models.items():
        pyro.set_rng_seed(0)
        mi = mutual_information(model, x, num_samples=10)
        active = active_units(model.encode_mean, x).count
        loc, scale = model.encode(x)
        kl = (0.5 * (loc**2 + scale**2 - 1) - scale.log()).sum(-1).mean()
        print(f"{name:22s} I(x; z) {mi:5.2f} nats, active units {active:2d}/16, KL {kl:7.2f}")""",
    ),
    (
        "md",
        """\
The command line trains the same objective on any model of the zoo, with its options:

    pvae train --model vae --dataset mnist --architecture pixelcnn --objective infovae \\
        --objective-option alpha=1 --objective-option mmd_lambda=1000 --epochs 2
    pvae train --model svae --dataset mnist --objective infovae --objective-option kernel=imq""",
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
