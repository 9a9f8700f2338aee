"""The gated PixelCNN decoder: causal masking without a blind spot, a normalised p(x | z),
sampling that follows the logits, and the VAE/ACN option that uses it."""

from __future__ import annotations

import itertools

import pytest
import torch

from pvae.models.likelihoods import Likelihood
from pvae.nets.pixelcnn import PixelCNN


def _random_net(shape=(1, 5, 5), layers=3, channels=16, latent_dim=3, **kwargs) -> PixelCNN:
    """A net in float64 whose weights are large enough for every dependence to show."""
    net = PixelCNN(latent_dim, shape, layers, channels, **kwargs).double()
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for parameter in net.parameters():
            parameter.copy_(0.5 * torch.randn(parameter.shape, generator=generator))
    return net


SPATIAL = {"spatial_channels": 2, "spatial_hidden": 6}  # the location-dependent code


@pytest.mark.parametrize("spatial", [{}, SPATIAL], ids=["global", "spatial"])
@pytest.mark.parametrize("first_kernel, kernel", [(7, 3), (3, 3), (5, 1)])
def test_logit_of_a_pixel_depends_on_the_pixels_before_it_only(first_kernel, kernel, spatial):
    """d logit_i / d x_j over all pixel pairs (autograd): zero for every j >= i in raster
    order; with a first kernel wide enough for the image, nonzero for every j < i (no blind
    spot: the pixels up and to the right are seen through the vertical stack)."""
    height, width = 5, 5
    net = _random_net((1, height, width), first_kernel=first_kernel, kernel=kernel, **spatial)
    z = torch.randn(1, 3, dtype=torch.double)
    x = torch.bernoulli(torch.full((1, 1, height, width), 0.5, dtype=torch.double))
    jacobian = torch.autograd.functional.jacobian(lambda image: net(z, image), x)
    jacobian = jacobian.reshape(height * width, height * width)  # [output i, input j]
    depends = jacobian.abs() > 0
    assert not depends.triu().any(), "a logit depends on its own pixel or a later one"
    if first_kernel // 2 >= width - 1:
        assert depends.tril(-1)[torch.ones_like(depends).tril(-1)].all(), "blind spot"


def test_a_single_stack_of_narrow_kernels_has_the_expected_reach():
    """Logits depend on no row more than ``reach`` rows above (what sampling relies on)."""
    net = _random_net((1, 8, 4), layers=2, first_kernel=3, kernel=3)
    assert net.reach == 3
    z = torch.randn(1, 3, dtype=torch.double)
    x = torch.bernoulli(torch.full((1, 1, 8, 4), 0.5, dtype=torch.double))
    jacobian = torch.autograd.functional.jacobian(lambda image: net(z, image), x)
    jacobian = jacobian.reshape(8, 4, 8, 4).abs().sum((1, 3))  # [output row, input row]
    rows = torch.arange(8)
    too_far = rows[:, None] - rows[None, :] > net.reach
    assert (jacobian[too_far] == 0).all()
    assert (jacobian[rows[:, None] - rows[None, :] == net.reach] > 0).all()


@pytest.mark.parametrize("spatial", [{}, SPATIAL], ids=["global", "spatial"])
def test_log_prob_sums_over_pixels_to_a_normalised_distribution(spatial):
    """Over all 2^9 binary 3x3 images, sum_x p(x | z) = 1 for each z, and the Bernoulli
    likelihood's log_prob is the sum of the per-pixel terms."""
    net = _random_net((1, 3, 3), layers=2, channels=4, **spatial)
    images = torch.tensor(list(itertools.product([0.0, 1.0], repeat=9)), dtype=torch.double)
    images = images.reshape(-1, 1, 3, 3)
    z = torch.randn(4, 1, 3, dtype=torch.double)  # (4 codes, 1) broadcast with (512, ...)
    logits = net(z, images)
    assert logits.shape == (4, 512, 1, 3, 3)
    log_p = Likelihood("bernoulli", (1, 3, 3))(logits).log_prob(images)
    per_pixel = -torch.nn.functional.binary_cross_entropy_with_logits(
        logits, images.expand_as(logits), reduction="none"
    )
    torch.testing.assert_close(log_p, per_pixel.sum((-3, -2, -1)))
    torch.testing.assert_close(log_p.logsumexp(-1), torch.zeros(4, dtype=torch.double))


@pytest.mark.parametrize("spatial", [{}, SPATIAL], ids=["global", "spatial"])
def test_sampling_draws_each_pixel_from_the_logits_given_the_pixels_before_it(spatial):
    """The row-cached sampler gives the same images, from the same uniforms, as drawing each
    pixel from a full forward pass over the partial image (with the spatial code: each row
    window takes its rows of the code's maps)."""
    net = _random_net((1, 6, 5), layers=3, first_kernel=3, **spatial)
    with torch.no_grad():  # probabilities away from 0 and 1, so that the draws vary
        net.output[-1].weight.mul_(0.05)
        net.output[-1].bias.zero_()
    z = torch.randn(4, 3, dtype=torch.double)
    fast = net.sample(z, torch.Generator().manual_seed(1))
    generator = torch.Generator().manual_seed(1)
    slow = torch.zeros(4, 1, 6, 5, dtype=torch.double)
    for r, c in itertools.product(range(6), range(5)):
        probability = torch.sigmoid(net(z, slow)[:, :, r, c])
        uniform = torch.rand(probability.shape, generator=generator, dtype=torch.double)
        slow[:, :, r, c] = (uniform < probability).double()
    assert torch.equal(fast, slow)
    assert 0 < slow.mean() < 1


def test_shapes_broadcast_over_importance_samples():
    net = PixelCNN(2, (1, 4, 4), layers=2, channels=4)
    z, x = torch.randn(3, 5, 2), torch.zeros(5, 1, 4, 4)
    assert net(z, x).shape == (3, 5, 1, 4, 4)
    assert net.sample(torch.randn(2, 3, 2)).shape == (2, 3, 1, 4, 4)


def test_the_code_conditions_by_its_direction_not_its_scale():
    """Codes far from the origin (ACN's learned prior does not anchor their scale) give the
    gates the same biases as unit-scale codes of the same direction, so they cannot saturate;
    codes of other directions still change the logits."""
    net = _random_net(latent_dim=4)
    x = torch.bernoulli(torch.full((2, 1, 5, 5), 0.5, dtype=torch.float64))
    z = torch.randn(2, 4, dtype=torch.float64)
    assert torch.allclose(net(z, x), net(50.0 * z, x), atol=1e-9)
    assert not torch.allclose(net(z, x), net(z.flip(-1), x), atol=1e-3)


def test_the_spatial_code_conditions_each_pixel_differently():
    """With ``spatial_channels`` the gates' biases vary over the image (location-dependent,
    van den Oord et al. Eq. 5) and depend on the code; without, one bias per channel."""
    z = torch.randn(3, 3, dtype=torch.float64)
    plain = _random_net()
    bias_v, bias_h = plain.layers[0].biases(z)
    assert bias_v.shape[-2:] == bias_h.shape[-2:] == (1, 1)
    net = _random_net(**SPATIAL)
    maps = net.spatial_code(z)
    assert maps.shape == (3, 2, 5, 5)
    for layer in net.layers:
        bias_v, bias_h = layer.biases(z, maps)
        assert bias_v.shape == bias_h.shape == (3, 32, 5, 5)
        assert bias_v.std((-2, -1)).min() > 1e-3  # not constant over the pixels
    other = net.spatial_code(z.flip(0))
    assert not torch.allclose(maps, other)
    # the evaluator's chunk sizing counts the maps and the per-pixel biases
    assert net.elements_per_image == plain.elements_per_image + (4 * 16 + 2) * 25
    with pytest.raises(ValueError, match="spatial_channels"):
        PixelCNN(3, (1, 5, 5), spatial_channels=-1)


@pytest.mark.parametrize("name", ["vae", "acn"])
def test_models_take_the_pixelcnn_decoder(name):
    """``architecture="pixelcnn"``: a finite ELBO step for the VAE and ACN, logits that depend
    on ``x``, and options checked at construction."""
    import pyro

    from pvae.models.registry import get_model_class
    from pvae.nets.pixelcnn import PixelCNN

    cls = get_model_class(name)
    options = dict(input_shape=(1, 4, 4), latent_dim=2, hidden=[8], architecture="pixelcnn")
    model = cls(**options, pixelcnn_layers=2, pixelcnn_channels=16)
    assert isinstance(model.decoder, PixelCNN)
    x = torch.bernoulli(torch.full((6, 1, 4, 4), 0.5))
    if name == "acn":
        from pvae.data.images import ImageDataset

        model.training_setup(ImageDataset(x, torch.zeros(6, dtype=torch.int64)), seed=0)
        args = (x, torch.arange(6))
    else:
        args = (x,)
    with pyro.settings.context(module_local_params=True):
        loss = pyro.infer.Trace_ELBO().differentiable_loss(model.model, model.guide, *args)
    assert torch.isfinite(loss)
    loss.backward()
    gradients = [p.grad for p in model.parameters() if p.grad is not None]
    assert gradients and all(torch.isfinite(g).all() for g in gradients)
    assert model.decoder.output[-1].bias.grad.abs().sum() > 0
    z = torch.randn(6, 2)
    assert not torch.equal(model.decode_logits(z, x), model.decode_logits(z, 1 - x))
    assert model.decode_logits(z[:2]).shape == (2, 1, 4, 4)  # draws x pixel by pixel
    assert model.eval_datum_size((x,)) > 16
    with pytest.raises(ValueError, match="bernoulli"):
        cls(**options, likelihood="gaussian")
    with pytest.raises(ValueError, match="pixelcnn_layers"):
        cls(**options, pixelcnn_layers=0)
    with pytest.raises(ValueError, match="pixelcnn_spatial"):
        cls(**options, pixelcnn_spatial=-1)
    spatial = cls(**options, pixelcnn_layers=1, pixelcnn_channels=4, pixelcnn_spatial=2)
    assert spatial.decoder.spatial_code(torch.randn(6, 2)).shape == (6, 2, 4, 4)
    assert spatial.decode_logits(torch.randn(2, 2)).shape == (2, 1, 4, 4)
