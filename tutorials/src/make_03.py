"""Writes ``tutorials/03_evaluating_and_diagnosing.ipynb`` (without outputs) from the cells below.

Run ``.venv/bin/python tutorials/src/make_03.py`` after editing, and commit both files. The
notebook is executed by ``tests/test_tutorials.py`` with ``PVAE_SMOKE=1``.
"""

from __future__ import annotations

from pathlib import Path

import nbformat
from nbcells import notebook_from

NOTEBOOK = Path(__file__).resolve().parents[1] / "03_evaluating_and_diagnosing.ipynb"

CELLS: list[tuple[str, str]] = [
    (
        "md",
        """\
# Evaluating and diagnosing a VAE

How good is a trained VAE, and can we trust the number we report? This tutorial trains a small
VAE on MNIST and then

1. shows why **samples** and **Parzen-window** estimates mislead [1];
2. climbs the **bound ladder**: ELBO <= IWAE-K <= log p(x) [2], with **AIS** [3, 4] on top;
3. checks AIS itself with **bidirectional Monte Carlo** (BDMC) on simulated data [5, 4];
4. diagnoses the guide with **PSIS k-hat** [6, 7] and the importance-sampling ESS, and stores
   everything in an ArviZ `InferenceData`;
5. measures **posterior collapse**: active units [2], KL per unit, mutual information [8];
6. runs it all at once with `pvae.runs.diagnose_model` (what `pvae diagnose RUN_DIR` does).

With `PVAE_SMOKE=1` (as the test suite runs it) every size shrinks so the notebook runs in
seconds; the numbers are then meaningless. Without it, it takes about twenty minutes on a
two-core CPU.

**References**

[1] Theis, van den Oord, Bethge. *A note on the evaluation of generative models*. ICLR 2016.
https://arxiv.org/abs/1511.01844

[2] Burda, Grosse, Salakhutdinov. *Importance Weighted Autoencoders*. ICLR 2016.
https://arxiv.org/abs/1509.00519

[3] Neal. *Annealed Importance Sampling*. Statistics and Computing, 2001.
https://arxiv.org/abs/physics/9803008

[4] Wu, Burda, Salakhutdinov, Grosse. *On the Quantitative Analysis of Decoder-Based Generative
Models*. ICLR 2017. https://arxiv.org/abs/1611.04273

[5] Grosse, Ghahramani, Adams. *Sandwiching the marginal likelihood using bidirectional Monte
Carlo*. 2015. https://arxiv.org/abs/1511.02543

[6] Vehtari, Simpson, Gelman, Yao, Gabry. *Pareto Smoothed Importance Sampling*. JMLR 2024.
https://arxiv.org/abs/1507.02646

[7] Yao, Vehtari, Simpson, Gelman. *Yes, but Did It Work?: Evaluating Variational Inference*.
ICML 2018. https://arxiv.org/abs/1802.02538

[8] He, Spokoyny, Neubig, Berg-Kirkpatrick. *Lagging Inference Networks and Posterior Collapse
in Variational Autoencoders*. ICLR 2019. https://arxiv.org/abs/1901.05534""",
    ),
    (
        "code",
        """\
%matplotlib inline
import math
import os
import tempfile

import matplotlib.pyplot as plt
import pyro
import pyro.distributions as dist
import torch
from IPython.display import Image, display

from pvae.data import load_dataset
from pvae.infer.objectives import ELBO
from pvae.models import VAE

pyro.settings.set(module_local_params=True)  # parameters live in the modules
SMOKE = os.environ.get("PVAE_SMOKE") == "1"
TRAIN_SIZE = 500 if SMOKE else 20_000
TRAIN_STEPS = 10 if SMOKE else 3_000
TEST_SIZE = 8 if SMOKE else 100
NUM_SAMPLES = 60 if SMOKE else 1_000  # importance samples per test image
AIS_STEPS = 8 if SMOKE else 500  # Wu et al. use up to 10,000 on GPUs
AIS_CHAINS = 2 if SMOKE else 8
BDMC_DATA = 2 if SMOKE else 20
torch.manual_seed(0)
print(f"smoke={SMOKE}")""",
    ),
    (
        "md",
        """\
## A small VAE, trained by hand

`pvae.models.VAE` with an 8-dimensional latent, trained on dynamically binarized MNIST with the
ELBO and Adam (`pvae.infer.train.fit` does the same with checkpoints and early stopping).""",
    ),
    (
        "code",
        """\
train = load_dataset("mnist", "train", size=TRAIN_SIZE, size_seed=0, progress=False)
# The test split is binarized once, with a fixed seed (static binarization).
test = load_dataset("mnist", "test", size=TEST_SIZE, size_seed=0, progress=False)
x_test, y_test = test.images, test.labels

vae = VAE(latent_dim=8, hidden=(256,))
vae.initialize(train.model_options())  # the output bias from the mean training image
objective = ELBO()
optimizer = torch.optim.Adam(vae.parameters(), lr=1e-3)
generator = torch.Generator().manual_seed(0)
step = 0
while step < TRAIN_STEPS:
    for x, _ in train.batches(100, generator=generator):
        value = objective(vae.model, vae.guide, x)
        optimizer.zero_grad()
        value.loss.backward()
        optimizer.step()
        step += 1
        if step % max(1, TRAIN_STEPS // 5) == 0:
            print(f"step {step}: ELBO per image {value.bound.item() / x.shape[0]:.2f}")
        if step >= TRAIN_STEPS:
            break
vae.eval();""",
    ),
    (
        "md",
        """\
## 1. Why samples and Parzen windows mislead

Theis et al. [1] show that sample quality, log-likelihood and Parzen-window estimates can
disagree almost arbitrarily. A model that *memorises* the training set draws perfect samples
and has a terrible likelihood on new data; a Parzen window (a Gaussian kernel density estimate
fitted to model samples) is so biased in high dimensions that it ranks models wrongly, even
ranking the training data themselves above a good model.

Below, a Parzen window built from VAE samples and one built from *training images* (the
"memorising model") score the test images. The memoriser looks better, though it has not
learned anything; and both numbers are far from the model's real log-likelihood, which we
estimate next.""",
    ),
    (
        "code",
        """\
def parzen_log_likelihood(centers, x, sigma):
    \"\"\"log (1/M) sum_j N(x | c_j, sigma^2 I) for every row of x (flattened images).\"\"\"
    c, x = centers.reshape(len(centers), -1), x.reshape(len(x), -1)
    sq = torch.cdist(x, c).pow(2)
    d = x.shape[1]
    log_k = -sq / (2 * sigma**2) - 0.5 * d * math.log(2 * math.pi * sigma**2)
    return torch.logsumexp(log_k, dim=1) - math.log(len(centers))


num_centers = 100 if SMOKE else 2_000
samples = torch.bernoulli(vae.sample(num_centers))
memorised = train.images[:num_centers].bernoulli()
for name, centers in (("VAE samples", samples), ("training images", memorised)):
    best = max(
        (float(parzen_log_likelihood(centers, x_test, s).mean()), s) for s in (0.1, 0.2, 0.3, 0.5)
    )
    print(f"Parzen window on {name}: {best[0]:.1f} nats (sigma={best[1]})")""",
    ),
    (
        "md",
        """\
## 2. The bound ladder

For every test image, importance sampling with K guide samples gives the IWAE bound [2]

    IWAE_K = E[log (1/K) sum_k p(x, z_k) / q(z_k | x)],   z_k ~ q(z | x)

with IWAE_1 = ELBO and IWAE_K increasing to log p(x) as K grows. How fast it climbs depends on
how well q matches the posterior. AIS [3] replaces the single proposal by a chain of T
intermediate distributions `p(z) p(x | z)^beta_t` with HMC moves between them; with enough
steps it is far tighter than IWAE, which is why Wu et al. [4] use it to evaluate decoders.

`bound_ladder` draws one pool of guide samples, splits it into groups of K for every K, and
runs AIS on the same images. The last column is each bound minus AIS with a *paired* standard
error: the bounds of one image move together, so their differences are far more precise
than their spread over images.""",
    ),
    (
        "code",
        """\
from pvae import figures
from pvae.evaluation import bound_ladder

ks = [k for k in (1, 10, 100, 1000) if k <= NUM_SAMPLES]
ladder = bound_ladder(
    vae.model,
    vae.guide,
    x_test,
    ks=ks,
    num_samples=NUM_SAMPLES,
    ais_steps=AIS_STEPS,
    ais_chains=AIS_CHAINS,
    seed=0,
)
print(ladder.table())
out = tempfile.mkdtemp()
display(Image(figures.plot_bound_ladder(ladder, os.path.join(out, "ladder.png"))))""",
    ),
    (
        "md",
        """\
## 3. Is AIS right? Bidirectional Monte Carlo

AIS gives a *stochastic lower bound*: `E[log mean_k w_k] <= log p(x)`. How far below? On data
simulated from the model, `(x, z) ~ p(x, z)`, we also hold an exact posterior sample z, and
running AIS *backwards* from it (beta from 1 to 0) gives a stochastic *upper* bound [5]. The gap
between the two bounds the error of forward AIS on such data; Wu et al. [4] use it to choose
the number of AIS steps. The gap shrinks as T grows.""",
    ),
    (
        "code",
        """\
from pvae.evaluation import bdmc

for steps in (AIS_STEPS // 4, AIS_STEPS):
    result = bdmc(vae.model, BDMC_DATA, steps, AIS_CHAINS, example_x=x_test[:1], seed=0)
    print(
        f"T={steps:5d}: lower {result.lower_mean:.2f}, upper {result.upper_mean:.2f}, "
        f"gap {result.gap_mean:.2f} nats"
    )""",
    ),
    (
        "md",
        """\
## 4. Can we trust the importance weights? PSIS k-hat

Importance sampling (and so IWAE and `pvae.evaluation.log_likelihood`) fails silently when the
weights `p(x, z) / q(z | x)` are heavy tailed: the estimate then depends on rare huge weights,
and more samples barely help. Pareto-smoothed importance sampling [6] fits a generalized
Pareto distribution to the largest weights; its shape k-hat says how heavy the tail is:

- k-hat < 0.5: finite variance, estimates reliable;
- 0.5 < k-hat < 0.7: finite mean, slow but usable;
- k-hat > 0.7: unreliable, whatever the number of samples.

Yao et al. [7] read the same k-hat as a diagnostic of the variational approximation q itself.
The ESS `1 / sum wbar_s^2` of the normalized weights tells a similar story. Below, the trained
guide is compared with a deliberately over-confident guide whose scales are shrunk to 30%.""",
    ),
    (
        "code",
        """\
from pvae.diagnostics import importance_diagnostics


def overconfident_guide(x):
    loc, scale = vae.encode(x)
    with pyro.plate("data", x.shape[0]):
        pyro.sample("z", dist.Normal(loc, 0.3 * scale).to_event(1))


for name, guide in (("trained guide", vae.guide), ("over-confident guide", overconfident_guide)):
    diag = importance_diagnostics(vae.model, guide, x_test, num_samples=NUM_SAMPLES)
    summary = diag.summary()
    print(
        f"{name:22s} k-hat > 0.7 for {100 * summary['share_khat_above_0.7']:.0f}% of images, "
        f"mean relative ESS {summary['relative_ess_mean']:.3f}"
    )
display(Image(figures.plot_khat(diag.khat, os.path.join(out, "khat.png"), "over-confident guide")))""",
    ),
    (
        "md",
        """\
The guide's samples, the pointwise log-likelihood and the importance log weights fit in an
ArviZ `InferenceData` in ArviZ's layout (dims `chain, draw, datum, z_dim_0`), so ArviZ's tools
apply: `az.summary`, `az.plot_posterior`, `az.plot_khat` of `importance_loo(idata)` (the PSIS
k-hat of the importance weights), and `idata.to_netcdf` to save it.""",
    ),
    (
        "code",
        """\
import arviz as az

from pvae.diagnostics import importance_loo, to_inference_data

idata = to_inference_data(vae.model, vae.guide, x_test, num_samples=NUM_SAMPLES)
print(idata)
display(az.summary(idata, var_names=["z"], coords={"datum": [0]}, kind="stats"))
az.plot_khat(importance_loo(idata), show_hlines=True)
plt.show()""",
    ),
    (
        "md",
        """\
## 5. Posterior collapse

A VAE may leave latent units unused: their posterior equals the prior for every image.

- **Active units** [2]: unit u is active if `Var_x(E_q[z_u | x]) > 0.01`.
- **KL per unit**: `E_x KL(q(z_u | x) || p(z_u))`, zero for a collapsed unit.
- **Mutual information** `I(x; z)` under the aggregate posterior `q(z) = mean_n q(z | x_n)` [8],
  between 0 (z ignores x) and log N (every image has its own region of latent space).""",
    ),
    (
        "code",
        """\
from pvae.evaluation import active_units, kl_per_dimension, mutual_information

units = active_units(vae, x_test)
kl = kl_per_dimension(vae, x_test)
mi = mutual_information(vae, x_test, num_samples=10)
print(units)
print("KL per unit:", [round(v, 2) for v in kl.tolist()])
print(f"I(x; z) = {mi:.2f} nats (at most log N = {math.log(len(x_test)):.2f})")
display(Image(figures.plot_kl_per_dimension(kl, os.path.join(out, "kl.png"))))
traversals = os.path.join(out, "traversals.png")
display(Image(figures.plot_latent_traversals(vae, traversals, units.variances, num_dims=4)))""",
    ),
    (
        "md",
        """\
## 6. Everything at once

`pvae.runs.diagnose_model` computes all of the above on a batch of test data and writes
`diagnostics.json`, `diagnostics.nc` (the InferenceData) and the figures. On a trained run folder,
`pvae.runs.diagnose_run(RUN_DIR)` (what `pvae diagnose RUN_DIR` calls) loads the model and its
test data, calls it, and adds a diagnostics section to the run's report.""",
    ),
    (
        "code",
        """\
from pvae.runs import diagnose_model

metrics, figures = diagnose_model(
    vae,
    x_test,
    y_test,
    out,
    num_samples=NUM_SAMPLES,
    ais_steps=AIS_STEPS,
    ais_chains=AIS_CHAINS,
    bdmc_data=BDMC_DATA,
    progress=False,
)
print({k: metrics[k] for k in ("elbo", "ais", "bdmc", "importance")})
for title, name in figures:
    print(title, "->", name)
display(Image(os.path.join(out, "diagnostics_interpolations.png")))""",
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
