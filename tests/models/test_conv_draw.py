"""Convolutional DRAW's own properties: with one step it is a single-latent VAE on the same
networks; the sites, samples and compression decodings have the right shapes; the rate by step
adds up to the ELBO's KL term. Building, training, checkpoints, sampling without the encoder,
evaluation and diagnostics are the registry suite's (``tests/models/test_suite.py -k
conv_draw``)."""

from __future__ import annotations

import math

import pyro.distributions as dist
import pyro.poutine as poutine
import pytest
import torch
from torch.distributions import kl_divergence

from pvae.evaluation.importance import log_importance_weights
from pvae.infer.objectives import ELBO
from pvae.infer.trace import latent_sites, per_datum_log_weights, trace_model_guide
from pvae.models import build_model
from pvae.models.conv_draw import ConvDRAW, compression_rows
from pvae.nets.conv_lstm import ConvLSTMCell, apply_2d

SMALL = {"channels": 6, "latent_channels": 2, "levels": 2}


def _images(n: int, seed: int = 1, shape=(1, 28, 28)) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.bernoulli(torch.rand(n, *shape, generator=generator) * 0.6, generator=generator)


def _perturbed(model: ConvDRAW, seed: int = 2) -> ConvDRAW:
    """The model with every parameter moved off its initial value, so that no term is trivial
    (the forget gates' bias, the canvas bias)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=generator))
    return model


class SingleLatentVAE:
    """The T = 1 model written out by hand, as a VAE on conv DRAW's networks::

    z ~ Normal(mu_p(0), sigma_p(0)^2)            (the prior head on the zero state)
    x ~ Bernoulli(b + write(LSTM_dec(z, 0)))     (b: the canvas bias)
    q(z | x) = Normal(mu_q(e), sigma_q(e)^2),  e = LSTM_enc([read([x, x - sigmoid(b)]), 0], 0)
    """

    def __init__(self, draw: ConvDRAW) -> None:
        self.draw = draw

    def _zeros(self, x: torch.Tensor) -> torch.Tensor:
        return x.new_zeros(x.shape[0], *self.draw.state_shape)

    def posterior(self, x: torch.Tensor) -> dist.Distribution:
        d, zeros = self.draw, self._zeros(x)
        bias = d.canvas_bias.reshape(d.input_shape)
        features = d.read(torch.cat([x, x - torch.sigmoid(bias).expand_as(x)], dim=1))
        h, _ = d.encoder_cell(torch.cat([features, zeros], dim=1), (zeros, zeros))
        loc, scale = d.posterior(h)
        return dist.Normal(loc, scale).to_event(3)

    def prior(self, x: torch.Tensor) -> dist.Distribution:
        loc, scale = self.draw.prior(self._zeros(x))
        return dist.Normal(loc, scale).to_event(3)

    def log_likelihood(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        d = self.draw
        zeros = x.new_zeros(*z.shape[:-3], *d.state_shape)
        h, _ = d.decoder_cell(z, (zeros, zeros))
        logits = d.canvas_bias.reshape(d.input_shape) + d.write(h.reshape(-1, *h.shape[-3:]))
        logits = logits.reshape(*z.shape[:-3], *d.input_shape)
        return dist.Bernoulli(logits=logits).to_event(3).log_prob(x)


def test_one_step_is_a_single_latent_vae_on_the_same_networks():
    model = _perturbed(build_model("conv_draw", steps=1, **SMALL))
    vae = SingleLatentVAE(model)
    x = _images(5)
    q, p = vae.posterior(x), vae.prior(x)

    # The joint density at the guide's draw.
    guide_trace = poutine.trace(model.guide).get_trace(x)
    model_trace = poutine.trace(poutine.replay(model.model, trace=guide_trace)).get_trace(x)
    z = guide_trace.nodes["z_1"]["value"]
    for trace in (guide_trace, model_trace):
        trace.compute_log_prob()
    torch.testing.assert_close(guide_trace.nodes["z_1"]["log_prob"], q.log_prob(z))
    torch.testing.assert_close(model_trace.nodes["z_1"]["log_prob"], p.log_prob(z))
    torch.testing.assert_close(model_trace.nodes["x"]["log_prob"], vae.log_likelihood(x, z))

    # pvae's analytic-KL ELBO: E_q log p(x | z) - KL(q || p), the same draw of z.
    objective = ELBO()
    objective(model.model, model.guide, x)  # caches the plate nesting and the KL sites
    torch.manual_seed(11)
    bound = objective(model.model, model.guide, x).bound
    torch.manual_seed(11)
    z = q.rsample()
    expected = (vae.log_likelihood(x, z) - kl_divergence(q, p)).sum()
    torch.testing.assert_close(bound, expected.detach())

    # Importance weights, K particles vectorised in front of the data.
    torch.manual_seed(12)
    log_w = log_importance_weights(model.model, model.guide, x, 3)
    torch.manual_seed(12)
    poutine.trace(model.guide).get_trace(x[:1])  # the draw of its plate-nesting probe
    z = q.sample((3,))
    expected = p.log_prob(z) + vae.log_likelihood(x, z) - q.log_prob(z)
    assert log_w.shape == (3, 5)
    torch.testing.assert_close(log_w, expected)


def test_sites_samples_and_compression_shapes():
    model = build_model("conv_draw", steps=3, **SMALL)
    x = _images(4)
    trace = poutine.trace(model.guide).get_trace(x)
    assert [s["name"] for s in latent_sites(trace)] == ["z_1", "z_2", "z_3"]
    for site in latent_sites(trace):
        assert site["value"].shape == (4, 2, 7, 7)
    samples = model.sample(6, generator=torch.Generator().manual_seed(0))
    assert samples.shape == (6, 1, 28, 28) and ((samples >= 0) & (samples <= 1)).all()
    rows = compression_rows(model, x)
    assert rows.shape == (4, 3 + 2, 1, 28, 28)
    torch.testing.assert_close(rows[:, 0], x)
    with pytest.raises(ValueError, match="k must be in 0..3"):
        model.reconstruct_from_first(x, 4)
    # The evaluator's chunks are sized by the recurrent maps, larger than the image here.
    assert model.eval_datum_size((x,)) > 6 * 6 * 7 * 7 > x[0].numel()


def test_compression_reads_the_first_k_latents_and_draws_the_rest():
    model = _perturbed(build_model("conv_draw", steps=3, **SMALL))
    x, other = _images(4, seed=1), _images(4, seed=5)

    def decode(images, k, seed):
        return model.reconstruct_from_first(images, k, torch.Generator().manual_seed(seed))

    # k = T: every latent from q's mean, no draw; k = 0: a prior sample, blind to x.
    torch.testing.assert_close(decode(x, 3, 0), decode(x, 3, 1))
    torch.testing.assert_close(decode(x, 3, 0), model.reconstruct(x))
    torch.testing.assert_close(decode(x, 0, 0), decode(other, 0, 0))
    assert not torch.allclose(decode(x, 0, 0), decode(x, 0, 1))
    # 0 < k < T: depends on x and on the draws.
    assert not torch.allclose(decode(x, 1, 0), decode(other, 1, 0))
    assert not torch.allclose(decode(x, 1, 0), decode(x, 1, 1))


def test_rate_by_step_is_the_elbo_kl_term():
    """With the same draws, ``sum_t KL_t = E_q log p(x | z) - ELBO`` (analytic KL per step)."""
    model = _perturbed(build_model("conv_draw", steps=3, **SMALL))
    x = _images(6)
    objective = ELBO()
    objective(model.model, model.guide, x)
    torch.manual_seed(3)
    bound = objective(model.model, model.guide, x).bound
    torch.manual_seed(3)
    rates = model.rate_by_step(x)
    torch.manual_seed(3)
    guide_trace = poutine.trace(model.guide).get_trace(x)
    model_trace = poutine.trace(poutine.replay(model.model, trace=guide_trace)).get_trace(x)
    site = model_trace.nodes["x"]
    log_px = site["fn"].log_prob(site["value"])
    assert rates.shape == (6, 3) and (rates >= 0).all()
    torch.testing.assert_close(bound, (log_px - rates.sum(-1)).sum())


@pytest.mark.statistical
def test_rate_by_step_matches_the_monte_carlo_kl(seed):
    """On the same draws, the step KLs and ``log q(z | x) - log p(z)`` differ by a zero-mean
    term; their mean over 400 draws per image is within four standard errors of 0."""
    model = _perturbed(build_model("conv_draw", steps=3, **SMALL), seed=seed + 100)
    x = _images(2).repeat(200, 1, 1, 1)
    guide_trace = poutine.trace(model.guide).get_trace(x)
    model_trace = poutine.trace(poutine.replay(model.model, trace=guide_trace)).get_trace(x)
    analytic = monte_carlo = 0.0
    for name in model.site_names:
        q, p = guide_trace.nodes[name]["fn"], model_trace.nodes[name]["fn"]
        z = guide_trace.nodes[name]["value"]
        analytic = analytic + kl_divergence(q, p)
        monte_carlo = monte_carlo + q.log_prob(z) - p.log_prob(z)
    difference = (analytic - monte_carlo).detach()
    stderr = difference.std() / math.sqrt(difference.numel())
    assert abs(float(difference.mean())) < 4 * float(stderr)


def test_vectorised_particles_broadcast_through_the_recurrence():
    """The (K, B) log weights of K vectorised particles equal those of each particle's draws
    scored alone (model and guide conditioned on them, no particle dim)."""
    model = _perturbed(build_model("conv_draw", steps=2, **SMALL))
    x = _images(3)
    model_trace, guide_trace = trace_model_guide(
        model.model, model.guide, (x,), num_particles=4, max_plate_nesting=1
    )
    log_w = per_datum_log_weights(model_trace, guide_trace, max_plate_nesting=1)
    assert log_w.shape == (4, 3)
    for k in range(4):
        values = {n: guide_trace.nodes[n]["value"][k] for n in model.site_names}
        guide_k = poutine.trace(poutine.condition(model.guide, data=values)).get_trace(x)
        model_k = poutine.trace(poutine.condition(model.model, data=values)).get_trace(x)
        expected = sum(_site_log_probs(model_k)) - sum(_site_log_probs(guide_k))
        torch.testing.assert_close(log_w[k], expected)


def _site_log_probs(trace) -> list[torch.Tensor]:
    return [
        s["fn"].log_prob(s["value"])
        for s in trace.nodes.values()
        if s["type"] == "sample" and s["name"] != "data"
    ]


def test_apply_2d_and_conv_lstm_broadcast_leading_dims():
    cell = ConvLSTMCell(2, 3, 3)
    inputs = torch.randn(4, 5, 2, 7, 7)
    h = torch.randn(5, 3, 7, 7)
    c = torch.randn(5, 3, 7, 7)
    h_new, c_new = cell(inputs, (h, c))
    assert h_new.shape == c_new.shape == (4, 5, 3, 7, 7)
    for k in range(4):
        h_k, c_k = cell(inputs[k], (h, c))
        torch.testing.assert_close(h_new[k], h_k)
        torch.testing.assert_close(c_new[k], c_k)
    conv = torch.nn.Conv2d(5, 1, 1)
    out = apply_2d(conv, torch.randn(2, 3, 7, 7), torch.randn(4, 2, 2, 7, 7))
    assert out.shape == (4, 2, 1, 7, 7)
    with pytest.raises(ValueError, match="odd"):
        ConvLSTMCell(2, 3, 2)


@pytest.mark.parametrize(
    "options, message",
    [
        ({"input_shape": (1, 28, 28), "levels": 3}, "multiples of 8"),
        ({"input_shape": (784,)}, "needs images"),
        ({"steps": 0}, "must be positive"),
        ({"kernel_size": 4}, "odd"),
        ({"likelihood": "poisson"}, "unknown likelihood"),
    ],
)
def test_bad_options_are_refused(options, message):
    with pytest.raises(ValueError, match=message):
        ConvDRAW(**options)


def test_command_line_flags_set_the_channels():
    model = ConvDRAW(ConvDRAW.Config.from_options({"latent_dim": 3, "hidden": [8], "steps": 2}))
    assert (model.config.latent_channels, model.config.channels) == (3, 8)
