"""Every per-strategy figure of an evaluation, from an equity curve, whole and per regime.

Return, risk and ratio figures are ``engine.risk.measures``'s, so an evaluation agrees with a
run's ``summary.json``; this module adds what an equity curve alone does not say (how long the
drawdowns lasted, whether the model's own VaR held) and what the backtest records beside it
(turnover, fees, trades).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike

from engine.evaluation.regimes import REGIMES
from engine.evaluation.var_backtest import KupiecResult, count_var_breaches, kupiec_pof
from engine.metrics import drawdown
from engine.risk import measures


@dataclass(frozen=True)
class DrawdownDuration:
    """How long an equity curve stayed below a previous high, in periods.

    ``deepest`` runs from the high before the maximum drawdown to the first point back at that
    high, or to the last point when the curve never got back (``deepest_recovered`` False: then
    it is a lower bound). ``longest`` is the longest such spell, deepest or not.
    """

    deepest: int
    deepest_recovered: bool
    longest: int


@dataclass(frozen=True)
class StrategyMetrics:
    """One strategy's figures over ``periods`` returns.

    Ratios are at a zero risk-free rate and annualised; VaR and expected shortfall are
    historical, of one period's return, as positive loss fractions. ``period_hit_rate`` is the
    share of periods with a positive return, ``trade_hit_rate`` the share of trades that made
    money. The last four are None when their input was not given (or, for the VaR test, when no
    period had a forecast).
    """

    periods: int
    total_return: float
    annualised_return: float
    annualised_volatility: float
    sharpe_ratio: float
    sortino_ratio: float
    calmar_ratio: float
    max_drawdown: float
    max_drawdown_duration: int
    max_drawdown_recovered: bool
    longest_drawdown_duration: int
    var_95: float
    expected_shortfall_95: float
    var_99: float
    expected_shortfall_99: float
    period_hit_rate: float
    var_backtest: KupiecResult | None = None
    annual_turnover: float | None = None
    fees_paid: float | None = None
    trade_hit_rate: float | None = None


def _equity(owner: str, equity: ArrayLike) -> np.ndarray:
    values = np.asarray(equity, dtype=float)
    if values.ndim != 1 or len(values) < 2:
        raise ValueError(
            f"{owner}: equity must be 1-D with at least 2 points, received shape {values.shape}"
        )
    # A curve at or below zero has no returns to speak of after it, and no drawdown fraction.
    if not (np.isfinite(values).all() and (values > 0).all()):
        raise ValueError(f"{owner}: equity must be finite and positive at every point")
    return values


def _per_period(owner: str, name: str, values: ArrayLike | None, periods: int) -> np.ndarray | None:
    if values is None:
        return None
    array = np.asarray(values, dtype=float)
    if array.shape != (periods,):
        raise ValueError(
            f"{owner}: {name} must hold one value per return ({periods}, aligned with "
            f"equity[1:]), received shape {array.shape}"
        )
    return array


def _select(values: np.ndarray | None, member: np.ndarray) -> np.ndarray | None:
    return None if values is None else values[member]


def _spells(underwater: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    # Starts and (exclusive) ends of the runs of True, found where the padded mask flips.
    flips = np.diff(np.concatenate([[0], underwater.astype(np.int8), [0]]))
    return np.flatnonzero(flips == 1), np.flatnonzero(flips == -1)


def drawdown_duration(equity: ArrayLike) -> DrawdownDuration:
    """Return how long the deepest and the longest drawdowns of ``equity`` lasted, in periods.

    A spell under water from point ``s`` to point ``e`` follows the high at ``s - 1``; it lasts
    ``e + 1 - (s - 1)`` periods when point ``e + 1`` is back at the high, ``e - (s - 1)`` when
    the curve ends under water.
    """
    values = _equity("drawdown_duration", equity)
    below = drawdown(values)
    starts, ends = _spells(below > 0)
    if len(starts) == 0:
        return DrawdownDuration(deepest=0, deepest_recovered=True, longest=0)
    last = len(values) - 1
    # ends are exclusive: the recovery point, or len(values) when the curve never recovered.
    durations = np.minimum(ends, last) - (starts - 1)
    trough = int(np.argmax(below))
    deepest = int(np.searchsorted(starts, trough, side="right") - 1)
    return DrawdownDuration(
        deepest=int(durations[deepest]),
        deepest_recovered=bool(ends[deepest] <= last),
        longest=int(durations.max()),
    )


def strategy_metrics(
    equity: ArrayLike,
    periods_per_year: float,
    *,
    var_forecasts: ArrayLike | None = None,
    var_confidence: float | None = None,
    turnover: ArrayLike | None = None,
    fees: ArrayLike | None = None,
    trade_pnls: ArrayLike | None = None,
) -> StrategyMetrics:
    """Return every figure of one strategy from its equity curve and optional records.

    The per-period inputs hold one value per return, aligned with ``equity[1:]``:
    ``var_forecasts`` the model's VaR for that period made before it (positive loss fractions,
    NaN where there was none), tested by Kupiec's test at ``var_confidence`` (required with
    them); ``turnover`` the notional traded over equity (``annual_turnover`` is its mean times
    ``periods_per_year``); ``fees`` the fees paid, in the equity's currency. ``trade_pnls`` holds
    one realised profit per closed trade.
    """
    owner = "strategy_metrics"
    if not periods_per_year > 0:  # also rejects NaN
        raise ValueError(f"{owner}: periods_per_year must be > 0, received {periods_per_year!r}")
    values = _equity(owner, equity)
    returns = values[1:] / values[:-1] - 1.0
    periods = len(returns)
    forecasts = _per_period(owner, "var_forecasts", var_forecasts, periods)
    traded = _per_period(owner, "turnover", turnover, periods)
    paid = _per_period(owner, "fees", fees, periods)
    var_backtest = None
    if forecasts is not None:
        if var_confidence is None:
            raise ValueError(f"{owner}: var_confidence is required with var_forecasts")
        counted = count_var_breaches(returns, forecasts)
        if counted.observations > 0:
            var_backtest = kupiec_pof(counted.breaches, counted.observations, var_confidence)
    trade_hit_rate = None
    if trade_pnls is not None:
        profits = np.asarray(trade_pnls, dtype=float)
        if len(profits) > 0:
            trade_hit_rate = float(np.mean(profits > 0))
    durations = drawdown_duration(values)
    return StrategyMetrics(
        periods=periods,
        total_return=float(values[-1] / values[0] - 1.0),
        annualised_return=measures.cagr(values, periods_per_year),
        annualised_volatility=measures.annualised_volatility(returns, periods_per_year),
        sharpe_ratio=measures.sharpe_ratio(returns, periods_per_year),
        sortino_ratio=measures.sortino_ratio(returns, periods_per_year),
        calmar_ratio=measures.calmar_ratio(values, periods_per_year),
        max_drawdown=measures.max_drawdown(values),
        max_drawdown_duration=durations.deepest,
        max_drawdown_recovered=durations.deepest_recovered,
        longest_drawdown_duration=durations.longest,
        var_95=measures.historical_var(returns, 0.95),
        expected_shortfall_95=measures.expected_shortfall(returns, 0.95),
        var_99=measures.historical_var(returns, 0.99),
        expected_shortfall_99=measures.expected_shortfall(returns, 0.99),
        period_hit_rate=float(np.mean(returns > 0)),
        var_backtest=var_backtest,
        annual_turnover=None if traded is None else float(np.nanmean(traded) * periods_per_year),
        fees_paid=None if paid is None else float(np.nansum(paid)),
        trade_hit_rate=trade_hit_rate,
    )


def metrics_by_regime(
    equity: ArrayLike,
    regimes: pd.Series | ArrayLike,
    periods_per_year: float,
    *,
    var_forecasts: ArrayLike | None = None,
    var_confidence: float | None = None,
    turnover: ArrayLike | None = None,
    fees: ArrayLike | None = None,
) -> dict[str, StrategyMetrics]:
    """Return ``strategy_metrics`` over the periods of each regime, in ``REGIMES`` order.

    Each return is labelled with the regime of the period it was earned in: when ``equity`` and
    ``regimes`` are both pandas Series, ``regimes`` is looked up at ``equity.index[1:]``
    (periods it lacks are left out); otherwise it holds one label per return, by position.
    A regime's returns are chained, in order, into one curve from ``equity[0]``, so its
    drawdown and its durations join spells that were apart in time. Regimes with no period are
    absent; unlabelled (NaN) periods belong to none.
    """
    owner = "metrics_by_regime"
    values = _equity(owner, equity)
    returns = values[1:] / values[:-1] - 1.0
    if isinstance(equity, pd.Series) and isinstance(regimes, pd.Series):
        labels = regimes.reindex(equity.index[1:]).to_numpy(dtype=object)
    else:
        labels = np.asarray(regimes, dtype=object)
        if labels.shape != returns.shape:
            raise ValueError(
                f"{owner}: regimes must hold one label per return ({len(returns)}, aligned "
                f"with equity[1:]), received shape {labels.shape}"
            )
    forecasts = _per_period(owner, "var_forecasts", var_forecasts, len(returns))
    traded = _per_period(owner, "turnover", turnover, len(returns))
    paid = _per_period(owner, "fees", fees, len(returns))
    found: dict[str, StrategyMetrics] = {}
    for regime in REGIMES:
        member = labels == regime
        if not member.any():
            continue
        curve = values[0] * np.cumprod(np.concatenate([[1.0], 1.0 + returns[member]]))
        found[regime] = strategy_metrics(
            curve,
            periods_per_year,
            var_forecasts=_select(forecasts, member),
            var_confidence=var_confidence,
            turnover=_select(traded, member),
            fees=_select(paid, member),
        )
    return found
