"""Volume factors: volume trend, abnormal turnover, Amihud illiquidity, dollar volume (size).

All need volume (``needs_volume=True``): with a close-only source they refuse to run and the
caller leaves them out. Volume is in base units (coins, shares); ``close * volume`` is the
traded value in quote currency. A factor is NaN unless every bar of its window has the inputs
it reads.
"""

from __future__ import annotations

import numpy as np

from strategies.factors.history import FactorData
from strategies.factors.registry import register_kernel


@register_kernel(
    "volume_trend",
    window=lambda lookback: lookback,
    needs_volume=True,
    minimums={"lookback": 2},
    lookback=21,
)
def volume_trend(data: FactorData, lookback: int = 21) -> np.ndarray:
    """Volume trend: OLS slope of volume on bar number over lookback bars, over the mean volume.

    The fractional change of volume per bar; NaN when the window traded nothing.
    """
    n = lookback
    total = data.window_sum("volume", n)
    indexed_total = data.window_sum("indexed_volume", n)  # sum of bar_number * volume
    centre = data.bar_index() - (n - 1) / 2.0
    centred_index_squares = n * (n * n - 1) / 12.0
    slope = (indexed_total - centre * total) / centred_index_squares
    return np.where(total > 0.0, slope * n / total, np.nan)


def _turnover_rule(lookback: int, long: int) -> str | None:
    if lookback >= long:
        return f"parameter 'lookback' must be below long ({long}), received {lookback}"
    return None


@register_kernel(
    "turnover",
    window=lambda lookback, long: long,
    needs_volume=True,
    check=_turnover_rule,
    lookback=21,
    long=252,
)
def turnover(data: FactorData, lookback: int = 21, long: int = 252) -> np.ndarray:
    """Abnormal turnover: mean volume over the last lookback bars / mean volume over the last long.

    Turnover is volume over units outstanding; in this ratio the units outstanding cancel, so
    it needs no supply data. NaN when the long window traded nothing.
    """
    recent = data.window_sum("volume", lookback) / lookback
    usual = data.window_sum("volume", long) / long
    return np.where(usual > 0.0, recent / usual, np.nan)


@register_kernel("amihud", window=lambda lookback: lookback + 1, needs_volume=True, lookback=21)
def amihud(data: FactorData, lookback: int = 21) -> np.ndarray:
    """Amihud illiquidity: mean of |r| / (close * volume) over the last lookback bars.

    The price move per unit of quote currency traded (not rescaled). A bar without trading
    counts as missing, which excludes the asset for the window.
    """
    return data.window_sum("amihud_ratio", lookback) / lookback


@register_kernel("dollar_volume", window=lambda lookback: lookback, needs_volume=True, lookback=21)
def dollar_volume(data: FactorData, lookback: int = 21) -> np.ndarray:
    """Dollar volume: ln(mean of close * volume over the last lookback bars), a size proxy.

    NaN when the window traded nothing.
    """
    mean = data.window_sum("dollar_volume", lookback) / lookback
    return np.where(mean > 0.0, np.log(mean), np.nan)
