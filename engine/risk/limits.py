"""Risk limits on a target portfolio: volatility target, VaR and ES limits, drawdown stop.

Each limit is a pure function of the target weights, the trailing per-bar returns of the assets
and the limit's settings; it returns the weights it allows and, when it acted, an ``Action``
carrying the numbers it acted on (the rebalancer logs them and publishes them as RiskAlerts).

Scaling is exact: VaR and ES are positively homogeneous in the weights (``VaR(k w) = k VaR(w)``
for every method here), so scaling the target by ``limit / VaR`` puts it on the limit, and the
rest of the book goes to cash.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime

import msgspec
import numpy as np

from engine.config import RiskConfig
from engine.events.base import UtcDatetime
from engine.risk.measures import expected_shortfall, value_at_risk

# Fewer trailing bars than this and VaR is not estimated (a 99% quantile of 10 returns is
# the worst of them, not a VaR): the limit then waits rather than act on noise.
MIN_VAR_BARS = 20


@dataclass(frozen=True)
class Action:
    """A limit that acted: what it did and the numbers it did it on."""

    kind: str  # a RiskAlert kind
    message: str
    scale: float  # what the exposure was multiplied by (1.0: reported, not scaled)
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class RiskFigures:
    """VaR and ES (positive loss fractions) and annualised volatility of one set of weights."""

    var: float | None
    es: float | None
    volatility: float | None

    def as_log(self, suffix: str) -> dict[str, float | None]:
        return {
            f"var_{suffix}": _rounded(self.var),
            f"es_{suffix}": _rounded(self.es),
            f"volatility_{suffix}": _rounded(self.volatility),
        }


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 6)


def portfolio_returns(returns: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Per-bar returns of fixed ``weights`` over ``returns`` (bars x assets; NaN: no bar, so
    no gain or loss on that asset that bar)."""
    return np.nan_to_num(returns, nan=0.0) @ weights


def figures(
    returns: np.ndarray, weights: np.ndarray, config: RiskConfig, periods_per_year: float
) -> RiskFigures:
    """VaR, ES and volatility of ``weights`` held over the trailing ``returns``."""
    if not np.any(weights):
        return RiskFigures(0.0, 0.0, 0.0)  # all cash: nothing at risk
    if len(returns) < MIN_VAR_BARS:
        return RiskFigures(None, None, None)
    series = portfolio_returns(returns, weights)
    method, confidence, horizon = config.var_method, config.var_confidence, config.var_horizon
    return RiskFigures(
        var=value_at_risk(series, confidence, method, horizon),
        es=expected_shortfall(series, confidence, method, horizon),
        volatility=float(np.std(series, ddof=1) * math.sqrt(periods_per_year)),
    )


def apply_limits(
    weights: np.ndarray, returns: np.ndarray, config: RiskConfig, periods_per_year: float
) -> tuple[np.ndarray, list[Action], RiskFigures, RiskFigures]:
    """Scale ``weights`` down to the volatility target, the VaR limit and the ES limit, in that
    order; return the allowed weights, the actions, and the figures before and after."""
    before = figures(returns, weights, config, periods_per_year)
    if not config.enabled or before.var is None:
        return weights, [], before, before
    actions: list[Action] = []
    scale = 1.0
    if config.vol_target > 0 and before.volatility and before.volatility > config.vol_target:
        step = config.vol_target / before.volatility
        scale *= step
        actions.append(
            Action(
                "vol_target",
                f"forecast volatility {before.volatility:.2%} above the target "
                f"{config.vol_target:.2%}: exposure x{step:.3f}",
                step,
                {"volatility": before.volatility, "vol_target": config.vol_target},
            )
        )
    labels = f"{config.var_method} {config.var_confidence:.0%} {config.var_horizon}-bar"
    for kind, value, limit in (
        ("var_limit", before.var, config.var_limit),
        ("es_limit", before.es, config.es_limit),
    ):
        if limit <= 0 or value is None or value * scale <= limit:
            continue
        step = limit / (value * scale)
        scale *= step
        name = "VaR" if kind == "var_limit" else "ES"
        actions.append(
            Action(
                kind,
                f"{labels} {name} {value * scale / step:.2%} above the limit {limit:.2%}: "
                f"exposure x{step:.3f}",
                step,
                {
                    name.lower(): value * scale / step,
                    "limit": limit,
                    "confidence": config.var_confidence,
                },
            )
        )
    if scale >= 1.0:
        return weights, actions, before, before
    allowed = weights * scale
    after = RiskFigures(
        var=None if before.var is None else before.var * scale,
        es=None if before.es is None else before.es * scale,
        volatility=None if before.volatility is None else before.volatility * scale,
    )
    return allowed, actions, before, after


class DrawdownState(msgspec.Struct, frozen=True, kw_only=True):
    """The drawdown stop's state, committed with the rebalancer's: it survives restarts.

    ``peak`` is the equity high since the start or the last re-entry (a re-entry re-bases it,
    or a stopped book, flat and below its old peak, could never trade again).
    """

    peak: float = 0.0
    stopped: bool = False
    since: UtcDatetime | None = None
    bars_stopped: int = 0
    stopped_at: float = 0.0  # the drawdown that triggered the stop


def drawdown_of(state: DrawdownState, equity: float) -> float:
    return max(0.0, 1.0 - equity / state.peak) if state.peak > 0 else 0.0


def on_equity(
    state: DrawdownState, equity: float, asof: datetime, config: RiskConfig
) -> tuple[DrawdownState, Action | None]:
    """Take one bar's equity: move the peak, count a stopped book's bars, and stop the book
    when its drawdown reaches ``drawdown_stop`` (the returned Action)."""
    if state.stopped:
        return msgspec.structs.replace(state, bars_stopped=state.bars_stopped + 1), None
    peak = max(state.peak, equity)
    state = msgspec.structs.replace(state, peak=peak)
    drawdown = drawdown_of(state, equity)
    # A tolerance so that a drawdown of exactly the stop (1 - 900/1000 is 0.0999...98) acts.
    if not config.enabled or config.drawdown_stop <= 0 or drawdown < config.drawdown_stop - 1e-12:
        return state, None
    stopped = msgspec.structs.replace(
        state, stopped=True, since=asof, bars_stopped=0, stopped_at=drawdown
    )
    action = Action(
        "drawdown_stop",
        f"drawdown {drawdown:.2%} reached the stop {config.drawdown_stop:.2%}: exposure cut to "
        f"{config.drawdown_exposure:.0%} of target",
        config.drawdown_exposure,
        {
            "drawdown": drawdown,
            "stop": config.drawdown_stop,
            "equity": equity,
            "peak": peak,
            "exposure": config.drawdown_exposure,
        },
    )
    return stopped, action


def market_trend_up(index: np.ndarray, bars: int) -> bool | None:
    """Whether the last value of ``index`` is above its ``bars``-bar average (None: too short)."""
    if len(index) < bars:
        return None
    return bool(index[-1] > np.mean(index[-bars:]))


def reentry(
    state: DrawdownState, equity: float, market_index: np.ndarray, config: RiskConfig
) -> tuple[DrawdownState, Action | None, str]:
    """At a rebalance of a stopped book: re-enter when the rule allows (returns the re-based
    state and the Action), else say why not (the third item)."""
    if not state.stopped:
        return state, None, ""
    if state.bars_stopped < config.reentry_cooldown_bars:
        return (
            state,
            None,
            f"cool-down: {state.bars_stopped} of {config.reentry_cooldown_bars} bars",
        )
    if config.reentry_filter == "market-trend":
        trend = market_trend_up(market_index, config.reentry_trend_bars)
        if not trend:
            return (
                state,
                None,
                "market filter: the universe's index is not above its "
                f"{config.reentry_trend_bars}-bar average",
            )
    action = Action(
        "drawdown_reentry",
        f"re-entering after {state.bars_stopped} bars stopped (rule: "
        f"{config.reentry_cooldown_bars}-bar cool-down, filter {config.reentry_filter})",
        1.0,
        {"bars_stopped": float(state.bars_stopped), "equity": equity},
    )
    return DrawdownState(peak=equity), action, ""
