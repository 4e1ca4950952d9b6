"""Every built-in factor equals an independent computation: per-asset loops on random data with
holes (late listing, delisting, missing bar, a bar without trading), and pandas rolling
windows on real 5-minute crypto bars with missing bars (a slice committed under
tests/fixtures/data)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from strategies.factors import FACTORS, FactorInputs, compute_panel
from tests.unit.strategies.factor_references import (
    DELISTED_AFTER,
    DELISTED_ASSET,
    GAP_ASSET,
    GAP_BAR,
    LATE_ASSET,
    LISTED_AT,
    NO_VOLUME_ASSET,
    NO_VOLUME_BAR,
    SMALL_PARAMS,
    ZERO_VOLUME_ASSET,
    ZERO_VOLUME_BAR,
    random_inputs,
    reference,
)

# 1,152 five-minute bars (2018-01-14..17) of 10 Binance */BTC pairs, one with 40 missing bars.
CRYPTO = (
    Path(__file__).resolve().parents[2]
    / "fixtures"
    / "data"
    / "freqtrade_binance_btc_5m_2018-01-14_17.csv.gz"
)
BUILT_IN = sorted(SMALL_PARAMS)


def assert_same_values(actual: np.ndarray, expected: np.ndarray, rtol: float) -> None:
    """Same NaN positions, and values within ``rtol`` (plus a floor far below the values'
    scale, for values that are differences of nearly equal numbers)."""
    np.testing.assert_array_equal(np.isnan(actual), np.isnan(expected))
    scale = np.nanmax(np.abs(expected)) if np.isfinite(expected).any() else 1.0
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=1e-10 * scale)


def test_every_built_in_factor_has_a_reference_case():
    assert sorted(FACTORS) == BUILT_IN


@pytest.mark.parametrize("name", BUILT_IN)
def test_factor_matches_a_per_asset_loop_on_random_bars_with_holes(name):
    inputs = random_inputs()
    params = SMALL_PARAMS[name]
    actual = compute_panel([(name, name, params)], inputs)[name]
    expected = reference(name, inputs, **params)
    assert np.isfinite(expected).sum() > 500  # the comparison covers real values
    assert_same_values(actual, expected, rtol=1e-9)


@pytest.mark.parametrize("name", BUILT_IN)
def test_factor_with_default_parameters_matches_a_per_asset_loop(name):
    inputs = random_inputs(n_bars=300, n_assets=3, holes=False)
    actual = FACTORS[name].function(inputs)
    expected = reference(name, inputs)
    assert np.isfinite(expected[-1]).all()
    assert_same_values(actual, expected, rtol=1e-9)


@pytest.mark.parametrize("name", BUILT_IN)
def test_factor_is_nan_around_each_hole_and_nowhere_else_it_has_data(name):
    inputs = random_inputs()
    spec = FACTORS[name]
    params = SMALL_PARAMS[name]
    window = spec.window(**params)
    values = compute_panel([(name, name, params)], inputs)[name]
    # The late asset gets its first value once its window fills, not before.
    assert np.isnan(values[: LISTED_AT + window - 1, LATE_ASSET]).all()
    assert not np.isnan(values[LISTED_AT + window - 1, LATE_ASSET])
    assert np.isnan(values[DELISTED_AFTER + 1 :, DELISTED_ASSET]).all()
    # A missing bar excludes the asset for exactly the windows that contain it.
    assert np.isnan(values[GAP_BAR : GAP_BAR + window, GAP_ASSET]).all()
    assert not np.isnan(values[GAP_BAR + window, GAP_ASSET])
    assert not np.isnan(values[GAP_BAR - 1, GAP_ASSET])
    no_volume = values[NO_VOLUME_BAR, NO_VOLUME_ASSET]
    assert np.isnan(no_volume) == spec.needs_volume
    zero_volume = values[ZERO_VOLUME_BAR, ZERO_VOLUME_ASSET]
    assert np.isnan(zero_volume) == (name == "amihud")


def test_momentum_on_a_known_series_is_the_skipped_return():
    close = np.arange(1.0, 11.0)[:, None]  # 1, 2, ..., 10
    inputs = FactorInputs(close=close, open=close, high=close, low=close)
    # lookback 6 -> the close 6 bars back is 4; skip 2 -> the close 2 bars back is 8.
    values = FACTORS["momentum"].function(inputs, lookback=6, skip=2)
    assert values[-1, 0] == pytest.approx(8 / 4 - 1)
    assert np.isnan(values[:6, 0]).all() and np.isfinite(values[6:, 0]).all()


def test_reversal_is_minus_the_recent_return_and_volatility_is_positive():
    close = np.array([[10.0, 10.0], [11.0, 9.0], [12.0, 8.0]])
    inputs = FactorInputs(close=close, open=close, high=close, low=close)
    np.testing.assert_allclose(FACTORS["reversal"].function(inputs, lookback=2)[-1], [-0.2, 0.2])
    assert (FACTORS["volatility"].function(inputs, lookback=2)[-1] > 0).all()


def test_beta_of_the_universe_mean_itself_is_one_and_its_idiosyncratic_volatility_zero():
    rng = np.random.default_rng(1)
    common = 100 * np.exp(np.cumsum(rng.normal(0, 0.02, 80)))
    close = np.column_stack([common, common * 1.5])  # the same returns: each is the universe
    inputs = FactorInputs(close=close, open=close, high=close, low=close)
    np.testing.assert_allclose(FACTORS["beta"].function(inputs, lookback=30)[-1], 1.0)
    np.testing.assert_allclose(
        FACTORS["idiosyncratic_volatility"].function(inputs, lookback=30)[-1], 0.0, atol=1e-9
    )


# ---- real data ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def crypto_slice() -> tuple[FactorInputs, dict[str, pd.DataFrame]]:
    from engine.data import load_panel

    panel = load_panel(CRYPTO)
    # Missing bars inside a pair's history are part of the comparison: NaN between prices.
    priced_before = np.logical_or.accumulate(np.isfinite(panel.close), axis=0)
    priced_after = np.logical_or.accumulate(np.isfinite(panel.close)[::-1], axis=0)[::-1]
    assert (np.isnan(panel.close) & priced_before & priced_after).sum() >= 10
    frames = {
        name: pd.DataFrame(getattr(panel, name), columns=panel.symbols)
        for name in ("open", "high", "low", "close", "volume")
    }
    return FactorInputs.from_panel(panel), frames


def pandas_reference(name: str, f: dict[str, pd.DataFrame], **params: int) -> pd.DataFrame:
    """The factor with pandas rolling windows (min_periods = the window: NaN inside excludes)."""
    p = {**FACTORS[name].defaults, **params}
    lookback = p.get("lookback")
    close, volume = f["close"], f["volume"]
    returns = close / close.shift(1) - 1.0
    if name.startswith("momentum") or name == "reversal":
        complete = close.rolling(lookback + 1).count() == lookback + 1
        skip = p.get("skip", 0)
        value = close.shift(skip) / close.shift(lookback) - 1.0
        return (value if name != "reversal" else -value).where(complete)
    if name == "trend":
        return close / close.rolling(lookback).mean() - 1.0
    if name == "max_return":
        return returns.rolling(lookback).max()
    if name in ("volatility", "low_volatility"):
        sign = -1.0 if name == "low_volatility" else 1.0
        return sign * returns.rolling(lookback).std()
    if name == "downside_volatility":
        return (returns.clip(upper=0.0) ** 2).rolling(lookback).mean() ** 0.5
    if name == "skewness":
        return returns.rolling(lookback).skew()
    if name in ("beta", "idiosyncratic_volatility"):
        market = returns.mean(axis=1)
        covariance = returns.rolling(lookback).cov(market)
        market_variance = market.rolling(lookback).var()
        if name == "beta":
            return covariance.div(market_variance, axis=0)
        residual_variance = returns.rolling(lookback).var() - covariance.pow(2).div(
            market_variance, axis=0
        )
        return (residual_variance.clip(lower=0.0) * (lookback - 1) / (lookback - 2)) ** 0.5
    if name == "range_volatility":
        log_range = np.log(f["high"] / f["low"])
        return ((log_range**2).rolling(lookback).mean() / (4 * math.log(2))) ** 0.5
    if name == "volume_trend":
        bar = pd.Series(np.arange(len(volume), dtype=float))
        slope = volume.rolling(lookback).cov(bar).div(bar.rolling(lookback).var(), axis=0)
        return slope / volume.rolling(lookback).mean()
    if name == "turnover":
        return volume.rolling(lookback).mean() / volume.rolling(p["long"]).mean()
    if name == "amihud":
        return (returns.abs() / (close * volume)).rolling(lookback).mean()
    if name == "dollar_volume":
        return np.log((close * volume).rolling(lookback).mean())
    raise KeyError(name)


@pytest.mark.parametrize("name", BUILT_IN)
def test_factor_matches_pandas_rolling_on_real_crypto_bars(name, crypto_slice):
    inputs, frames = crypto_slice
    actual = compute_panel([(name, name, {})], inputs)[name]
    expected = pandas_reference(name, frames).to_numpy()
    assert np.isfinite(expected).sum() > 5000
    # pandas' rolling moments are online updates, accurate to ~1e-10 rather than to rounding.
    assert_same_values(actual, expected, rtol=1e-6 if name == "skewness" else 1e-8)


def test_real_crypto_bars_with_short_windows_match_the_per_asset_loop(crypto_slice):
    inputs, _ = crypto_slice
    # The bars around the slice's missing bars: 40 before the first hole, 80 after the last, so
    # windows fill before the holes, empty over them and fill again after them.
    holes = np.flatnonzero(np.isnan(inputs.close).any(axis=1))
    assert holes.size and holes[0] >= 40 and holes[-1] + 80 <= len(inputs.close)
    bars = slice(holes[0] - 40, holes[-1] + 80)
    window = FactorInputs(
        close=inputs.close[bars],
        open=inputs.open[bars],
        high=inputs.high[bars],
        low=inputs.low[bars],
        volume=inputs.volume[bars],
    )
    requests = [(name, name, SMALL_PARAMS[name]) for name in BUILT_IN]
    actual = compute_panel(requests, window)
    for name in BUILT_IN:
        assert_same_values(actual[name], reference(name, window, **SMALL_PARAMS[name]), rtol=1e-9)
