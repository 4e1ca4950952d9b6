"""Risk measures and the limits that act on them; the measures are re-exported here."""

from engine.risk.measures import (
    VAR_METHODS,
    VarMethod,
    annualised_volatility,
    cagr,
    calmar_ratio,
    cornish_fisher_var,
    expected_shortfall,
    filtered_historical_var,
    historical_var,
    horizon_returns,
    max_drawdown,
    parametric_var,
    sharpe_ratio,
    sortino_ratio,
    value_at_risk,
    volatility_scaled,
)

__all__ = [
    "VAR_METHODS",
    "VarMethod",
    "annualised_volatility",
    "cagr",
    "calmar_ratio",
    "cornish_fisher_var",
    "expected_shortfall",
    "filtered_historical_var",
    "historical_var",
    "horizon_returns",
    "max_drawdown",
    "parametric_var",
    "sharpe_ratio",
    "sortino_ratio",
    "value_at_risk",
    "volatility_scaled",
]
