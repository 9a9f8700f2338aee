"""Collapse metrics on guides whose answers are known in closed form."""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch

from pvae.evaluation.collapse import (
    active_units,
    kl_per_dimension,
    mutual_information,
    posterior_means,
)

Z = 5.0


class KnownGuide:
    """Guide means use only units 0 and 2 (unit 1 barely, unit 3 never):
    E_q[z | x] = (x_0, 1e-3 x_1, 2 x_1, 0), so Var_x = (1, 1e-6, 4, 0) for x ~ N(0, I)."""

    def __init__(self, scale: float = 0.5, family: str = "normal") -> None:
        self.scale = scale
        self.family = family

    def loc(self, x):
        zero = torch.zeros_like(x[:, :1])
        return torch.cat([x[:, :1], 1e-3 * x[:, 1:2], 2 * x[:, 1:2], zero], dim=-1)

    def _dist(self, loc, scale):
        return dist.Laplace(loc, scale) if self.family == "laplace" else dist.Normal(loc, scale)

    def model(self, x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", self._dist(torch.zeros(4), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(z[..., :2], 1.0).to_event(1), obs=x)

    def guide(self, x):
        scale = torch.tensor([self.scale, 1.0, 0.1, 1.0])
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", self._dist(self.loc(x), scale).to_event(1))


@pytest.mark.statistical
def test_active_units_finds_the_used_units():
    x = torch.randn(2000, 2)
    guide = KnownGuide()
    result = active_units(guide, x)
    assert result.count == 2
    assert result.active.tolist() == [True, False, True, False]
    # Var of N(0, 1) samples has standard error sqrt(2 / N) (Var of N(0, 4): 4 sqrt(2 / N)).
    se = math.sqrt(2 / 2000)
    assert abs(float(result.variances[0]) - 1.0) < Z * se
    assert abs(float(result.variances[2]) - 4.0) < Z * 4 * se
    assert float(result.variances[3]) == 0.0
    # A plain function x -> means gives the same answer.
    from_fn = active_units(guide.loc, x, batch_size=300)
    torch.testing.assert_close(from_fn.variances, result.variances)
    torch.testing.assert_close(posterior_means(guide, x, batch_size=7), guide.loc(x))


def test_kl_per_dimension_analytic_matches_closed_form():
    x = torch.randn(50, 2)
    guide = KnownGuide(scale=0.5)
    kl = kl_per_dimension(guide, x)
    loc = guide.loc(x)
    scale = torch.tensor([0.5, 1.0, 0.1, 1.0])
    expected = 0.5 * (scale**2 + loc**2 - 1.0 - 2 * scale.log())
    torch.testing.assert_close(kl, expected.mean(0))
    assert kl[3] == 0.0  # q = p on the unused unit


@pytest.mark.statistical
def test_kl_per_dimension_monte_carlo_fallback():
    # KL(Laplace(m, b) || Laplace(0, 1)) = -log b + |m| + b exp(-|m| / b) - 1.
    x = torch.randn(20, 2)
    guide = KnownGuide(scale=0.5, family="laplace")
    kl = kl_per_dimension(guide, x, num_samples=2000)
    loc = guide.loc(x)
    b = torch.tensor([0.5, 1.0, 0.1, 1.0])
    expected = (-b.log() + loc.abs() + b * torch.exp(-loc.abs() / b) - 1.0).mean(0)
    # Each unit's estimate averages S N = 40000 log-ratios with sd < 2: standard error < 0.01.
    torch.testing.assert_close(kl, expected, atol=Z * 0.01, rtol=0)


def test_kl_per_dimension_rejects_non_factorized_sites(linear_gaussian):
    x = linear_gaussian.data(5)
    with pytest.raises(ValueError, match="factorize"):
        kl_per_dimension(linear_gaussian.model, x, guide=linear_gaussian.guide)
    with pytest.raises(ValueError, match=r"\.guide"):
        kl_per_dimension(linear_gaussian.model, x)


def _mixture_guide(locs, scale):
    def guide(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(locs, scale).to_event(1))

    return guide


@pytest.mark.statistical
def test_mutual_information_limits():
    n = 64
    x = torch.zeros(n, 1)
    # Identical posteriors: every term log q(z|x_n) - log q(z) is exactly 0.
    same = mutual_information(_mixture_guide(torch.zeros(n, 3), 1.0), x, num_samples=5)
    assert abs(same) < 1e-5
    # Far-apart posteriors: q(z) = q(z | x_n) / N near z ~ q(z | x_n), so I = log N.
    locs = 100.0 * torch.arange(n, dtype=torch.float32).unsqueeze(-1).expand(n, 3)
    apart = mutual_information(_mixture_guide(locs, 1.0), x, num_samples=5)
    assert abs(apart - math.log(n)) < 1e-4
    # In between: 0 <= I <= log N, growing as the posteriors separate.
    values = [
        mutual_information(_mixture_guide(torch.randn(n, 3) * s, 1.0), x, num_samples=20)
        for s in (0.3, 1.0, 3.0)
    ]
    assert all(0.0 <= v <= math.log(n) for v in values)
    assert values[0] < values[1] < values[2]


@pytest.mark.statistical
def test_mutual_information_chunks_agree(linear_gaussian, seed):
    x = linear_gaussian.data(40)
    pyro.set_rng_seed(seed)
    a = mutual_information(linear_gaussian.guide, x, num_samples=4)
    pyro.set_rng_seed(seed)
    b = mutual_information(linear_gaussian.guide, x, num_samples=4, max_elements=100)
    assert a == pytest.approx(b, abs=1e-5)
    assert 0.0 <= a <= math.log(40)


def test_metrics_run_on_a_pvae_vae():
    from pvae.models import VAE

    with pyro.settings.context(module_local_params=True):
        vae = VAE(input_shape=(1, 4, 4), latent_dim=3, hidden=(8,))
        x = torch.bernoulli(torch.full((30, 1, 4, 4), 0.5))
        units = active_units(vae, x)
        kl = kl_per_dimension(vae, x)
        mi = mutual_information(vae, x, num_samples=3)
    assert units.variances.shape == (3,) and 0 <= units.count <= 3
    assert kl.shape == (3,) and (kl >= 0).all()
    assert -0.05 <= mi <= math.log(30)
