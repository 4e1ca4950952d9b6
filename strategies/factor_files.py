"""Users' own factor columns from a file: long format ``timestamp, symbol, <factor>...``.

A value stamped at time t is known from t on: at a bar opening at b, each factor takes, per
symbol, its latest value stamped at or before b (as-of, never a later one).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np

from engine.errors import DataError


@dataclass(frozen=True)
class FileFactors:
    """Factor columns of one file as arrays: ``values[k]`` is factor ``names[k]``, (T, N)."""

    source: str
    names: tuple[str, ...]
    times: np.ndarray  # datetime64[ms], increasing
    symbols: tuple[str, ...]
    # (K, T, N): at times[t], symbol n's latest row at or before it (rows of symbols are
    # stamped independently); NaN where it has none yet, or where that row leaves it empty.
    values: np.ndarray

    def values_at(self, bar_open: datetime, universe: tuple[str, ...]) -> np.ndarray:
        """Return (K, len(universe)) as-of values at ``bar_open``; NaN for unknown symbols."""
        stamp = np.datetime64(bar_open.replace(tzinfo=None), "ms")
        row = int(np.searchsorted(self.times, stamp, side="right")) - 1
        out = np.full((len(self.names), len(universe)), np.nan)
        if row < 0:
            return out
        column = {s: i for i, s in enumerate(self.symbols)}
        for position, symbol in enumerate(universe):
            index = column.get(symbol)
            if index is not None:
                out[:, position] = self.values[:, row, index]
        return out


def _carry_rows_forward(values: np.ndarray, present: np.ndarray) -> np.ndarray:
    """Per symbol, carry its latest row forward: (K, T, N) ``values`` where ``present`` (T, N)
    marks the times it has a row of its own; NaN before its first row."""
    times, width = present.shape
    stamped = np.where(present, np.arange(times)[:, None], -1)
    latest = np.maximum.accumulate(stamped, axis=0)  # (T, N) its latest row so far, -1: none
    carried = values[:, np.maximum(latest, 0), np.arange(width)]
    carried[:, latest < 0] = np.nan
    return carried


def load_factor_file(path: str | Path) -> FileFactors:
    """Load a long factor file (CSV, gzip CSV or Parquet); errors name the file and column."""
    # Imported here: pandas (about 85 MB resident) loads only in a process that reads a file,
    # not in every one that imports the factor service.
    import pandas as pd

    path = Path(path)
    try:
        frame = pd.read_parquet(path) if path.suffix in (".parquet", ".pq") else pd.read_csv(path)
    except FileNotFoundError:
        raise DataError(f"{path}: factor file not found") from None
    except (ValueError, OSError) as error:
        raise DataError(f"{path}: cannot be read: {error}") from None
    frame = frame.rename(columns=str.lower)
    missing = [c for c in ("timestamp", "symbol") if c not in frame.columns]
    if missing:
        raise DataError(
            f"{path}: factor file needs columns timestamp, symbol and one per factor; "
            f"missing {missing}"
        )
    names = tuple(c for c in frame.columns if c not in ("timestamp", "symbol"))
    if not names:
        raise DataError(f"{path}: factor file has no factor columns")
    for name in names:
        if not pd.api.types.is_numeric_dtype(frame[name]):
            raise DataError(f"{path}: factor column {name!r} is not numeric")
    try:
        stamps = pd.to_datetime(frame["timestamp"], utc=True)
    except (ValueError, TypeError) as error:
        raise DataError(
            f"{path}: column 'timestamp' holds values that are not times: {error}"
        ) from None
    frame = frame.assign(timestamp=stamps.dt.tz_localize(None)).drop_duplicates(
        ["timestamp", "symbol"], keep="last"
    )
    wide = frame.pivot(index="timestamp", columns="symbol", values=list(names)).sort_index()
    symbols = tuple(str(s) for s in wide[names[0]].columns)
    values = np.stack([wide[n].reindex(columns=list(symbols)).to_numpy(dtype=float) for n in names])
    present = (
        frame.assign(_row=1.0)
        .pivot(index="timestamp", columns="symbol", values="_row")
        .reindex(index=wide.index, columns=wide[names[0]].columns)
        .notna()
        .to_numpy()
    )
    values = _carry_rows_forward(values, present)
    return FileFactors(
        source=str(path),
        names=names,
        times=wide.index.to_numpy().astype("datetime64[ms]"),
        symbols=symbols,
        values=values,
    )
