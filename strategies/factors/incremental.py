"""Factor exposures updated one bar at a time, without recomputing the history.

Built-in factors are kernels over series, lags and window sums (see ``registry``): a bar costs
a few vector operations per window kept, O(assets), plus, once per window length, a pass over
the block just completed (the exact refresh of the window sums). The values equal
:func:`~strategies.factors.panel.compute_panel` on the same bars. Factors registered with a
full-history function only are re-run on their trailing window each bar.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from strategies.factors.history import FactorInputs
from strategies.factors.panel import FactorRequest, resolve_requests
from strategies.factors.series import DERIVED_SERIES, MARKET_SERIES, RAW_SERIES
from strategies.factors.windows import LagBuffer, WindowState

_NAN_ROW = np.full(1, np.nan)


class _Planner:
    """FactorData that only records what a kernel reads: which lags and which windows."""

    def __init__(self) -> None:
        self.lags: dict[str, int] = {}
        self.windows: dict[tuple[str, int, str], None] = {}  # ordered set
        self._seen: set[str] = set()

    def series(self, name: str) -> np.ndarray:
        if name not in RAW_SERIES and name not in self._seen:
            self._seen.add(name)
            DERIVED_SERIES[name](self)  # records the series' own dependencies first
        return _NAN_ROW

    def lag(self, name: str, k: int) -> np.ndarray:
        self.series(name)
        if k > 0:
            self.lags[name] = max(self.lags.get(name, 0), k)
        return _NAN_ROW

    def window_sum(self, name: str, length: int) -> np.ndarray:
        self.series(name)
        self.windows[(name, length, "sum")] = None
        return _NAN_ROW

    def window_max(self, name: str, length: int) -> np.ndarray:
        self.series(name)
        self.windows[(name, length, "max")] = None
        return _NAN_ROW

    def bar_index(self) -> np.ndarray:
        return np.zeros(1)

    def cross_sectional_mean(self, values: np.ndarray) -> np.ndarray:
        return _NAN_ROW


class _Bar:
    """FactorData for the newest bar: (N,) rows, (1,) for market series."""

    def __init__(self) -> None:
        self.values: dict[str, np.ndarray] = {}
        self.windows: dict[tuple[str, int, str], np.ndarray] = {}
        self.lag_buffers: dict[str, LagBuffer] = {}
        self.index = np.zeros(1)
        self.raw: dict[str, object] = {}
        self.columns: np.ndarray | None = None
        self.n_assets = 0

    def series(self, name: str) -> np.ndarray:
        value = self.values.get(name)
        if value is None:
            value = self._raw_row(name) if name in self.raw else DERIVED_SERIES[name](self)
            self.values[name] = value
        return value

    def _raw_row(self, name: str) -> np.ndarray:
        # Raw inputs become rows only when a factor reads them: a momentum-only setup never
        # pays for converting open, high, low and volume.
        values = self.raw[name]
        if values is None:
            return np.full(self.n_assets, np.nan)
        if self.columns is None:
            return np.array(values, dtype=np.float64)
        row = np.full(self.n_assets, np.nan)
        row[self.columns] = values
        return row

    def lag(self, name: str, k: int) -> np.ndarray:
        if k == 0:
            return self.series(name)
        return self.lag_buffers[name].lag(k)

    def window_sum(self, name: str, length: int) -> np.ndarray:
        return self.windows[(name, length, "sum")]

    def window_max(self, name: str, length: int) -> np.ndarray:
        return self.windows[(name, length, "max")]

    def bar_index(self) -> np.ndarray:
        return self.index

    def cross_sectional_mean(self, values: np.ndarray) -> np.ndarray:
        count = np.count_nonzero(~np.isnan(values))
        if count == 0:
            return _NAN_ROW.copy()
        return np.array([np.nansum(values) / count])


class _TrailingInputs:
    """The last ``depth`` bars of raw inputs, for factors that only have a full-history function.

    A buffer twice as tall, written row by row and shifted when full: O(assets) amortised.
    """

    def __init__(self, depth: int) -> None:
        self.depth = depth
        self._rows = {name: np.full((2 * depth, 0), np.nan) for name in RAW_SERIES}
        self._count = 0

    def add_columns(self, count: int) -> None:
        for name, rows in self._rows.items():
            self._rows[name] = np.hstack([rows, np.full((rows.shape[0], count), np.nan)])

    def push(self, rows: dict[str, np.ndarray]) -> FactorInputs:
        if self._count == 2 * self.depth:
            keep = self.depth - 1
            for buffer in self._rows.values():
                buffer[:keep] = buffer[self._count - keep : self._count]
            self._count = keep
        for name, buffer in self._rows.items():
            buffer[self._count] = rows[name]
        self._count += 1
        start = max(0, self._count - self.depth)
        window = {name: buffer[start : self._count] for name, buffer in self._rows.items()}
        return FactorInputs(**window)


class IncrementalFactors:
    """Factor exposures kept current bar by bar over a universe that grows as symbols appear.

    Parameters
    ----------
    factors
        ``(label, factor name, parameters)`` triples, as for ``compute_panel``.

    Attributes
    ----------
    symbols
        The universe in order of first appearance; exposures' columns follow it. A symbol
        joins with a missing history (NaN), so it is excluded until its windows fill. Read it,
        do not modify it.
    labels
        The factors' labels; exposures' rows follow them.
    window
        The most bars of history any of the factors reads.
    n_bars
        Bars fed so far.
    """

    def __init__(self, factors: Sequence[FactorRequest]) -> None:
        self._entries = resolve_requests(factors)
        self.labels: tuple[str, ...] = tuple(label for label, _, _ in self._entries)
        self.window = max((spec.window(**params) for _, spec, params in self._entries), default=1)
        self.symbols: list[str] = []
        self.n_bars = 0
        self._column: dict[str, int] = {}
        self._last_symbols: tuple[str, ...] | None = None
        self._last_columns: np.ndarray | None = None
        self._volume_labels = [label for label, spec, _ in self._entries if spec.needs_volume]

        planner = _Planner()
        for _, spec, params in self._entries:
            if spec.kernel is not None:
                spec.kernel(planner, **params)
        self._bar = _Bar()
        self._lag_buffers = {
            name: LagBuffer(k + 1, self._width(name)) for name, k in planner.lags.items()
        }
        self._bar.lag_buffers = self._lag_buffers
        self._windows = {
            key: WindowState(key[1], key[2], self._width(key[0])) for key in planner.windows
        }
        # Factors with a full-history function only are re-run on their trailing bars.
        function_windows = [
            spec.window(**params) for _, spec, params in self._entries if spec.kernel is None
        ]
        self._trailing = _TrailingInputs(max(function_windows)) if function_windows else None

        # The series kept in buffers. A run of bars can skip the per-bar Python steps when all
        # of them are raw inputs: then pushing the rows is one matrix operation per buffer.
        self._buffered = tuple(
            dict.fromkeys([*self._lag_buffers, *(name for name, _, _ in self._windows)])
        )
        self._raw_only = self._trailing is None and all(
            name in RAW_SERIES for name in self._buffered
        )

    @staticmethod
    def _width(series: str) -> int:
        return 1 if series in MARKET_SERIES else 0

    def _columns_of(self, symbols: tuple[str, ...]) -> np.ndarray | None:
        if symbols is self._last_symbols or symbols == self._last_symbols:
            return self._last_columns
        if len(set(symbols)) != len(symbols):
            repeated = sorted({s for s in symbols if symbols.count(s) > 1})
            raise ValueError(f"IncrementalFactors.update: symbols repeated in one bar: {repeated}")
        new = [s for s in symbols if s not in self._column]
        if new:
            for symbol in new:
                self._column[symbol] = len(self.symbols)
                self.symbols.append(symbol)
            for name, buffer in self._lag_buffers.items():
                if name not in MARKET_SERIES:
                    buffer.add_columns(len(new))
            for (name, _, _), state in self._windows.items():
                if name not in MARKET_SERIES:
                    state.add_columns(len(new))
            if self._trailing is not None:
                self._trailing.add_columns(len(new))
        columns = np.fromiter((self._column[s] for s in symbols), dtype=np.intp, count=len(symbols))
        if np.array_equal(columns, np.arange(len(self.symbols))):
            columns = None  # the bar lists the whole universe in order: no scatter needed
        self._last_symbols, self._last_columns = symbols, columns
        return columns

    def update(
        self,
        symbols: tuple[str, ...],
        open: tuple[float, ...] | np.ndarray,  # noqa: A002
        high: tuple[float, ...] | np.ndarray,
        low: tuple[float, ...] | np.ndarray,
        close: tuple[float, ...] | np.ndarray,
        volume: tuple[float, ...] | np.ndarray | None,
    ) -> np.ndarray:
        """Append one bar and return the exposures at it, shaped (factors, len(self.symbols)).

        Values are given for ``symbols`` only, in that order; universe members absent from
        this bar count as missing for it (NaN). NaN values are missing too.

        Raises
        ------
        ValueError
            When a value column's length differs from ``symbols``', a symbol is repeated, or
            ``volume`` is None while a factor needs it (naming those factors). Nothing is
            appended then.
        """
        symbols = tuple(symbols)
        if volume is None and self._volume_labels:
            raise ValueError(f"factors {self._volume_labels} need volume, and this bar has none")
        given = {"open": open, "high": high, "low": low, "close": close, "volume": volume}
        for name, values in given.items():
            if values is not None and len(values) != len(symbols):
                raise ValueError(
                    f"IncrementalFactors.update: {name} has {len(values)} values "
                    f"for {len(symbols)} symbols"
                )
        columns = self._columns_of(symbols)
        n_assets = len(self.symbols)
        bar = self._bar
        exposures = np.empty((len(self._entries), n_assets))
        with np.errstate(all="ignore"):
            trailing = self._advance(given, columns, n_assets)
            for position, (_, spec, params) in enumerate(self._entries):
                if spec.kernel is not None:
                    exposures[position] = spec.kernel(bar, **params)
                else:
                    exposures[position] = spec.function(trailing, **params)[-1]
        return exposures

    def _advance(
        self, raw: dict[str, object], columns: np.ndarray | None, n_assets: int
    ) -> FactorInputs | None:
        # Makes ``raw`` the newest bar and pushes it into every buffer; the kernels then read
        # the bar. Returns the trailing inputs of full-history factors (None without any).
        bar = self._bar
        bar.values = {}
        bar.raw, bar.columns, bar.n_assets = raw, columns, n_assets
        bar.index = np.array([float(self.n_bars)])
        for name, buffer in self._lag_buffers.items():
            buffer.push(bar.series(name))
        bar.windows = {key: state.push(bar.series(key[0])) for key, state in self._windows.items()}
        trailing = (
            self._trailing.push({name: bar.series(name) for name in RAW_SERIES})
            if self._trailing is not None
            else None
        )
        self.n_bars += 1
        return trailing

    def update_block(
        self, symbols: tuple[str, ...], values: dict[str, np.ndarray | None]
    ) -> np.ndarray:
        """Append several bars and return the exposures at the last, as ``update`` bar by bar.

        ``values`` maps "open" ... "volume" to (bars, len(symbols)) matrices (None for a
        missing volume); NaN close means the symbol had no bar then, as an absent symbol does
        for ``update``. The universe grows in the same order (first appearance, then column
        order) and the buffers receive the same rows, so every exposure is identical to
        feeding the rows one by one; the bars before the last skip the factor kernels.
        """
        close = values["close"]
        assert close is not None
        if close.ndim != 2 or close.shape[1] != len(symbols) or len(close) == 0:
            raise ValueError(
                f"IncrementalFactors.update_block: close must be (bars, "
                f"{len(symbols)}) with at least one bar, received {close.shape}"
            )
        if values.get("volume") is None and self._volume_labels:
            raise ValueError(f"factors {self._volume_labels} need volume, and this block has none")
        present = ~np.isnan(close)
        with_bars = present.any(axis=1)
        if not with_bars.all():  # a bar time nobody traded never reached ``update`` either
            if not with_bars.any():
                raise ValueError("IncrementalFactors.update_block: no symbol has a bar")
            values = {name: None if m is None else m[with_bars] for name, m in values.items()}
            close, present = close[with_bars], present[with_bars]
        # Segments of the bars before the last, each starting where new symbols appear.
        n_rows = len(close) - 1
        starts = [0]
        column = self._column
        if n_rows > 1 and not all(s in column for s in symbols):
            known = np.array([s in column for s in symbols], dtype=bool)
            earlier = present[:n_rows]
            first_seen = np.where(earlier.any(axis=0) & ~known, earlier.argmax(axis=0), 0)
            starts = sorted({0, *first_seen.tolist()})
        for start, stop in zip(starts, [*starts[1:], n_rows]):
            if start >= stop:
                continue
            row_symbols = tuple(symbols[j] for j in np.flatnonzero(present[start]).tolist())
            self._columns_of(row_symbols)  # adds the symbols new at ``start``, in column order
            self._push_rows(symbols, values, start, stop)
        last = present[-1]
        columns = np.flatnonzero(last)
        pick = lambda m: None if m is None else m[-1, columns]  # noqa: E731
        return self.update(
            tuple(symbols[j] for j in columns.tolist()),
            pick(values["open"]),
            pick(values["high"]),
            pick(values["low"]),
            close[-1, columns],
            pick(values.get("volume")),
        )

    def _push_rows(
        self, symbols: tuple[str, ...], values: dict[str, np.ndarray | None], start: int, stop: int
    ) -> None:
        # Rows start..stop-1 in universe columns (NaN for members without a bar), into every
        # buffer, without evaluating the kernels.
        width = len(self.symbols)
        block_columns = [j for j, s in enumerate(symbols) if s in self._column]
        universe_columns = [self._column[symbols[j]] for j in block_columns]
        # The raw-only path reads just the series its buffers keep (close, for momentum).
        names = self._buffered if self._raw_only else RAW_SERIES
        in_order = universe_columns == list(range(width))
        rows: dict[str, np.ndarray] = {}
        for name in names:
            matrix = values.get(name)
            if matrix is not None and in_order:
                rows[name] = matrix[start:stop, block_columns]
                continue
            out = np.full((stop - start, width), np.nan)
            if matrix is not None:
                out[:, universe_columns] = matrix[start:stop, block_columns]
            rows[name] = out
        if self._raw_only:
            for name, buffer in self._lag_buffers.items():
                buffer.push_many(rows[name])
            for (name, _, _), state in self._windows.items():
                state.push_many(rows[name])
            self.n_bars += stop - start
            return
        with np.errstate(all="ignore"):
            for t in range(stop - start):  # the steps of ``update`` without the kernels
                self._advance({name: rows[name][t] for name in RAW_SERIES}, None, width)
