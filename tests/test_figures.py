"""Every figure writes a readable PNG without touching pyplot's global state."""

import sys

import matplotlib.image
import pyro
import pytest
import torch

from pvae import figures


@pytest.fixture
def vae():
    from pvae.models import VAE

    with pyro.settings.context(module_local_params=True):
        yield VAE(input_shape=(1, 6, 6), latent_dim=3, hidden=(8,))


def _check_png(path):
    assert path.exists() and path.suffix == ".png"
    image = matplotlib.image.imread(path)
    assert image.ndim == 3 and image.shape[0] > 50 and image.shape[1] > 50


def test_image_grid_tiles_with_white_borders():
    images = torch.rand(2, 3, 1, 4, 5).numpy()
    mosaic = figures._tile(images)
    assert mosaic.shape == (2 * 6, 3 * 7)
    assert (mosaic[0] == 1).all() and (mosaic[:, 0] == 1).all()
    assert (mosaic[6 + 1 : 6 + 5, 2 * 7 + 1 : 2 * 7 + 6] == images[1, 2, 0]).all()
    color = figures._tile(torch.rand(1, 2, 3, 4, 4).numpy())
    assert color.shape == (6, 12, 3)


def test_run_figures(tmp_path):
    _check_png(figures.image_grid(torch.rand(7, 1, 8, 8), tmp_path / "grid.png", title="seven"))
    history = [
        {"epoch": e, "train_bound": -100.0 + e, "valid_elbo": -101.0 + e} for e in range(1, 4)
    ]
    _check_png(figures.loss_curve(history, tmp_path / "loss.png", title="loss"))
    pyplot = sys.modules.get("matplotlib.pyplot")
    assert pyplot is None or not pyplot.get_fignums()


def test_summary_plots(tmp_path):
    khat = torch.tensor([0.1, 0.6, 0.9, float("-inf"), 0.3])
    _check_png(figures.plot_khat(khat, tmp_path / "khat.png"))
    rows = [
        {"bound": "ELBO", "mean": -90.0, "stderr": 1.0},
        {"bound": "IWAE (K=10)", "mean": -88.0, "stderr": 1.0},
        {"bound": "AIS", "mean": -87.0, "stderr": 1.0},
    ]
    _check_png(figures.plot_bound_ladder(rows, tmp_path / "ladder.png"))
    _check_png(figures.plot_kl_per_dimension(torch.rand(12), tmp_path / "sub" / "kl.png"))
    pyplot = sys.modules.get("matplotlib.pyplot")  # no figure left open in pyplot's registry
    assert pyplot is None or not pyplot.get_fignums()


@pytest.mark.parametrize("dim", [1, 2, 5])
def test_latent_scatter_any_dimension(tmp_path, dim):
    means = torch.randn(60, dim)
    labels = torch.arange(60) % 10
    _check_png(figures.plot_latent_scatter(means, labels, tmp_path / f"scatter{dim}.png"))


def test_principal_components_recover_the_main_direction():
    g = torch.Generator().manual_seed(0)
    direction = torch.tensor([3.0, 4.0, 0.0]) / 5.0
    z = torch.randn(500, 1, generator=g) * 5 * direction + 0.1 * torch.randn(500, 3, generator=g)
    projected = figures.principal_components(z, 2)
    # Almost all the variance lies along the first component.
    assert projected[:, 0].var() > 50 * projected[:, 1].var()


def test_traversals_and_interpolations(tmp_path, vae):
    variances = torch.tensor([0.5, 0.0, 2.0])
    path = figures.plot_latent_traversals(
        vae, tmp_path / "traversals.png", variances, num_dims=2, steps=5
    )
    _check_png(path)
    x = torch.bernoulli(torch.full((4, 1, 6, 6), 0.5))
    _check_png(figures.plot_interpolations(vae, x[:2], x[2:], tmp_path / "interp.png", steps=4))
    with pytest.raises(ValueError, match="differ"):
        figures.plot_interpolations(vae, x[:2], x[:1], tmp_path / "bad.png")
