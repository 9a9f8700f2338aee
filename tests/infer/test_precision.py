"""bf16 networks with float32 distributions (``TrainConfig(precision="bf16")``, issue #16)."""

import pyro.poutine as poutine
import pytest
import torch

from pvae.data import load_dataset
from pvae.evaluation.importance import log_likelihood, mean_and_stderr
from pvae.infer.precision import network_precision, networks
from pvae.infer.train import TrainConfig, fit
from pvae.models import build_model


def tiny_vae():
    return build_model("vae", input_shape=(1, 28, 28), latent_dim=4, hidden=[32])


def test_networks_are_the_non_pyro_submodules_and_come_back_unchanged():
    vae = tiny_vae()
    nets = networks([vae])
    assert vae not in nets and {id(vae.encoder), id(vae.decoder)} <= {id(n) for n in nets}
    keys = list(vae.state_dict())
    x = torch.rand(3, 1, 28, 28).round()
    with network_precision([vae], "bf16") as wrapped:
        assert wrapped == nets
        inner = []
        linear = next(m for m in vae.decoder.modules() if isinstance(m, torch.nn.Linear))
        handle = linear.register_forward_hook(lambda m, i, o: inner.append(o.dtype))
        trace = poutine.trace(vae.model).get_trace(x)
        handle.remove()
    # The decoder's first product ran in bfloat16, its output left it as float32, and
    # every site's log-density was computed in float32.
    assert inner == [torch.bfloat16]
    for site in trace.nodes.values():
        if site["type"] == "sample":
            assert site["fn"].log_prob(site["value"]).dtype == torch.float32, site["name"]
    assert all("forward" not in vars(net) for net in nets)
    assert list(vae.state_dict()) == keys
    with network_precision([vae], "fp32") as wrapped:
        assert wrapped == []
    with pytest.raises(ValueError, match="precision must be one of fp32, bf16"):
        TrainConfig(precision="fp16")


@pytest.mark.statistical
def test_bf16_training_moves_the_test_bound_by_less_than_its_standard_error(data_dir, seed):
    """The same model, seed and batches trained in float32 and with bf16 networks: the test
    log-likelihood (importance sampled in float32, the same seed) differs by less than the
    standard error of either estimate over the test images."""
    train = load_dataset("binarized_mnist", "train", size=3000, size_seed=0, progress=False)
    test = load_dataset("binarized_mnist", "test", size=300, size_seed=0, progress=False)
    x = test.images.float()
    results = {}
    for precision in ("fp32", "bf16"):
        torch.manual_seed(seed)
        vae = tiny_vae()
        config = TrainConfig(epochs=3, batch_size=100, lr=3e-3, seed=seed, precision=precision)
        fit(vae.model, vae.guide, train, config=config, progress=False)
        values = log_likelihood(vae.model, vae.guide, x, num_samples=20, seed=seed + 1)
        results[precision] = mean_and_stderr(values)
    fp32, bf16 = results["fp32"], results["bf16"]
    assert fp32["mean"] > -250  # trained: the untrained model is near -543 (784 log 2)
    assert abs(bf16["mean"] - fp32["mean"]) < min(fp32["stderr"], bf16["stderr"])
