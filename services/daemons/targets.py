"""From a signal's scores to the target weights a rebalance trades to: construction (the
optimiser or a simple scheme), then the risk limits. No bus, no state: the rebalancer calls it
and logs what it returns.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import structlog

from engine.config import PortfolioConfig, RiskConfig
from engine.portfolio.covariance import RiskModel, ledoit_wolf_model, load_estimator, pca_model
from engine.portfolio.optimiser import (
    OptimisationError,
    OptimiserSettings,
    PortfolioOptimiser,
    load_cvxpy,
)
from engine.portfolio.schemes import (
    expected_returns,
    inverse_volatility_weights,
    score_proportional_weights,
    top_fraction_weights,
)
from engine.risk.limits import Action, RiskFigures, apply_limits, figures

log = structlog.get_logger("services.daemons.targets")
# An asset needs this many bars of returns in the covariance window to be held by the
# optimiser or inverse volatility: a new listing's few returns say nothing of its risk.
MIN_HISTORY = 20


@dataclass(frozen=True)
class TargetDecision:
    """Target weights over the decision's symbols and how they came about."""

    weights: np.ndarray
    constructed: np.ndarray  # before the risk limits
    actions: list[Action] = field(default_factory=list)
    before: RiskFigures = RiskFigures(None, None, None)
    after: RiskFigures = RiskFigures(None, None, None)
    solve_ms: float | None = None


class TargetBuilder:
    """Holds the optimiser (its compiled problems are reused from one rebalance to the next)."""

    def __init__(self, portfolio: PortfolioConfig, risk: RiskConfig) -> None:
        self.portfolio = portfolio
        self.risk = risk
        self.optimiser = PortfolioOptimiser()
        self.settings = OptimiserSettings(
            risk_aversion=portfolio.risk_aversion,
            # Paid once, earned over the holding horizon: per bar of the per-bar objective.
            turnover_cost=portfolio.turnover_cost / portfolio.horizon_bars,
            turnover_cap=portfolio.turnover_cap or None,
            weight_cap=portfolio.max_weight,
            gross=portfolio.gross_exposure,
            long_only=portfolio.long_only,
            net_min=portfolio.net_exposure_min,
            net_max=portfolio.net_exposure_max,
        )

    def prepare(self) -> None:
        """Load now the libraries this construction scheme imports on first use (scikit-learn
        for the risk model, cvxpy for the optimiser: about a second and a half), so that the
        first rebalance does not wait for them; the rebalance service calls it on start."""
        scheme = self.portfolio.construction
        if scheme in ("inverse-volatility", "optimizer"):
            load_estimator()
        if scheme == "optimizer":
            load_cvxpy()

    def build(
        self,
        scores: np.ndarray,
        returns: np.ndarray,
        previous: np.ndarray,
        periods_per_year: float,
        limits: bool = True,
    ) -> TargetDecision:
        """Construct and limit the target (``limits`` False: construct and measure only).

        ``scores`` (NaN: not investable) and ``previous`` (current weights) are over the same
        symbols as the columns of ``returns`` (trailing per-bar returns, oldest first).
        """
        weights, solve_ms, actions = self._construct(scores, returns, previous)
        var_rows = returns[-self.risk.var_window :]
        if not limits:
            before = figures(var_rows, weights, self.risk, periods_per_year)
            return TargetDecision(weights, weights, actions, before, before, solve_ms)
        limited, limit_actions, before, after = apply_limits(
            weights, var_rows, self.risk, periods_per_year
        )
        return TargetDecision(
            weights=limited,
            constructed=weights,
            actions=actions + limit_actions,
            before=before,
            after=after,
            solve_ms=solve_ms,
        )

    def _risk_model(self, window: np.ndarray) -> RiskModel:
        if self.portfolio.risk_model == "pca":
            return pca_model(window, self.portfolio.risk_factors)
        return ledoit_wolf_model(window)

    def _construct(
        self, scores: np.ndarray, returns: np.ndarray, previous: np.ndarray
    ) -> tuple[np.ndarray, float | None, list[Action]]:
        config = self.portfolio
        scheme = config.construction
        if scheme == "top-k":
            weights = top_fraction_weights(scores, config.top_fraction, config.gross_exposure)
            return np.minimum(weights, config.max_weight), None, []
        if scheme == "score-proportional":
            weights = score_proportional_weights(
                scores, config.top_fraction, config.gross_exposure, config.max_weight
            )
            return weights, None, []
        window = returns[-config.covariance_window :]
        enough = np.count_nonzero(np.isfinite(window), axis=0) >= MIN_HISTORY
        investable = np.where(enough, scores, np.nan)
        if len(window) < MIN_HISTORY or not enough.any():
            return np.zeros(len(scores)), None, []
        model = self._risk_model(window)
        volatility = model.volatility()
        if scheme == "inverse-volatility":
            weights = inverse_volatility_weights(
                investable,
                volatility,
                config.top_fraction,
                config.gross_exposure,
                config.max_weight,
            )
            return weights, None, []
        alpha = expected_returns(investable, volatility, config.expected_ic)
        if not np.isfinite(alpha).any():
            return np.zeros(len(scores)), None, []
        started = time.perf_counter()
        try:
            result = self.optimiser.solve(alpha, model, previous, self.settings)
        except OptimisationError as error:
            solve_ms = (time.perf_counter() - started) * 1e3
            kept = previous if config.on_failure == "previous" else np.zeros(len(scores))
            action = Action(
                "optimiser_fallback",
                f"optimiser failed ({error}): keeping the "
                + ("previous weights" if config.on_failure == "previous" else "book in cash"),
                1.0,
                {"assets": float(len(scores)), "investable": float(np.isfinite(alpha).sum())},
            )
            return kept, solve_ms, [action]
        return result.weights, result.solve_ms, []
