"""Every figure writes a readable PNG without touching pyplot's global state."""

import sys

import matplotlib.image
import numpy as np
import pyro
import pytest
import torch

from pvae import figures
from pvae.evaluation.importance import mean_and_stderr
from pvae.evaluation.ladder import BoundLadder, LadderRow


@pytest.fixture
def vae():
    from pvae.models import VAE

    with pyro.settings.context(module_local_params=True):
        yield VAE(input_shape=(1, 6, 6), latent_dim=3, hidden=(8,))


@pytest.fixture
def drawn(monkeypatch):
    """The figures the plot functions save, in order (their PNGs are still written)."""
    saved = []
    save = figures._save

    def record(fig, path, tight=True):
        saved.append(fig)
        return save(fig, path, tight)

    monkeypatch.setattr(figures, "_save", record)
    return saved


def _check_png(path):
    assert path.exists() and path.suffix == ".png"
    image = matplotlib.image.imread(path)
    assert image.ndim == 3 and image.shape[0] > 50 and image.shape[1] > 50


def _ladder(num_data=200):
    """Bounds that differ by 2 and 3 nats on every datum, with a spread of 7 nats over data."""
    g = torch.Generator().manual_seed(0)
    elbo = -90.0 + 7.0 * torch.randn(num_data, generator=g)
    rows = [("ELBO", 1, elbo)]
    for name, k, gain in (("IWAE (K=10)", 10, 2.0), ("AIS (T=50)", 4, 3.0)):
        rows.append((name, k, elbo + gain + 0.3 * torch.randn(num_data, generator=g)))
    return BoundLadder([LadderRow(name, k, values) for name, k, values in rows])


def _integer_ticks(axis) -> bool:
    ticks = axis.get_majorticklocs()
    return len(ticks) > 1 and np.allclose(ticks, np.round(ticks))


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


def test_counting_axes_have_integer_ticks(tmp_path, drawn):
    history = [{"epoch": e, "train_bound": -100.0 + e} for e in range(1, 4)]
    figures.loss_curve(history, tmp_path / "loss.png")
    figures.plot_khat(torch.tensor([0.1, 0.6, 0.9, float("-inf"), 0.3]), tmp_path / "khat.png")
    for fig in drawn:  # epochs, data: a few values, which matplotlib would tick at 0.25, 0.5...
        assert _integer_ticks(fig.axes[0].xaxis)


def test_bound_ladder_plots_paired_differences_to_the_elbo(tmp_path, drawn):
    ladder = _ladder()
    _check_png(figures.plot_bound_ladder(ladder, tmp_path / "ladder.png"))
    (ax,) = drawn[0].axes
    (bars,) = ax.containers
    line, _, (segments,) = bars.lines
    elbo = ladder.rows[0].values
    expected = [mean_and_stderr(row.values - elbo) for row in ladder.rows]
    np.testing.assert_allclose(line.get_ydata(), [e["mean"] for e in expected], rtol=1e-6)
    half_widths = [(seg[1][1] - seg[0][1]) / 2 for seg in segments.get_segments()]
    np.testing.assert_allclose(half_widths, [0.0] + [e["stderr"] for e in expected[1:]], atol=1e-9)
    # The paired standard errors are the small ones (0.3 / sqrt(200)), not the spread of the
    # bounds over data (7 / sqrt(200)).
    assert max(half_widths) < 0.2 * min(row.stderr for row in ladder.rows)
    # Each bound's own mean stays readable, under its name.
    labels = [t.get_text() for t in ax.get_xticklabels()]
    assert labels[0] == f"ELBO\n{ladder.rows[0].mean:.2f}"
    assert "ELBO" in ax.get_ylabel()
    assert [t.get_text() for t in ax.get_legend().get_texts()] == [
        "mean over data ± s.e. of the paired difference"
    ]


def test_kl_figure_names_its_threshold_in_the_legend(tmp_path, drawn):
    kl = torch.tensor([0.5, 0.001, 2.0, 0.02])
    figures.plot_kl_per_dimension(kl, tmp_path / "kl.png")
    figures.plot_kl_per_dimension(kl, tmp_path / "kl_bare.png", threshold=None)
    legends = [[t.get_text() for t in fig.axes[0].get_legend().get_texts()] for fig in drawn]
    assert legends[0] == ["0.01 nats: units below carry almost no information", "mean KL over data"]
    assert legends[1] == ["mean KL over data"]
    assert "3 of 4 above 0.01" in drawn[0].axes[0].get_title()
    assert [t.get_text() for t in drawn[0].axes[0].get_xticklabels()] == ["2", "0", "3", "1"]


def test_latent_scatter_has_one_legend_entry_per_class(tmp_path, drawn):
    means = torch.randn(60, 4)
    labels = torch.tensor([3, 7, 9]).repeat(20)
    figures.plot_latent_scatter(means, labels, tmp_path / "classes.png")
    (ax,) = drawn[0].axes  # no colour bar
    legend = ax.get_legend()
    assert legend.get_title().get_text() == "label"
    assert [t.get_text() for t in legend.get_texts()] == ["3", "7", "9"]
    # Each class's points have the colour of its legend entry.
    for points, handle in zip(ax.collections, legend.legend_handles, strict=True):
        np.testing.assert_allclose(points.get_facecolor()[0], handle.get_facecolor()[0])
    # Continuous values keep a colour bar.
    figures.plot_latent_scatter(means, torch.rand(60), tmp_path / "continuous.png")
    assert len(drawn[1].axes) == 2 and drawn[1].axes[1].get_ylabel() == "label"


def test_summary_plots(tmp_path):
    khat = torch.tensor([0.1, 0.6, 0.9, float("-inf"), 0.3])
    _check_png(figures.plot_khat(khat, tmp_path / "khat.png"))
    _check_png(figures.plot_bound_ladder(_ladder(), tmp_path / "ladder.png"))
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


def test_traversals_and_interpolations(tmp_path, vae, drawn):
    variances = torch.tensor([0.5, 0.0, 2.0])
    path = figures.plot_latent_traversals(
        vae, tmp_path / "traversals.png", variances, num_dims=2, steps=5
    )
    _check_png(path)
    # Rows name the unit and its variance, columns the value it takes.
    (ax,) = drawn[0].axes
    assert [t.get_text() for t in ax.get_yticklabels()] == ["z_2\nvar 2.00", "z_0\nvar 0.50"]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["-3", "-1.5", "0", "1.5", "3"]
    assert "unit" in ax.get_ylabel() and "prior mean" in ax.get_xlabel()
    x = torch.bernoulli(torch.full((4, 1, 6, 6), 0.5))
    _check_png(figures.plot_interpolations(vae, x[:2], x[2:], tmp_path / "interp.png", steps=4))
    columns = [t.get_text() for t in drawn[1].axes[0].get_xticklabels()]
    assert columns == ["start", "0", "0.33", "0.67", "1", "end"]
    with pytest.raises(ValueError, match="differ"):
        figures.plot_interpolations(vae, x[:2], x[:1], tmp_path / "bad.png")


def test_point_sets_one_panel_per_set_with_image_orientation(tmp_path, drawn):
    rows = [torch.rand(4, 20, 2) * 28, torch.rand(4, 30, 2) * 28]
    _check_png(figures.plot_point_sets(rows, tmp_path / "p.png", row_labels=["a", "b"]))
    axes = drawn[-1].axes
    assert len(axes) == 8
    bottom, top = axes[0].get_ylim()
    assert bottom > top  # y = 0 at the top, as an image's row 0
    assert len(axes[5].collections[0].get_offsets()) == 30
    with pytest.raises(ValueError, match="every row"):
        figures.plot_point_sets([torch.rand(4, 5, 2), torch.rand(3, 5, 2)], tmp_path / "x.png")
    with pytest.raises(ValueError, match=r"\(N, S, 2\)"):
        figures.plot_point_sets([torch.rand(4, 5, 3)], tmp_path / "x.png")


def test_set_histograms_share_bins_between_a_set_and_its_draws(tmp_path, drawn):
    sets, new = torch.randn(3, 200), torch.randn(3, 100) + 1
    path = figures.plot_set_histograms(sets, new, tmp_path / "h.png", titles=["a", "b", "c"])
    _check_png(path)
    axes = drawn[-1].axes
    assert [ax.get_title() for ax in axes] == ["a", "b", "c"]
    with pytest.raises(ValueError, match="generated"):
        figures.plot_set_histograms(sets, new[:2], tmp_path / "x.png")
