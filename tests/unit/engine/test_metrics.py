"""Performance figures agree with a by-hand computation on small known curves."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from hypothesis import given
from hypothesis import strategies as st

from engine.metrics import drawdown, historical_var, performance_summary

EQUITY = np.array([100.0, 110.0, 99.0, 105.0, 120.0, 90.0, 96.0, 130.0])


def hand_quantile(values: np.ndarray, q: float) -> float:
    """Linear-interpolated quantile between the order statistics (numpy's default method)."""
    ordered = sorted(float(v) for v in values)
    position = q * (len(ordered) - 1)
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (position - low) * (ordered[high] - ordered[low])


# -- drawdown ------------------------------------------------------------------------------------
def test_drawdown_is_the_fraction_below_the_running_peak():
    expected = []
    peak = -math.inf
    for value in EQUITY:
        peak = max(peak, value)
        expected.append(1.0 - value / peak)
    np.testing.assert_allclose(drawdown(EQUITY), expected)
    # 120 -> 90 is the deepest fall: a quarter.
    assert drawdown(EQUITY).max() == pytest.approx(0.25)


def test_drawdown_matches_pandas_cummax():
    series = pd.Series(EQUITY)
    np.testing.assert_allclose(drawdown(EQUITY), (1 - series / series.cummax()).to_numpy())


def test_drawdown_of_a_rising_curve_is_zero_everywhere():
    assert not drawdown(np.array([1.0, 2.0, 3.0, 3.0, 4.0])).any()


# -- historical_var ------------------------------------------------------------------------------
def test_historical_var_is_minus_the_lower_tail_quantile():
    returns = np.array(
        [
            0.03,
            -0.02,
            0.01,
            -0.07,
            0.00,
            0.02,
            -0.01,
            0.04,
            -0.03,
            0.05,
            -0.05,
            0.01,
            0.02,
            -0.04,
            0.03,
            0.00,
            0.01,
            -0.06,
            0.02,
            0.01,
        ]
    )
    for confidence in (0.9, 0.95, 0.99):
        assert historical_var(returns, confidence) == pytest.approx(
            -hand_quantile(returns, 1.0 - confidence)
        )
    # 20 returns at 95%: position 0.05 * 19 = 0.95 from the worst, -0.07, towards -0.06.
    assert historical_var(returns, 0.95) == pytest.approx(0.0605)


def test_historical_var_is_zero_without_losses_or_without_returns():
    assert historical_var(np.array([0.01, 0.02, 0.03]), 0.95) == 0.0
    assert historical_var(np.array([]), 0.99) == 0.0


# -- performance_summary -------------------------------------------------------------------------
def test_performance_summary_matches_a_by_hand_computation():
    periods_per_year = 252
    summary = performance_summary(EQUITY, periods_per_year)
    returns = pd.Series(EQUITY).pct_change().dropna()
    years = len(returns) / periods_per_year
    assert set(summary) == {"total_return", "cagr", "sharpe", "max_drawdown", "var_95", "var_99"}
    assert summary["total_return"] == pytest.approx(130.0 / 100.0 - 1.0)
    assert summary["cagr"] == pytest.approx(1.3 ** (1 / years) - 1)
    assert summary["sharpe"] == pytest.approx(returns.mean() / returns.std() * math.sqrt(252))
    assert summary["max_drawdown"] == pytest.approx(0.25)
    assert summary["var_95"] == pytest.approx(-hand_quantile(returns.to_numpy(), 0.05))
    assert summary["var_99"] == pytest.approx(-hand_quantile(returns.to_numpy(), 0.01))
    assert all(isinstance(v, float) for v in summary.values())


def test_a_year_of_daily_bars_has_cagr_equal_to_total_return():
    equity = 100.0 * np.cumprod(np.r_[1.0, np.full(365, 1.001)])
    summary = performance_summary(equity, 365)
    assert summary["cagr"] == pytest.approx(summary["total_return"])
    assert summary["total_return"] == pytest.approx(1.001**365 - 1)


def test_flat_equity_has_zero_sharpe_drawdown_and_var():
    summary = performance_summary(np.full(10, 50.0), 252)
    assert summary == {
        "total_return": 0.0,
        "cagr": 0.0,
        "sharpe": 0.0,
        "max_drawdown": 0.0,
        "var_95": 0.0,
        "var_99": 0.0,
    }


def test_a_single_equity_point_gives_zero_figures():
    summary = performance_summary(np.array([100.0]), 252)
    assert summary["total_return"] == 0.0 and summary["cagr"] == 0.0 and summary["sharpe"] == 0.0


def test_performance_summary_of_an_empty_curve_is_an_error():
    with pytest.raises(ValueError, match="needs at least one equity point"):
        performance_summary(np.array([]), 252)


@given(
    st.lists(st.floats(min_value=1e-3, max_value=1e6, allow_nan=False), min_size=2, max_size=200)
)
def test_summary_risk_figures_keep_their_order_and_range(values):
    with np.errstate(over="ignore"):  # CAGR of a short, steep curve may overflow to inf
        summary = performance_summary(np.array(values), 252)
    assert 0.0 <= summary["max_drawdown"] <= 1.0
    assert summary["var_99"] >= summary["var_95"] >= 0.0
    # max drawdown is the deepest fall from a previous peak, found here by brute force.
    deepest = max(1 - values[j] / max(values[: j + 1]) for j in range(len(values)))
    assert summary["max_drawdown"] == pytest.approx(deepest, abs=1e-12)
