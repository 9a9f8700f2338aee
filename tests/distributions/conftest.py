"""Fixtures for the generic distribution suite, after Pyro's ``tests/distributions/conftest.py``.

A distribution joins every generic test in ``test_generic.py`` by adding one ``Fixture`` here:
how to build it from a parameter dict, parameter sets (``examples``, possibly batched), and
invalid parameter sets that must raise ``ValueError`` when validation is on.
"""

from collections.abc import Callable
from dataclasses import dataclass, field

import pyro.distributions as dist
import torch

from pvae.distributions import (
    HypersphericalUniform,
    PowerSpherical,
    ReparameterizedMixture,
    VonMisesFisher,
)


def unit(*shape: int) -> torch.Tensor:
    """Deterministic unit vectors (fixed generator, independent of the global seed)."""
    x = torch.randn(
        *shape, generator=torch.Generator().manual_seed(sum(shape)), dtype=torch.float64
    )
    return x / torch.linalg.vector_norm(x, dim=-1, keepdim=True)


@dataclass(frozen=True)
class Fixture:
    name: str
    build: Callable[..., torch.distributions.Distribution]
    examples: tuple[dict, ...]
    bad_examples: tuple[dict, ...] = ()
    has_entropy: bool = True
    on_sphere: bool = True
    # Examples whose density is smooth enough to integrate on a grid / by importance sampling.
    normalization_examples: tuple[int, ...] = field(default=(0,))

    def make(self, index: int, dtype=torch.float64, requires_grad=False, validate_args=None):
        """Return (distribution, {name: parameter tensor that requires grad})."""
        params = {}
        leaves = {}
        for key, value in self.examples[index].items():
            if isinstance(value, torch.Tensor):
                value = value.to(dtype).clone()
                if requires_grad and key != "like":  # `like` only carries dtype/device
                    value.requires_grad_()
                    leaves[key] = value
            params[key] = value
        return self.build(**params, validate_args=validate_args), leaves

    def __repr__(self) -> str:
        return self.name


def _mixture(logits, locs, scales, validate_args=None):
    components = dist.Normal(locs, scales, validate_args=validate_args)
    if locs.dim() == logits.dim() + 1:
        components = components.to_event(1)
    return ReparameterizedMixture(
        dist.Categorical(logits=logits, validate_args=validate_args),
        components,
        validate_args=validate_args,
    )


def _uniform(dim, batch_shape=(), like=None, validate_args=None):
    return HypersphericalUniform(dim, batch_shape, like=like, validate_args=validate_args)


T = torch.tensor
_SPHERE_BAD = (
    {"loc": T([1.0, 1.0, 0.0]), "concentration": T(1.0)},  # not unit norm
    {"loc": unit(3), "concentration": T(0.0)},  # not positive
    {"loc": unit(3), "concentration": T(-2.0)},
    {"loc": unit(3), "concentration": T(float("nan"))},
    {"loc": T([float("nan"), 0.0, 1.0]), "concentration": T(1.0)},
    {"loc": T([1.0]), "concentration": T(1.0)},  # d < 2
    {"loc": unit(2, 3), "concentration": T([1.0, 2.0, 3.0])},  # shapes do not broadcast
)
_SPHERE_EXAMPLES = (
    {"loc": unit(3), "concentration": T(4.0)},
    {"loc": unit(2), "concentration": T(1.5)},
    {"loc": unit(2, 5), "concentration": T([0.5, 20.0])},
    {"loc": unit(6), "concentration": T(2.0)},
    {"loc": unit(3, 1, 10), "concentration": T([[3.0, 50.0]])},
)

FIXTURES = [
    Fixture(
        "VonMisesFisher",
        VonMisesFisher,
        _SPHERE_EXAMPLES,
        _SPHERE_BAD,
        normalization_examples=(0, 1, 3),
    ),
    Fixture(
        "PowerSpherical",
        PowerSpherical,
        _SPHERE_EXAMPLES,
        _SPHERE_BAD,
        normalization_examples=(0, 1, 3),
    ),
    Fixture(
        "HypersphericalUniform",
        _uniform,
        (
            {"dim": 3, "like": T(0.0)},
            {"dim": 2, "batch_shape": (4,), "like": T(0.0)},
            {"dim": 7, "batch_shape": (2, 3), "like": T(0.0)},
        ),
        ({"dim": 1}, {"dim": 2.5}),
        normalization_examples=(0, 1, 2),
    ),
    Fixture(
        "ReparameterizedMixture(Normal)",
        _mixture,
        (
            {
                "logits": T([0.3, -1.0, 0.5]),
                "locs": T([-2.0, 0.0, 3.0]),
                "scales": T([0.5, 1.0, 2.0]),
            },
            {
                "logits": T([[0.0, 1.0], [2.0, -1.0]]),
                "locs": T([[-1.0, 1.0], [0.0, 4.0]]),
                "scales": T([[1.0, 0.3], [2.0, 0.7]]),
            },
        ),
        (
            {"logits": T([0.0, 1.0]), "locs": T([0.0, 1.0]), "scales": T([1.0, -1.0])},
            {"logits": T([0.0, 1.0]), "locs": T([0.0, 1.0, 2.0]), "scales": T([1.0, 1.0, 1.0])},
            {"logits": T([0.0, float("nan")]), "locs": T([0.0, 1.0]), "scales": T([1.0, 1.0])},
        ),
        has_entropy=False,
        on_sphere=False,
        normalization_examples=(0, 1),
    ),
    Fixture(
        "ReparameterizedMixture(DiagNormal)",
        _mixture,
        (
            {
                "logits": T([0.3, -1.0, 0.5]),
                "locs": T([[-2.0, 0.0, 1.0], [0.0, 1.0, -1.0], [3.0, -1.0, 0.5]]),
                "scales": T([[0.5, 1.0, 0.7], [1.0, 0.4, 1.2], [2.0, 0.6, 0.3]]),
            },
        ),
        (
            {
                "logits": T([0.0, 1.0]),
                "locs": T([[0.0, 1.0], [1.0, 2.0]]),
                "scales": T([[1.0, 0.0], [1.0, 1.0]]),
            },
        ),
        has_entropy=False,
        on_sphere=False,
        normalization_examples=(0,),
    ),
]


# Tests that apply only to some fixtures: the others are not generated (rather than skipped).
APPLIES = {
    "test_entropy_monte_carlo": lambda f: f.has_entropy,
    "test_kl_to_uniform_monte_carlo": lambda f: f.on_sphere,
}


def pytest_generate_tests(metafunc):
    if "fixture" in metafunc.fixturenames:
        applies = APPLIES.get(metafunc.function.__name__, lambda f: True)
        fixtures = [f for f in FIXTURES if applies(f)]
        metafunc.parametrize("fixture", fixtures, ids=[f.name for f in fixtures])
