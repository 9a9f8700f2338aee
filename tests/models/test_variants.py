"""What is particular to each variant (beta and free bits, the CVAE's labels, the IAF's exact
density, the sphere, the mixture's implicit gradients, M2's labels and accuracy), and an
end-to-end check that each one learns. The generic tests every registered model passes are in
``test_suite.py``. Data: statically binarized MNIST training images from ``../shared/data``.
"""

from __future__ import annotations

import math
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyro
import pyro.poutine as poutine
import pytest
import torch

from pvae.data import load_dataset
from pvae.evaluation.importance import log_likelihood
from pvae.infer.objectives import ELBO
from pvae.models.registry import build_model

SMALL = dict(input_shape=[1, 28, 28], latent_dim=3, hidden=[32])


def _unlabelled(x: torch.Tensor, y: torch.Tensor) -> tuple:
    return (x,)


def _labelled(x: torch.Tensor, y: torch.Tensor) -> tuple:
    return (x, y)


@dataclass
class Case:
    name: str
    options: dict[str, Any] = field(default_factory=dict)
    # Arguments of model/guide for a batch of images and labels.
    args: Callable[[torch.Tensor, torch.Tensor], tuple] = _unlabelled
    objective: Callable[[], Any] = lambda: "elbo"
    lr: float = 3e-3

    def __str__(self) -> str:
        return self.name


def _m2_objective() -> Any:
    from pvae.infer.semisupervised import SemiSupervisedELBO

    return SemiSupervisedELBO()


CASES = [
    Case("vae", {"beta": 2.0, "free_bits": 0.25}),
    Case("cvae", args=_labelled),
    Case("iaf", {"num_flows": 2, "flow_hidden": [16]}),
    Case("svae"),
    Case("mixture", {"prior_components": 3, "guide_components": 2}),
    Case("m2", {"alpha": 10.0}, objective=_m2_objective),
    Case("m2", {"alpha": 10.0}, args=_labelled, objective=_m2_objective),
]
IDS = [
    f"{c.name}-{'labelled' if c.args is _labelled else 'x'}{'-beta' if 'beta' in c.options else ''}"
    for c in CASES
]


@pytest.fixture(scope="module")
def mnist() -> tuple[torch.Tensor, torch.Tensor]:
    data = load_dataset("mnist", "train", size=512, binarize="static", download=False)
    return data.images, data.labels


@pytest.fixture(scope="module")
def batch(mnist) -> tuple[torch.Tensor, torch.Tensor]:
    images, labels = mnist
    return images[:32], labels[:32]


def _build(case: Case, seed: int = 0) -> Any:
    torch.manual_seed(seed)
    return build_model(case.name, **SMALL, **case.options)


def _elbo_value(model, x, seed: int) -> torch.Tensor:
    pyro.set_rng_seed(seed)
    return ELBO()(model.model, model.guide, x, scale=7.0).loss


def test_beta_and_free_bits_leave_the_log_likelihood_estimate_alone(batch):
    """Scaled sites and the zero-valued free-bits factor must not bias log p(x)."""
    x, _ = batch
    torch.manual_seed(0)
    vae = build_model("vae", **SMALL)
    beta_vae = build_model("vae", **SMALL, beta=3.0, free_bits=0.5)
    beta_vae.load_state_dict(vae.state_dict())
    pyro.set_rng_seed(3)
    expected = log_likelihood(vae.model, vae.guide, x[:4], num_samples=8)
    pyro.set_rng_seed(3)
    actual = log_likelihood(beta_vae.model, beta_vae.guide, x[:4], num_samples=8)
    assert torch.allclose(expected, actual)


@pytest.mark.parametrize("options", [{"beta": 0.0}, {"beta": -1}, {"free_bits": -0.1}])
def test_bad_beta_or_free_bits_is_a_clear_error(options):
    with pytest.raises(ValueError, match="beta|free_bits"):
        build_model("vae", **SMALL, **options)


def test_beta_weights_the_analytic_kl(batch):
    x, _ = batch
    torch.manual_seed(0)
    vae = build_model("vae", **SMALL)
    beta_vae = build_model("vae", **SMALL, beta=3.0)
    beta_vae.load_state_dict(vae.state_dict())
    with torch.no_grad():
        loc, scale = vae.encode(x)
        kl = (0.5 * (loc**2 + scale**2 - 1) - scale.log()).sum()
        # Same seed, same z: the two losses differ by exactly (beta - 1) * KL.
        difference = _elbo_value(beta_vae, x, 0) - _elbo_value(vae, x, 0)
    assert torch.allclose(difference, 2.0 * kl * 7.0, rtol=1e-4)


def test_free_bits_leave_the_value_and_cancel_the_kl_gradient_below_the_floor(batch):
    x, _ = batch
    torch.manual_seed(0)
    plain = build_model("vae", **SMALL)
    floored = build_model("vae", **SMALL, free_bits=1e6)  # every dimension below
    floored.load_state_dict(plain.state_dict())
    # Value: the free-bits factor is a zero-valued surrogate.
    assert torch.allclose(_elbo_value(plain, x, 0), _elbo_value(floored, x, 0))
    # Gradient: with every dimension below the floor only the reconstruction term remains:
    # grad(floored loss) = grad(plain loss - scale * KL), the same z drawn by the same seed.
    _elbo_value(floored, x, 0).backward()
    loc, scale = plain.encode(x)
    kl = (0.5 * (loc**2 + scale**2 - 1) - scale.log()).sum()
    (_elbo_value(plain, x, 0) - 7.0 * kl).backward()
    checked = 0
    for (name, a), b in zip(floored.named_parameters(), plain.parameters(), strict=True):
        assert torch.allclose(a.grad, b.grad, rtol=1e-4, atol=1e-4), name
        checked += name.startswith("encoder")
    assert checked > 0


# -- cvae ----------------------------------------------------------------------------------


def test_cvae_samples_depend_on_the_label():
    model = build_model("cvae", **SMALL)
    a = model.sample(4, torch.Generator().manual_seed(0), y=torch.zeros(4, dtype=torch.long))
    b = model.sample(4, torch.Generator().manual_seed(0), y=torch.full((4,), 7))
    assert not torch.allclose(a, b)
    default = model.sample(10, torch.Generator().manual_seed(0))
    cycled = model.sample(10, torch.Generator().manual_seed(0), y=torch.arange(10))
    assert torch.equal(default, cycled)


def test_cvae_rejects_bad_labels(batch):
    model = build_model("cvae", **SMALL)
    x, y = batch
    with pytest.raises(ValueError, match="labels"):
        model.batch_args((x, torch.full_like(y, -1)))


# -- iaf -----------------------------------------------------------------------------------


def test_iaf_log_prob_is_exact():
    """log q(z | x) from the guide equals log N(eps_0) - log|det dz/deps_0| with the Jacobian
    computed by autograd on the composed flow, and equals the inverse-path (uncached) value."""
    torch.set_default_dtype(torch.float64)
    try:
        torch.manual_seed(0)
        model = build_model("iaf", **{**SMALL, "latent_dim": 4}, num_flows=3, flow_hidden=[16])
        x = (torch.rand(1, 1, 28, 28) > 0.5).double()
        q = model.posterior(x)
        z = q.rsample()
        cached = q.log_prob(z)
        base = q.base_dist
        # Recover eps_0 through the inverse (a fresh tensor: no cache).
        eps = z.clone()
        for t in reversed(q.transforms):
            eps = t.inv(eps.clone())

        def flow(e: torch.Tensor) -> torch.Tensor:  # (D,) -> (D,) for one datum
            e = e.unsqueeze(0)
            for t in q.transforms:
                e = t(e.clone())
            return e[0]

        jacobian = torch.autograd.functional.jacobian(flow, eps[0])
        direct = base.log_prob(eps) - torch.linalg.slogdet(jacobian)[1]
        uncached = q.log_prob(z.clone())
        assert torch.allclose(flow(eps[0]), z[0], atol=1e-8)
        assert torch.allclose(cached, direct, atol=1e-8)
        assert torch.allclose(uncached, direct, atol=1e-6)
    finally:
        torch.set_default_dtype(torch.float32)


# -- svae ----------------------------------------------------------------------------------


def test_svae_latents_lie_on_the_sphere(batch):
    x, _ = batch
    model = build_model("svae", **{**SMALL, "latent_dim": 5})
    z = model.prior_sample(100, torch.Generator().manual_seed(0))
    assert torch.allclose(z.norm(dim=-1), torch.ones(100), atol=1e-5)
    guide_trace = poutine.trace(model.guide).get_trace(x)
    z = guide_trace.nodes["z"]["value"]
    assert z.shape == (32, 5)
    assert torch.allclose(z.norm(dim=-1), torch.ones(32), atol=1e-5)
    assert torch.allclose(model.encode_mean(x).norm(dim=-1), torch.ones(32), atol=1e-5)
    assert bool((model.encode(x)[1] >= 1).all())


# -- mixture -------------------------------------------------------------------------------


def test_mixture_guide_gradients_reach_the_logits_through_the_sample(batch):
    """Only the implicit reparameterization path connects log p(x | z) to the guide's mixing
    logits, so a non-zero gradient there shows that path works end to end."""
    x, _ = batch
    model = build_model("mixture", **SMALL, guide_components=3)
    guide_trace = poutine.trace(model.guide).get_trace(x)
    model_trace = poutine.trace(poutine.replay(model.model, guide_trace)).get_trace(x)
    reconstruction = model_trace.nodes["x"]["fn"].log_prob(x).sum()
    reconstruction.backward()
    grad = model.encoder_logits.weight.grad
    assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0
    assert model.prior_logits.grad is None  # the prior is not on this path


# -- m2 ------------------------------------------------------------------------------------


def test_m2_batch_args_split_labelled_and_unlabelled(batch):
    x, y = batch
    model = build_model("m2", **SMALL)
    assert len(model.batch_args((x, y))) == 2
    assert len(model.batch_args((x, torch.full_like(y, -1)))) == 1
    mixed = y.clone()
    mixed[0] = -1
    with pytest.raises(ValueError, match="all labelled or all unlabelled"):
        model.batch_args((x, mixed))


@pytest.mark.statistical
def test_m2_classifier_beats_chance_after_short_training(mnist, seed):
    """60 labelled images (6 a class) and 200 unlabelled ones, a few seconds of training; the held-out
    accuracy of 200 images must beat chance (10%) by far more than its standard error
    (sqrt(0.1 * 0.9 / 200) = 2.1%)."""
    from pvae.data.images import ImageDataset
    from pvae.data.semisupervised import SemiSupervisedData
    from pvae.infer.semisupervised import fit_semisupervised

    images, labels = mnist
    train = ImageDataset(images[:300], labels[:300], binarize=None)
    data = SemiSupervisedData(train, num_labelled=60, labelled_repeats=4, seed=seed)
    torch.manual_seed(seed)
    model = build_model("m2", **{**SMALL, "latent_dim": 4, "hidden": [64]}, alpha=20.0)
    fit_semisupervised(model, data, epochs=6, batch_size=60, lr=3e-3, seed=seed, progress=False)
    accuracy = (model.classify(images[300:500]) == labels[300:500]).float().mean()
    assert accuracy > 0.3, float(accuracy)


@pytest.mark.statistical
def test_m2_training_setup_validates_and_selects_by_valid_accuracy(mnist, seed):
    """With a labelled valid set, every epoch records the enumerated bound on log p(x) of the
    valid images and q(y | x)'s accuracy on them, and the best epoch is the most accurate."""
    from pvae.data.images import ImageDataset
    from pvae.infer.train import fit

    images, labels = mnist
    train = ImageDataset(images[:200], labels[:200], binarize=None)
    valid = ImageDataset(images[200:300], labels[200:300], binarize=None)
    torch.manual_seed(seed)
    model = build_model("m2", **{**SMALL, "latent_dim": 4, "hidden": [32]}, alpha=20.0)
    setup = model.training_setup(train, valid=valid, num_labels=30, seed=seed)
    assert setup["monitor"] == "valid_accuracy"
    result = fit(
        model.model, model.guide, **setup, epochs=3, batch_size=50, seed=seed, progress=False
    )
    accuracies = [h["valid_accuracy"] for h in result.history]
    assert all(0.0 <= a <= 1.0 for a in accuracies)
    assert result.best_valid == max(accuracies)
    assert result.best_epoch == accuracies.index(max(accuracies)) + 1
    # The valid bound is a bound on log p(x) of binary 28x28 images: negative and finite.
    bounds = [h["valid_bound"] for h in result.history]
    assert all(math.isfinite(b) and b < 0 for b in bounds)
    # It is the bound with y summed out, on the images alone (labels hidden): recompute it
    # with fresh draws of z, and allow 5 standard errors of the difference of two estimates.
    with torch.no_grad():
        estimates = torch.tensor(
            [
                -setup["objective"].loss(model.model, model.guide, valid.images) / len(valid)
                for _ in range(8)
            ]
        )
    stderr = float(estimates.std()) * math.sqrt(1 + 1 / len(estimates))
    assert abs(bounds[-1] - float(estimates.mean())) < 5 * stderr + 1e-6


# -- end to end ----------------------------------------------------------------------------


END_TO_END = [c for c in CASES if not (c.name == "m2" and c.args is _labelled)]


@pytest.mark.statistical
@pytest.mark.parametrize("case", END_TO_END, ids=[c.name for c in END_TO_END])
def test_short_training_beats_the_independent_pixel_model(case, mnist, seed):
    """Each variant trained for 15 epochs on 300 images (a few seconds) must model 100 held-out
    images better than the independent-Bernoulli-pixel model fitted to the same 300 images
    (about 202 nats): by more than 5 standard errors of that paired difference per image.
    (Measured when written: 24 to 48 nats, s.e. 1.8 to 2.6; the training seed moves the gain
    far more than its standard error, e.g. svae 9.6 +- 1.3 nats at PVAE_TEST_SEED=5, so a fixed
    floor of 10 nats did not hold at every seed.)
    """
    from pvae.data.images import ImageDataset
    from pvae.infer.train import fit

    images, labels = mnist
    train = ImageDataset(images[:300], labels[:300], binarize=None)
    x_test, y_test = images[400:500], labels[400:500]
    pyro.set_rng_seed(seed)
    options = {**SMALL, "latent_dim": 8, "hidden": [128], **case.options}
    model = build_model(case.name, **options)
    model.initialize_output_bias(train.images.mean(0))
    fit_kwargs = {"train_data": train, **model.training_setup(train, num_labels=50, seed=seed)}
    fit(
        model.model,
        model.guide,
        **fit_kwargs,
        epochs=15,
        batch_size=50,
        lr=3e-3,
        seed=seed,
        progress=False,
    )
    args = model.eval_args((x_test, y_test))
    nll = -log_likelihood(model.model, model.guide, *args, num_samples=50)
    p = train.images.mean(0).clamp(1e-3, 1 - 1e-3)
    independent = -(x_test * p.log() + (1 - x_test) * (-p).log1p()).flatten(1).sum(-1)
    improvement = independent - nll
    stderr = improvement.std() / math.sqrt(len(improvement))
    assert improvement.mean() > 5 * stderr, (float(improvement.mean()), float(stderr))


@pytest.mark.slow
def test_zoo_benchmark_runs_in_its_smoke_setting(data_dir):
    script = Path(__file__).resolve().parents[2] / "benchmarks" / "zoo.py"
    done = subprocess.run(
        [sys.executable, str(script), "--smoke", "--data-dir", str(data_dir)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "M2 test accuracy" in done.stdout
    for name in ("vae", "vae_free_bits", "cvae", "iaf", "svae", "mixture", "m2"):
        assert f"| {name} |" in done.stdout


@pytest.mark.parametrize(
    "given, expected",
    [(False, False), (True, True), ("False", False), ("false", False), ("no", False), (0, False)]
    + [("True", True), ("on", True), (1, True)],
)
def test_boolean_options_read_strings_as_their_meaning(given, expected):
    # `--model-option stable=False` arrives as the string "False", which bool() reads as True.
    model = build_model("iaf", **SMALL, stable=given)
    assert model.config.stable is expected


@pytest.mark.parametrize("given", ["maybe", 2, 0.5, ""])
def test_a_boolean_option_refuses_other_values(given):
    with pytest.raises(ValueError, match="stable: expected true or false"):
        build_model("iaf", **SMALL, stable=given)
