"""A panel of bars: every symbol's OHLCV on one time axis, NaN where a symbol has no bar."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from engine.errors import DataError

_DAY = np.timedelta64(1, "D")


@dataclass(frozen=True, eq=False)
class Panel:
    """Bars of ``symbols`` at ``bar_open`` times (UTC, datetime64[ms]), arrays shaped (T, N).

    A bar is stamped with its open time and becomes known at ``close_time = bar_open +
    timeframe``. ``volume`` is None for close-only sources, whose open/high/low equal close.
    """

    bar_open: np.ndarray
    symbols: tuple[str, ...]
    open: np.ndarray
    high: np.ndarray
    low: np.ndarray
    close: np.ndarray
    volume: np.ndarray | None
    timeframe: np.timedelta64
    source: str = "<memory>"

    def __post_init__(self) -> None:
        shape = (len(self.bar_open), len(self.symbols))
        for name in ("open", "high", "low", "close", "volume"):
            column = getattr(self, name)
            if column is not None and column.shape != shape:
                raise DataError(f"{self.source}: {name} has shape {column.shape}, expected {shape}")
        if len(self.bar_open) > 1 and not (np.diff(self.bar_open) > np.timedelta64(0, "ms")).all():
            raise DataError(f"{self.source}: bar times must be strictly increasing")

    @property
    def close_time(self) -> np.ndarray:
        """When each bar closes and becomes an event."""
        return self.bar_open + self.timeframe

    @property
    def n_bars(self) -> int:
        return len(self.bar_open)

    @property
    def timeframe_label(self) -> str:
        """ccxt-style label of the timeframe: '1d', '5m', '1h'."""
        ms = int(self.timeframe / np.timedelta64(1, "ms"))
        for unit, size in (("d", 86_400_000), ("h", 3_600_000), ("m", 60_000), ("s", 1000)):
            if ms % size == 0:
                return f"{ms // size}{unit}"
        return f"{ms}ms"

    def periods_per_year(self) -> float:
        """Bars per year inferred from the data: 252 trading days when weekends are absent,
        365 calendar days otherwise, scaled by bars per day for intraday data; bars longer
        than a day are calendar spans, so weekly bars give 365.25 / 7."""
        bars_per_day = _DAY / self.timeframe
        if bars_per_day < 1:
            return 365.25 * bars_per_day
        days = self.bar_open.astype("datetime64[D]")
        weekday = (days.view("int64") + 3) % 7  # 1970-01-01 was a Thursday; Monday == 0
        weekend_share = float(np.mean(weekday >= 5)) if len(days) else 0.0
        trading_days = 252 if weekend_share < 0.01 and self.timeframe >= _DAY else 365
        return float(trading_days * bars_per_day)

    def slice(self, start: int, stop: int) -> Panel:
        """Return bars ``start:stop`` as a new panel."""
        return Panel(
            bar_open=self.bar_open[start:stop],
            symbols=self.symbols,
            open=self.open[start:stop],
            high=self.high[start:stop],
            low=self.low[start:stop],
            close=self.close[start:stop],
            volume=None if self.volume is None else self.volume[start:stop],
            timeframe=self.timeframe,
            source=self.source,
        )
