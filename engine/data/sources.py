"""Where bars come from, behind one interface: every source hands out a Panel of history.

The market-data service replays a Panel (backtests, paper replays); the live feed polls a
:class:`~engine.data.ccxt_source.CcxtOhlcvSource` for closed candles on top of that. A new
source needs only ``panel()``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from engine.data.panel import Panel
from engine.data.synthetic import synthetic_panel

if TYPE_CHECKING:  # ccxt is heavy to import; only the ccxt source needs it
    from engine.data.ccxt_source import CcxtOhlcvSource


class BarSource(Protocol):
    """A source of OHLCV bars for a universe."""

    def panel(self) -> Panel:
        """Return the source's bars as a panel (NaN where a symbol has no bar)."""
        ...


@dataclass(frozen=True)
class FileSource:
    """A long OHLCV or wide close-only file (CSV, gzip CSV, Parquet)."""

    path: Path

    def panel(self) -> Panel:
        # Imported here: reading files loads pandas (about 85 MB resident), which a replay of
        # the synthetic market (and the supervisor that checks it) does without.
        from engine.data.files import load_panel

        return load_panel(self.path)


@dataclass(frozen=True)
class SyntheticSource:
    """The seeded synthetic market."""

    n_assets: int
    n_bars: int
    seed: int = 7
    start: str = "2020-01-01"
    timeframe: str = "1D"

    def panel(self) -> Panel:
        return synthetic_panel(
            self.n_assets, self.n_bars, seed=self.seed, start=self.start, timeframe=self.timeframe
        )


@dataclass(frozen=True)
class CcxtHistorySource:
    """Closed candles of an exchange between two times, fetched with pagination."""

    source: CcxtOhlcvSource
    since_ms: int
    until_ms: int | None = None

    def panel(self) -> Panel:
        return self.source.to_panel(self.source.history(self.since_ms, self.until_ms))
