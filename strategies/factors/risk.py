"""Risk factors: volatility, downside volatility, beta, idiosyncratic volatility, skewness,
range (high-low) volatility.

Raw characteristics with their natural sign (volatility is positive): preprocessing and the
factor weights decide which direction is rewarded. Returns are simple,
``r[t] = close[t] / close[t-1] - 1``; "the universe" is the equal-weight mean ``m[t]`` of the
returns available at bar t. A factor of ``lookback`` returns reads ``lookback + 1`` closes and
is NaN unless all of them are present. Nothing is annualised.
"""

from __future__ import annotations

import numpy as np

from strategies.factors.history import FactorData
from strategies.factors.registry import register_kernel

# Below this fraction of the mean square, a variance is rounding noise, not dispersion.
_RELATIVE_VARIANCE_FLOOR = 1e-14


def _returns_window(lookback: int) -> int:
    return lookback + 1


def _sample_volatility(data: FactorData, lookback: int) -> np.ndarray:
    total = data.window_sum("returns", lookback)
    total_squares = data.window_sum("returns_squared", lookback)
    variance = (total_squares - total * total / lookback) / (lookback - 1)
    return np.sqrt(np.maximum(variance, 0.0))


@register_kernel("volatility", window=_returns_window, minimums={"lookback": 2}, lookback=63)
def volatility(data: FactorData, lookback: int = 63) -> np.ndarray:
    """Realised volatility: the sample standard deviation (ddof 1) of the last lookback returns."""
    return _sample_volatility(data, lookback)


@register_kernel("low_volatility", window=_returns_window, minimums={"lookback": 2}, lookback=20)
def low_volatility(data: FactorData, lookback: int = 20) -> np.ndarray:
    """Minus realised volatility: -std(last lookback returns, ddof 1); kept for older configs.

    The first factor set shipped this signed name and configs weight it; it is the one factor
    whose sign is flipped, so those configs keep favouring calm assets. Prefer ``volatility``.
    """
    return -_sample_volatility(data, lookback)


@register_kernel("downside_volatility", window=_returns_window, lookback=63)
def downside_volatility(data: FactorData, lookback: int = 63) -> np.ndarray:
    """Downside volatility: sqrt(sum(min(r, 0)^2) / lookback) over the last lookback returns."""
    return np.sqrt(data.window_sum("downside_squared", lookback) / lookback)


def _regression_sums(data: FactorData, lookback: int) -> tuple[np.ndarray, ...]:
    # Centred sums of squares and products of the asset (y) and universe (x) returns.
    sum_x = data.window_sum("market_returns", lookback)
    sum_y = data.window_sum("returns", lookback)
    centred_xx = data.window_sum("market_returns_squared", lookback) - sum_x * sum_x / lookback
    centred_xy = data.window_sum("returns_times_market", lookback) - sum_x * sum_y / lookback
    return sum_y, centred_xx, centred_xy


@register_kernel("beta", window=_returns_window, minimums={"lookback": 2}, lookback=252)
def beta(data: FactorData, lookback: int = 252) -> np.ndarray:
    """Beta: OLS slope of the asset's returns on the universe's mean return, cov(r, m) / var(m).

    Over the last lookback bars; the universe is the equal-weight mean of the returns
    available at each bar (the asset itself included).
    """
    _, centred_xx, centred_xy = _regression_sums(data, lookback)
    return np.where(centred_xx > 0.0, centred_xy / centred_xx, np.nan)


@register_kernel(
    "idiosyncratic_volatility", window=_returns_window, minimums={"lookback": 3}, lookback=63
)
def idiosyncratic_volatility(data: FactorData, lookback: int = 63) -> np.ndarray:
    """Idiosyncratic volatility: std (ddof 2) of the residuals of r on the universe's return, OLS.

    Over the last lookback bars, with an intercept: sqrt(SSR / (lookback - 2)).
    """
    sum_y, centred_xx, centred_xy = _regression_sums(data, lookback)
    centred_yy = data.window_sum("returns_squared", lookback) - sum_y * sum_y / lookback
    residual_squares = centred_yy - centred_xy * centred_xy / centred_xx
    value = np.sqrt(np.maximum(residual_squares, 0.0) / (lookback - 2))
    return np.where(centred_xx > 0.0, value, np.nan)


@register_kernel("skewness", window=_returns_window, minimums={"lookback": 3}, lookback=63)
def skewness(data: FactorData, lookback: int = 63) -> np.ndarray:
    """Skewness: the adjusted sample skewness (pandas' and Excel's G1) of the last lookback returns.

    G1 = sqrt(n (n-1)) / (n-2) * m3 / m2^1.5 with central moments m2, m3 over n = lookback
    returns; NaN when the returns do not vary.
    """
    n = lookback
    mean = data.window_sum("returns", n) / n
    mean_square = data.window_sum("returns_squared", n) / n
    mean_cube = data.window_sum("returns_cubed", n) / n
    m2 = mean_square - mean * mean
    m3 = mean_cube - 3.0 * mean * mean_square + 2.0 * mean * mean * mean
    g1 = m3 / (m2 * np.sqrt(m2))
    value = g1 * (np.sqrt(n * (n - 1.0)) / (n - 2.0))
    return np.where(m2 > _RELATIVE_VARIANCE_FLOOR * mean_square, value, np.nan)


@register_kernel("range_volatility", window=lambda lookback: lookback, lookback=21)
def range_volatility(data: FactorData, lookback: int = 21) -> np.ndarray:
    """Range volatility (Parkinson): sqrt(mean(ln(high / low)^2) / (4 ln 2)) over lookback bars.

    Reads each bar's high and low only; a close-only source (high = low) gives 0.
    """
    mean_square = data.window_sum("log_range_squared", lookback) / lookback
    return np.sqrt(mean_square / (4.0 * np.log(2.0)))
