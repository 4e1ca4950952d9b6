"""The numbers of ``deepfactor report``: VaR against realised losses, turnover per bar, and the
summary figures, from a loaded run (``services.commands.report_data``). No drawing here.

The return, CAGR, Sharpe, drawdown and VaR figures are ``engine.metrics.performance_summary``'s,
on the curve the recorder summarises (the initial equity, then every bar), so the report agrees
with ``summary.json`` and the equal-weight universe is measured the same way.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from engine.metrics import drawdown, performance_summary
from engine.risk.measures import historical_var
from services.commands.report_data import RunRecord

# The rebalancer's realised VaR needs as many returns; a rolling VaR from fewer says little.
MIN_VAR_RETURNS = 20


@dataclass(frozen=True)
class VarCheck:
    """Each bar's realised loss next to the VaR forecast made ``horizon`` bars before it.

    ``frame`` has per bar ``loss`` (``1 - equity / equity horizon bars earlier``), ``var`` (the
    forecast standing ``horizon`` bars earlier; NaN where there was none or it was 0, a flat
    book) and ``breach`` (loss above that forecast). ``source`` is ``"model"`` (the
    snapshots' ``expected_var``) or ``"historical"`` (a rolling historical VaR of the equity's
    own returns).
    """

    frame: pd.DataFrame
    source: str
    confidence: float
    horizon: int
    window: int

    @property
    def checked(self) -> int:
        """Bars with both a forecast and a realised loss."""
        return int((self.frame["var"].notna() & self.frame["loss"].notna()).sum())

    @property
    def breaches(self) -> int:
        return int(self.frame["breach"].sum())

    @property
    def expected_breaches(self) -> float:
        """How many breaches a VaR that is right would see: ``(1 - confidence)`` of the bars."""
        return self.checked * (1.0 - self.confidence)

    def describe(self) -> str:
        """The forecast in words, for titles and the summary."""
        if self.source == "model":
            return (
                "the risk model's forecast (expected_var of the portfolio snapshots: the VaR of "
                "the last target, after the limits)"
            )
        return f"rolling historical VaR of the equity's returns ({self.window} bars)"


def as_of(values: pd.Series, index: pd.DatetimeIndex) -> pd.Series:
    """The value of the last row of ``values`` at or before each time of ``index``.

    NaN before the first row. A row that holds NaN stays NaN until the next row: unlike a
    forward fill, a snapshot that says "no forecast" is taken at its word.
    """
    ordered = values.sort_index()
    position = ordered.index.searchsorted(index, side="right") - 1
    picked = ordered.to_numpy(dtype=float)[np.maximum(position, 0)]
    return pd.Series(np.where(position >= 0, picked, np.nan), index=index, name=values.name)


def var_breaches(equity: pd.Series, forecast: pd.Series, horizon: int = 1) -> pd.DataFrame:
    """Compare each bar's loss over the last ``horizon`` bars with the forecast made then.

    ``forecast`` is on ``equity``'s index: the VaR known at each bar's close. The loss ending at
    bar ``t`` is checked against the forecast of bar ``t - horizon``, never a later one.
    """
    loss = 1.0 - equity / equity.shift(horizon)
    # A forecast of 0 is a flat book's (nothing held, or the stop holding it in cash): there is
    # nothing at risk to check, and the loss of the bar that enters a book is its costs.
    var = forecast.reindex(equity.index).shift(horizon).where(lambda v: v > 0)
    breach = (loss > var) & var.notna() & loss.notna()
    return pd.DataFrame({"loss": loss, "var": var, "breach": breach})


def rolling_historical_var(
    equity: pd.Series, confidence: float, window: int, horizon: int = 1
) -> pd.Series:
    """The historical VaR of the last ``window`` bar returns up to each bar (its close
    included), as ``engine.risk.measures.historical_var`` computes it; NaN until
    ``MIN_VAR_RETURNS`` returns exist."""
    returns = equity.pct_change()
    return returns.rolling(window, min_periods=MIN_VAR_RETURNS).apply(
        lambda sample: historical_var(sample, confidence, horizon), raw=True
    )


def var_check(record: RunRecord) -> VarCheck:
    """The VaR picture's data: the model's forecast when the run recorded one, else a rolling
    historical VaR of the equity returns."""
    settings = record.risk_settings
    equity = record.equity["equity"]
    if record.risk is not None and record.risk["expected_var"].notna().any():
        forecast, source = as_of(record.risk["expected_var"], equity.index), "model"
    else:
        forecast = rolling_historical_var(
            equity, settings.var_confidence, settings.var_window, settings.var_horizon
        )
        source = "historical"
    return VarCheck(
        frame=var_breaches(equity, forecast, settings.var_horizon),
        source=source,
        confidence=settings.var_confidence,
        horizon=settings.var_horizon,
        window=settings.var_window,
    )


@dataclass(frozen=True)
class Turnover:
    """Turnover per bar, and where it came from (``source``: ``"fills"`` or ``"exposure"``)."""

    per_bar: pd.Series
    source: str

    def describe(self) -> str:
        if self.source == "fills":
            return "traded notional of the fills / equity, per bar"
        return "change in gross exposure per bar (no fills recorded: a proxy)"


def turnover(record: RunRecord) -> Turnover:
    """Each bar's traded notional over its equity, from the fills; without fills, the change
    of gross exposure, which misses trades that swap one asset for another and counts price
    drift as trading."""
    equity = record.equity
    if record.fills is None:
        return Turnover(equity["gross_exposure"].diff().abs().fillna(0.0), "exposure")
    fills = record.fills
    notional = (fills["quantity"] * fills["price"]).to_numpy(dtype=float)
    # A fill counts on the first bar closing at or after its event time (its bar's close).
    bar = np.minimum(equity.index.searchsorted(fills.index, side="left"), len(equity) - 1)
    traded = np.bincount(bar, weights=notional, minlength=len(equity))
    return Turnover(pd.Series(traded / equity["equity"].to_numpy(), index=equity.index), "fills")


def stopped(record: RunRecord) -> pd.Series | None:
    """Per bar, whether the drawdown stop held the book (the last snapshot's flag); None when
    the run recorded no snapshot."""
    if record.risk is None or record.risk.empty:
        return None
    flags = as_of(record.risk["drawdown_stopped"].astype(float), record.equity.index)
    return flags.fillna(0.0) > 0.5


def stop_drawdown(record: RunRecord, stopped: pd.Series | None) -> pd.Series | None:
    """The drawdown the stop measures: from the equity's peak since the last re-entry (the
    first bar after a stopped span), which a re-entry re-bases (``DrawdownState.peak``). None
    when the book never re-entered: it is then the drawdown from the running peak."""
    if stopped is None:
        return None
    reentry = stopped.shift(fill_value=False) & ~stopped
    if not reentry.any():
        return None
    equity = record.equity["equity"]
    peak = equity.groupby(reentry.cumsum()).cummax()
    return (1.0 - equity / peak).rename("stop_drawdown")


def underwater(record: RunRecord) -> pd.Series:
    """The fraction below the running peak at each bar (``engine.metrics.drawdown``), the
    initial equity counting as the first peak."""
    values = np.concatenate([[record.initial_equity], record.equity["equity"].to_numpy()])
    return pd.Series(drawdown(values)[1:], index=record.equity.index, name="drawdown")


def stop_level(record: RunRecord) -> float | None:
    """The drawdown stop's level, or None when the run had it off."""
    settings = record.risk_settings
    return settings.drawdown_stop if settings.enabled and settings.drawdown_stop > 0 else None


def _performance(curve: np.ndarray, initial: float, periods_per_year: float) -> dict[str, float]:
    # As the recorder does: the curve starts from the cash the run began with.
    return performance_summary(np.concatenate([[initial], curve]), periods_per_year)


def summary_figures(record: RunRecord, var: VarCheck, traded: Turnover) -> dict[str, Any]:
    """The summary table's figures, as JSON-ready builtins."""
    summary = record.summary
    equity = record.equity
    initial, per_year = record.initial_equity, record.periods_per_year
    benchmark = None
    if record.benchmark is not None:
        curve = record.benchmark.reindex(equity.index).ffill().dropna().to_numpy()
        if len(curve):
            benchmark = {**_performance(curve, initial, per_year), "final_equity": float(curve[-1])}
    bars = int(summary.get("bars", len(equity)))
    years = len(equity) / per_year
    total_turnover = summary.get("turnover")
    if not isinstance(total_turnover, int | float):
        total_turnover = float(traded.per_bar.sum())
    signals = record.signals
    return {
        "run_dir": str(record.run_dir),
        "kind": record.kind,
        "start": equity.index[0].isoformat(),
        "end": equity.index[-1].isoformat(),
        "bars": bars,
        "initial_equity": initial,
        "final_equity": float(equity["equity"].iloc[-1]),
        "run": {
            **_performance(equity["equity"].to_numpy(), initial, per_year),
            "final_equity": float(equity["equity"].iloc[-1]),
        },
        "equal_weight": benchmark,
        "model": summary.get("model"),
        "signals": None if signals is None else len(signals),
        "fallback_signals": None if signals is None else int(signals["fallback"].sum()),
        "var_check": {
            "source": var.source,
            "confidence": var.confidence,
            "horizon": var.horizon,
            "bars_checked": var.checked,
            "breaches": var.breaches,
            "expected_breaches": var.expected_breaches,
        },
        "orders": summary.get("orders"),
        "fills": summary.get("fills"),
        "fees": summary.get("fees"),
        "turnover": float(total_turnover),
        "turnover_per_year": float(total_turnover) / years if years > 0 else None,
        "turnover_source": traded.source,
        "gross_exposure": {
            "average": float(equity["gross_exposure"].mean()),
            "max": float(equity["gross_exposure"].max()),
        },
        "drawdown_stop": stop_level(record),
        "limits_acted": summary.get("limits_acted") or {},
    }
