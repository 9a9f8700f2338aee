"""The associative compression network's own parts: the chunked neighbour search, the prior
network's mixture density, the code memory and the indexed view of the training data. Building,
training, checkpoints, sampling, evaluation and diagnostics are the registry suite's
(``tests/models/test_suite.py -k acn``)."""

from __future__ import annotations

import math

import pytest
import torch

from pvae.data.images import ImageDataset
from pvae.data.indexed import IndexedDataset
from pvae.infer.callbacks import TrainState
from pvae.models.acn import (
    ACN,
    ConditionalPrior,
    chain_coding_cost,
    nearest_neighbours,
    neighbour_chain,
)


def _brute_force(queries, memory, k, exclude=None):
    distances = (queries[:, None, :] - memory[None, :, :]).pow(2).sum(-1)
    if exclude is not None:
        distances[torch.arange(len(queries)), exclude] = math.inf
    return distances.topk(k, largest=False)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("chunk_size", [1, 7, 64, 10_000])
@pytest.mark.parametrize("excluding", [False, True])
def test_chunked_search_matches_brute_force(dtype, chunk_size, excluding):
    generator = torch.Generator().manual_seed(0)
    memory = torch.randn(300, 4, generator=generator, dtype=dtype)
    queries = torch.randn(50, 4, generator=generator, dtype=dtype)
    exclude = torch.randint(300, (50,), generator=generator) if excluding else None
    if excluding:  # the queries are the memory rows they exclude, as in training
        queries = memory[exclude] + 1e-3 * queries
    distances, indices = nearest_neighbours(
        queries, memory, 5, exclude=exclude, chunk_size=chunk_size
    )
    expected_distances, expected_indices = _brute_force(queries, memory, 5, exclude)
    assert torch.equal(indices, expected_indices)
    tolerance = 1e-5 if dtype == torch.float32 else 1e-12
    torch.testing.assert_close(distances, expected_distances, atol=tolerance, rtol=tolerance)


@pytest.mark.parametrize("chunk_size", [1, 5, 64, 1000])
def test_a_datum_is_never_its_own_neighbour_even_with_duplicates(chunk_size):
    codes = torch.randn(40, 3, generator=torch.Generator().manual_seed(1))
    memory = torch.cat([codes, codes, codes[:10]])  # every code at least twice
    index = torch.arange(len(memory))
    distances, nearest = nearest_neighbours(memory, memory, 2, exclude=index, chunk_size=chunk_size)
    assert not (nearest == index[:, None]).any()
    # The nearest is a duplicate (another datum with the same code), at distance zero.
    assert torch.equal(memory[nearest[:, 0]], memory)
    assert torch.all(distances[:, 0] <= 1e-5)


def test_search_rejects_too_many_neighbours():
    memory = torch.zeros(4, 2)
    with pytest.raises(ValueError, match="k <= 3"):
        nearest_neighbours(memory, memory, 4, exclude=torch.arange(4))


@pytest.mark.parametrize(
    "hidden, activation, skips", [([8], "relu", False), ([8, 8, 8], "tanh", True)]
)
@pytest.mark.parametrize("components", [1, 3])
def test_prior_density_integrates_to_one_on_a_grid(components, hidden, activation, skips):
    """Midpoint rule over a box holding the mixture's mass to ~1e-12: its error for a
    Gaussian of scale s is at most h^2 / (24 s^2) per dimension (f'' = (u^2 - 1) f / s^2)."""
    torch.manual_seed(0)
    prior = ConditionalPrior(2, hidden, components, activation, skips=skips).double()
    code = torch.randn(2, dtype=torch.float64)
    _, loc, scale = prior.parameters_of(code)
    low = (loc - 8 * scale).min().item()
    high = (loc + 8 * scale).max().item()
    steps = 800
    h = (high - low) / steps
    axis = low + h * (torch.arange(steps, dtype=torch.float64) + 0.5)
    grid = torch.cartesian_prod(axis, axis)
    density = prior(code).log_prob(grid).exp()
    integral = density.sum() * h**2
    tolerance = 2 * h**2 / (24 * scale.min().item() ** 2) + 1e-9
    assert abs(integral.item() - 1.0) < tolerance


def test_prior_samples_follow_the_mixture_moments():
    torch.manual_seed(0)
    prior = ConditionalPrior(2, [8], 3, "relu")
    code = torch.randn(1, 2).expand(20_000, 2)
    samples = prior.sample(code, torch.Generator().manual_seed(0))
    mixture = prior(code[:1])
    standard_error = mixture.variance.sqrt() / math.sqrt(len(samples))
    assert torch.all((samples.mean(0) - mixture.mean[0]).abs() < 5 * standard_error[0])


# -- the paper's prior network: tanh layers with skip connections -------------------------------
def _skip_prior(hidden=(5, 6, 7), components=2, latent_dim=3):
    torch.manual_seed(0)
    return ConditionalPrior(latent_dim, hidden, components, "tanh", skips=True).double()


def test_skip_prior_layers_read_the_input_and_the_output_reads_every_hidden_layer():
    prior = _skip_prior()
    d, m = 3, 2
    assert [layer.in_features for layer in prior.hidden_layers] == [d, d + 5, d + 6]
    assert [layer.out_features for layer in prior.hidden_layers] == [5, 6, 7]
    assert prior.output_layer.in_features == 5 + 6 + 7
    assert prior.output_layer.out_features == m * (1 + 2 * d)
    code = torch.randn(4, 3, d, dtype=torch.float64)
    # A reference forward pass written out layer by layer.
    (w1, b1), (w2, b2), (w3, b3) = [(layer.weight, layer.bias) for layer in prior.hidden_layers]
    h1 = torch.tanh(code @ w1.T + b1)
    h2 = torch.tanh(code @ w2[:, :d].T + h1 @ w2[:, d:].T + b2)
    h3 = torch.tanh(code @ w3[:, :d].T + h2 @ w3[:, d:].T + b3)
    wo, bo = prior.output_layer.weight, prior.output_layer.bias
    expected = h1 @ wo[:, :5].T + h2 @ wo[:, 5:11].T + h3 @ wo[:, 11:].T + bo
    torch.testing.assert_close(prior.features(code), expected)
    logits, loc, scale = prior.parameters_of(code)
    assert logits.shape == (4, 3, m) and loc.shape == scale.shape == (4, 3, m, d)
    assert prior(code).batch_shape == (4, 3) and prior(code).event_shape == (d,)
    assert torch.all(scale > 0)


def _input_gradient(prior, code):
    code = code.clone().requires_grad_(True)
    prior.features(code).sum().backward()
    return code.grad


def test_skip_connections_carry_the_input_past_zeroed_layers():
    """Cut the chain of hidden layers and the input still reaches the output: through the
    input-to-hidden skips (every layer's hidden-to-hidden weights and the first layer zeroed,
    the output reading only the last layer) and through the hidden-to-output skips (the last
    layer zeroed). Without the skips each of these networks would be constant in its input."""
    code = torch.randn(5, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    prior = _skip_prior()
    with torch.no_grad():
        first, *rest = prior.hidden_layers
        first.weight.zero_()
        for layer in rest:
            layer.weight[:, 3:] = 0.0  # the columns reading the previous hidden layer
        prior.output_layer.weight[:, : 5 + 6] = 0.0  # the output reads the last layer only
    assert _input_gradient(prior, code).abs().min() > 0
    with torch.no_grad():
        rest[-1].weight[:, :3] = 0.0  # ... and the last layer's skip from the input: cut
    assert torch.equal(_input_gradient(prior, code), torch.zeros_like(code))

    prior = _skip_prior()
    with torch.no_grad():
        prior.hidden_layers[-1].weight.zero_()
    assert _input_gradient(prior, code).abs().min() > 0
    with torch.no_grad():
        prior.output_layer.weight[:, : 5 + 6] = 0.0  # the skips from layers 1 and 2: cut
    assert torch.equal(_input_gradient(prior, code), torch.zeros_like(code))


def test_acn_builds_the_papers_prior_network_and_keeps_the_default():
    """``prior_skips``/``prior_activation`` reach the prior network; the default network is
    the plain MLP of the model's activation, its parameters unchanged."""
    default = _tiny_acn()
    assert not default.conditional_prior.skips
    assert isinstance(default.conditional_prior.net[1], torch.nn.ReLU)
    assert {k for k in default.state_dict() if k.startswith("conditional_prior.")} == {
        "conditional_prior.net.0.weight",
        "conditional_prior.net.0.bias",
        "conditional_prior.net.2.weight",
        "conditional_prior.net.2.bias",
    }
    paper = ACN(
        input_shape=(1, 4, 4),
        latent_dim=2,
        hidden=[8],
        prior_hidden=[6, 6, 6],
        prior_activation="tanh",
        prior_skips=True,
        neighbours=3,
    )
    prior = paper.conditional_prior
    assert prior.skips and isinstance(prior.activation, torch.nn.Tanh)
    assert [layer.in_features for layer in prior.hidden_layers] == [2, 8, 8]
    # The model and guide run with it: a finite ELBO on a training batch.
    import pyro

    data = _tiny_data()
    setup = paper.training_setup(data, seed=0)
    paper.refresh_memory(data)
    x, _, index = next(setup["train_data"].batches(6, generator=torch.Generator().manual_seed(0)))
    loss = pyro.infer.Trace_ELBO().differentiable_loss(paper.model, paper.guide, x, index)
    assert torch.isfinite(loss)
    loss.backward()
    assert prior.hidden_layers[0].weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="prior_activation"):
        ACN(input_shape=(1, 4, 4), latent_dim=2, hidden=[8], prior_activation="gelu")


def _tiny_data(n=20, binarize=None, seed=0):
    generator = torch.Generator().manual_seed(seed)
    images = torch.rand(n, 1, 4, 4, generator=generator)
    labels = torch.randint(3, (n,), generator=generator)
    return ImageDataset(images, labels, binarize=binarize, name="tiny")


def _tiny_acn(seed: int = 0, **options):
    """The tests' small ACN (4 x 4 images, 2-d codes, K = 3), its weights drawn with ``seed``;
    ``options`` override or add config options."""
    torch.manual_seed(seed)
    return ACN(
        **{
            "input_shape": (1, 4, 4),
            "latent_dim": 2,
            "hidden": [8],
            "prior_hidden": [8],
            "neighbours": 3,
            **options,
        }
    )


def test_memory_is_updated_in_place_for_a_batch_and_refreshed_by_the_callback():
    data = _tiny_data()
    model = _tiny_acn()
    setup = model.training_setup(data, seed=0)
    assert isinstance(setup["train_data"], IndexedDataset)
    assert model.memory.shape == (20, 2) and torch.equal(model.memory_labels, data.labels)
    memory = model.memory
    x, _, index = next(setup["train_data"].batches(6, generator=torch.Generator().manual_seed(0)))
    model.guide(*model.batch_args((x, _, index)))
    assert model.memory is memory  # the same buffer, written in place
    expected = torch.zeros(20, 2)
    expected[index] = model.encode_mean(x).detach()
    assert torch.equal(model.memory, expected)

    (refresh,) = setup["callbacks"]
    state = TrainState(model, setup["train_data"], 0, torch.device("cpu"), objective=None)
    refresh.on_epoch_start(state)
    with torch.no_grad():
        assert torch.equal(model.memory, model.encode_mean(data.images))
    assert int(model.memory_epoch) == 0
    # A memory fresh for this epoch (a run resumed mid-epoch) is kept as it is.
    model.memory[0] = 7.0
    refresh.on_epoch_start(state)
    assert torch.all(model.memory[0] == 7.0)
    refresh.on_epoch_end(state, {})
    assert int(model.memory_epoch) == 1 and not torch.all(model.memory[0] == 7.0)


def test_training_conditions_on_another_datums_code():
    data = _tiny_data()
    model = _tiny_acn()
    model.training_setup(data, seed=0)
    with torch.no_grad():
        model.memory.copy_(torch.arange(20.0)[:, None].expand(20, 2))  # distinct codes
    x = data.images[:5]
    index = torch.arange(5)
    own = model.memory[index]
    for _ in range(20):
        neighbour = model.neighbour_code(x, index)
        assert not (neighbour == own).all(-1).any()


def test_memory_is_in_the_state_dict_and_loads_into_a_fresh_model():
    data = _tiny_data()
    model = _tiny_acn()
    model.training_setup(data, seed=0)
    with torch.no_grad():
        model.memory.normal_()
    state = model.state_dict()
    assert {"memory", "memory_labels", "memory_epoch"} <= set(state)
    clone = _tiny_acn()
    assert clone.memory.shape == (0, 2)
    clone.load_state_dict(state)
    assert torch.equal(clone.memory, model.memory)
    assert torch.equal(clone.memory_labels, model.memory_labels)


@pytest.mark.parametrize("shard", [(0, 1), (1, 3)])
def test_indexed_view_yields_the_wrapped_datasets_batches(shard):
    data = _tiny_data(23, binarize="dynamic")
    indexed = IndexedDataset(data)
    plain = data.batches(5, generator=torch.Generator().manual_seed(3), shard=shard)
    with_index = indexed.batches(5, generator=torch.Generator().manual_seed(3), shard=shard)
    for (x, y), (xi, yi, index) in zip(plain, with_index, strict=True):
        assert torch.equal(x, xi) and torch.equal(y, yi)
        assert torch.equal(data.labels[index], y)
        assert torch.all((x == 0) | (x == 1))
        # The index points at the grey levels the binarized pixels were drawn from.
        assert torch.all((data.images[index] > 0) | (x == 0))
    assert len(indexed) == 23 and indexed.model_options()["input_shape"] == (1, 4, 4)


def test_metrics_report_the_knn_accuracy_of_test_codes():
    data = _tiny_data(30)
    model = _tiny_acn()
    model.training_setup(data, seed=0)
    model.refresh_memory(data)
    metrics = model.metrics(data)
    assert 0.0 <= metrics["test_knn_accuracy"] <= 1.0
    assert 0 <= metrics["test_active_units"] <= model.latent_dim
    unlabelled = _tiny_acn()
    unlabelled.training_setup(data.without_labels(), seed=0)
    assert "test_knn_accuracy" not in unlabelled.metrics(data)
    assert _tiny_acn().metrics(data) == {}  # no memory


def test_metrics_kl_is_the_code_cost_under_the_nearest_codes_prior():
    """With one prior component the Monte Carlo ``test_kl`` estimates the analytic
    KL(q(z | x) || p(z | nearest training code)); tolerance: 5 standard errors of the
    16-draw mean over the data set."""
    data = _tiny_data(30)
    model = _tiny_acn(components=1)
    model.training_setup(data, seed=0)
    model.refresh_memory(data)
    metrics = model.metrics(data)
    x = torch.cat([batch[0] for batch in data.batches(1000, shuffle=False)])
    with torch.no_grad():
        loc, scale = model.encode(x)
        _, nearest = nearest_neighbours(loc, model.memory, 1)
        prior = model.conditional_prior(model.memory[nearest[:, 0]])
        q = torch.distributions.Normal(loc, scale)
        p = torch.distributions.Normal(prior.base_dist.loc, prior.base_dist.scale)
        analytic = torch.distributions.kl_divergence(q, p).sum(-1)
        z = q.sample((4000,))
        spread = (q.log_prob(z).sum(-1) - prior.log_prob(z)).std(0)  # one draw's s.d.
    stderr = float((spread**2 / 16).sum().sqrt()) / x.shape[0]
    assert abs(metrics["test_kl"] - float(analytic.mean())) < 5 * stderr + 1e-6


@pytest.mark.parametrize("posterior_scale", [0.0, 1.0])
def test_resume_mid_epoch_is_exact_with_the_memory(tmp_path, posterior_scale):
    """A run interrupted after a mid-epoch checkpoint and resumed (memory, not refreshed
    again) ends where the uninterrupted run ends: parameters and memory, bit for bit."""
    from pvae.infer.callbacks import Callback
    from pvae.infer.train import fit

    class Interrupt(Callback):
        def on_step_start(self, state):
            if state.epoch == 1 and state.step == 2:
                raise KeyboardInterrupt

    data = _tiny_data(40, binarize="dynamic")

    def run(directory, seed=0, resume=False, extra=()):
        model = _tiny_acn(seed, posterior_scale=posterior_scale)
        setup = model.training_setup(data, seed=0)
        fit(
            model.model,
            model.guide,
            train_data=setup["train_data"],
            callbacks=[*setup["callbacks"], *extra],
            epochs=2,
            batch_size=8,
            seed=3,
            progress=False,
            checkpoint_dir=directory,
            checkpoint_every=1,
            resume=resume,
        )
        return model

    full = run(tmp_path / "full")
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "part", extra=[Interrupt()])
    resumed = run(tmp_path / "part", seed=99, resume=True)
    for key, value in full.state_dict().items():
        assert torch.equal(value, resumed.state_dict()[key]), key


# -- a fixed posterior scale (the paper's unit-variance codes) ----------------------------------
@pytest.mark.parametrize("scale", [1.0, 0.3])
def test_fixed_posterior_scale_is_exactly_the_guides_scale(scale):
    import pyro.poutine as poutine

    data = _tiny_data()
    torch.manual_seed(0)
    model = ACN(
        input_shape=(1, 4, 4), latent_dim=2, hidden=[8], prior_hidden=[8], posterior_scale=scale
    )
    setup = model.training_setup(data, seed=0)
    x, _, index = next(setup["train_data"].batches(6, generator=torch.Generator().manual_seed(0)))
    trace = poutine.trace(model.guide).get_trace(x, index)
    q = trace.nodes["z"]["fn"].base_dist
    assert torch.equal(q.scale, torch.full((6, 2), scale))
    loc, fixed = model.encode(x)
    assert torch.equal(loc, q.loc) and torch.equal(fixed, q.scale)
    # The mean is the learned-scale model's mean (same networks, same weights).
    learned = ACN(input_shape=(1, 4, 4), latent_dim=2, hidden=[8], prior_hidden=[8])
    learned.load_state_dict(model.state_dict())
    assert torch.equal(learned.encode(x)[0], loc)
    assert not torch.equal(learned.encode(x)[1], fixed)


@pytest.mark.parametrize("scale", [-1.0, math.nan, math.inf])
def test_posterior_scale_must_be_zero_or_positive(scale):
    with pytest.raises(ValueError, match="posterior_scale"):
        ACN(input_shape=(1, 4, 4), latent_dim=2, hidden=[8], posterior_scale=scale)


def test_training_with_a_fixed_posterior_scale_lowers_the_loss_and_keeps_the_scale():
    """Unit-variance codes train: the loss falls, the encoder's mean moves, the scale stays 1
    and the unused scale head gets no update."""
    from pvae.infer.train import fit

    generator = torch.Generator().manual_seed(0)
    patterns = (torch.rand(2, 1, 4, 4, generator=generator) > 0.5).float()
    labels = torch.arange(40) % 2
    data = ImageDataset(patterns[labels], labels, name="two patterns")
    model = _tiny_acn(posterior_scale=1.0)
    setup = model.training_setup(data, seed=0)
    head = {k: v.clone() for k, v in model.encoder.head.state_dict().items()}
    result = fit(
        model.model,
        model.guide,
        train_data=setup["train_data"],
        callbacks=setup["callbacks"],
        epochs=30,
        batch_size=8,
        lr=1e-2,
        seed=0,
        progress=False,
    )
    losses = [record["train_bound"] for record in result.history]
    assert all(math.isfinite(v) for v in losses)
    # The bound (nats per image, 16 pixels) rises from about -11 (chance) towards 0.
    assert losses[-1] > losses[0] + 3.0
    assert not torch.equal(model.encoder.head.loc.weight, head["loc.weight"])
    assert torch.equal(model.encoder.head.raw_scale.weight, head["raw_scale.weight"])
    with torch.no_grad():
        assert torch.equal(model.encode(data.images)[1], torch.ones(40, 2))


# -- daydreams ----------------------------------------------------------------------------------
def _trained_memory_acn(n=20):
    data = _tiny_data(n)
    model = _tiny_acn()
    model.training_setup(data, seed=0)
    model.refresh_memory(data)
    return model


def test_daydream_shapes_start_and_determinism():
    model = _trained_memory_acn()
    start = torch.tensor([3, 0, 7])
    chains = model.daydream(start, 5, torch.Generator().manual_seed(0))
    assert chains.images.shape == (3, 5, 1, 4, 4)
    assert chains.codes.shape == (3, 6, 2)
    assert torch.equal(chains.codes[:, 0], model.memory[start])
    assert torch.isfinite(chains.images).all() and torch.isfinite(chains.codes).all()
    again = model.daydream(start, 5, torch.Generator().manual_seed(0))
    assert torch.equal(chains.images, again.images) and torch.equal(chains.codes, again.codes)
    other = model.daydream(start, 5, torch.Generator().manual_seed(1))
    assert not torch.equal(chains.codes, other.codes)
    # Each next code is the guide's mean code of the image just decoded.
    with torch.no_grad():
        torch.testing.assert_close(chains.codes[:, 1:], model.encode_mean(chains.images))


def test_daydream_from_codes_and_a_single_index():
    model = _trained_memory_acn()
    codes = torch.randn(2, 2, generator=torch.Generator().manual_seed(0))
    chains = model.daydream(codes, 3, torch.Generator().manual_seed(0))
    assert torch.equal(chains.codes[:, 0], codes) and chains.images.shape == (2, 3, 1, 4, 4)
    one = model.daydream(4, 2, torch.Generator().manual_seed(0))
    assert one.codes.shape == (1, 3, 2) and torch.equal(one.codes[0, 0], model.memory[4])
    with pytest.raises(ValueError, match="steps"):
        model.daydream(codes, 0)
    with pytest.raises(ValueError, match="memory is empty"):
        _tiny_acn().daydream(torch.tensor([0]), 2)


def test_daydream_chains_stay_finite_over_many_steps():
    model = _trained_memory_acn()
    chains = model.daydream(torch.arange(20), 50, torch.Generator().manual_seed(0))
    assert torch.isfinite(chains.codes).all()
    assert torch.all((chains.images >= 0) & (chains.images <= 1))


def test_report_shows_daydreams(tmp_path):
    model = _trained_memory_acn()
    items = model.report_items(_tiny_data(10), tmp_path, seed=0)
    assert any(item.path == "daydreams.png" for item in items)
    assert (tmp_path / "daydreams.png").stat().st_size > 0
    fresh = _tiny_acn().report_items(_tiny_data(10), tmp_path, seed=0)
    assert not any(item.path == "daydreams.png" for item in fresh)


# -- the cost of the compression order ----------------------------------------------------------
def _greedy_reference(codes, start):
    distances = torch.cdist(codes.double(), codes.double())
    order, left = [start], set(range(len(codes))) - {start}
    while left:
        current = order[-1]
        nxt = min(left, key=lambda m: (distances[current, m].item(), m))
        order.append(nxt)
        left.remove(nxt)
    return torch.tensor(order)


@pytest.mark.parametrize("start", [0, 17])
def test_neighbour_chain_is_the_greedy_nearest_neighbour_order(start):
    codes = torch.randn(40, 3, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    order = neighbour_chain(codes, start)
    assert torch.equal(order, _greedy_reference(codes, start))
    assert torch.equal(order.sort().values, torch.arange(40))
    with pytest.raises(ValueError, match="start"):
        neighbour_chain(codes, 40)


def test_chain_cost_equals_independent_cost_under_a_standard_normal_conditional_prior():
    """A prior network that outputs Normal(0, I) whatever z' makes the two codes equal."""
    model = _tiny_acn()
    last = model.conditional_prior.net[-1]
    with torch.no_grad():
        last.weight.zero_()
        last.bias.zero_()
        m, d = model.config.components, model.latent_dim
        last.bias[m + m * d :] = math.log(math.e - 1) - 0.0  # softplus(raw) = 1
    x = _tiny_data(15).images
    cost = chain_coding_cost(model, x, num_samples=4, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(cost.kl_chain, cost.kl_independent, atol=1e-3, rtol=0)
    assert abs(cost.chain_nats - cost.independent_nats) < 1e-3


def test_chain_cost_terms_against_a_reference_loop():
    """One-component prior: the KL terms against the analytic KL of each datum to the prior
    given its predecessor's code (the first to Normal(0, I)); determinism with a generator."""
    torch.manual_seed(0)
    model = ACN(
        input_shape=(1, 4, 4), latent_dim=2, hidden=[8], prior_hidden=[8], components=1
    ).double()
    x = _tiny_data(12).images.double()
    cost = chain_coding_cost(
        model, x, num_samples=20_000, generator=torch.Generator().manual_seed(0), start=5
    )
    again = chain_coding_cost(
        model, x, num_samples=20_000, generator=torch.Generator().manual_seed(0), start=5
    )
    assert torch.equal(cost.kl_chain, again.kl_chain)
    with torch.no_grad():
        loc, scale = model.encode(x)
    assert torch.equal(cost.order, neighbour_chain(loc, 5)) and cost.order[0] == 5
    q = torch.distributions.Normal(loc, scale)
    for t, n in enumerate(cost.order.tolist()):
        if t == 0:
            prior = torch.distributions.Normal(torch.zeros(2), torch.ones(2))
        else:
            with torch.no_grad():
                _, p_loc, p_scale = model.conditional_prior.parameters_of(loc[cost.order[t - 1]])
            prior = torch.distributions.Normal(p_loc[0], p_scale[0])
        expected = torch.distributions.kl_divergence(
            torch.distributions.Normal(q.loc[n], q.scale[n]), prior
        ).sum()
        assert abs(cost.kl_chain[n].item() - expected.item()) < 0.05 * (1 + expected.item())
    expected_independent = torch.distributions.kl_divergence(
        q, torch.distributions.Normal(0.0, 1.0)
    ).sum(-1)
    torch.testing.assert_close(cost.kl_independent, expected_independent, atol=0.05, rtol=0.05)
    assert torch.all(cost.reconstruction > 0)


def test_pixelcnn_daydreams_re_encode_binary_draws():
    """With the pixelcnn decoder the chain's images are draws x ~ p(x | z) (binary), and each
    next code is the guide's mean code of the draw."""
    data = _tiny_data(12)
    model = _tiny_acn(architecture="pixelcnn", pixelcnn_layers=2, pixelcnn_channels=8)
    model.training_setup(data, seed=0)
    model.refresh_memory(data)
    chains = model.daydream(torch.tensor([0, 5]), 3, torch.Generator().manual_seed(0))
    assert chains.images.shape == (2, 3, 1, 4, 4)
    assert ((chains.images == 0) | (chains.images == 1)).all()
    with torch.no_grad():
        torch.testing.assert_close(chains.codes[:, 1:], model.encode_mean(chains.images))
    assert model.sample(3, torch.Generator().manual_seed(0)).shape == (3, 1, 4, 4)


# -- the faiss backend ------------------------------------------------------------------------
@pytest.mark.parametrize("excluding", [False, True])
def test_faiss_search_gives_the_exact_searchs_neighbours(excluding):
    """faiss's flat index and the chunked torch search return the same neighbours on a test
    set (skipped only where faiss-cpu is not installed: the optional ``faiss`` extra)."""
    pytest.importorskip("faiss")
    from pvae.models.acn import faiss_nearest_neighbours

    generator = torch.Generator().manual_seed(0)
    memory = torch.randn(3000, 16, generator=generator)
    memory[7] = memory[3]  # a duplicate code: still a neighbour of datum 3, never itself
    queries = torch.cat([memory[:200], torch.randn(100, 16, generator=generator)])
    exclude = torch.arange(300) if excluding else None
    expected = nearest_neighbours(queries, memory, 5, exclude=exclude, chunk_size=700)
    found = faiss_nearest_neighbours(queries, memory, 5, exclude=exclude)
    torch.testing.assert_close(found[0], expected[0], rtol=1e-4, atol=1e-4)
    # The same neighbours, in the same order wherever no two distances tie (the duplicate
    # code's queries 3 and 7 have two at zero without the exclusion).
    assert torch.equal(found[1].sort(-1).values, expected[1].sort(-1).values)
    distinct = (expected[0].diff(dim=-1) > 1e-3).all(-1)
    assert distinct.sum() > 250
    assert torch.equal(found[1][distinct], expected[1][distinct])
    if excluding:
        assert not (found[1] == exclude.unsqueeze(-1)).any()
        assert found[1][3, 0] == 7
    with pytest.raises(ValueError, match="neighbours"):
        faiss_nearest_neighbours(queries, memory[:4], 5, exclude=exclude)


def test_acn_with_faiss_search_conditions_on_the_same_codes():
    pytest.importorskip("faiss")
    data = _tiny_data(30)
    exact = _tiny_acn()
    torch.manual_seed(0)
    faiss_model = ACN(
        input_shape=(1, 4, 4),
        latent_dim=2,
        hidden=[8],
        prior_hidden=[8],
        neighbours=3,
        search="faiss",
    )
    faiss_model.load_state_dict(exact.state_dict(), strict=False)
    for model in (exact, faiss_model):
        model.training_setup(data, seed=0)
        model.refresh_memory(data)
    x = torch.cat([batch[0] for batch in data.batches(1000, shuffle=False)])
    assert torch.equal(exact.neighbour_code(x), faiss_model.neighbour_code(x))
    assert exact.metrics(data) == faiss_model.metrics(data)
    with pytest.raises(ValueError, match="search"):
        ACN(search="annoy")
