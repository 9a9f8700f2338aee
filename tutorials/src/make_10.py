"""Writes ``tutorials/10_beyond_the_elbo.ipynb`` (without outputs) from the cells below.

Run ``.venv/bin/python tutorials/src/make_10.py`` after editing, and commit both files. The
notebook is executed by ``tests/test_tutorials.py`` with ``PVAE_SMOKE=1``.
"""

from __future__ import annotations

from pathlib import Path

import nbformat
from nbcells import notebook_from

NOTEBOOK = Path(__file__).resolve().parents[1] / "10_beyond_the_elbo.ipynb"

CELLS: list[tuple[str, str]] = [
    (
        "md",
        """\
# Beyond the ELBO: the Stein VAE and variance layers

Two papers change what is optimised or what is stochastic while the model family stays:

- the **Stein VAE** [1] has an encoder that is a *sampler* without a density: noise and x go
  through a network that emits particles of z; Stein variational gradient descent (SVGD [2])
  moves them toward p(z | x), the encoder follows them and the decoder trains on them. Its
  importance-weighted variant (Stein VIWAE) moves tuples of k particles toward the density
  of the k-sample importance-weighted bound.
- **variance layers** [3] have weights of zero mean, `w = sigma * epsilon`: a layer stores
  what it learns in the variances alone.

Both live in pvae's house: `pvae.infer.stein.SteinVGD` is an objective for `fit` and any
model whose latents sit in the `"data"` plate; `variance_lenet` is a registered Pyro model.

With `PVAE_SMOKE=1` (as the test suite runs it) everything is shrunk to run in seconds and
the numbers mean nothing; without it the notebook takes a few minutes on one CPU core.
`benchmarks/stein_vae.py` and `benchmarks/variance_layers.py` measure the MNIST numbers
(`benchmarks/results/stein_vae.md`, `benchmarks/results/variance_layers.md`).

**References**

[1] Pu, Gan, Henao, Li, Han, Carin. *VAE Learning via Stein Variational Gradient Descent*.
NeurIPS 2017. https://arxiv.org/abs/1704.05155

[2] Liu, Wang. *Stein Variational Gradient Descent*. NeurIPS 2016.
https://arxiv.org/abs/1608.04471

[3] Neklyudov, Molchanov, Ashukha, Vetrov. *Variance Networks: When Expectation Does Not
Meet Your Expectations*. ICLR 2019. https://arxiv.org/abs/1803.03764""",
    ),
    (
        "code",
        """\
import math
import os

import pyro
import torch

from pvae.data import load_dataset
from pvae.evaluation.importance import log_likelihood
from pvae.infer.stein import (
    SteinEncoder,
    SteinVGD,
    fitted_gaussian_guide,
    svgd_direction,
)
from pvae.infer.train import fit
from pvae.models import build_model
from pvae.nets.variance import LinearVariance

SMOKE = os.environ.get("PVAE_SMOKE") == "1"
TRAIN_SIZE = 200 if SMOKE else 5000
EPOCHS = 1 if SMOKE else 3
SVGD_STEPS = 100 if SMOKE else 1000
torch.manual_seed(0)
pyro.set_rng_seed(0)""",
    ),
    (
        "md",
        """\
## SVGD on a Gaussian target

For a datum's M particles, SVGD moves each one along

    phi(z_j) = (1/M) sum_j' [k(z_j', z_j) grad log p(z_j' | x) + grad_{z_j'} k(z_j', z_j)]

with the RBF kernel `k(z, z') = exp(-||z - z'||^2 / h)`, `h` by the median heuristic. The
first term pulls particles up the posterior's density (smoothed by the kernel), the second
pushes them apart. On a Gaussian target `N(mu, sigma^2)` the score is `-(z - mu) / sigma^2`,
and particles started narrow and far away end with the target's mean and variance.""",
    ),
    (
        "code",
        """\
mu, sigma = torch.tensor([[1.0, -2.0]]), torch.tensor([[0.5, 1.5]])  # one datum, 2-d
particles = torch.randn(100, 1, 2) * 0.1 + 3.0  # (M, B, D)
for _ in range(SVGD_STEPS):
    score = -(particles - mu) / sigma**2
    particles = particles + 0.05 * svgd_direction(particles, score)
print("target mean", mu.tolist(), " particles' mean", particles.mean(0).tolist())
print("target var ", (sigma**2).tolist(), " particles' var ", particles.var(0).tolist())""",
    ),
    (
        "md",
        """\
## A tiny Stein VAE trained with `fit`

The generative model is the registered `vae`'s (z ~ N(0, I), MLP decoder, Bernoulli
pixels); the guide is a `SteinEncoder` (x and noise in, one particle out). `SteinVGD` draws
M particles per datum, moves them by one SVGD step, trains the decoder on the moved
particles and the encoder to follow them. `importance_weighted=True, k=2` is the Stein
VIWAE: the same particles as M/2 tuples of 2, moved toward the 2-sample importance-weighted
density (with the particles' leave-one-out kernel density standing in for the sampler's
density, and the part of the SVGD direction that is zero in expectation by Stein's identity
left out), and the decoder trained by the 2-sample bound.""",
    ),
    (
        "code",
        """\
train = load_dataset("mnist", "train", size=TRAIN_SIZE, size_seed=0, progress=False)
test = load_dataset("mnist", "test", size=100, size_seed=0, progress=False)
x_test, _ = next(iter(test.batches(100 if not SMOKE else 20, shuffle=False)))

runs = {}
for name, objective in [
    ("Stein VAE", SteinVGD(num_particles=10, step_size=0.05)),
    ("Stein VIWAE", SteinVGD(num_particles=5, step_size=0.05, importance_weighted=True, k=2)),
]:
    torch.manual_seed(0)
    vae = build_model("vae", latent_dim=10, hidden=[100])
    vae.initialize(train.model_options())
    encoder = SteinEncoder(784, 10, hidden=(100,))
    with pyro.settings.context(module_local_params=True):
        result = fit(
            vae.model,
            encoder.guide,
            train,
            objective=objective,
            epochs=EPOCHS,
            batch_size=100,
            progress=False,
        )
    runs[name] = (vae, encoder)
    print(f"{name}: last epoch's bound {result.history[-1]['train_bound']:.1f} nats per image")""",
    ),
    (
        "md",
        """\
## Evaluating a sampler: the fitted Gaussian

`log_likelihood` needs a proposal with a density, and the sampler has none.
`fitted_gaussian_guide(encoder.guide, 100)` fits a diagonal Gaussian to 100 particles of each
datum and samples from it. The fit uses its own particles, drawn independently of the K
importance samples, so it is a fixed, valid density when the K samples are drawn: the
estimate `log (1/K) sum_k p(x, z_k) / q(z_k)` is, by Jensen's inequality, a *stochastic lower
bound* on `log p(x)` (its expectation is at most `log p(x)`), as the Gaussian VAE's is. How
tight it is depends on how Gaussian the particles are: whatever non-Gaussian shape they have
is lost, so it is a conservative measure of the Stein VAE.""",
    ),
    (
        "code",
        """\
K = 10 if SMOKE else 200
for name, (vae, encoder) in runs.items():
    guide = fitted_gaussian_guide(encoder.guide, num_particles=100)
    with torch.no_grad():
        log_px = log_likelihood(vae.model, guide, x_test, num_samples=K, seed=0)
    se = log_px.std() / math.sqrt(len(log_px))
    print(f"{name}: test NLL {-log_px.mean():.1f} +- {se:.1f} nats (K = {K})")""",
    ),
    (
        "md",
        """\
## Variance layers

A variance layer's weights are `w_ij = sigma_ij * epsilon_ij` with `epsilon ~ N(0, 1)`. With
the local reparameterisation trick the pre-activations are sampled directly:

    b_j = bias_j + epsilon_j * sqrt(sum_i x_i^2 sigma_ij^2)

so for an input x the output's mean is the bias and its variance `sum_i sigma_ij^2 x_i^2`.
With the noise off (`epsilon = 0`) the output is the bias alone, whatever the input: the
information is in the variances, and predictions need samples.""",
    ),
    (
        "code",
        """\
layer = LinearVariance(3, 2)
x = torch.tensor([[1.0, -2.0, 0.5]])
draws = torch.stack([layer(x) for _ in range(20000)]).detach()  # (S, 1, 2)
expected = (x**2) @ (layer.sigma**2).T
print("sample variance  ", draws.var(0).tolist())
print("sigma^2 x^2      ", expected.tolist())
layer.stochastic = False
print("noise off:", layer(x).tolist(), " bias:", layer.bias.tolist())""",
    ),
    (
        "md",
        """\
`variance_lenet` is LeNet-5 whose hidden layers are variance layers, as a Pyro model: the
noise of each variance layer is a latent site, its guide is the same standard normal (the
weights' posterior has zero mean), and the ELBO is the paper's bound (the KL is zero under
the empirical-Bayes ARD prior). Test-time ensembling averages the predictive distribution of
S noise draws, `log (1/S) sum_s softmax(net(x, e_s))`; with the noise off the network
predicts one class for every image.""",
    ),
    (
        "code",
        """\
grey = dict(progress=False, binarize=None)
mnist_train = load_dataset("mnist", "train", size=TRAIN_SIZE, size_seed=0, **grey)
mnist_test = load_dataset("mnist", "test", size=500 if not SMOKE else 50, **grey)
options = dict(channels=[4, 8], dense=32) if SMOKE else {}
net = build_model("variance_lenet", **options)
with pyro.settings.context(module_local_params=True):
    fit(net.model, net.guide, mnist_train, epochs=EPOCHS, batch_size=200, progress=False)
print("test accuracy, 1 sample:  ", net.accuracy(mnist_test, 1))
print("test accuracy, 10 samples:", net.accuracy(mnist_test, 10))
with net.noise_off():
    print("test accuracy, noise off: ", net.accuracy(mnist_test, 1))""",
    ),
    (
        "md",
        """\
At this budget the variance network is far from converged (the authors train 200 epochs);
`benchmarks/results/variance_layers.md` has the numbers beside the same LeNet-5 trained
normally. The command line trains both models:

    pvae train --model stein_vae --dataset mnist --model-option importance_weighted=true
    pvae train --model variance_lenet --dataset mnist""",
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
