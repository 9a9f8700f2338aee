"""Writes ``tutorials/06_graph_vaes.ipynb`` (without outputs) from the cells below.

Run ``.venv/bin/python tutorials/src/make_06.py`` after editing, and commit both files. The
notebook is executed by ``tests/test_tutorials.py`` with ``PVAE_SMOKE=1``.
"""

from __future__ import annotations

from pathlib import Path

import nbformat
from nbcells import notebook_from

NOTEBOOK = Path(__file__).resolve().parents[1] / "06_graph_vaes.ipynb"

CELLS: list[tuple[str, str]] = [
    (
        "md",
        """\
# Graph VAEs: link prediction with a hyperspherical latent

A citation graph is one datum: its nodes are not independent draws but parts of one object.
The variational graph autoencoder (VGAE, Kipf & Welling [1]) gives every node a latent code,
encodes all of them at once with a graph convolutional network, and decodes an edge from the
inner product of two codes:

    z_i ~ p(z)                                  for every node i
    A_ij | z ~ Bernoulli(sigmoid(z_i . z_j))    for every pair of nodes

Davidson et al. [2] swap the Gaussian latent for a von Mises-Fisher posterior and a uniform
prior on the sphere (S-VGAE): the inner product of two unit vectors is a cosine, and the
sphere has no region of low prior density for codes to crowd around.

In pvae the nodes sit in the model's `"data"` plate, and the dataset has **one unit**, the
graph: training is full-batch, and the plate's scale is exactly 1 (a plate larger than the
dataset covers parts of one unit). This tutorial

1. loads Cora with Kipf & Welling's link-prediction split (85 / 5 / 10 % of the edges);
2. trains `vgae` and `svgae` with the runner (what `pvae train --model svgae --dataset cora`
   does) and compares the test AUC and average precision of held-out edges against non-edges;
3. looks at the node codes, coloured by the papers' topics (labels the models never see).

With `PVAE_SMOKE=1` (as the test suite runs it) training is shrunk to a few epochs and the
numbers mean little; without it the notebook trains the gae code's 200 epochs (minutes on a
CPU). `benchmarks/graph_link_prediction.py` repeats this over seeds and on Citeseer
(`benchmarks/results/graph_link_prediction.md`).

**References**

[1] Kipf, Welling. *Variational Graph Auto-Encoders*. NIPS Workshop on Bayesian Deep Learning,
2016. https://arxiv.org/abs/1611.07308

[2] Davidson, Falorsi, De Cao, Kipf, Tomczak. *Hyperspherical Variational Auto-Encoders*.
UAI 2018. https://arxiv.org/abs/1804.00891""",
    ),
    (
        "code",
        """\
import os
import tempfile
from pathlib import Path

import pyro
import torch

from pvae.data import load_dataset
from pvae.infer.train import TrainConfig
from pvae.runs import TrainSpec, load_run, train_run

SMOKE = os.environ.get("PVAE_SMOKE") == "1"
EPOCHS = 3 if SMOKE else 200
torch.set_num_threads(1)
pyro.settings.set(module_local_params=True)

train = load_dataset("cora", "train", progress=False)
test = load_dataset("cora", "test", progress=False)
features, edges, labels = next(iter(test.batches(1)))
print(test, "| units:", len(test))
print("batch: features", tuple(features.shape), "edges", tuple(edges.shape))""",
    ),
    (
        "md",
        """\
## The split

Every split is the same **training graph**: the model never sees a held-out edge. The `test`
split adds its held-out edges and as many sampled non-edges; link prediction ranks the pairs by
`mu_i . mu_j`, the decoder's logit at the guide's means.""",
    ),
    (
        "code",
        """\
n = test.num_nodes
code = lambda pairs: set((pairs.min(1).values * n + pairs.max(1).values).tolist())
training_graph, held_out = code(test.edges), code(test.positive)
print(
    len(training_graph),
    "training edges;",
    len(held_out),
    "test edges;",
    len(test.negative),
    "test non-edges",
)
print("test edges in the training graph:", len(training_graph & held_out))""",
    ),
    (
        "md",
        """\
## Training VGAE and S-VGAE

The gae code's settings: a two-layer GCN (32 hidden units, 16 latent dimensions), Adam with
learning rate 0.01, full batch, and Kipf's class-balanced edge likelihood (the few edges
weigh as much as the many non-edges). The validation AUC picks the epoch.""",
    ),
    (
        "code",
        """\
work = Path(tempfile.mkdtemp(prefix="graph_vaes."))
runs = {}
for name in ("vgae", "svgae"):
    spec = TrainSpec(
        model=name,
        dataset="cora",
        train=TrainConfig(epochs=EPOCHS, batch_size=1, lr=0.01, seed=0),
        eval_samples=1,
        out=work / name,
        progress=False,
    )
    metrics = train_run(spec)
    runs[name] = metrics
    print(
        f"{name:6s} test AUC {metrics['test_auc']:.3f}  AP {metrics['test_ap']:.3f}  "
        f"(best epoch {metrics['best_epoch']} of {EPOCHS})"
    )""",
    ),
    (
        "md",
        """\
## Node codes

The guide's means of the S-VGAE lie on the sphere S^15; a 2-D principal-component view,
coloured by the papers' topics, shows how the graph structure alone (and the bag-of-words
features) sorts them. The run's `report.md` holds the same figure.""",
    ),
    (
        "code",
        """\
import matplotlib.pyplot as plt

from pvae.figures import principal_components

fig, axes = plt.subplots(1, 2, figsize=(9, 4))
for ax, name in zip(axes, runs, strict=True):
    model, _ = load_run(work / name, "best")
    codes = model.node_codes(test.features, test.edges.T)
    if name == "svgae":
        print("svgae code norms:", float(codes.norm(dim=1).min()), float(codes.norm(dim=1).max()))
    view = principal_components(codes.double(), 2)
    ax.scatter(view[:, 0], view[:, 1], c=test.labels, cmap="tab10", s=3)
    ax.set_title(f"{name}: node codes (PCA)")
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
