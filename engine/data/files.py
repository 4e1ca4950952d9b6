"""Load a market-data file into a Panel: long OHLCV (CSV, gzip CSV, Parquet) or wide close-only.

Long: one row per (timestamp, symbol) with open, high, low, close and optionally volume;
timestamps are bar open times in UTC (ccxt's convention). Wide: a date column and one close
column per ticker; a row that carries only a date is that day's bar (open time 00:00 UTC).
Times are ISO text, datetimes, or epoch seconds / milliseconds (see ``_epoch_ms``).

Row numbers in errors and log lines are file lines: the header is line 1, so the first data row
is row 2 (Parquet has no lines; its rows are numbered the same way).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import structlog

from engine.data.panel import Panel
from engine.data.quality import REASON_COLUMNS, REASONS, bar_problems, close_only_problems
from engine.errors import DataError

log = structlog.get_logger("engine.data")
LONG_COLUMNS = ("timestamp", "symbol", "open", "high", "low", "close")
_OHLC = frozenset(("open", "high", "low", "close"))
_DATE_NAMES = ("timestamp", "date", "datetime", "time")
_KEY = ["timestamp", "symbol"]
_PARQUET = (".parquet", ".pq")
# Epoch numbers carry no unit, so it is read from their size. Seconds: 1e8 <= v < 1e10
# (1973-03-03 to 2286-11-20); milliseconds, ccxt's unit: 1e11 <= v < 1e13 (the same span).
# Anything else is refused, not guessed: 1e10..1e11 could be either, smaller numbers are no
# plausible epoch (a YYYYMMDD date such as 20240102, a row counter), and larger ones are
# microseconds (~1.7e15) or nanoseconds (~1.7e18). One column holds one unit.
_EPOCH_SECONDS = (1e8, 1e10)
_EPOCH_MILLISECONDS = (1e11, 1e13)


def _read_table(path: Path) -> pd.DataFrame:
    name = path.name.lower()
    if path.is_dir() and not name.endswith(_PARQUET):  # a .parquet folder is a dataset
        raise DataError(f"{path}: is a directory; give one .csv, .csv.gz or .parquet file")
    try:
        if name.endswith(_PARQUET):
            return pd.read_parquet(path)
        if name.endswith((".csv", ".csv.gz", ".gz", ".txt")):
            return pd.read_csv(path)
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except (ValueError, OSError, pd.errors.ParserError) as error:
        raise DataError(f"{path}: cannot be read as a table: {error}") from None
    raise DataError(f"{path}: unknown file type; expected .csv, .csv.gz or .parquet")


def _plain(value: Any) -> Any:
    """A cell as a plain Python value for messages and log fields: numpy scalars unwrapped,
    missing as None, infinities as the text 'inf' / '-inf' (JSON has no infinity)."""
    value = value.item() if isinstance(value, np.generic) else value
    if isinstance(value, float) and not np.isfinite(value):
        return None if np.isnan(value) else str(value)
    return None if value is pd.NA else value


def _iso_utc(stamp: np.datetime64) -> str:
    """``2024-01-02T00:00:00Z``: a bar time as ISO-8601 UTC (milliseconds only when present)."""
    unit = "s" if int(stamp.astype("datetime64[ms]").astype("int64")) % 1000 == 0 else "ms"
    return str(np.datetime_as_string(stamp, unit=unit, timezone="UTC"))


def _epoch_ms(values: pd.Series, path: Path, column: str) -> np.ndarray:
    numbers = values.to_numpy(dtype=float, na_value=np.nan)
    with np.errstate(invalid="ignore"):
        seconds = (numbers >= _EPOCH_SECONDS[0]) & (numbers < _EPOCH_SECONDS[1])
        millis = (numbers >= _EPOCH_MILLISECONDS[0]) & (numbers < _EPOCH_MILLISECONDS[1])
    unknown = np.flatnonzero(~(seconds | millis) & ~np.isnan(numbers))
    if len(unknown):
        row = int(unknown[0])
        raise DataError(
            f"{path}: column {column!r} row {row + 2} holds {_plain(values.iloc[row])!r}, "
            "which is neither epoch seconds (1e8 to 1e10) nor epoch milliseconds (1e11 to "
            "1e13); microseconds, nanoseconds and other numbers are not read as times"
        )
    if seconds.any() and millis.any():
        first = int(np.flatnonzero(seconds | millis)[0])
        other = int(np.flatnonzero(millis if seconds[first] else seconds)[0])
        units = ("seconds", "milliseconds") if seconds[first] else ("milliseconds", "seconds")
        raise DataError(
            f"{path}: column {column!r} mixes epoch units: row {first + 2} holds "
            f"{_plain(values.iloc[first])!r} ({units[0]}) but row {other + 2} holds "
            f"{_plain(values.iloc[other])!r} ({units[1]})"
        )
    scale = 1000.0 if seconds.any() else 1.0
    with np.errstate(invalid="ignore"):  # NaN stays NaT, reported by the caller
        return np.round(numbers * scale).astype("datetime64[ms]")


def _utc_ms(values: pd.Series, path: Path, column: str) -> np.ndarray:
    if pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values):
        stamps = _epoch_ms(values, path, column)
        missing = np.isnat(stamps)
    else:
        try:
            parsed = pd.to_datetime(values, utc=True)
        except (ValueError, TypeError) as error:
            raise DataError(
                f"{path}: column {column!r} holds values that are not times: {error}"
            ) from None
        missing = parsed.isna().to_numpy()
        stamps = parsed.dt.tz_localize(None).to_numpy().astype("datetime64[ms]")
    if missing.any():
        row = int(np.flatnonzero(missing)[0])
        value = _plain(values.iloc[row])
        shown = "the cell is empty" if value is None or value is pd.NaT else repr(value)
        raise DataError(f"{path}: column {column!r} row {row + 2} is not a time: {shown}")
    return stamps


def _numbers(
    values: pd.Series, path: Path, column: str, times: np.ndarray | None = None
) -> pd.Series:
    """``values`` as floats; numbers stored as text (some Parquet writers) are converted, any
    other text is an error naming the column, the row (and its date, when given) and the value."""
    if pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values):
        return values
    converted = pd.to_numeric(values, errors="coerce")
    bad = np.flatnonzero(converted.isna() & values.notna())
    if len(bad):
        row = int(bad[0])
        when = "" if times is None else f" (dated {_iso_utc(times[row])})"
        raise DataError(
            f"{path}: column {column!r} row {row + 2}{when} is not a number: {values.iloc[row]!r}"
        )
    return converted


def _infer_timeframe(times: np.ndarray, path: Path) -> np.timedelta64:
    if len(times) < 2:
        return np.timedelta64(1, "D").astype("timedelta64[ms]")
    steps, counts = np.unique(np.diff(times), return_counts=True)
    step = steps[np.argmax(counts)]
    if step % np.timedelta64(1, "s"):  # no market trades in fractions of a second
        raise DataError(
            f"{path}: bars are most often {step} apart, not a whole number of seconds; "
            "are the times in the unit the file claims?"
        )
    return step


def _reason(problem: int, value: float) -> str:
    # An infinity is named with its sign: "close is not finite (inf)".
    return f"{REASONS[problem]} ({value})" if np.isinf(value) else REASONS[problem]


def _reject_rows(
    frame: pd.DataFrame, value_columns: list[str], path: Path
) -> tuple[np.ndarray, np.ndarray]:
    """Return the masks of rows that cannot be a bar and of those without a symbol, logging each
    reject with its row, symbol, bar time, column, value and reason. The checks run on whole
    columns; only the rejected rows are looped over."""
    symbol = frame["symbol"]
    stamps = frame["timestamp"].to_numpy()
    no_symbol = symbol.isna().to_numpy() | symbol.astype(str).str.strip().eq("").to_numpy()
    values = {c: frame[c].to_numpy(dtype=float, na_value=np.nan) for c in value_columns}
    no_close = np.isnan(values["close"])
    problems = bar_problems(
        values["open"], values["high"], values["low"], values["close"], values.get("volume")
    )
    bad = no_symbol | no_close | (problems >= 0)
    for row in np.flatnonzero(bad).tolist():
        if no_symbol[row]:
            column, reason, value = "symbol", "symbol is empty", symbol.iloc[row]
        elif no_close[row]:
            column, reason, value = "close", "close is missing", None
        else:
            column = REASON_COLUMNS[problems[row]]
            value = values[column][row]
            reason = _reason(problems[row], value)
        log.warning(
            "data.rejected",
            source=str(path),
            row=int(frame.index[row]) + 2,
            symbol=None if no_symbol[row] else _plain(symbol.iloc[row]),
            bar_time=_iso_utc(stamps[row]),
            column=column,
            value=_plain(value),
            reason=reason,
        )
    return bad, no_symbol


def _log_conflicts(copies: pd.DataFrame, value_columns: list[str], path: Path) -> None:
    # Copies of one (timestamp, symbol) that disagree: say which row won and what differed.
    distinct = copies.drop_duplicates([*_KEY, *value_columns])
    disagree = distinct.loc[distinct.duplicated(_KEY, keep=False), _KEY]
    if disagree.empty:
        return
    in_conflict = pd.MultiIndex.from_frame(copies[_KEY]).isin(pd.MultiIndex.from_frame(disagree))
    for (stamp, symbol), group in copies[in_conflict].groupby(_KEY, sort=False):
        columns = [c for c in value_columns if group[c].nunique(dropna=False) > 1]
        cells = [
            {"row": int(line) + 2, **{c: _plain(v) for c, v in zip(columns, row)}}
            for line, row in zip(group.index, group[columns].to_numpy().tolist())
        ]
        log.warning(
            "data.duplicate_conflict",
            source=str(path),
            symbol=_plain(symbol),
            bar_time=_iso_utc(stamp.to_datetime64()),
            columns=columns,
            kept=cells[-1],
            dropped=cells[:-1],
        )


def _drop_duplicates(frame: pd.DataFrame, value_columns: list[str], path: Path) -> pd.DataFrame:
    """Keep the last row of each (timestamp, symbol): a later row in a file is taken as the
    correction of an earlier one, as ccxt_source does with repeated candles. Copies that
    disagree are logged one by one; the total is one summary line."""
    repeated = frame.duplicated(_KEY, keep=False)
    if not repeated.any():
        return frame
    _log_conflicts(frame[repeated], value_columns, path)
    dropped = frame.duplicated(_KEY, keep="last")
    log.warning("data.duplicates_dropped", source=str(path), rows=int(dropped.sum()))
    return frame[~dropped]


def _long_panel(frame: pd.DataFrame, path: Path) -> Panel:
    frame = frame.rename(columns=str.lower)
    missing = [c for c in LONG_COLUMNS if c not in frame.columns]
    if missing:
        why = "a symbol column" if "symbol" in frame.columns else "open/high/low/close columns"
        raise DataError(
            f"{path}: read as long format (it has {why}), which needs columns "
            f"{', '.join(LONG_COLUMNS)}; missing: {', '.join(missing)}"
        )
    frame = frame.reset_index(drop=True)
    frame = frame.assign(timestamp=_utc_ms(frame["timestamp"], path, "timestamp"))
    value_columns = ["open", "high", "low", "close"] + (["volume"] if "volume" in frame else [])
    frame = frame.assign(**{c: _numbers(frame[c], path, c) for c in value_columns})
    bad, no_symbol = _reject_rows(frame, value_columns, path)
    # Rejected rows leave their time and symbol on the axes, as missing (NaN) bars.
    times = np.unique(frame["timestamp"].to_numpy())
    labels = pd.Index(frame.loc[~no_symbol, "symbol"].unique()).sort_values()
    good = _drop_duplicates(frame[~bad], value_columns, path)
    if good.empty:
        raise DataError(f"{path}: no usable rows; all {len(frame)} were rejected (logged)")
    wide = good.pivot(index="timestamp", columns="symbol", values=value_columns)
    arrays: dict[str, np.ndarray | None] = {
        c: wide[c].reindex(index=times, columns=labels).to_numpy(dtype=float, copy=True)
        for c in value_columns
    }
    arrays.setdefault("volume", None)
    return Panel(
        bar_open=times,
        symbols=tuple(str(s) for s in labels),
        open=arrays["open"],
        high=arrays["high"],
        low=arrays["low"],
        close=arrays["close"],
        volume=arrays["volume"],
        timeframe=_infer_timeframe(times, path),
        source=str(path),
    )


def _reject_bad_cells(
    close: np.ndarray, symbols: tuple[str, ...], times: np.ndarray, lines: np.ndarray, path: Path
) -> None:
    # Bad closes become missing bars (NaN) so they never reach the factors; each is logged.
    # An empty cell is how a wide file says "no bar" (not yet listed), so it is not a reject.
    problems = close_only_problems(close)
    bad = problems >= 0
    for row, col in zip(*np.nonzero(bad)):
        log.warning(
            "data.rejected",
            source=str(path),
            row=int(lines[row]),
            symbol=symbols[col],
            bar_time=_iso_utc(times[row]),
            column=symbols[col],
            value=_plain(close[row, col]),
            reason=_reason(problems[row, col], close[row, col]),
        )
    close[bad] = np.nan


def _wide_panel(frame: pd.DataFrame, path: Path) -> Panel:
    frame = frame.reset_index(drop=True)
    date_column = next(
        (c for c in frame.columns if str(c).lower() in _DATE_NAMES), frame.columns[0]
    )
    times = _utc_ms(frame[date_column], path, str(date_column))
    prices = frame.drop(columns=[date_column])
    prices = pd.DataFrame({c: _numbers(prices[c], path, str(c), times) for c in prices.columns})
    order = np.argsort(times, kind="stable")
    times = times[order]
    if len(times) > 1 and not (np.diff(times) > np.timedelta64(0, "ms")).all():
        raise DataError(f"{path}: column {date_column!r} has duplicated dates")
    close = prices.to_numpy(dtype=float, copy=True)[order]
    symbols = tuple(str(c) for c in prices.columns)
    _reject_bad_cells(close, symbols, times, order + 2, path)
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

    A file is long when it has a ``symbol`` column or all of open, high, low and close (a long
    file missing a required column then fails naming it, instead of being misread as wide);
    anything else is wide.

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
    if "symbol" in columns or _OHLC <= columns:
        return _long_panel(frame, path)
    return _wide_panel(frame, path)
