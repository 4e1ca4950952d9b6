"""Per-bar series that factors reduce over windows: returns, the universe's return, and so on.

Each is an element-wise function of the current bar (and of lags), written once against
:class:`~strategies.factors.history.FactorData`, so the full-history path evaluates it on (T, N)
arrays and the incremental path on one (N,) row with the same floating-point operations.

Conventions
-----------
- Returns are simple close-to-close returns, ``r[t] = close[t] / close[t-1] - 1``; NaN when
  either close is missing.
- The universe's return ``m[t]`` is the equal-weight mean of the returns available at bar t
  (assets with a close at t and t-1), the asset itself included; NaN when none is.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from strategies.factors.history import FactorData

RAW_SERIES = ("open", "high", "low", "close", "volume")
# Series with one value per bar for the whole universe, shaped (T, 1) / (1,), not per asset.
MARKET_SERIES = frozenset({"market_returns", "market_returns_squared"})


def _returns(data: FactorData) -> np.ndarray:
    return data.series("close") / data.lag("close", 1) - 1.0


def _returns_squared(data: FactorData) -> np.ndarray:
    returns = data.series("returns")
    return returns * returns


def _returns_cubed(data: FactorData) -> np.ndarray:
    returns = data.series("returns")
    return returns * returns * returns  # not ** 3: pow may round differently from two products


def _downside_squared(data: FactorData) -> np.ndarray:
    downside = np.minimum(data.series("returns"), 0.0)  # np.minimum keeps NaN
    return downside * downside


def _market_returns(data: FactorData) -> np.ndarray:
    return data.cross_sectional_mean(data.series("returns"))


def _market_returns_squared(data: FactorData) -> np.ndarray:
    market = data.series("market_returns")
    return market * market


def _returns_times_market(data: FactorData) -> np.ndarray:
    return data.series("returns") * data.series("market_returns")


def _dollar_volume(data: FactorData) -> np.ndarray:
    return data.series("close") * data.series("volume")


def _amihud_ratio(data: FactorData) -> np.ndarray:
    dollar_volume = data.series("dollar_volume")
    # A bar with no trading has no price impact to measure: it counts as missing.
    return np.where(dollar_volume > 0.0, np.abs(data.series("returns")) / dollar_volume, np.nan)


def _indexed_volume(data: FactorData) -> np.ndarray:
    return data.bar_index() * data.series("volume")


def _log_range_squared(data: FactorData) -> np.ndarray:
    log_range = np.log(data.series("high") / data.series("low"))
    return log_range * log_range


DERIVED_SERIES: dict[str, Callable[[FactorData], np.ndarray]] = {
    "returns": _returns,
    "returns_squared": _returns_squared,
    "returns_cubed": _returns_cubed,
    "downside_squared": _downside_squared,
    "market_returns": _market_returns,
    "market_returns_squared": _market_returns_squared,
    "returns_times_market": _returns_times_market,
    "dollar_volume": _dollar_volume,
    "amihud_ratio": _amihud_ratio,
    "indexed_volume": _indexed_volume,
    "log_range_squared": _log_range_squared,
}
