"""The training step's fast paths (issue 17) compute what the generic path computes.

- The objectives' cached structure (ELBO's scoring plan, IWAE's and DReG's lean traces) gives
  the generic path's losses and gradients to the bit, step after step, and falls back to the
  generic path (with its checks) when the sites change.
- The fused Bernoulli log-density equals ``Independent(Bernoulli).log_prob`` to the bit, and so
  do its gradients; without gradients (evaluation) to float rounding. The Normal density on
  unexpanded parameters is Pyro's to the bit.
- ``fit``'s fused Adam takes the default Adam's steps to float rounding.
- The data range is checked once per batch, not in both the model and the guide, and again
  when the same tensor changes in place.
"""

from __future__ import annotations

import gc
import weakref

import pyro
import pyro.distributions as dist
import pytest
import torch

from pvae.infer.objectives import ELBO, IWAE
from pvae.infer.trace import log_prob
from pvae.infer.train import TrainConfig, make_adam
from pvae.models import VAE
from pvae.models import image as image_module

OBJECTIVES = {
    "elbo": lambda cache: ELBO(cache_structure=cache),
    "elbo-3-particles": lambda cache: ELBO(3, cache_structure=cache),
    "elbo-mc-kl": lambda cache: ELBO(analytic_kl=False, cache_structure=cache),
    "iwae": lambda cache: IWAE(4, cache_structure=cache),
    "dreg": lambda cache: IWAE(4, "dreg", cache_structure=cache),
}


def _batches(seed: int, count: int = 4, size: int = 16) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.bernoulli(torch.rand(count, size, 1, 28, 28, generator=generator) * 0.3)


def _run(objective, model, guide, params, batches, seed: int, **kwargs):
    """Loss and gradients of each batch, the global generators seeded once."""
    pyro.set_rng_seed(seed)
    out = []
    for x in batches:
        loss = objective(model, guide, x, num_data=1000, **kwargs).loss
        out.append((loss.detach(), torch.autograd.grad(loss, params)))
    return out


def _assert_identical(fast, generic) -> None:
    for (loss_a, grads_a), (loss_b, grads_b) in zip(fast, generic, strict=True):
        assert torch.equal(loss_a, loss_b), (loss_a, loss_b)
        for a, b in zip(grads_a, grads_b, strict=True):
            assert torch.equal(a, b)


@pytest.mark.parametrize("name", sorted(OBJECTIVES))
def test_the_cached_path_gives_the_generic_losses_and_gradients(name, seed):
    torch.manual_seed(seed)
    vae = VAE(latent_dim=3, hidden=(16,))
    params = list(vae.parameters())
    batches = _batches(seed)
    fast, generic = OBJECTIVES[name](True), OBJECTIVES[name](False)
    fast_out = _run(fast, vae.model, vae.guide, params, batches, seed)
    generic_out = _run(generic, vae.model, vae.guide, params, batches, seed)
    assert fast.path_counts == {"generic": 1, "planned": len(batches) - 1}
    assert generic.path_counts == {"generic": len(batches), "planned": 0}
    _assert_identical(fast_out, generic_out)


class _Switching(VAE):
    """A VAE whose model gains a site (a second observation of x) when ``twice`` is set: the
    site structure changes between steps."""

    twice = False

    def model(self, x):
        self._check_input(x)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", self.prior())
            likelihood = self.likelihood(self.decode_logits(z, x))
            pyro.sample("x", likelihood, obs=x)
            if self.twice:
                pyro.sample("x_again", likelihood, obs=x)


@pytest.mark.parametrize("name", ["elbo", "iwae", "dreg"])
def test_a_changed_structure_falls_back_to_the_generic_path(name, seed):
    torch.manual_seed(seed)
    vae = _Switching(latent_dim=3, hidden=(16,))
    params = list(vae.parameters())
    batches = _batches(seed, count=5)
    pattern = [False, False, True, True, False]  # steps 3 and 4 have an extra site

    def run(objective):
        pyro.set_rng_seed(seed)
        out = []
        for x, twice in zip(batches, pattern, strict=True):
            vae.twice = twice
            loss = objective(vae.model, vae.guide, x, num_data=1000).loss
            out.append((loss.detach(), torch.autograd.grad(loss, params)))
        return out

    fast, generic = OBJECTIVES[name](True), OBJECTIVES[name](False)
    fast_out, generic_out = run(fast), run(generic)
    # Generic at the first step and wherever the structure differs from the cached one
    # (steps 3 and 5); the cached path at steps 2 and 4.
    assert fast.path_counts == {"generic": 3, "planned": 2}
    _assert_identical(fast_out, generic_out)
    # The extra site is really scored: the losses with and without it differ.
    assert not torch.equal(fast_out[2][0], fast_out[1][0])


def test_the_fallback_keeps_the_generic_checks():
    """A step whose guide stops sampling the model's latent is refused on the cached path
    too (the structure differs, so the generic checks run)."""
    vae = VAE(latent_dim=2, hidden=(8,))
    objective = ELBO()
    x = _batches(0, count=1)[0]
    objective(vae.model, vae.guide, x, num_data=100)

    def empty_guide(x):
        pass

    objective._plans[(vae.model, empty_guide)] = objective._plans[(vae.model, vae.guide)]
    with pytest.raises(ValueError, match="not sampled by the guide"):
        objective(vae.model, empty_guide, x, num_data=100)


@pytest.mark.parametrize("name", ["elbo", "iwae"])
def test_an_objective_reused_across_models_keeps_only_recent_pairs(name):
    """The per-(model, guide) caches (plate nesting, analytic-KL sites, scoring plans, lean
    structures) hold the 8 most recently used pairs: an objective used with many models (a
    sweep) does not keep them all alive through their bound methods, and the pairs still in
    use keep their plans."""
    objective = OBJECTIVES[name](True)
    x = _batches(0, count=1)[0]
    first = VAE(latent_dim=2, hidden=(8,))
    alive = weakref.ref(first)
    objective(first.model, first.guide, x, num_data=100)
    for _ in range(10):
        vae = VAE(latent_dim=2, hidden=(8,))
        objective(vae.model, vae.guide, x, num_data=100)
        objective(vae.model, vae.guide, x, num_data=100)  # planned
        caches = ("_nesting", "_plans", "_kl_sites", "_structures")
        assert all(len(getattr(objective, c, ())) <= 8 for c in caches)
    assert objective.path_counts == {"generic": 11, "planned": 10}
    del first
    gc.collect()
    assert alive() is None
    objective(vae.model, vae.guide, x, num_data=100)  # the last pair's plan is still there
    assert objective.path_counts["planned"] == 11


@pytest.mark.parametrize("shape,event_dims", [((5, 7, 1, 4, 4), 3), ((6, 9), 1)])
def test_the_fused_bernoulli_log_density_is_pyros_to_the_bit(shape, event_dims, seed):
    generator = torch.Generator().manual_seed(seed)
    logits = (3 * torch.randn(shape, generator=generator)).requires_grad_()
    value = torch.bernoulli(torch.rand(shape[-event_dims - 1 :], generator=generator) * 0.5)
    fn = dist.Bernoulli(logits=logits, validate_args=False).to_event(event_dims)
    ours, pyros = log_prob(fn, value), fn.log_prob(value)
    assert ours.shape == pyros.shape
    assert torch.equal(ours, pyros)
    weights = torch.randn(ours.shape, generator=generator)
    (grad_ours,) = torch.autograd.grad((weights * ours).sum(), logits)
    (grad_pyros,) = torch.autograd.grad((weights * pyros).sum(), logits)
    assert torch.equal(grad_ours, grad_pyros)


@pytest.mark.parametrize(
    "logits_shape,value_shape,event_dims",
    [((5, 7, 1, 4, 4), (7, 1, 4, 4), 3), ((6, 9), (6, 9), 1), ((6, 9), (2, 6, 9), 1)],
)
def test_the_evaluation_bernoulli_density_is_pyros_to_float_rounding(
    logits_shape, value_shape, event_dims, seed
):
    generator = torch.Generator().manual_seed(seed)
    logits = 4 * torch.randn(logits_shape, generator=generator)
    value = torch.bernoulli(torch.rand(value_shape, generator=generator) * 0.4)
    fn = dist.Bernoulli(logits=logits, validate_args=False).to_event(event_dims)
    with torch.no_grad():
        ours, pyros = log_prob(fn, value), fn.log_prob(value)
    assert ours.shape == pyros.shape
    # float32 rounding of sums over at most 16 terms of size <= ~20: far below 1e-4
    torch.testing.assert_close(ours, pyros, rtol=1e-6, atol=1e-4)


@pytest.mark.parametrize("particles", [1, 5])
def test_the_unexpanded_normal_density_is_pyros_to_the_bit(particles, seed):
    """A prior's (D,) and a guide's (B, D) parameters expanded over the plates: the density
    and the gradient into the sample are Pyro's to the bit."""
    generator = torch.Generator().manual_seed(seed)
    prior = dist.Normal(torch.zeros(6), torch.ones(6)).to_event(1).expand((particles, 8))
    loc = torch.randn(8, 6, generator=generator).requires_grad_()
    scale = torch.rand(8, 6, generator=generator).add(0.1).requires_grad_()
    guide = dist.Normal(loc, scale).to_event(1).expand((particles, 8))
    z = guide.rsample()
    weights = torch.randn(particles, 8, generator=generator)
    for fn in (prior, guide):
        ours, pyros = log_prob(fn, z), fn.log_prob(z)
        assert torch.equal(ours, pyros)
        grads_ours = torch.autograd.grad((weights * ours).sum(), (loc, scale), retain_graph=True)
        grads_pyros = torch.autograd.grad((weights * pyros).sum(), (loc, scale), retain_graph=True)
        for a, b in zip(grads_ours, grads_pyros, strict=True):
            assert torch.equal(a, b)
    with torch.no_grad():
        assert torch.equal(log_prob(guide, z), guide.log_prob(z))


def test_the_fused_bernoulli_keeps_pyros_validation():
    """With argument validation on, the shortcut is not taken: a value outside the support
    is refused as Pyro refuses it."""
    fn = dist.Bernoulli(logits=torch.zeros(3, 4), validate_args=True).to_event(1)
    with pytest.raises(ValueError):
        log_prob(fn, torch.full((3, 4), 0.5))
    with torch.no_grad(), pytest.raises(ValueError):
        log_prob(fn, torch.full((3, 4), 0.5))


def test_fits_fused_adam_takes_the_default_adams_steps(seed):
    generator = torch.Generator().manual_seed(seed)
    start = [torch.randn(40, 30, generator=generator), torch.randn(30, generator=generator)]
    grads = [[torch.randn_like(p) for p in start] for _ in range(5)]
    config = TrainConfig(lr=1e-2)
    fused_params = [torch.nn.Parameter(p.clone()) for p in start]
    default_params = [torch.nn.Parameter(p.clone()) for p in start]
    fused = make_adam(fused_params, config)
    default = torch.optim.Adam(default_params, lr=config.lr, betas=config.betas, eps=config.eps)
    assert fused.defaults["fused"] is True
    for step_grads in grads:
        for params, optimizer in ((fused_params, fused), (default_params, default)):
            for p, g in zip(params, step_grads, strict=True):
                p.grad = g.clone()
            optimizer.step()
    for a, b, s in zip(fused_params, default_params, start, strict=True):
        assert not torch.equal(a, s)  # the steps moved the parameters
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


def test_the_data_range_is_checked_once_per_batch(monkeypatch):
    calls = []
    original = image_module.check_data_range

    def counting(*args, **kwargs):
        calls.append(args[1])
        return original(*args, **kwargs)

    monkeypatch.setattr(image_module, "check_data_range", counting)
    vae = VAE(latent_dim=2, hidden=(8,))
    objective = ELBO()
    batches = _batches(0, count=3)
    for x in batches:
        objective(vae.model, vae.guide, x, num_data=100)
    assert len(calls) == len(batches)  # one check per batch, not one in model and guide
    assert all(torch.equal(a, b) for a, b in zip(calls, batches, strict=True))
    x = batches[-1].clone()
    objective(vae.model, vae.guide, x, num_data=100)
    assert len(calls) == len(batches) + 1
    x[0, 0, 0, 0] = 2.0  # the same tensor, changed in place: checked again, and refused
    with pytest.raises(ValueError, match="needs data in"):
        objective(vae.model, vae.guide, x, num_data=100)
    assert len(calls) == len(batches) + 2


def test_fused_adam_off_takes_the_default_adams_steps_to_the_bit(seed):
    """``TrainConfig(fused_adam=False)``: torch's default Adam, the arithmetic of runs made
    before the fused update, so that they reproduce exactly."""
    generator = torch.Generator().manual_seed(seed)
    start = torch.randn(40, 30, generator=generator)
    grads = [torch.randn(40, 30, generator=generator) for _ in range(5)]
    config = TrainConfig(lr=1e-2, fused_adam=False)
    ours = torch.nn.Parameter(start.clone())
    theirs = torch.nn.Parameter(start.clone())
    optimizer = make_adam([ours], config)
    default = torch.optim.Adam([theirs], lr=config.lr, betas=config.betas, eps=config.eps)
    assert not optimizer.defaults["fused"]
    for g in grads:
        for p, opt in ((ours, optimizer), (theirs, default)):
            p.grad = g.clone()
            opt.step()
    assert not torch.equal(ours, start)
    assert torch.equal(ours, theirs)


def test_fused_adam_must_be_a_boolean():
    with pytest.raises(ValueError, match="fused_adam"):
        TrainConfig(fused_adam="False")
