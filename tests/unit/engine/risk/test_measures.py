"""Risk measures agree with independent computations on real return series from the repo.

Each expected value is computed another way than ``engine.risk.measures`` does it: pandas
instead of numpy, sorting and interpolating by hand, scipy's distribution objects, numerical
integration instead of closed forms, plain Python loops.
"""

from __future__ import annotations

import math
from functools import cache
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import integrate, stats

from engine.risk.measures import (
    VAR_METHODS,
    annualised_volatility,
    calmar_ratio,
    cornish_fisher_var,
    expected_shortfall,
    historical_var,
    horizon_returns,
    max_drawdown,
    parametric_var,
    sharpe_ratio,
    sortino_ratio,
    value_at_risk,
)

ROOT = Path(__file__).resolve().parents[4]
STOCKS = ROOT / "engine/data/sample/us_stocks_1d_2014-2024.csv.gz"
CRYPTO = ROOT / "tests/fixtures/data/freqtrade_binance_btc_5m_2018-01-14_17.csv.gz"
DAYS_PER_YEAR = 252
FIVE_MINUTES_PER_YEAR = 365 * 24 * 12
CONFIDENCES = (0.9, 0.95, 0.99)


@cache
def stock_closes() -> pd.DataFrame:
    # Wide file: a date column, then one adjusted close per ticker (BABA empty before its IPO).
    return pd.read_csv(STOCKS, index_col="date", parse_dates=["date"])


@cache
def crypto_closes() -> pd.DataFrame:
    # Long file: timestamp,symbol,open,high,low,close,volume; ADA/BTC misses 40 bars.
    bars = pd.read_csv(CRYPTO)
    return bars.pivot(index="timestamp", columns="symbol", values="close")


@cache
def series(name: str) -> pd.Series:
    """Return one real return series: NaN-free unless the name says it keeps its gaps."""
    if name == "stocks-equal-weight":  # daily, 2014-2024: the COVID crash, negative skew
        returns = stock_closes().pct_change(fill_method=None).mean(axis=1).iloc[1:]
    elif name == "META":  # one stock: heavier tails, skew < 0
        returns = stock_closes()["META"].pct_change(fill_method=None).iloc[1:]
    elif name == "crypto-equal-weight":  # 5-minute bars of 10 pairs quoted in BTC
        returns = crypto_closes().pct_change(fill_method=None).mean(axis=1).iloc[1:]
    elif name == "ADA/BTC-with-gaps":
        returns = crypto_closes()["ADA/BTC"].pct_change(fill_method=None).iloc[1:]
    else:
        raise KeyError(name)
    return returns


SERIES = ("stocks-equal-weight", "META", "crypto-equal-weight")


def clean(name: str) -> pd.Series:
    return series(name).dropna()


def hand_quantile(values, q: float) -> float:
    """Interpolate linearly between order statistics, found by sorting in plain Python."""
    ordered = sorted(float(v) for v in values)
    position = q * (len(ordered) - 1)
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (position - low) * (ordered[high] - ordered[low])


def hand_shape(values) -> tuple[float, float]:
    """Return G1 and G2 from central moments summed by hand, with the sample corrections."""
    data = [float(v) for v in values]
    n = len(data)
    mean = math.fsum(data) / n
    m2, m3, m4 = (math.fsum((v - mean) ** k for v in data) / n for k in (2, 3, 4))
    g1 = m3 / m2**1.5
    g2 = m4 / m2**2 - 3.0
    big_g1 = g1 * math.sqrt(n * (n - 1)) / (n - 2)
    big_g2 = ((n + 1) * g2 + 6.0) * (n - 1) / ((n - 2) * (n - 3))
    return big_g1, big_g2


def textbook_cf_z(z: float, skewness: float, kurtosis: float) -> float:
    """Second-order Cornish-Fisher quantile, one term per line."""
    first = z
    skew_term = (z * z - 1.0) / 6.0 * skewness
    kurtosis_term = (z * z * z - 3.0 * z) / 24.0 * kurtosis
    skew_squared_term = -(2.0 * z * z * z - 5.0 * z) / 36.0 * skewness * skewness
    return first + skew_term + kurtosis_term + skew_squared_term


def symmetric_normal_shaped(n_inner: int = 8) -> np.ndarray:
    """Return a symmetric series whose sample skewness and excess kurtosis (G1, G2) are zero.

    ±1 taken ``n_inner`` times each and ±b once each: ``b**2`` solves the quadratic that sets
    ``m4 / m2**2`` to ``3 - 6/(n+1)``, which is what G2 = 0 needs.
    """
    k, m = n_inner, 1
    n = 2 * (k + m)
    target = 3.0 - 6.0 / (n + 1)
    a = m * (k + m - target * m)
    b = -2.0 * target * k * m
    c = k * (k + m - target * k)
    t = (-b + math.sqrt(b * b - 4 * a * c)) / (2 * a)
    magnitudes = [1.0] * k + [math.sqrt(t)] * m
    return 0.0004 + 0.01 * np.array(magnitudes + [-v for v in magnitudes])


# -- horizon returns and historical VaR ----------------------------------------------------------
def test_horizon_returns_are_the_overlapping_sums_of_consecutive_returns():
    returns = clean("stocks-equal-weight")
    np.testing.assert_array_equal(horizon_returns(returns.to_numpy(), 1), returns.to_numpy())
    for horizon in (2, 5, 21):
        by_loop = [
            math.fsum(returns.iloc[i : i + horizon]) for i in range(len(returns) - horizon + 1)
        ]
        np.testing.assert_allclose(
            horizon_returns(returns.to_numpy(), horizon), by_loop, rtol=1e-12, atol=1e-17
        )
    assert len(horizon_returns(np.array([0.01, 0.02]), 3)) == 0


@pytest.mark.parametrize("name", SERIES)
@pytest.mark.parametrize("confidence", CONFIDENCES)
def test_historical_var_is_minus_the_pandas_and_hand_quantile(name, confidence):
    returns = clean(name)
    var = historical_var(returns.to_numpy(), confidence)
    assert var == pytest.approx(-returns.quantile(1 - confidence), rel=1e-12)
    assert var == pytest.approx(-hand_quantile(returns, 1 - confidence), rel=1e-12)
    assert value_at_risk(returns.to_numpy(), confidence) == var


@pytest.mark.parametrize("name", SERIES)
def test_historical_var_over_a_horizon_uses_rolling_sums(name):
    returns = clean(name)
    for horizon in (5, 10):
        sums = returns.rolling(horizon).sum().dropna()
        assert historical_var(returns.to_numpy(), 0.99, horizon) == pytest.approx(
            -sums.quantile(0.01), rel=1e-12
        )


def test_nan_returns_are_dropped_before_measuring():
    gappy = series("ADA/BTC-with-gaps")
    assert gappy.isna().sum() >= 40
    raw, kept = gappy.to_numpy(), gappy.dropna()
    for method in VAR_METHODS:
        for horizon in (1, 3):
            assert value_at_risk(raw, 0.95, method, horizon) == pytest.approx(
                value_at_risk(kept.to_numpy(), 0.95, method, horizon), rel=1e-15
            )
            assert expected_shortfall(raw, 0.95, method, horizon) == pytest.approx(
                expected_shortfall(kept.to_numpy(), 0.95, method, horizon), rel=1e-15
            )
    assert historical_var(raw, 0.95) == pytest.approx(-hand_quantile(kept, 0.05), rel=1e-12)


# -- parametric VaR ------------------------------------------------------------------------------
@pytest.mark.parametrize("name", SERIES)
@pytest.mark.parametrize("horizon", (1, 10))
def test_parametric_var_is_the_normal_quantile_of_scipy(name, horizon):
    returns = clean(name)
    fitted = stats.norm(loc=returns.mean() * horizon, scale=returns.std() * math.sqrt(horizon))
    for confidence in CONFIDENCES:
        assert parametric_var(returns.to_numpy(), confidence, horizon) == pytest.approx(
            -fitted.ppf(1 - confidence), rel=1e-12
        )


def test_parametric_var_scales_mean_by_h_and_std_by_root_h():
    returns = clean("stocks-equal-weight")
    mean, std = returns.mean(), returns.std(ddof=1)
    z = -2.3263478740408408  # Phi^-1(0.01), from tables
    for horizon in (1, 4, 10, 250):
        expected = -(mean * horizon + z * std * math.sqrt(horizon))
        assert parametric_var(returns.to_numpy(), 0.99, horizon) == pytest.approx(
            expected, rel=1e-12
        )


# -- Cornish-Fisher VaR --------------------------------------------------------------------------
@pytest.mark.parametrize("name", SERIES)
@pytest.mark.parametrize("horizon", (1, 10))
def test_cornish_fisher_var_follows_the_textbook_expansion(name, horizon):
    returns = clean(name)
    skewness, kurtosis = hand_shape(returns)
    # pandas reports the same bias-corrected G1 and G2 that the measure uses.
    assert returns.skew() == pytest.approx(skewness, rel=1e-9)
    assert returns.kurt() == pytest.approx(kurtosis, rel=1e-9)
    mean, std = returns.mean() * horizon, returns.std() * math.sqrt(horizon)
    for confidence in CONFIDENCES:
        z = stats.norm.ppf(1 - confidence)
        z_cf = textbook_cf_z(z, skewness / math.sqrt(horizon), kurtosis / horizon)
        # max(0, .): META's excess kurtosis of ~21 pushes z_cf above zero at 90% (see below).
        assert cornish_fisher_var(returns.to_numpy(), confidence, horizon) == pytest.approx(
            max(0.0, -(mean + z_cf * std)), rel=1e-10
        )


def test_cornish_fisher_equals_parametric_without_skew_or_excess_kurtosis():
    returns = symmetric_normal_shaped()
    assert pd.Series(returns).skew() == pytest.approx(0.0, abs=1e-12)
    assert pd.Series(returns).kurt() == pytest.approx(0.0, abs=1e-12)
    for confidence in CONFIDENCES:
        for horizon in (1, 5):
            assert cornish_fisher_var(returns, confidence, horizon) == pytest.approx(
                parametric_var(returns, confidence, horizon), rel=1e-12
            )
            assert expected_shortfall(
                returns, confidence, "cornish-fisher", horizon
            ) == pytest.approx(
                expected_shortfall(returns, confidence, "parametric", horizon), rel=1e-12
            )


def test_negative_skew_and_fat_tails_raise_cornish_fisher_var_at_99():
    # The equal-weight stock portfolio: COVID-crash days give it skew < 0 and excess kurtosis ~10.
    returns = clean("stocks-equal-weight")
    assert returns.skew() < 0 and returns.kurt() > 3
    values = returns.to_numpy()
    assert cornish_fisher_var(values, 0.99) > 1.5 * parametric_var(values, 0.99)
    # Near 95% the kurtosis term changes sign (z^3 - 3z > 0 for -sqrt(3) < z < 0), so the
    # expansion lowers the VaR there: a known trait of Cornish-Fisher, not of this data.
    assert cornish_fisher_var(values, 0.95) < parametric_var(values, 0.95)


def test_very_fat_tails_can_floor_cornish_fisher_var_at_90():
    # META's excess kurtosis (~21) is far outside the expansion's monotone range: at 90% the
    # kurtosis term outweighs z and the corrected quantile is a gain, so the VaR floors at zero
    # while the tail mean, integrated over the whole tail, still reports a loss.
    returns = clean("META")
    skewness, kurtosis = hand_shape(returns)
    assert textbook_cf_z(stats.norm.ppf(0.1), skewness, kurtosis) > 0
    values = returns.to_numpy()
    assert cornish_fisher_var(values, 0.9) == 0.0
    assert parametric_var(values, 0.9) > 0.0
    assert expected_shortfall(values, 0.9, "cornish-fisher") > parametric_var(values, 0.9)


# -- expected shortfall --------------------------------------------------------------------------
@pytest.mark.parametrize("name", SERIES)
@pytest.mark.parametrize("confidence", CONFIDENCES)
def test_historical_es_is_the_mean_of_the_sorted_tail(name, confidence):
    returns = clean(name)
    cutoff = hand_quantile(returns, 1 - confidence)
    tail = [float(v) for v in sorted(returns) if v <= cutoff]
    assert expected_shortfall(returns.to_numpy(), confidence) == pytest.approx(
        -math.fsum(tail) / len(tail), rel=1e-12
    )
    sums = returns.rolling(5).sum().dropna()
    five_day_tail = sums[sums <= sums.quantile(1 - confidence)]
    assert expected_shortfall(returns.to_numpy(), confidence, "historical", 5) == pytest.approx(
        -five_day_tail.mean(), rel=1e-12
    )


@pytest.mark.parametrize("name", SERIES)
@pytest.mark.parametrize("horizon", (1, 10))
def test_parametric_es_is_the_mean_of_scipys_truncated_normal(name, horizon):
    returns = clean(name)
    loc, scale = returns.mean() * horizon, returns.std() * math.sqrt(horizon)
    for confidence in CONFIDENCES:
        upper = stats.norm.ppf(1 - confidence)  # the VaR quantile, in standard units
        tail_mean = stats.truncnorm(-np.inf, upper, loc=loc, scale=scale).mean()
        assert expected_shortfall(
            returns.to_numpy(), confidence, "parametric", horizon
        ) == pytest.approx(-tail_mean, rel=1e-10)


@pytest.mark.parametrize("name", SERIES)
@pytest.mark.parametrize("horizon", (1, 10))
def test_cornish_fisher_es_integrates_the_cf_quantile_over_the_tail(name, horizon):
    returns = clean(name)
    skewness = returns.skew() / math.sqrt(horizon)
    kurtosis = returns.kurt() / horizon
    mean, std = returns.mean() * horizon, returns.std() * math.sqrt(horizon)
    for confidence in CONFIDENCES:
        tail = 1 - confidence
        area, _ = integrate.quad(
            lambda p: textbook_cf_z(stats.norm.ppf(p), skewness, kurtosis),
            0.0,
            tail,
            epsabs=0.0,
            epsrel=1e-12,
            limit=200,
        )
        assert expected_shortfall(
            returns.to_numpy(), confidence, "cornish-fisher", horizon
        ) == pytest.approx(-(mean + std * area / tail), rel=1e-9)


def test_cornish_fisher_es_is_raised_to_its_var_where_the_expansion_breaks_down():
    # Alternating +-1%: no skew, excess kurtosis -2 (two points). There the CF quantile turns back
    # towards the mean deep in the tail, so its tail mean at 99% lies above the 99% quantile.
    returns = np.tile([0.01, -0.01], 50)
    skewness, kurtosis = hand_shape(returns)
    z = stats.norm.ppf(0.01)
    tail_mean, _ = integrate.quad(
        lambda p: textbook_cf_z(stats.norm.ppf(p), skewness, kurtosis), 0.0, 0.01, epsrel=1e-12
    )
    assert tail_mean / 0.01 > textbook_cf_z(z, skewness, kurtosis)
    var = cornish_fisher_var(returns, 0.99)
    series_ = pd.Series(returns)
    expected = -(series_.mean() + textbook_cf_z(z, skewness, kurtosis) * series_.std())
    assert var == pytest.approx(expected, rel=1e-12)
    assert expected_shortfall(returns, 0.99, "cornish-fisher") == var


# -- properties ----------------------------------------------------------------------------------
@pytest.mark.parametrize("name", SERIES)
@pytest.mark.parametrize("method", VAR_METHODS)
def test_var_grows_with_confidence_and_es_is_at_least_var(name, method):
    values = clean(name).to_numpy()
    for horizon in (1, 5):
        var_95 = value_at_risk(values, 0.95, method, horizon)
        var_99 = value_at_risk(values, 0.99, method, horizon)
        assert var_99 >= var_95 > 0.0
        for confidence in CONFIDENCES:
            var = value_at_risk(values, confidence, method, horizon)
            assert expected_shortfall(values, confidence, method, horizon) >= var >= 0.0


@pytest.mark.parametrize("name", SERIES)
@pytest.mark.parametrize("method", VAR_METHODS)
@pytest.mark.parametrize("scale", (0.37, 3.0, 250.0))
def test_var_and_es_scale_with_the_portfolio(name, method, scale):
    values = clean(name).to_numpy()
    for confidence in (0.95, 0.99):
        for horizon in (1, 5):
            var = value_at_risk(values, confidence, method, horizon)
            es = expected_shortfall(values, confidence, method, horizon)
            assert var > 0.0 and es > 0.0  # the floor does not bind
            assert value_at_risk(scale * values, confidence, method, horizon) == pytest.approx(
                scale * var, rel=1e-12
            )
            assert expected_shortfall(scale * values, confidence, method, horizon) == pytest.approx(
                scale * es, rel=1e-12
            )


@pytest.mark.parametrize("method", VAR_METHODS)
def test_var_and_es_are_floored_at_zero_and_zero_without_data(method):
    gains = np.array([0.010, 0.012, 0.011, 0.013, 0.009, 0.010, 0.014])
    assert value_at_risk(gains, 0.99, method) == 0.0
    assert expected_shortfall(gains, 0.99, method) == 0.0
    for empty in (np.array([]), np.array([np.nan, np.nan])):
        assert value_at_risk(empty, 0.99, method) == 0.0
        assert expected_shortfall(empty, 0.99, method, 3) == 0.0


def test_one_return_has_a_historical_var_but_no_fitted_one():
    one_loss = np.array([-0.02])
    assert historical_var(one_loss, 0.99) == pytest.approx(0.02, rel=1e-15)
    assert expected_shortfall(one_loss, 0.99) == pytest.approx(0.02, rel=1e-15)
    for method in ("parametric", "cornish-fisher"):
        assert value_at_risk(one_loss, 0.99, method) == 0.0
        assert expected_shortfall(one_loss, 0.99, method) == 0.0


@pytest.mark.parametrize("confidence", (0.0, 1.0, 1.5, -0.1, 95.0, float("nan")))
@pytest.mark.parametrize("method", VAR_METHODS)
def test_confidence_outside_the_open_unit_interval_is_refused(confidence, method):
    values = clean("META").to_numpy()
    with pytest.raises(ValueError, match=rf"confidence must be in \(0, 1\), received {confidence}"):
        value_at_risk(values, confidence, method)
    with pytest.raises(ValueError, match=rf"received {confidence}"):
        expected_shortfall(values, confidence, method)


@pytest.mark.parametrize("horizon", (0, -3, 2.5))
def test_a_horizon_below_one_bar_is_refused(horizon):
    values = clean("META").to_numpy()
    for method in VAR_METHODS:
        with pytest.raises(
            ValueError, match=rf"horizon must be an integer >= 1, received {horizon}"
        ):
            value_at_risk(values, 0.99, method, horizon)
    with pytest.raises(ValueError, match="horizon"):
        horizon_returns(values, horizon)


def test_an_unknown_method_is_refused_by_name():
    values = clean("META").to_numpy()
    with pytest.raises(ValueError, match="method must be one of .* received 'monte-carlo'"):
        value_at_risk(values, 0.99, "monte-carlo")
    with pytest.raises(ValueError, match="received 'gaussian'"):
        expected_shortfall(values, 0.99, "gaussian")


# -- drawdown and performance ratios -------------------------------------------------------------
def equity_of(returns: pd.Series) -> pd.Series:
    return 100.0 * pd.concat([pd.Series([1.0]), (1.0 + returns).reset_index(drop=True)]).cumprod()


@pytest.mark.parametrize("name", SERIES)
def test_max_drawdown_matches_a_plain_loop(name):
    equity = equity_of(clean(name))
    peak, deepest, trough = -math.inf, 0.0, 0
    for i, value in enumerate(equity):
        peak = max(peak, value)
        if 1.0 - value / peak > deepest:
            deepest, trough = 1.0 - value / peak, i
    assert max_drawdown(equity.to_numpy()) == pytest.approx(deepest, rel=1e-12)
    if name == "stocks-equal-weight":  # the deepest fall of 2014-2024 is the COVID crash
        assert str(clean(name).index[trough - 1].date()).startswith("2020-03")


def test_max_drawdown_is_zero_for_a_curve_that_never_falls_or_is_empty():
    assert max_drawdown(np.array([1.0, 1.0, 2.0, 5.0])) == 0.0
    assert max_drawdown(np.array([])) == 0.0


@pytest.mark.parametrize(
    ("name", "periods_per_year"),
    [
        ("stocks-equal-weight", DAYS_PER_YEAR),
        ("META", DAYS_PER_YEAR),
        ("crypto-equal-weight", FIVE_MINUTES_PER_YEAR),
    ],
)
def test_ratios_match_pandas(name, periods_per_year):
    returns = clean(name)
    values = returns.to_numpy()
    root = math.sqrt(periods_per_year)
    assert annualised_volatility(values, periods_per_year) == pytest.approx(
        returns.std() * root, rel=1e-12
    )
    assert sharpe_ratio(values, periods_per_year) == pytest.approx(
        returns.mean() / returns.std() * root, rel=1e-12
    )
    downside = returns.clip(upper=0.0).pow(2).mean() ** 0.5
    assert sortino_ratio(values, periods_per_year) == pytest.approx(
        returns.mean() / downside * root, rel=1e-12
    )
    equity = equity_of(returns)
    growth = (equity.iloc[-1] / equity.iloc[0]) ** (periods_per_year / len(returns)) - 1.0
    deepest = (1.0 - equity / equity.cummax()).max()
    assert calmar_ratio(equity.to_numpy(), periods_per_year) == pytest.approx(
        growth / deepest, rel=1e-12
    )


def test_undefined_ratios_are_zero():
    flat = np.zeros(20)
    gains_only = np.array([0.01, 0.02, 0.0, 0.03])
    assert sharpe_ratio(flat, 252) == 0.0 and sharpe_ratio(np.array([0.05]), 252) == 0.0
    assert sortino_ratio(gains_only, 252) == 0.0 and sortino_ratio(np.array([-0.05]), 252) == 0.0
    assert annualised_volatility(np.array([0.05]), 252) == 0.0
    assert calmar_ratio(np.array([1.0, 1.1, 1.2]), 252) == 0.0
    assert calmar_ratio(np.array([]), 252) == 0.0
