"""InfoVAE: the MMD estimator (unbiased, closed form for Gaussians with the RBF kernel,
symmetric, growing with a mean shift) and the model's zero-valued MMD factor (the bound is the
VAE's, the gradient is not). The generic tests are in ``test_suite.py``."""

from __future__ import annotations

import math

import pyro
import pyro.poutine as poutine
import pytest
import torch

from pvae.data import load_dataset
from pvae.evaluation.importance import log_likelihood
from pvae.evaluation.mmd import mmd
from pvae.infer.objectives import ELBO
from pvae.models.registry import build_model

SMALL = dict(input_shape=[1, 28, 28], latent_dim=3, hidden=[32])
REPEATS = 400


def _repeated(draw, repeats: int = REPEATS) -> tuple[float, float]:
    """Mean and standard error of ``draw()`` over independent repeats."""
    values = torch.stack([draw() for _ in range(repeats)]).double()
    return values.mean().item(), (values.std() / math.sqrt(repeats)).item()


def _gaussian_rbf_mmd(mean_shift: float, s1: float, s2: float, dim: int, h: float) -> float:
    """MMD^2 between N(0, s1^2 I) and N(mean_shift * 1, s2^2 I) for exp(-||x - y||^2 / h).

    For x - y ~ N(m, v I_D): E exp(-||x - y||^2 / h) = (h / (h + 2v))^(D/2) exp(-||m||^2 / (h + 2v)).
    """

    def expected_kernel(shift_squared: float, variance: float) -> float:
        return (h / (h + 2 * variance)) ** (dim / 2) * math.exp(-shift_squared / (h + 2 * variance))

    cross = expected_kernel(dim * mean_shift**2, s1**2 + s2**2)
    return expected_kernel(0.0, 2 * s1**2) + expected_kernel(0.0, 2 * s2**2) - 2 * cross


# -- the estimator ---------------------------------------------------------------------------


@pytest.mark.statistical
@pytest.mark.parametrize("kernel,bandwidth", [("rbf", None), ("imq", None), ("rbf", "median")])
def test_mmd_is_zero_in_expectation_for_one_distribution(seed, kernel, bandwidth):
    generator = torch.Generator().manual_seed(seed)

    def draw() -> torch.Tensor:
        x = 1.5 * torch.randn(12, 3, generator=generator) + 0.3
        y = 1.5 * torch.randn(9, 3, generator=generator) + 0.3
        return mmd(x, y, kernel=kernel, bandwidth=bandwidth)

    mean, stderr = _repeated(draw)
    assert abs(mean) < 4 * stderr, (mean, stderr)


@pytest.mark.statistical
@pytest.mark.parametrize("dim,shift,s1,s2,h", [(1, 0.7, 1.0, 1.0, 2.0), (2, 0.4, 1.0, 0.5, 1.5)])
def test_mmd_matches_the_closed_form_for_gaussians(seed, dim, shift, s1, s2, h):
    generator = torch.Generator().manual_seed(seed)

    def draw() -> torch.Tensor:
        x = s1 * torch.randn(16, dim, generator=generator, dtype=torch.float64)
        y = s2 * torch.randn(16, dim, generator=generator, dtype=torch.float64) + shift
        return mmd(x, y, bandwidth=h)

    # The U-statistic is right-skewed at n = 16, so a 400-draw mean and its sample standard
    # error can miss together (seed 3: z = -5.0); at 4,000 draws the t-statistic is close to
    # normal (|z| <= 2.3 over seeds 0-39) and the 4-standard-error bound holds at any seed.
    mean, stderr = _repeated(draw, repeats=4000)
    expected = _gaussian_rbf_mmd(shift, s1, s2, dim, h)
    assert expected > 0
    assert abs(mean - expected) < 4 * stderr, (mean, expected, stderr)


@pytest.mark.parametrize("kernel", ["rbf", "imq"])
def test_mmd_is_positive_and_grows_with_a_mean_shift(seed, kernel):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(400, 2, generator=generator, dtype=torch.float64)
    noise = torch.randn(400, 2, generator=generator, dtype=torch.float64)
    values = [mmd(x, noise + shift, kernel=kernel).item() for shift in (0.5, 1.0, 2.0, 4.0)]
    assert values[0] > 0
    assert values == sorted(values), values


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("kernel,bandwidth", [("rbf", None), ("imq", 3.0), ("rbf", "median")])
def test_mmd_is_symmetric_and_batches_over_leading_dims(kernel, bandwidth, dtype):
    x, y = torch.randn(3, 10, 4, dtype=dtype), torch.randn(3, 7, 4, dtype=dtype) + 0.5
    batched = mmd(x, y, kernel=kernel, bandwidth=bandwidth)
    assert batched.shape == (3,) and batched.dtype == dtype
    torch.testing.assert_close(batched, mmd(y, x, kernel=kernel, bandwidth=bandwidth))
    for i in range(3):
        torch.testing.assert_close(batched[i], mmd(x[i], y[i], kernel=kernel, bandwidth=bandwidth))


def test_mmd_has_a_finite_gradient_with_repeated_points():
    x = torch.zeros(5, 2, requires_grad=True)
    mmd(x, torch.randn(6, 2), bandwidth="median").backward()
    assert torch.isfinite(x.grad).all()


@pytest.mark.parametrize(
    "kwargs",
    [{"kernel": "laplace"}, {"bandwidth": 0.0}, {"bandwidth": "mean"}],
)
def test_mmd_rejects_bad_options(kwargs):
    with pytest.raises(ValueError, match="kernel|bandwidth"):
        mmd(torch.randn(4, 2), torch.randn(4, 2), **kwargs)


def test_mmd_rejects_bad_shapes():
    with pytest.raises(ValueError, match="same D"):
        mmd(torch.randn(4, 2), torch.randn(4, 3))
    with pytest.raises(ValueError, match="at least 2"):
        mmd(torch.randn(1, 2), torch.randn(4, 2))


# -- the model -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return load_dataset("mnist", "train", size=32, binarize="static", download=False).images


def _pair(**options):
    torch.manual_seed(0)
    vae = build_model("vae", **SMALL)
    info = build_model("info_vae", **SMALL, **options)
    info.load_state_dict(vae.state_dict())
    return vae, info


def _loss(model, x, seed: int) -> torch.Tensor:
    pyro.set_rng_seed(seed)
    return ELBO()(model.model, model.guide, x, scale=7.0).loss


def test_the_bound_is_the_vaes_and_the_gradient_carries_the_mmd(images):
    x = images
    vae, info = _pair(alpha=0.0, mmd_lambda=50.0)
    # Value: the MMD factor is a zero-valued surrogate, so the loss is the VAE's.
    torch.testing.assert_close(_loss(info, x, 0), _loss(vae, x, 0))
    # Gradient: the VAE's (same seed, same z) plus 7 * B * weight * grad MMD^2(z, prior draws),
    # with the z and prior draws the model used.
    recorded = {}
    surrogate = info.mmd_surrogate

    def recording(z: torch.Tensor) -> torch.Tensor:
        recorded.update(z=z, prior=torch.randn_like(z))
        return surrogate(z, recorded["prior"])

    info.mmd_surrogate = recording
    loss = _loss(info, x, 0)
    penalty = 7.0 * x.shape[0] * 49.0 * mmd(recorded["z"], recorded["prior"])
    penalty_grads = torch.autograd.grad(
        penalty, list(info.parameters()), allow_unused=True, retain_graph=True
    )
    loss.backward()
    _loss(vae, x, 0).backward()
    for (name, a), b, c in zip(
        info.named_parameters(), vae.parameters(), penalty_grads, strict=True
    ):
        expected = b.grad if c is None else b.grad + c
        torch.testing.assert_close(a.grad, expected, rtol=1e-4, atol=1e-3, msg=name)
    # ... and it is not the VAE's gradient: the encoder's differs.
    encoder_changed = any(
        not torch.allclose(a.grad, b.grad)
        for (name, a), b in zip(info.named_parameters(), vae.parameters(), strict=True)
        if name.startswith("encoder")
    )
    assert encoder_changed


def test_alpha_weights_the_kl_and_a_zero_mmd_weight_is_the_beta_vae(images):
    x = images
    torch.manual_seed(0)
    beta_vae = build_model("vae", **SMALL, beta=0.25)
    info = build_model("info_vae", **SMALL, alpha=0.75, mmd_lambda=0.25)  # MMD weight 0
    info.load_state_dict(beta_vae.state_dict())
    assert info.mmd_weight == 0
    torch.testing.assert_close(_loss(info, x, 1), _loss(beta_vae, x, 1))
    _loss(info, x, 1).backward()
    _loss(beta_vae, x, 1).backward()
    for a, b in zip(info.parameters(), beta_vae.parameters(), strict=True):
        torch.testing.assert_close(a.grad, b.grad)


def test_evaluation_sees_the_plain_model(images):
    x = images[:4]
    vae, info = _pair(mmd_lambda=100.0, kernel="imq", bandwidth="median")
    pyro.set_rng_seed(3)
    expected = log_likelihood(vae.model, vae.guide, x, num_samples=8)
    pyro.set_rng_seed(3)
    actual = log_likelihood(info.model, info.guide, x, num_samples=8)
    torch.testing.assert_close(actual, expected)
    info.eval()
    assert "mmd" not in poutine.trace(info.model).get_trace(x).nodes
    info.train()
    assert "mmd" in poutine.trace(info.model).get_trace(x).nodes


@pytest.mark.parametrize(
    "options,match",
    [
        ({"alpha": 1.0}, "alpha"),
        ({"alpha": 0.5, "mmd_lambda": 0.03}, "negative"),
        ({"mmd_lambda": 0.0}, "mmd_lambda"),
        ({"kernel": "laplace"}, "kernel"),
        ({"bandwidth": -1.0}, "bandwidth"),
    ],
)
def test_bad_weights_are_a_clear_error(options, match):
    with pytest.raises(ValueError, match=match):
        build_model("info_vae", **SMALL, **options)
