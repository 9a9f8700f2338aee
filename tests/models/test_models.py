"""One suite over the foundation's registered models (the zoo's variants have their own)."""

import pytest
import torch

from pvae.evaluation import log_likelihood
from pvae.infer.objectives import ELBO
from pvae.models import available_models, build_model

SMALL = {
    "vae": dict(latent_dim=3, hidden=[32]),
    "vae2": dict(latent_dims=[6, 3], hidden=[32, 16]),
}


@pytest.fixture
def batch():
    g = torch.Generator().manual_seed(0)
    return torch.bernoulli(torch.rand(16, 1, 28, 28, generator=g) * 0.3)


def test_registry_lists_and_rejects():
    assert {"vae", "vae2"} <= set(available_models())
    with pytest.raises(ValueError, match="unknown model 'nope'"):
        build_model("nope")
    with pytest.raises(ValueError, match="bad options for model 'vae'"):
        build_model("vae", wings=2)


@pytest.mark.parametrize("name", sorted(SMALL))
def test_shapes_sampling_and_reconstruction(name, batch):
    model = build_model(name, **SMALL[name])
    samples = model.sample(5, generator=torch.Generator().manual_seed(1))
    assert samples.shape == (5, 1, 28, 28)
    assert samples.min() >= 0 and samples.max() <= 1
    assert model.reconstruct(batch).shape == batch.shape
    with pytest.raises(ValueError, match="expects inputs of shape"):
        model.model(torch.zeros(4, 784))


@pytest.mark.parametrize("name", sorted(SMALL))
def test_training_steps_lower_the_loss(name, batch):
    torch.manual_seed(0)
    model = build_model(name, **SMALL[name])
    model.initialize_output_bias(batch.mean(0))
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    objective = ELBO()
    losses = []
    for _ in range(40):
        loss = objective(model.model, model.guide, batch).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    # Averages over 5 steps smooth the single-sample noise; the drop is tens of nats.
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 10


@pytest.mark.parametrize("name", sorted(SMALL))
def test_checkpoint_round_trip_and_finite_likelihood(name, batch, tmp_path):
    model = build_model(name, **SMALL[name])
    torch.save({"config": model.config, "state": model.state_dict()}, tmp_path / "m.pt")
    saved = torch.load(tmp_path / "m.pt")
    clone = build_model(name, **saved["config"])
    clone.load_state_dict(saved["state"])
    z = torch.randn(4, model.latent_dim if name == "vae" else 6)
    torch.testing.assert_close(model.decode_logits(z), clone.decode_logits(z))
    values = log_likelihood(clone.model, clone.guide, batch[:4], num_samples=50)
    assert values.shape == (4,) and torch.isfinite(values).all() and (values < 0).all()
