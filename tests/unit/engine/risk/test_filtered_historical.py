"""Filtered historical simulation (Hull & White, 1998): past returns rescaled by an EWMA
volatility to today's, then the historical quantile. Checked against pandas' own EWMA, for
the homogeneity the limits' exact scaling needs, and for what it is for: on real daily
returns its 99% VaR is breached about as often as it should be, where plain historical
simulation is breached too often."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from engine.config import load_config
from engine.evaluation.var_backtest import kupiec_test
from engine.risk.limits import figures, portfolio_returns
from engine.risk.measures import (
    EWMA_DECAY,
    expected_shortfall,
    filtered_historical_var,
    historical_var,
    value_at_risk,
    volatility_scaled,
)
from tests.unit.engine.risk.test_measures import SERIES, clean, stock_closes

WINDOW = 250


def pandas_scaled(returns: pd.Series, decay: float) -> np.ndarray:
    """The rescaled sample written with pandas: the EWMA of the squares (``adjust=False``),
    started from the window's mean square."""
    squares = returns.to_numpy() ** 2
    seeded = pd.Series(np.concatenate([[squares.mean()], squares]))
    variance = seeded.ewm(alpha=1 - decay, adjust=False).mean().to_numpy()
    return returns.to_numpy() * np.sqrt(variance[-1] / variance[:-1])


@pytest.mark.parametrize("name", SERIES)
@pytest.mark.parametrize("decay", (EWMA_DECAY, 0.97))
def test_the_rescaled_sample_is_pandas_ewma_volatility_now_over_then(name, decay):
    returns = clean(name).iloc[-WINDOW:]
    np.testing.assert_allclose(
        volatility_scaled(returns.to_numpy(), decay), pandas_scaled(returns, decay), rtol=1e-12
    )


@pytest.mark.parametrize("name", SERIES)
def test_var_and_es_are_the_historical_ones_of_the_rescaled_sample(name):
    returns = clean(name).iloc[-WINDOW:]
    scaled = pd.Series(pandas_scaled(returns, EWMA_DECAY))
    for confidence in (0.95, 0.99):
        cutoff = scaled.quantile(1 - confidence)
        assert filtered_historical_var(returns.to_numpy(), confidence) == pytest.approx(
            -cutoff, rel=1e-12
        )
        assert expected_shortfall(
            returns.to_numpy(), confidence, "filtered-historical"
        ) == pytest.approx(-scaled[scaled <= cutoff].mean(), rel=1e-12)
    # Over a horizon: the rolling sums of the rescaled sample.
    sums = scaled.rolling(5).sum().dropna()
    assert value_at_risk(returns.to_numpy(), 0.99, "filtered-historical", 5) == pytest.approx(
        -sums.quantile(0.01), rel=1e-12
    )


def test_it_is_homogeneous_so_a_limit_can_scale_exposure_exactly():
    returns = clean("META").iloc[-WINDOW:].to_numpy()
    for k in (0.3, 2.0, 7.5):
        assert filtered_historical_var(k * returns, 0.99) == pytest.approx(
            k * filtered_historical_var(returns, 0.99), rel=1e-12
        )
        assert expected_shortfall(k * returns, 0.99, "filtered-historical") == pytest.approx(
            k * expected_shortfall(returns, 0.99, "filtered-historical"), rel=1e-12
        )


def test_it_follows_a_change_of_volatility_that_plain_history_averages_away():
    rng = np.random.default_rng(7)
    calm, storm = rng.normal(0, 0.005, 240), rng.normal(0, 0.03, 10)
    after_storm = np.concatenate([calm, storm])
    assert filtered_historical_var(after_storm, 0.99) > 2 * historical_var(after_storm, 0.99)
    quiet_again = np.concatenate([storm, rng.normal(0, 0.005, 240)])
    assert filtered_historical_var(quiet_again, 0.99) < historical_var(quiet_again, 0.99)


def test_degenerate_windows():
    assert filtered_historical_var(np.zeros(50), 0.99) == 0.0
    assert filtered_historical_var(np.array([]), 0.99) == 0.0
    with pytest.raises(ValueError, match="decay must be in"):
        volatility_scaled(np.ones(5), 1.0)


def rolling_forecasts(returns: np.ndarray, method: str) -> np.ndarray:
    """Each bar's VaR forecast from the ``WINDOW`` returns before it (NaN before that); plain
    history as numpy's quantile of each window, the filtered method by the code under test."""
    out = np.full(len(returns), np.nan)
    if method == "historical":
        windows = np.lib.stride_tricks.sliding_window_view(returns[:-1], WINDOW)
        out[WINDOW:] = np.maximum(0.0, -np.quantile(windows, 0.01, axis=1))
        return out
    for t in range(WINDOW, len(returns)):
        out[t] = value_at_risk(returns[t - WINDOW : t], 0.99, method)
    return out


def test_on_real_daily_returns_its_99_percent_var_is_breached_about_as_often_as_it_should():
    """The bundled sample (19 US stocks, 2014-2024): 2,496 one-day-ahead forecasts each."""
    index = clean("stocks-equal-weight").to_numpy()
    plain = kupiec_test(index, rolling_forecasts(index, "historical"), 0.99)
    filtered = kupiec_test(index, rolling_forecasts(index, "filtered-historical"), 0.99)
    assert plain.breach_rate > 0.015 and plain.p_value < 0.01  # breached too often
    assert filtered.breach_rate < 0.013 and filtered.p_value > 0.05  # as it should be
    # Stock by stock, Kupiec rejects plain history on most, the filtered method on far fewer.
    rejected = {"historical": 0, "filtered-historical": 0}
    for _, closes in stock_closes().items():
        returns = closes.pct_change(fill_method=None).dropna().to_numpy()
        for method in rejected:
            result = kupiec_test(returns, rolling_forecasts(returns, method), 0.99)
            rejected[method] += result.p_value < 0.05
    assert rejected["historical"] >= 12 and rejected["filtered-historical"] <= 8


def test_the_risk_limits_measure_the_book_with_it_when_configured():
    config = load_config(None, {"DEEPFACTOR_RISK__VAR_METHOD": "filtered-historical"}).risk
    closes = stock_closes().iloc[-WINDOW - 1 :, :6]
    returns = closes.pct_change(fill_method=None).iloc[1:].to_numpy()
    weights = np.full(6, 1 / 6)
    measured = figures(returns, weights, config, 252)
    series = portfolio_returns(returns, weights)
    assert measured.var == pytest.approx(filtered_historical_var(series, 0.99), rel=1e-12)
    assert measured.var != pytest.approx(historical_var(series, 0.99), rel=1e-3)
