"""Performance and risk figures of an equity curve, as written to ``summary.json``."""

from __future__ import annotations

import numpy as np


def drawdown(equity: np.ndarray) -> np.ndarray:
    """Return the fraction below the running high-water mark at each point (>= 0)."""
    high_water = np.maximum.accumulate(equity)
    return 1.0 - equity / high_water


def historical_var(returns: np.ndarray, confidence: float) -> float:
    """Return the historical Value-at-Risk of ``returns`` as a positive loss fraction.

    Kept for its callers; ``engine.risk.measures.historical_var`` computes it (and a horizon).
    """
    from engine.risk import measures  # see performance_summary

    return measures.historical_var(returns, confidence)


def performance_summary(equity: np.ndarray, periods_per_year: float) -> dict[str, float]:
    """Return total return, CAGR, Sharpe (zero risk-free rate), max drawdown and VaR 95/99."""
    equity = np.asarray(equity, dtype=float)
    if len(equity) == 0:
        raise ValueError("performance_summary needs at least one equity point")
    returns = equity[1:] / equity[:-1] - 1.0
    # Imported here: the risk measures load scipy.stats (about 55 MB resident and most of a
    # second), which a process that only records (and writes this summary now and then) must
    # not carry from its start, nor any process that imports the recorder to build it.
    from engine.risk import measures

    return {
        "total_return": float(equity[-1] / equity[0] - 1.0),
        "cagr": measures.cagr(equity, periods_per_year),
        "sharpe": measures.sharpe_ratio(returns, periods_per_year),
        "max_drawdown": measures.max_drawdown(equity),
        "var_95": measures.historical_var(returns, 0.95),
        "var_99": measures.historical_var(returns, 0.99),
    }
