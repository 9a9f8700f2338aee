"""Image models refuse data outside their likelihood's support, at the model's input.

A Bernoulli or continuous Bernoulli likelihood has no density outside [0, 1]: trained on
standardised images (``Normalize((0.1307,), (0.3081,))``) it reports a training bound and a
test NLL that mean nothing. Every image model's ``model`` or ``guide`` calls
``ImageModel._check_input``, which checks the range once per call.
"""

import pytest
import torch

from pvae.evaluation import log_likelihood
from pvae.infer.train import fit
from pvae.models import VAE, ImageModel
from pvae.models.registry import available_models, build_model, get_model_class, smoke_config

IMAGE_MODELS = [
    name for name in available_models() if issubclass(get_model_class(name), ImageModel)
]
BOUNDED = ["bernoulli", "continuous_bernoulli"]


def images(n=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, 28, 28, generator=g)  # grey levels in [0, 1)


def standardised(x):
    return (x - 0.1307) / 0.3081  # torchvision's MNIST Normalize: values in [-0.42, 2.82]


def _build(name, likelihood):
    torch.manual_seed(0)
    return build_model(name, **{**smoke_config(name), "likelihood": likelihood})


def _args(model, x):
    return model.batch_args((x, torch.arange(x.shape[0]) % 10))


def test_every_registered_image_model_is_checked():
    assert {"vae", "vae2", "iaf", "svae", "m2", "cvae", "mixture"} <= set(IMAGE_MODELS)


@pytest.mark.parametrize("likelihood", BOUNDED)
@pytest.mark.parametrize("name", IMAGE_MODELS)
def test_bounded_likelihoods_refuse_standardised_data(name, likelihood):
    model = _build(name, likelihood)
    x = standardised(images())
    expected = rf"likelihood='{likelihood}' needs data in \[0, 1\]; got values in \[-0.42\d*, 2.8"
    with pytest.raises(ValueError, match=expected) as error:
        model.guide(*_args(model, x))
    assert "likelihood='gaussian'" in str(error.value)  # says what to do
    if name != "iaf":  # the IAF VAE's model is the VAE's; its guide checks for both
        with pytest.raises(ValueError, match=expected):
            model.model(*_args(model, x))
    model.guide(*_args(model, images()))  # grey levels in [0, 1] are accepted


@pytest.mark.parametrize("name", IMAGE_MODELS)
def test_gaussian_likelihood_accepts_any_real(name):
    model = _build(name, "gaussian")
    x = standardised(images())
    model.guide(*_args(model, x))
    model.model(*_args(model, x))


@pytest.mark.parametrize("bad", [-1e-3, 1.001, float("nan")])
def test_one_value_outside_is_enough(bad):
    model = VAE(latent_dim=2, hidden=(8,))
    x = torch.bernoulli(images())
    x[3, 0, 5, 7] = bad
    with pytest.raises(ValueError, match="needs data in"):
        model.model(x)


def test_fit_and_log_likelihood_refuse_standardised_data():
    model = VAE(latent_dim=2, hidden=(8,))
    x = standardised(images(32))
    with pytest.raises(ValueError, match=r"needs data in \[0, 1\]"):
        fit(model.model, model.guide, x, epochs=1, batch_size=16, progress=False)
    with pytest.raises(ValueError, match=r"needs data in \[0, 1\]"):
        log_likelihood(model.model, model.guide, x, num_samples=2)
