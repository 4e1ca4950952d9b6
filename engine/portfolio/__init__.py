"""From asset scores to target weights: a risk model, a constrained optimiser, simple weighting
schemes, and rounding to an exchange's lot rules.

The risk model's scikit-learn and the optimiser's cvxpy are imported on first use (or by
``load_estimator`` / ``load_cvxpy``), not with the package: a process that only rounds to lot
rules or weighs by a simple scheme does not carry them."""

from engine.portfolio.covariance import RiskModel, ledoit_wolf_model, load_estimator, pca_model
from engine.portfolio.lots import LotRules, lot_rules_from_ccxt, round_quantity
from engine.portfolio.optimiser import (
    OptimisationError,
    OptimiserResult,
    OptimiserSettings,
    PortfolioOptimiser,
    load_cvxpy,
)
from engine.portfolio.schemes import (
    expected_returns,
    inverse_volatility_weights,
    score_proportional_weights,
    top_fraction_count,
    top_fraction_weights,
)

__all__ = [
    "LotRules",
    "OptimisationError",
    "OptimiserResult",
    "OptimiserSettings",
    "PortfolioOptimiser",
    "RiskModel",
    "expected_returns",
    "inverse_volatility_weights",
    "ledoit_wolf_model",
    "load_cvxpy",
    "load_estimator",
    "lot_rules_from_ccxt",
    "pca_model",
    "round_quantity",
    "score_proportional_weights",
    "top_fraction_count",
    "top_fraction_weights",
]
