"""Market-side payloads: bars in, factor exposures out."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, ClassVar

import msgspec

from engine.events.base import (
    EventPayload,
    NonNegativeFloat,
    PositiveFloat,
    Symbol,
    UtcDatetime,
)
from engine.timeframes import timeframe_delta


def _check_unique(symbols: tuple[str, ...], owner: str) -> None:
    if len(set(symbols)) != len(symbols):
        seen: set[str] = set()
        duplicates = sorted({s for s in symbols if s in seen or seen.add(s)})
        raise ValueError(f"{owner}.symbols must be unique, duplicated: {duplicates}")


class BarSet(EventPayload, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """All symbols' OHLCV bars of one bar-open time, stored column-wise.

    Columns rather than one struct per bar keep a 500-asset set cheap to encode and turn
    straight into numpy arrays. ``volume`` is None for close-only sources.
    """

    TYPE: ClassVar[str] = "BarSet"
    TOPIC: ClassVar[str] = "bars"

    timeframe: Annotated[str, msgspec.Meta(pattern=r"^[1-9][0-9]*[smhdw]$")] = "1d"
    bar_open: UtcDatetime
    symbols: tuple[Symbol, ...]
    open: tuple[PositiveFloat, ...]
    high: tuple[PositiveFloat, ...]
    low: tuple[PositiveFloat, ...]
    close: tuple[PositiveFloat, ...]
    volume: tuple[NonNegativeFloat, ...] | None = None

    def __post_init__(self) -> None:
        # Runs on every decode: the common case is one chained comparison and one set.
        n = len(self.symbols)
        volume_ok = self.volume is None or len(self.volume) == n
        if not (len(self.open) == len(self.high) == len(self.low) == len(self.close) == n
                and volume_ok):
            columns = {"open": self.open, "high": self.high, "low": self.low,
                       "close": self.close, "volume": self.volume or ()}
            name, column = next((k, v) for k, v in columns.items()
                                if len(v) != n and (k != "volume" or self.volume is not None))
            raise ValueError(f"BarSet.{name} has {len(column)} values for {n} symbols")
        if len(set(self.symbols)) != n:
            _check_unique(self.symbols, "BarSet")

    @property
    def close_time(self) -> datetime:
        """When these bars closed: the event time of the set."""
        return self.bar_open + timeframe_delta(self.timeframe)


class FactorSnapshot(EventPayload, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Standardised factor exposures of every asset at ``asof``, plus last period's factor
    performance and market-state features that the signal model reads.

    Column-wise like BarSet: ``exposures[j][i]`` is factor ``factor_names[j]`` of asset
    ``symbols[i]``. A missing value (NaN in process, null on the wire, None after decoding)
    marks an asset without enough history for that factor: excluded, never zero-filled.
    ``asof`` is the close time of the bar the exposures were computed on.
    """

    TYPE: ClassVar[str] = "FactorSnapshot"
    TOPIC: ClassVar[str] = "factors"

    asof: UtcDatetime
    symbols: tuple[Symbol, ...]
    factor_names: tuple[str, ...]
    exposures: tuple[tuple[float | None, ...], ...]
    factor_ic: dict[str, float | None] = {}
    factor_returns: dict[str, float | None] = {}
    market_state: dict[str, float] = {}

    def __post_init__(self) -> None:
        if len(self.exposures) != len(self.factor_names):
            raise ValueError(
                f"FactorSnapshot.exposures has {len(self.exposures)} columns for "
                f"{len(self.factor_names)} factors"
            )
        n = len(self.symbols)
        for index, column in enumerate(self.exposures):
            if len(column) != n:
                raise ValueError(
                    f"FactorSnapshot.exposures[{index}] ({self.factor_names[index]}) has "
                    f"{len(column)} values for {n} symbols"
                )
        if len(set(self.symbols)) != n:
            _check_unique(self.symbols, "FactorSnapshot")
