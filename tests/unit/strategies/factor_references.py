"""Straightforward references for the factor tests: one asset and one bar at a time, in plain
Python (``statistics``, ``math``), sharing no code with the library.

``reference(name, inputs, **params)`` returns a (T, N) array. At bar t an asset gets NaN when
the window the factor reads reaches before bar 0 or holds a missing (NaN) input.
"""

from __future__ import annotations

import math
import statistics

import numpy as np

from strategies.factors import FACTORS  # for the default parameters only


def _window(column: np.ndarray, t: int, length: int) -> list[float] | None:
    start = t - length + 1
    if start < 0:
        return None
    values = [float(v) for v in column[start : t + 1]]
    return None if any(math.isnan(v) for v in values) else values


def _returns(closes: list[float]) -> list[float]:
    return [closes[k] / closes[k - 1] - 1.0 for k in range(1, len(closes))]


def market_returns(close: np.ndarray) -> list[float]:
    """Equal-weight mean of the returns available at each bar (NaN when none is)."""
    out = [math.nan]
    for t in range(1, close.shape[0]):
        available = [
            close[t, i] / close[t - 1, i] - 1.0
            for i in range(close.shape[1])
            if not (math.isnan(close[t, i]) or math.isnan(close[t - 1, i]))
        ]
        out.append(statistics.fmean(available) if available else math.nan)
    return out


def _skewness(x: list[float]) -> float:
    n = len(x)
    mean = statistics.fmean(x)
    m2 = sum((v - mean) ** 2 for v in x) / n
    m3 = sum((v - mean) ** 3 for v in x) / n
    if m2 == 0:
        return math.nan
    return math.sqrt(n * (n - 1)) / (n - 2) * m3 / m2**1.5


def _at(name: str, inputs, t: int, i: int, market: list[float], p: dict) -> float:  # noqa: C901
    close, volume = inputs.close[:, i], None if inputs.volume is None else inputs.volume[:, i]
    lookback = p.get("lookback")
    if name in ("momentum", "momentum_12_1", "momentum_6_1", "momentum_3_1"):
        c = _window(close, t, lookback + 1)
        return math.nan if c is None else c[-1 - p["skip"]] / c[0] - 1.0
    if name == "reversal":
        c = _window(close, t, lookback + 1)
        return math.nan if c is None else -(c[-1] / c[0] - 1.0)
    if name == "trend":
        c = _window(close, t, lookback)
        return math.nan if c is None else c[-1] / statistics.fmean(c) - 1.0
    if name == "range_volatility":
        high, low = _window(inputs.high[:, i], t, lookback), _window(inputs.low[:, i], t, lookback)
        if high is None or low is None:
            return math.nan
        mean_square = statistics.fmean(math.log(h / lo) ** 2 for h, lo in zip(high, low))
        return math.sqrt(mean_square / (4 * math.log(2)))
    if name in ("volume_trend", "turnover", "dollar_volume"):
        length = p["long"] if name == "turnover" else lookback
        v = _window(volume, t, length)
        if v is None:
            return math.nan
        if name == "volume_trend":
            mean = statistics.fmean(v)
            if mean <= 0:
                return math.nan
            return statistics.linear_regression(list(range(length)), v).slope / mean
        if name == "turnover":
            usual = statistics.fmean(v)
            return statistics.fmean(v[-lookback:]) / usual if usual > 0 else math.nan
        c = _window(close, t, length)
        if c is None:
            return math.nan
        mean = statistics.fmean(a * b for a, b in zip(c, v))
        return math.log(mean) if mean > 0 else math.nan
    # The rest read ``lookback`` returns, so lookback + 1 closes.
    c = _window(close, t, lookback + 1)
    if c is None:
        return math.nan
    r = _returns(c)
    if name == "volatility":
        return statistics.stdev(r)
    if name == "low_volatility":
        return -statistics.stdev(r)
    if name == "downside_volatility":
        return math.sqrt(sum(min(x, 0.0) ** 2 for x in r) / lookback)
    if name == "max_return":
        return max(r)
    if name == "skewness":
        return _skewness(r)
    if name in ("beta", "idiosyncratic_volatility"):
        m = market[t - lookback + 1 : t + 1]
        if any(math.isnan(x) for x in m) or statistics.pvariance(m) == 0:
            return math.nan
        fit = statistics.linear_regression(m, r)
        if name == "beta":
            return fit.slope
        residuals = [y - (fit.intercept + fit.slope * x) for x, y in zip(m, r)]
        return math.sqrt(sum(e * e for e in residuals) / (lookback - 2))
    if name == "amihud":
        v = _window(volume, t, lookback)
        if v is None:
            return math.nan
        dollar = [a * b for a, b in zip(c[1:], v)]
        if min(dollar) <= 0:
            return math.nan
        return statistics.fmean(abs(x) / d for x, d in zip(r, dollar))
    raise KeyError(f"no reference for factor {name!r}")


def reference(name: str, inputs, **params: int) -> np.ndarray:
    """Factor ``name`` computed one asset and one bar at a time."""
    resolved = {**FACTORS[name].defaults, **params}
    market = market_returns(inputs.close) if name in ("beta", "idiosyncratic_volatility") else []
    n_bars, n_assets = inputs.close.shape
    return np.array(
        [
            [_at(name, inputs, t, i, market, resolved) for i in range(n_assets)]
            for t in range(n_bars)
        ]
    )


# Lookbacks short enough that 160 random bars hold many windows and several block boundaries.
SMALL_PARAMS: dict[str, dict[str, int]] = {
    "momentum": {"lookback": 30, "skip": 5},
    "momentum_12_1": {"lookback": 24, "skip": 2},
    "momentum_6_1": {"lookback": 12, "skip": 2},
    "momentum_3_1": {"lookback": 6, "skip": 0},
    "reversal": {"lookback": 7},
    "trend": {"lookback": 10},
    "max_return": {"lookback": 10},
    "volatility": {"lookback": 12},
    "low_volatility": {"lookback": 9},
    "downside_volatility": {"lookback": 12},
    "beta": {"lookback": 25},
    "idiosyncratic_volatility": {"lookback": 20},
    "skewness": {"lookback": 15},
    "range_volatility": {"lookback": 10},
    "volume_trend": {"lookback": 10},
    "turnover": {"lookback": 5, "long": 30},
    "amihud": {"lookback": 10},
    "dollar_volume": {"lookback": 10},
}

LATE_ASSET, LISTED_AT = 4, 50  # no bars before LISTED_AT
DELISTED_ASSET, DELISTED_AFTER = 1, 140  # no bars after DELISTED_AFTER
GAP_ASSET, GAP_BAR = 2, 100  # one missing bar
ZERO_VOLUME_ASSET, ZERO_VOLUME_BAR = 3, 120
NO_VOLUME_ASSET, NO_VOLUME_BAR = 5, 80  # a bar with a close but no volume


def random_inputs(n_bars: int = 160, n_assets: int = 6, seed: int = 20240601, holes: bool = True):
    """OHLCV of a random market with a late listing, a delisting, a missing bar, a bar without
    trading and a bar without volume (when ``holes``)."""
    from strategies.factors import FactorInputs

    rng = np.random.default_rng(seed)
    market = rng.normal(0.0005, 0.02, (n_bars, 1))
    log_returns = market * rng.uniform(0.5, 1.5, n_assets) + rng.normal(
        0.0, 0.02, (n_bars, n_assets)
    )
    close = rng.uniform(1.0, 500.0, n_assets) * np.exp(np.cumsum(log_returns, axis=0))
    open_ = close * np.exp(rng.normal(0.0, 0.005, close.shape))
    high = np.maximum(open_, close) * np.exp(np.abs(rng.normal(0.0, 0.01, close.shape)))
    low = np.minimum(open_, close) * np.exp(-np.abs(rng.normal(0.0, 0.01, close.shape)))
    volume = rng.lognormal(0.0, 0.5, close.shape) * rng.uniform(1e3, 1e6, n_assets)
    arrays = [close, open_, high, low, volume]
    if holes:
        for array in arrays:
            array[:LISTED_AT, LATE_ASSET] = np.nan
            array[DELISTED_AFTER + 1 :, DELISTED_ASSET] = np.nan
            array[GAP_BAR, GAP_ASSET] = np.nan
        volume[ZERO_VOLUME_BAR, ZERO_VOLUME_ASSET] = 0.0
        volume[NO_VOLUME_BAR, NO_VOLUME_ASSET] = np.nan
    return FactorInputs(close=close, open=open_, high=high, low=low, volume=volume)
