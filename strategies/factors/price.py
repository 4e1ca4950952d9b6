"""Price factors: momentum at three horizons, short-term reversal, trend, lottery (max return).

Every factor is NaN for an asset unless it has a close on each bar of the factor's window
(a missing bar inside the window excludes it), and reads no bar after the decision bar t.
Returns are simple: ``r[t] = close[t] / close[t-1] - 1``.
"""

from __future__ import annotations

import numpy as np

from strategies.factors.history import FactorData
from strategies.factors.registry import register_kernel


def complete(data: FactorData, length: int) -> np.ndarray:
    """True where the asset has a close on each of the last ``length`` bars."""
    # A window sum is NaN as soon as one close in the window is missing.
    return ~np.isnan(data.window_sum("close", length))


def skip_below_lookback(lookback: int, skip: int) -> str | None:
    """The momentum rule across parameters: the skipped bars lie inside the lookback."""
    if skip >= lookback:
        return f"parameter 'skip' must be below lookback ({lookback}), received {skip}"
    return None


def _momentum(data: FactorData, lookback: int, skip: int) -> np.ndarray:
    value = data.lag("close", skip) / data.lag("close", lookback) - 1.0
    return np.where(complete(data, lookback + 1), value, np.nan)


def _momentum_window(lookback: int, skip: int) -> int:
    return lookback + 1


@register_kernel(
    "momentum", window=_momentum_window, check=skip_below_lookback, lookback=252, skip=21
)
def momentum(data: FactorData, lookback: int = 252, skip: int = 21) -> np.ndarray:
    """Momentum: close[t-skip] / close[t-lookback] - 1 (12-1 momentum with the defaults).

    The last ``skip`` bars are left out because they tend to reverse.
    """
    return _momentum(data, lookback, skip)


@register_kernel(
    "momentum_12_1", window=_momentum_window, check=skip_below_lookback, lookback=252, skip=21
)
def momentum_12_1(data: FactorData, lookback: int = 252, skip: int = 21) -> np.ndarray:
    """12-1 momentum: close[t-21] / close[t-252] - 1, a year's return without its last month."""
    return _momentum(data, lookback, skip)


@register_kernel(
    "momentum_6_1", window=_momentum_window, check=skip_below_lookback, lookback=126, skip=21
)
def momentum_6_1(data: FactorData, lookback: int = 126, skip: int = 21) -> np.ndarray:
    """6-1 momentum: close[t-21] / close[t-126] - 1, six months' return without the last one."""
    return _momentum(data, lookback, skip)


@register_kernel(
    "momentum_3_1", window=_momentum_window, check=skip_below_lookback, lookback=63, skip=21
)
def momentum_3_1(data: FactorData, lookback: int = 63, skip: int = 21) -> np.ndarray:
    """3-1 momentum: close[t-21] / close[t-63] - 1, three months' return without the last one."""
    return _momentum(data, lookback, skip)


@register_kernel("reversal", window=lambda lookback: lookback + 1, lookback=21)
def reversal(data: FactorData, lookback: int = 21) -> np.ndarray:
    """Short-term reversal: -(close[t] / close[t-lookback] - 1), minus the recent return."""
    value = -(data.series("close") / data.lag("close", lookback) - 1.0)
    return np.where(complete(data, lookback + 1), value, np.nan)


@register_kernel("trend", window=lambda lookback: lookback, lookback=50)
def trend(data: FactorData, lookback: int = 50) -> np.ndarray:
    """Trend: close[t] / mean(close over the last lookback bars) - 1, price over its moving
    average."""
    moving_average = data.window_sum("close", lookback) / lookback
    return data.series("close") / moving_average - 1.0


@register_kernel("max_return", window=lambda lookback: lookback + 1, lookback=21)
def max_return(data: FactorData, lookback: int = 21) -> np.ndarray:
    """Lottery: the largest single-bar return over the last lookback bars,
    max(r[t-lookback+1..t])."""
    return data.window_max("returns", lookback)
