"""The bound ladder ELBO <= IWAE_K <= AIS on a linear-Gaussian model whose marginal is known in
closed form."""

import pytest
import torch

from pvae.evaluation import log_importance_weights, mean_and_stderr
from pvae.evaluation.ladder import BoundLadder, LadderRow, bound_ladder, iwae_bounds

Z = 5.0


@pytest.fixture
def lg(linear_gaussian):
    """tests/conftest.py's linear-Gaussian model, with ``narrow_guide`` 10x narrower than the
    posterior."""
    linear_gaussian.narrow_shrink = 0.1
    return linear_gaussian


def test_iwae_bounds_increase_with_k(lg):
    # Not statistical although it draws: the groups of each K nest in those of the next
    # (contiguous splits of one pool, sizes dividing each other), and log of a mean of group
    # means >= the mean of their logs (Jensen), so the ordering holds for every draw.
    x = lg.data(20)
    log_w = log_importance_weights(lg.model, lg.diagonal_guide, x, 1000)
    bounds = iwae_bounds(log_w, (1, 10, 100, 1000))
    means = [float(bounds[k].mean()) for k in (1, 10, 100, 1000)]
    assert means == sorted(means)
    torch.testing.assert_close(bounds[1], log_w.double().mean(0))
    with pytest.raises(ValueError, match="K=2000"):
        iwae_bounds(log_w, (2000,))


@pytest.mark.statistical
def test_bound_ladder_against_exact(lg, seed):
    x = lg.data(8)
    ladder = bound_ladder(
        lg.model,
        lg.narrow_guide,
        x,
        ks=(1, 10, 100),
        ais_steps=200,
        ais_chains=8,
        ais_leapfrog_steps=5,
        seed=seed,
    )
    names = [row.name for row in ladder.rows]
    assert names == ["ELBO", "IWAE (K=10)", "IWAE (K=100)", "AIS (T=200)"]
    means = [row.mean for row in ladder.rows]
    # Nested groups of one pool: ordered for every draw (see test_iwae_bounds_increase_with_k).
    assert means[0] < means[1] < means[2]
    exact = float(lg.marginal().log_prob(x).mean())
    # AIS (T = 200, K = 8) on these 8 data: the chain standard error of the mean,
    # sqrt(sum_n se_n^2) / N, is 0.095 to 0.124 over seeds 0-9 (0.097 on average; the sd of the
    # mean error over 100 seeds is 0.104), so SE = 0.12. Forward AIS is a stochastic lower
    # bound: above log p(x) by noise only, below it by noise plus a bias of about
    # -(N / 2) SE^2 = -0.04 by the delta method (measured over 100 seeds: -0.074 +- 0.010);
    # allow 0.1 for it. Five SE (0.6) either way plus the bias below.
    se, bias = 0.12, 0.1
    assert -(Z * se + bias) < means[3] - exact < Z * se
    # IWAE_100 is a stochastic lower bound too, 2 to 3 nats below here with the narrow guide;
    # it exceeds log p(x) by t with probability <= exp(-t) per datum (Markov).
    assert means[2] < exact + 0.05
    rows = ladder.as_dict()
    assert rows[-1]["minus_reference"] == 0.0 and rows[0]["minus_reference"] < 0
    assert ladder.table().count("\n") == len(rows) + 1


def test_gap_to_reference_is_paired():
    # Two bounds that move together over data: their gap is exact although each spreads.
    spread = torch.arange(10, dtype=torch.float64)
    ladder = BoundLadder([LadderRow("ELBO", 1, spread - 2.0), LadderRow("AIS", 4, spread)])
    assert ladder.gap_to_reference(ladder.rows[0]) == (-2.0, 0.0)
    assert ladder.rows[0].stderr == mean_and_stderr(spread)["stderr"] > 0.9
