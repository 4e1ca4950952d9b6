"""Factor evaluation: rank IC equals Spearman's rho, the spread is top minus bottom quantile,
and the summary statistics follow their definitions."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from strategies.evaluation import evaluate_factor, forward_returns, quantile_spread, rank_ic


def test_forward_returns_look_exactly_horizon_bars_ahead():
    close = np.array([[1.0, 2.0], [2.0, 2.0], [4.0, np.nan]])
    forward = forward_returns(close, 1)
    np.testing.assert_allclose(forward[:2], [[1.0, 0.0], [1.0, np.nan]])
    assert np.isnan(forward[2]).all()


def test_rank_ic_equals_pandas_spearman_row_by_row():
    rng = np.random.default_rng(5)
    exposures = rng.normal(size=(30, 12))
    forward = 0.3 * exposures + rng.normal(size=(30, 12))
    exposures[3, :4] = np.nan
    forward[7, 5] = np.nan
    exposures[9] = np.round(exposures[9])  # ties
    ic = rank_ic(exposures, forward)
    for t in range(30):
        frame = pd.DataFrame({"x": exposures[t], "y": forward[t]}).dropna()
        ranks = frame.rank()  # Spearman's rho: Pearson's r of average ranks (no scipy needed)
        assert ic[t] == pytest.approx(ranks["x"].corr(ranks["y"]), abs=1e-12)


def test_rank_ic_needs_enough_assets():
    assert np.isnan(rank_ic(np.array([[1.0, 2.0, np.nan]]), np.array([[1.0, 2.0, 3.0]]), min_assets=3))[0]


def test_quantile_spread_is_top_minus_bottom_quantile_mean():
    exposures = np.array([[5.0, 4.0, 3.0, 2.0, 1.0, 0.0, np.nan, -1.0, -2.0, -3.0]])
    forward = np.array([[0.1, 0.2, 0.0, 0.0, 0.0, 0.0, 9.0, 0.0, -0.1, -0.3]])
    # 9 valid assets, quintiles of 1 asset: top = 5.0 -> 0.1, bottom = -3.0 -> -0.3
    assert quantile_spread(exposures, forward)[0] == pytest.approx(0.4)
    assert quantile_spread(exposures, forward, quantiles=4)[0] == pytest.approx(
        np.mean([0.1, 0.2]) - np.mean([-0.1, -0.3]))


def test_summary_statistics_follow_their_definitions():
    rng = np.random.default_rng(9)
    close = 100 * np.exp(np.cumsum(rng.normal(0, 0.02, (400, 20)), axis=0))
    exposures = np.vstack([np.full(20, np.nan)] + [close[t] / close[t - 1] - 1 for t in range(1, 400)])
    times = np.arange(400)
    evaluation = evaluate_factor("reversal_1", exposures, close, times, horizon=5)
    assert evaluation.period_times.tolist() == list(range(0, 395, 5))
    summary = evaluation.summary(periods_per_year=365 / 5)
    ic = evaluation.ic[~np.isnan(evaluation.ic)]
    assert summary["periods"] == len(ic) == 78
    assert summary["ic_mean"] == pytest.approx(ic.mean())
    assert summary["icir"] == pytest.approx(ic.mean() / ic.std(ddof=1))
    assert summary["ic_tstat"] == pytest.approx(ic.mean() / ic.std(ddof=1) * math.sqrt(len(ic)))
    assert summary["ic_hit_rate"] == pytest.approx((ic > 0).mean())
    spread = evaluation.spread[~np.isnan(evaluation.spread)]
    assert summary["long_short_annualised"] == pytest.approx(spread.mean() * 73)
