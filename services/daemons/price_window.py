"""The rebalancer's trailing closes: what the covariance, the VaR and the market filter read.

Kept in memory only, not in the committed state (120-250 bars of a 500-asset universe would
add megabytes to every commit): a restarted rebalancer rebuilds it from the bars its group has
consumed (``Bus.consumed_history``), which hold the same closes.
"""

from __future__ import annotations

from collections import deque
from datetime import datetime

import numpy as np


class PriceWindow:
    """The closes of the last ``size`` bars, each with its own universe (NaN: no bar)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._rows: deque[tuple[datetime, tuple[str, ...], np.ndarray]] = deque(maxlen=size)

    def __len__(self) -> int:
        return len(self._rows)

    def add(self, close_time: datetime, symbols: tuple[str, ...], closes: np.ndarray) -> None:
        """Append one bar (a later bar than the last; an earlier or equal one is ignored, as a
        bar handled again after a restart is already here)."""
        if self._rows and close_time <= self._rows[-1][0]:
            return
        self._rows.append((close_time, symbols, np.asarray(closes, dtype=float)))

    def periods_per_year(self, default: float) -> float:
        """Bars per year as the window's close times space them (a stock calendar has about
        252 daily bars a year, crypto 365); ``default`` until 20 bars are here."""
        if len(self._rows) < 20:
            return default
        span = (self._rows[-1][0] - self._rows[0][0]).total_seconds()
        return (len(self._rows) - 1) * 365.25 * 86400 / span if span > 0 else default

    def _upto(self, until: datetime | None, bars: int) -> list:
        # A decision never reads a bar after its own: a tick may run after later bars came.
        rows = list(self._rows)
        if until is not None:
            while rows and rows[-1][0] > until:
                rows.pop()
        return rows[-bars:]

    def closes(
        self, symbols: tuple[str, ...], bars: int, until: datetime | None = None
    ) -> np.ndarray:
        """The last ``bars`` rows of closes of ``symbols`` up to ``until`` (rows x symbols,
        NaN where a symbol had no bar)."""
        rows = self._upto(until, bars)
        matrix = np.full((len(rows), len(symbols)), np.nan)
        column: dict[str, int] | None = None
        for i, (_, row_symbols, closes) in enumerate(rows):
            if row_symbols is symbols or row_symbols == symbols:
                matrix[i] = closes
                continue
            if column is None:
                column = {s: j for j, s in enumerate(symbols)}
            for k, symbol in enumerate(row_symbols):
                j = column.get(symbol)
                if j is not None:
                    matrix[i, j] = closes[k]
        return matrix

    def returns(
        self, symbols: tuple[str, ...], bars: int, until: datetime | None = None
    ) -> np.ndarray:
        """Per-bar simple returns of ``symbols`` over the last ``bars`` + 1 closes up to
        ``until`` (NaN where either close is missing)."""
        closes = self.closes(symbols, bars + 1, until)
        if len(closes) < 2:
            return np.empty((0, len(symbols)))
        with np.errstate(divide="ignore", invalid="ignore"):
            return closes[1:] / closes[:-1] - 1.0

    def market_index(self, bars: int, until: datetime | None = None) -> np.ndarray:
        """An equal-weight index of each bar's universe over the last ``bars`` bars up to
        ``until``: the mean return of the assets priced on both bars, compounded (from 1.0)."""
        rows = self._upto(until, bars)
        level, index = 1.0, [1.0]
        for (_, before_symbols, before), (_, symbols, after) in zip(rows, rows[1:]):
            if symbols is not before_symbols and symbols != before_symbols:
                position = {s: k for k, s in enumerate(before_symbols)}
                pairs = [
                    (before[position[s]], after[k]) for k, s in enumerate(symbols) if s in position
                ]
                previous = np.array([p for p, _ in pairs])
                current = np.array([c for _, c in pairs])
            else:
                previous, current = before, after
            with np.errstate(divide="ignore", invalid="ignore"):
                moves = current / previous - 1.0
            moves = moves[np.isfinite(moves)]
            level *= 1.0 + (float(moves.mean()) if len(moves) else 0.0)
            index.append(level)
        return np.array(index) if rows else np.empty(0)
