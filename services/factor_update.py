"""Factor-update service: keeps a rolling window of closes per universe and publishes the
factors' exposures on every BarSet, or only at each rebalance's decision bar.

The window is a buffer twice as tall as the longest lookback, written row by row and shifted
only when full, so each bar costs O(assets) amortised, never a recomputation of history.
"""

from __future__ import annotations

from datetime import datetime

import numpy as np
import structlog

from engine.bus import Bus
from engine.clock import Clock
from engine.config import FactorConfig
from engine.errors import ConfigError
from engine.events import BarSet, Envelope, EventPayload, FactorSnapshot, RebalanceDue
from services.runtime import Handler, Service
from strategies.factors import FACTORS

log = structlog.get_logger("services.factor_update")


def factor_label(factor: FactorConfig) -> str:
    """Name of a configured factor in snapshots: ``momentum_252_21``, ``reversal_5``."""
    parts = [factor.name, str(factor.lookback)] + ([str(factor.skip)] if factor.skip else [])
    return "_".join(parts)


def factor_parameters(factor: FactorConfig, position: int) -> dict[str, int]:
    """Return the keyword arguments of a configured factor, checked against the library."""
    spec = FACTORS.get(factor.name)
    if spec is None:
        raise ConfigError(f"[strategy.factors[{position}]] name must be one of "
                          f"{sorted(FACTORS)}, received {factor.name!r}")
    values = {"lookback": factor.lookback, "skip": factor.skip}
    if "skip" not in spec.parameters and factor.skip:
        raise ConfigError(f"[strategy.factors[{position}]] {factor.name} takes no skip, "
                          f"received skip = {factor.skip}")
    if "skip" in spec.parameters and factor.skip >= factor.lookback:
        raise ConfigError(f"[strategy.factors[{position}]] skip must be below lookback "
                          f"({factor.lookback}), received {factor.skip}")
    return {name: values[name] for name in spec.parameters}


class RollingCloses:
    """The last ``window`` rows of closes (with their close times) over a growing universe."""

    def __init__(self, window: int) -> None:
        self.window = window
        self.symbols: list[str] = []
        self._column: dict[str, int] = {}
        self._buffer = np.full((2 * window, 0), np.nan)
        self._times: list[datetime] = []
        self._last_symbols: tuple[str, ...] | None = None
        self._last_columns: np.ndarray | None = None

    def _columns_of(self, symbols: tuple[str, ...]) -> np.ndarray:
        if symbols is self._last_symbols or symbols == self._last_symbols:
            return self._last_columns  # type: ignore[return-value]
        new = [s for s in symbols if s not in self._column]
        if new:
            for symbol in new:
                self._column[symbol] = len(self.symbols)
                self.symbols.append(symbol)
            self._buffer = np.hstack([self._buffer, np.full((self._buffer.shape[0], len(new)), np.nan)])
        columns = np.fromiter((self._column[s] for s in symbols), dtype=np.intp, count=len(symbols))
        self._last_symbols, self._last_columns = symbols, columns
        return columns

    def append(self, close_time: datetime, symbols: tuple[str, ...], close: tuple[float, ...]) -> None:
        """Add one bar's closes; symbols absent from it get NaN for that bar."""
        columns = self._columns_of(symbols)
        rows = len(self._times)
        if rows == self._buffer.shape[0]:
            keep = self.window - 1
            self._buffer[:keep] = self._buffer[rows - keep:rows]
            del self._times[:rows - keep]
            rows = keep
        row = self._buffer[rows]
        row.fill(np.nan)
        row[columns] = close
        self._times.append(close_time)

    @property
    def last_time(self) -> datetime | None:
        return self._times[-1] if self._times else None

    def view(self, until: datetime | None = None) -> np.ndarray | None:
        """Return the window ending at the bar closing at ``until`` (default: the last), oldest
        row first; fewer rows while history is short; None if that bar is not held."""
        end = len(self._times)
        if until is not None and until != self.last_time:
            try:
                end = self._times.index(until) + 1
            except ValueError:
                return None
        return self._buffer[max(0, end - self.window):end]


class FactorUpdateService(Service):
    """Publishes FactorSnapshots of the configured factors."""

    name = "factor-update"

    def __init__(self, bus: Bus, clock: Clock, factors: tuple[FactorConfig, ...],
                 compute_on: str = "bar") -> None:
        if not factors:
            raise ConfigError("[strategy] factors must list at least one factor")
        self.factors = [(factor_label(f), f.name, factor_parameters(f, i))
                        for i, f in enumerate(factors)]
        window = max(FACTORS[name].window(**params) for _, name, params in self.factors)
        self.closes = RollingCloses(window)
        self.compute_on = compute_on
        self._waiting: list[tuple[datetime, str]] = []  # ticks whose decision bar is not in yet
        super().__init__(bus, clock)

    def handlers(self) -> dict[type[EventPayload], Handler]:
        if self.compute_on == "rebalance":
            return {BarSet: self.on_bars, RebalanceDue: self.on_rebalance_due}
        return {BarSet: self.on_bars}

    def on_bars(self, event: Envelope) -> None:
        bars = event.payload
        assert isinstance(bars, BarSet)
        close_time = bars.close_time
        self.closes.append(close_time, bars.symbols, bars.close)
        if self.compute_on == "bar":
            self._publish(close_time, event.corr, event.ts)
        elif self._waiting:
            ready = [(t, c) for t, c in self._waiting if t <= close_time]
            self._waiting = [(t, c) for t, c in self._waiting if t > close_time]
            for decision_time, corr in ready:
                self._publish(decision_time, corr, event.ts)

    def on_rebalance_due(self, event: Envelope) -> None:
        tick = event.payload
        assert isinstance(tick, RebalanceDue)
        last = self.closes.last_time
        if last is None or last < tick.decision_time:
            self._waiting.append((tick.decision_time, event.corr))
        else:
            self._publish(tick.decision_time, event.corr, event.ts)

    def _publish(self, asof: datetime, corr: str, ts: datetime) -> None:
        window = self.closes.view(asof)
        if window is None:
            log.warning("factors.decision_bar_missing", asof=asof.isoformat(), corr=corr)
            return
        exposures = tuple(
            tuple(FACTORS[name].function(window, **params).tolist())
            for _, name, params in self.factors
        )
        snapshot = FactorSnapshot(
            asof=asof,
            symbols=tuple(self.closes.symbols),
            factor_names=tuple(label for label, _, _ in self.factors),
            exposures=exposures,
        )
        self.emit([snapshot], corr=corr, ts=ts)
