"""Performance and risk figures of an equity curve, as written to ``summary.json``."""

from __future__ import annotations

import math

import numpy as np


def drawdown(equity: np.ndarray) -> np.ndarray:
    """Return the fraction below the running high-water mark at each point (>= 0)."""
    high_water = np.maximum.accumulate(equity)
    return 1.0 - equity / high_water


def historical_var(returns: np.ndarray, confidence: float) -> float:
    """Return the historical Value-at-Risk of ``returns`` as a positive loss fraction."""
    if len(returns) == 0:
        return 0.0
    return float(max(0.0, -np.quantile(returns, 1.0 - confidence)))


def performance_summary(equity: np.ndarray, periods_per_year: float) -> dict[str, float]:
    """Return total return, CAGR, Sharpe (zero risk-free rate), max drawdown and VaR 95/99."""
    equity = np.asarray(equity, dtype=float)
    if len(equity) == 0:
        raise ValueError("performance_summary needs at least one equity point")
    returns = equity[1:] / equity[:-1] - 1.0
    total_return = float(equity[-1] / equity[0] - 1.0)
    years = len(returns) / periods_per_year
    cagr = (
        float((equity[-1] / equity[0]) ** (1.0 / years) - 1.0)
        if years > 0 and equity[-1] > 0
        else 0.0
    )
    volatility = float(np.std(returns, ddof=1)) if len(returns) > 1 else 0.0
    sharpe = (
        float(np.mean(returns) / volatility * math.sqrt(periods_per_year))
        if volatility > 0
        else 0.0
    )
    return {
        "total_return": total_return,
        "cagr": cagr,
        "sharpe": sharpe,
        "max_drawdown": float(drawdown(equity).max()),
        "var_95": historical_var(returns, 0.95),
        "var_99": historical_var(returns, 0.99),
    }
