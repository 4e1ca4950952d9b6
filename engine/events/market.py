"""Market-side payloads: bars in, factor exposures out."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, ClassVar

import msgspec
import numpy as np

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
        if not (
            len(self.open) == len(self.high) == len(self.low) == len(self.close) == n and volume_ok
        ):
            columns = {
                "open": self.open,
                "high": self.high,
                "low": self.low,
                "close": self.close,
                "volume": self.volume or (),
            }
            name, column = next(
                (k, v)
                for k, v in columns.items()
                if len(v) != n and (k != "volume" or self.volume is not None)
            )
            raise ValueError(f"BarSet.{name} has {len(column)} values for {n} symbols")
        if len(set(self.symbols)) != n:
            _check_unique(self.symbols, "BarSet")

    @property
    def close_time(self) -> datetime:
        """When these bars closed: the event time of the set."""
        return self.bar_open + timeframe_delta(self.timeframe)


_BLOCK_COLUMNS = ("open", "high", "low", "close", "volume")
_CELL = np.dtype("<f8")  # one value of a block: float64, little-endian, on every platform


class BarBlock(EventPayload, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Consecutive bars of one timeframe in one event: what a replay sends for a run of bars
    during which nothing else can happen (no order in flight, no schedule tick between them).

    Consumers handle a block exactly as they would its rows delivered one by one as BarSets
    (``rows()`` gives them), but with a few matrix operations instead of a Python step per
    bar. Each column is a (bars x symbols) matrix of little-endian float64, row by row, as raw
    bytes (base64 in JSON): a 500-asset month is 120 KB that ``matrix`` reads without a copy,
    where lists of floats would cost a conversion per value at each end. NaN means the symbol
    had no bar then. The block's event time is the close of its last bar. Build one with
    ``from_matrices``.
    """

    TYPE: ClassVar[str] = "BarBlock"
    TOPIC: ClassVar[str] = "bars"

    timeframe: Annotated[str, msgspec.Meta(pattern=r"^[1-9][0-9]*[smhdw]$")] = "1d"
    bar_open: tuple[UtcDatetime, ...]
    symbols: tuple[Symbol, ...]
    open: bytes
    high: bytes
    low: bytes
    close: bytes
    volume: bytes | None = None

    @classmethod
    def from_matrices(
        cls,
        *,
        timeframe: str,
        bar_open: tuple[datetime, ...],
        symbols: tuple[str, ...],
        open: np.ndarray,
        high: np.ndarray,  # noqa: A002
        low: np.ndarray,
        close: np.ndarray,
        volume: np.ndarray | None,
    ) -> BarBlock:
        """Return the block of these (bars x symbols) matrices; a matrix passed for several
        columns (close-only data) is stored once and shared."""
        stored: dict[int, bytes] = {}

        def cells(matrix: np.ndarray) -> bytes:
            if id(matrix) not in stored:
                stored[id(matrix)] = np.ascontiguousarray(matrix, dtype=_CELL).tobytes()
            return stored[id(matrix)]

        return cls(
            timeframe=timeframe,
            bar_open=bar_open,
            symbols=symbols,
            open=cells(open),
            high=cells(high),
            low=cells(low),
            close=cells(close),
            volume=None if volume is None else cells(volume),
        )

    def __post_init__(self) -> None:
        if not self.bar_open:
            raise ValueError("BarBlock.bar_open must hold at least one bar")
        n_bars, n_symbols = len(self.bar_open), len(self.symbols)
        for name in _BLOCK_COLUMNS:
            column = getattr(self, name)
            if column is None:
                continue
            if len(column) != n_bars * n_symbols * _CELL.itemsize:
                raise ValueError(
                    f"BarBlock.{name} has {len(column) / _CELL.itemsize:g} values "
                    f"for {n_bars} bars x {n_symbols} symbols"
                )
            values = np.frombuffer(column, dtype=_CELL)
            bad = np.isinf(values) | ((values < 0) if name == "volume" else (values <= 0))
            if bad.any():
                t, j = divmod(int(np.argmax(bad)), n_symbols)
                rule = "non-negative" if name == "volume" else "positive"
                raise ValueError(
                    f"BarBlock.{name} must be {rule} and finite (or NaN for no bar), "
                    f"received {values[t * n_symbols + j]} at bar {t} "
                    f"({self.bar_open[t].isoformat()}), symbol {self.symbols[j]}"
                )
        if any(b <= a for a, b in zip(self.bar_open, self.bar_open[1:])):
            raise ValueError("BarBlock.bar_open must be strictly increasing")
        if len(set(self.symbols)) != n_symbols:
            _check_unique(self.symbols, "BarBlock")

    @property
    def close_time(self) -> datetime:
        """When the last bar closed: the event time of the block."""
        return self.bar_open[-1] + timeframe_delta(self.timeframe)

    def close_times(self) -> list[datetime]:
        """Return each bar's close time."""
        step = timeframe_delta(self.timeframe)
        return [t + step for t in self.bar_open]

    def matrix(self, name: str) -> np.ndarray | None:
        """Return column ``name`` ("open" ... "volume") shaped (bars, symbols), NaN where a
        symbol had no bar; None for a block without volume. A read-only view, not a copy."""
        values = getattr(self, name)
        if values is None:
            return None
        return np.frombuffer(values, dtype=_CELL).reshape(len(self.bar_open), len(self.symbols))

    def rows(self) -> list[BarSet]:
        """Return the block as the BarSets it stands for, one per bar that has any symbol."""
        matrices = self.matrices()
        universes: dict[bytes, tuple[tuple[str, ...], np.ndarray]] = {}
        rows = (self._row(t, matrices, universes) for t in range(len(self.bar_open)))
        return [bars for bars in rows if bars is not None]

    def last_row(self) -> BarSet | None:
        """Return the BarSet of the last bar that has any symbol (None if none has)."""
        matrices = self.matrices()
        close = matrices["close"]
        assert close is not None
        for t in range(len(close) - 1, -1, -1):  # almost always the very last bar
            if not np.isnan(close[t]).all():
                return self._row(t, matrices, {})
        return None

    def matrices(self) -> dict[str, np.ndarray | None]:
        """Return every column as ``matrix`` does, one view per distinct column (close-only
        blocks share one for open, high, low and close)."""
        viewed: dict[int, np.ndarray | None] = {}
        for name in _BLOCK_COLUMNS:
            key = id(getattr(self, name))
            if key not in viewed:
                viewed[key] = self.matrix(name)
        return {name: viewed[id(getattr(self, name))] for name in _BLOCK_COLUMNS}

    def _row(
        self,
        t: int,
        matrices: dict[str, np.ndarray | None],
        universes: dict[bytes, tuple[tuple[str, ...], np.ndarray]],
    ) -> BarSet | None:
        close = matrices["close"]
        assert close is not None
        present = ~np.isnan(close[t])
        key = present.tobytes()
        if key not in universes:  # one tuple per universe, as a live feed would send
            columns = np.flatnonzero(present)
            universes[key] = (tuple(self.symbols[i] for i in columns.tolist()), columns)
        symbols, columns = universes[key]
        if not symbols:
            return None

        picked: dict[int, tuple[float, ...]] = {}  # close-only blocks: one row for four columns

        def pick(name: str) -> tuple[float, ...] | None:
            matrix = matrices[name]
            if matrix is None:
                return None
            key = id(getattr(self, name))
            if key not in picked:
                picked[key] = tuple(matrix[t, columns].tolist())
            return picked[key]

        return BarSet(
            timeframe=self.timeframe,
            bar_open=self.bar_open[t],
            symbols=symbols,
            open=pick("open"),
            high=pick("high"),
            low=pick("low"),
            close=pick("close"),
            volume=pick("volume"),
        )


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
