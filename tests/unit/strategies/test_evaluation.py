"""Factor evaluation: rank IC equals Spearman's rho, the spread is top minus bottom quantile,
and the summary statistics follow their definitions."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pandas as pd
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from strategies import evaluation
from strategies.evaluation import (
    _average_ranks,
    evaluate_factor,
    forward_returns,
    quantile_spread,
    rank_ic,
)

NAN = float("nan")


def awkward_rows(rng: np.random.Generator, n_rows: int, n_assets: int) -> np.ndarray:
    """Rows with ties, NaN and infinities, plus an all-NaN row, a one-value row and an all-tied
    row when there is room."""
    pool = [-np.inf, -1.0, -0.5, -0.0, 0.0, 0.25, 0.5, 1.0, 3.0, np.inf]
    x = rng.choice(pool, (n_rows, n_assets))
    x[:, ::3] = np.round(rng.normal(size=x[:, ::3].shape), 1)
    x[rng.random(x.shape) < 0.2] = np.nan
    if n_rows >= 4 and n_assets:
        x[1] = np.nan
        x[2] = np.nan
        x[2, 0] = 1.0
        x[3] = 0.5
    return x


def rank_ic_row_by_row(
    exposures: np.ndarray, forward: np.ndarray, min_assets: int = 5
) -> np.ndarray:
    """Spearman's rho the slow way: pandas average ranks of the known pairs, Pearson's r."""
    out = []
    for x_row, y_row in zip(exposures, forward):
        frame = pd.DataFrame({"x": x_row, "y": y_row}).dropna()
        ranks = frame.rank(method="average")
        dx, dy = ranks["x"] - ranks["x"].mean(), ranks["y"] - ranks["y"].mean()
        scale = math.sqrt(float((dx * dx).sum() * (dy * dy).sum()))
        out.append(NAN if len(frame) < min_assets or scale == 0 else float((dx * dy).sum()) / scale)
    return np.array(out)


def quantile_spread_row_by_row(
    exposures: np.ndarray, forward: np.ndarray, quantiles: int, min_assets: int
) -> np.ndarray:
    """The spread the slow way: each row's known pairs sorted by exposure, tail means."""
    out = []
    for x_row, y_row in zip(exposures, forward):
        known = ~np.isnan(x_row) & ~np.isnan(y_row)
        x_known, y_known = x_row[known], y_row[known]
        if len(x_known) < max(min_assets, 2):
            out.append(NAN)
            continue
        size = max(1, len(x_known) // quantiles)
        by_exposure = y_known[np.argsort(x_known, kind="stable")]
        out.append(by_exposure[-size:].mean() - by_exposure[:size].mean())
    return np.array(out)


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
    assert np.isnan(
        rank_ic(np.array([[1.0, 2.0, np.nan]]), np.array([[1.0, 2.0, 3.0]]), min_assets=3)
    )[0]


@pytest.mark.parametrize(
    "shape", [(1, 19), (2, 19), (5, 19), (18, 40), (3, 200), (6, 1), (2, 0), (0, 7)]
)
@pytest.mark.parametrize("seed", range(3))
def test_rank_ic_matches_pandas_ranks_with_ties_nan_and_awkward_rows(shape, seed):
    rng = np.random.default_rng(seed)
    exposures = awkward_rows(rng, *shape)
    forward = awkward_rows(rng, *shape)
    if shape[0] >= 6:
        forward[4] = -exposures[4]  # a perfect negative correlation
        forward[5] = 2.0  # all forward returns tied: zero scale
    for min_assets in (1, 5):
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # all-NaN and all-tied rows are answers, not warnings
            ic = rank_ic(exposures, forward, min_assets)
        np.testing.assert_allclose(
            ic, rank_ic_row_by_row(exposures, forward, min_assets), rtol=0, atol=1e-14
        )


@pytest.mark.parametrize("shape", [(1, 19), (2, 19), (7, 33), (3, 120)])
def test_rank_ic_is_the_same_from_pairwise_counts_and_from_the_sort(shape, monkeypatch):
    rng = np.random.default_rng(11)
    exposures, forward = awkward_rows(rng, *shape), awkward_rows(rng, *shape)
    monkeypatch.setattr(evaluation, "PAIRWISE_RANK_MAX_CELLS", 0)
    by_sort = rank_ic(exposures, forward, min_assets=2)
    monkeypatch.setattr(evaluation, "PAIRWISE_RANK_MAX_CELLS", 10**9)
    np.testing.assert_array_equal(rank_ic(exposures, forward, min_assets=2), by_sort)


@given(
    hnp.arrays(
        np.float64,
        hnp.array_shapes(min_dims=2, max_dims=2, min_side=0, max_side=12),
        elements=st.sampled_from([-np.inf, -1.5, -0.0, 0.0, 0.5, 1.0, 2.0, np.inf, NAN]),
    )
)
def test_average_ranks_are_pandas_average_ranks(values):
    np.testing.assert_array_equal(
        _average_ranks(values), pd.DataFrame(values).rank(axis=1, method="average").to_numpy()
    )


def test_quantile_spread_is_top_minus_bottom_quantile_mean():
    exposures = np.array([[5.0, 4.0, 3.0, 2.0, 1.0, 0.0, np.nan, -1.0, -2.0, -3.0]])
    forward = np.array([[0.1, 0.2, 0.0, 0.0, 0.0, 0.0, 9.0, 0.0, -0.1, -0.3]])
    # 9 valid assets, quintiles of 1 asset: top = 5.0 -> 0.1, bottom = -3.0 -> -0.3
    assert quantile_spread(exposures, forward)[0] == pytest.approx(0.4)
    assert quantile_spread(exposures, forward, quantiles=4)[0] == pytest.approx(
        np.mean([0.1, 0.2]) - np.mean([-0.1, -0.3])
    )


@pytest.mark.parametrize("shape", [(1, 19), (2, 19), (18, 60), (4, 3)])
@pytest.mark.parametrize(("quantiles", "min_assets"), [(5, 5), (3, 2), (10, 1)])
def test_quantile_spread_matches_a_row_by_row_sort(shape, quantiles, min_assets):
    rng = np.random.default_rng(sum(shape) + quantiles)
    exposures = awkward_rows(rng, *shape)
    forward = rng.normal(0.0, 0.05, shape)
    forward[rng.random(shape) < 0.1] = np.nan
    expected = quantile_spread_row_by_row(exposures, forward, quantiles, min_assets)
    np.testing.assert_allclose(
        quantile_spread(exposures, forward, quantiles, min_assets), expected, rtol=0, atol=1e-15
    )


def test_summary_statistics_follow_their_definitions():
    rng = np.random.default_rng(9)
    close = 100 * np.exp(np.cumsum(rng.normal(0, 0.02, (400, 20)), axis=0))
    exposures = np.vstack(
        [np.full(20, np.nan)] + [close[t] / close[t - 1] - 1 for t in range(1, 400)]
    )
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
