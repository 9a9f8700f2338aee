import os
from pathlib import Path

import pyro
import pyro.distributions as dist
import pytest
import torch

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"

# Tests read data from ../shared/data (or from data they make), never from the network.
if "PVAE_DATA_DIR" not in os.environ and SHARED_DATA.is_dir():
    os.environ["PVAE_DATA_DIR"] = str(SHARED_DATA)

# Two cores on CI: one intra-op thread per test process keeps timings predictable.
torch.set_num_threads(1)


def _test_seed() -> int:
    value = os.environ.get("PVAE_TEST_SEED", "0")
    try:
        return int(value)
    except ValueError:
        raise pytest.UsageError(f"PVAE_TEST_SEED must be an integer, got {value!r}") from None


TEST_SEED = _test_seed()


def pytest_report_header(config) -> str:
    return f"PVAE_TEST_SEED={TEST_SEED}"


@pytest.fixture
def seed() -> int:
    """The seed of this run: ``PVAE_TEST_SEED`` (default 0).

    A statistical test (marked ``statistical``) takes its randomness from this seed, never
    from a hard-coded one (the global generators are seeded with it before every test; a
    function that takes ``seed=`` gets this fixture), and its tolerance from the estimator's
    standard error, so it must pass at any seed; ``make test`` reruns the statistical tests
    under a second seed (``PVAE_TEST_SEED=1``).
    """
    return TEST_SEED


@pytest.fixture(autouse=True)
def _seed_and_clean_param_store(seed):
    """Every test starts from the run's seed and an empty, scoped parameter store."""
    pyro.set_rng_seed(seed)
    with pyro.get_param_store().scope():
        yield


@pytest.fixture
def data_dir() -> Path:
    path = os.environ.get("PVAE_DATA_DIR")
    if not path or not Path(path, "mnist.npz").exists():
        pytest.fail("PVAE_DATA_DIR must point at a folder holding mnist.npz (../shared/data)")
    return Path(path)


# -- a latent-Gaussian model with closed-form marginal and posterior, shared by the tests ------
class LinearGaussian:
    """z ~ N(0, I_d), x | z ~ N(W z + b, s^2 I_D)  =>  x ~ N(b, W W^T + s^2 I).

    The exact posterior is N(mu(x), Sigma) with Sigma = (I + W^T W / s^2)^-1 and
    mu(x) = Sigma W^T (x - b) / s^2; ``guide`` is that posterior, ``narrow_guide`` the same
    mean with its scale shrunk by ``shrink`` (a guide much narrower than the posterior).
    """

    def __init__(
        self, d: int = 2, D: int = 4, s: float = 0.5, seed: int = 0, narrow_shrink: float = 0.2
    ) -> None:
        g = torch.Generator().manual_seed(seed)
        self.W = torch.randn(D, d, generator=g)
        self.b = torch.randn(D, generator=g)
        self.s, self.d, self.D = s, d, D
        self.narrow_shrink = narrow_shrink

    def model(self, x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(torch.zeros(self.d), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(z @ self.W.T + self.b, self.s).to_event(1), obs=x)

    def posterior(self, x):
        cov = torch.linalg.inv(torch.eye(self.d) + self.W.T @ self.W / self.s**2)
        mu = (x - self.b) @ self.W @ cov / self.s**2
        return mu, torch.linalg.cholesky(cov)

    def guide(self, x):
        mu, scale_tril = self.posterior(x)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.MultivariateNormal(mu, scale_tril=scale_tril))

    def diagonal_guide(self, x, shrink: float = 1.0):
        mu, scale_tril = self.posterior(x)
        scale = scale_tril.diagonal() * shrink
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(mu, scale.expand_as(mu)).to_event(1))

    def narrow_guide(self, x):
        return self.diagonal_guide(x, shrink=self.narrow_shrink)

    def marginal(self) -> dist.MultivariateNormal:
        return dist.MultivariateNormal(self.b, self.W @ self.W.T + self.s**2 * torch.eye(self.D))

    def log_marginal(self, x):
        return self.marginal().log_prob(x)

    def data(self, n: int, seed: int = 1):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return self.marginal().sample((n,))


@pytest.fixture
def linear_gaussian() -> LinearGaussian:
    return LinearGaussian()
