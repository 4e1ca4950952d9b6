"""Load a market-data file into a Panel: long OHLCV (CSV, gzip CSV, Parquet) or wide close-only.

Long: one row per (timestamp, symbol) with open, high, low, close and optionally volume;
timestamps are bar open times in UTC (ccxt's convention). Wide: a date column and one close
column per ticker; a row that carries only a date is that day's bar (open time 00:00 UTC).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import structlog

from engine.data.panel import Panel
from engine.data.quality import REASONS, bar_problems
from engine.errors import DataError

log = structlog.get_logger("engine.data")
LONG_COLUMNS = ("timestamp", "symbol", "open", "high", "low", "close")
_DATE_NAMES = ("timestamp", "date", "datetime", "time")


def _read_table(path: Path) -> pd.DataFrame:
    name = path.name.lower()
    try:
        if name.endswith(".parquet") or name.endswith(".pq"):
            return pd.read_parquet(path)
        if name.endswith((".csv", ".csv.gz", ".gz", ".txt")):
            return pd.read_csv(path)
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except (ValueError, OSError, pd.errors.ParserError) as error:
        raise DataError(f"{path}: cannot be read as a table: {error}") from None
    raise DataError(f"{path}: unknown file type; expected .csv, .csv.gz or .parquet")


def _utc_ms(values: pd.Series, path: Path, column: str) -> np.ndarray:
    try:
        stamps = pd.to_datetime(values, utc=True)
    except (ValueError, TypeError) as error:
        raise DataError(
            f"{path}: column {column!r} holds values that are not times: {error}"
        ) from None
    if stamps.isna().any():
        row = int(np.flatnonzero(stamps.isna().to_numpy())[0])
        raise DataError(
            f"{path}: column {column!r} row {row + 2} is not a time: {values.iloc[row]!r}"
        )
    return stamps.dt.tz_localize(None).to_numpy().astype("datetime64[ms]")


def _infer_timeframe(times: np.ndarray, path: Path) -> np.timedelta64:
    if len(times) < 2:
        return np.timedelta64(1, "D").astype("timedelta64[ms]")
    steps, counts = np.unique(np.diff(times), return_counts=True)
    return steps[np.argmax(counts)]


def _reject_bad_bars(
    panel: dict[str, np.ndarray], symbols: tuple[str, ...], times: np.ndarray, path: Path
) -> None:
    # Bad bars become missing bars (NaN) so they never reach the factors; each is logged.
    problems = bar_problems(
        panel["open"], panel["high"], panel["low"], panel["close"], panel.get("volume")
    )
    bad = problems >= 0
    for row, col in zip(*np.nonzero(bad)):
        log.warning(
            "data.rejected",
            source=str(path),
            symbol=symbols[col],
            timestamp=str(times[row]),
            reason=REASONS[problems[row, col]],
        )
    if bad.any():
        for column in panel.values():
            if column is not None:
                column[bad] = np.nan


def _long_panel(frame: pd.DataFrame, path: Path) -> Panel:
    frame = frame.rename(columns=str.lower)
    missing = [c for c in LONG_COLUMNS if c not in frame.columns]
    if missing:
        raise DataError(
            f"{path}: long format needs columns {list(LONG_COLUMNS)}, missing {missing}"
        )
    frame = frame.reset_index(drop=True)
    frame = frame.assign(timestamp=_utc_ms(frame["timestamp"], path, "timestamp"))
    value_columns = ["open", "high", "low", "close"] + (["volume"] if "volume" in frame else [])
    for column in value_columns:
        if not pd.api.types.is_numeric_dtype(frame[column]):
            # Numbers stored as text (some Parquet writers) are converted; anything else is named.
            converted = pd.to_numeric(frame[column], errors="coerce")
            bad = np.flatnonzero(converted.isna() & frame[column].notna())
            if len(bad):
                row = int(bad[0])
                raise DataError(
                    f"{path}: column {column!r} row {row + 2} is not a number: "
                    f"{frame[column].iloc[row]!r}"
                )
            frame[column] = converted
    duplicated = frame.duplicated(["timestamp", "symbol"], keep="last")
    if duplicated.any():
        log.warning("data.duplicates_dropped", source=str(path), rows=int(duplicated.sum()))
        frame = frame[~duplicated]
    wide = frame.pivot(index="timestamp", columns="symbol", values=value_columns).sort_index()
    symbols = tuple(str(s) for s in wide["close"].columns)
    times = wide.index.to_numpy().astype("datetime64[ms]")
    arrays = {
        c: wide[c].reindex(columns=list(symbols)).to_numpy(dtype=float, copy=True)
        for c in value_columns
    }
    arrays.setdefault("volume", None)
    _reject_bad_bars(arrays, symbols, times, path)
    return Panel(
        bar_open=times,
        symbols=symbols,
        open=arrays["open"],
        high=arrays["high"],
        low=arrays["low"],
        close=arrays["close"],
        volume=arrays["volume"],
        timeframe=_infer_timeframe(times, path),
        source=str(path),
    )


def _wide_panel(frame: pd.DataFrame, path: Path) -> Panel:
    date_column = next(
        (c for c in frame.columns if str(c).lower() in _DATE_NAMES), frame.columns[0]
    )
    times = _utc_ms(frame[date_column], path, str(date_column))
    prices = frame.drop(columns=[date_column])
    non_numeric = [str(c) for c in prices.columns if not pd.api.types.is_numeric_dtype(prices[c])]
    if non_numeric:
        raise DataError(
            f"{path}: wide format needs numeric close columns; not numeric: {non_numeric}"
        )
    order = np.argsort(times, kind="stable")
    times = times[order]
    if len(times) > 1 and not (np.diff(times) > np.timedelta64(0, "ms")).all():
        raise DataError(f"{path}: column {date_column!r} has duplicated dates")
    close = prices.to_numpy(dtype=float, copy=True)[order]
    symbols = tuple(str(c) for c in prices.columns)
    arrays = {"open": close, "high": close, "low": close, "close": close, "volume": None}
    _reject_bad_bars(arrays, symbols, times, path)
    log.info(
        "data.close_only",
        source=str(path),
        symbols=len(symbols),
        note="open/high/low fall back to close; volume factors are off",
    )
    return Panel(
        bar_open=times,
        symbols=symbols,
        open=close,
        high=close,
        low=close,
        close=close,
        volume=None,
        timeframe=_infer_timeframe(times, path),
        source=str(path),
    )


def load_panel(path: str | Path) -> Panel:
    """Return the panel in ``path``, detecting the long or wide shape from its columns.

    Raises
    ------
    DataError
        When the file is missing, unreadable, or its columns fit neither shape.
    """
    path = Path(path)
    frame = _read_table(path)
    if frame.empty:
        raise DataError(f"{path}: no rows")
    columns = {str(c).lower() for c in frame.columns}
    if {"symbol", "close"} <= columns:
        return _long_panel(frame, path)
    return _wide_panel(frame, path)
