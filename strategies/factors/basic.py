"""The first factors: momentum, short-term reversal and low volatility.

Each reads a window of closes shaped (W, N), oldest first, whose last row is the decision bar,
and returns one value per asset, NaN where the asset lacks the history the factor needs (it
is then excluded, never zero-filled). Only rows at or before the decision bar are read.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

FactorFunction = Callable[..., np.ndarray]


def momentum(close: np.ndarray, lookback: int = 252, skip: int = 21) -> np.ndarray:
    """Return close ``skip`` bars ago over close ``lookback`` bars ago, minus 1 (12-1 momentum
    with the defaults: the last month is skipped because it tends to reverse)."""
    if close.shape[0] <= lookback:
        return np.full(close.shape[1], np.nan)
    return close[-1 - skip] / close[-1 - lookback] - 1.0


def reversal(close: np.ndarray, lookback: int = 5) -> np.ndarray:
    """Return minus the return over the last ``lookback`` bars (losers tend to bounce)."""
    if close.shape[0] <= lookback:
        return np.full(close.shape[1], np.nan)
    return -(close[-1] / close[-1 - lookback] - 1.0)


def low_volatility(close: np.ndarray, lookback: int = 20) -> np.ndarray:
    """Return minus the standard deviation of the last ``lookback`` log returns."""
    if close.shape[0] <= lookback:
        return np.full(close.shape[1], np.nan)
    returns = np.diff(np.log(close[-1 - lookback:]), axis=0)
    return -np.std(returns, axis=0, ddof=1)


@dataclass(frozen=True)
class FactorSpec:
    """A registered factor: its function and how many bars of history it reads at most."""

    function: FactorFunction
    parameters: tuple[str, ...]

    def window(self, **parameters: int) -> int:
        """Bars of history (decision bar included) the factor needs with ``parameters``."""
        return max(int(v) for v in parameters.values()) + 1 if parameters else 1


FACTORS: dict[str, FactorSpec] = {
    "momentum": FactorSpec(momentum, ("lookback", "skip")),
    "reversal": FactorSpec(reversal, ("lookback",)),
    "low_volatility": FactorSpec(low_volatility, ("lookback",)),
}


def compute_factor(name: str, close: np.ndarray, **parameters: int) -> np.ndarray:
    """Return factor ``name`` on the window ``close`` with ``parameters``."""
    return FACTORS[name].function(close, **parameters)
