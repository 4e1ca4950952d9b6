"""``deepfactor data fetch``: download closed OHLCV history through ccxt into a market-data file.

The file is the long format ``engine.data.load_panel`` reads (timestamp UTC, symbol, open,
high, low, close, volume), as Parquet, CSV or gzip CSV by the extension of ``out``. It is
written to a temporary name beside ``out`` and renamed into place, so an interrupted download
never leaves a half-written file that looks complete.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from datetime import UTC, date, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd
import structlog

from engine.data.ccxt_source import CcxtOhlcvSource, iso_utc
from engine.errors import DataError
from engine.progress import JobProgress

if TYPE_CHECKING:
    import ccxt

log = structlog.get_logger("services.commands.data_fetch")
_FORMATS = {".parquet": "parquet", ".pq": "parquet", ".csv": "csv", ".csv.gz": "csv.gz"}


def parse_utc_ms(value: str | date | datetime, name: str) -> int:
    """Return ``value`` (an ISO date or datetime, UTC unless it carries an offset) in UTC ms.

    A bare date is midnight UTC that day.

    Raises
    ------
    DataError
        Naming the parameter and the value when it is not an ISO date or datetime.
    """
    moment: datetime | None = None
    if isinstance(value, datetime):
        moment = value
    elif isinstance(value, date):
        moment = datetime(value.year, value.month, value.day)
    elif isinstance(value, str) and value.strip():
        try:
            moment = datetime.fromisoformat(value.strip())
        except ValueError:
            moment = None
    if moment is None:
        raise DataError(
            f"{name} must be an ISO date or datetime such as 2024-01-01 or "
            f"2024-01-01T12:00:00Z, received {value!r}"
        )
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp() * 1000)


def _file_format(out: Path) -> str:
    name = out.name.lower()
    for suffix in sorted(_FORMATS, key=len, reverse=True):
        if name.endswith(suffix):
            return _FORMATS[suffix]
    raise DataError(
        f"{out}: unknown output type; expected a name ending in {', '.join(sorted(_FORMATS))}"
    )


def _write(frame: pd.DataFrame, out: Path, file_format: str) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(f".{out.name}.{os.getpid()}.partial")
    try:
        if file_format == "parquet":
            frame.to_parquet(partial, index=False)
        else:
            frame.to_csv(
                partial, index=False, compression="gzip" if file_format == "csv.gz" else None
            )
        os.replace(partial, out)
    except OSError as error:
        raise DataError(f"{out}: cannot be written: {error}") from None
    finally:
        partial.unlink(missing_ok=True)


def fetch_to_file(
    exchange_id: str,
    symbols: Sequence[str] | str,
    timeframe: str,
    since: str | date | datetime,
    out: str | Path,
    *,
    until: str | date | datetime | None = None,
    exchange: ccxt.Exchange | None = None,
    page_limit: int | None = None,
    clock: Callable[[], float] = time.time,
    sleep: Callable[[float], None] = time.sleep,
) -> dict[str, Any]:
    """Download the closed candles of ``symbols`` opening in [since, until) into ``out``.

    Parameters
    ----------
    exchange_id, symbols, timeframe
        As ``CcxtOhlcvSource`` takes them; ``symbols`` may also be one comma-separated string.
    since, until
        ISO dates or datetimes, UTC unless they carry an offset; ``until`` None means now.
    out
        Destination ending in .parquet, .csv or .csv.gz.
    exchange, page_limit, clock, sleep
        Passed to the source (tests inject an offline exchange, a fixed clock, no sleeps).

    Returns
    -------
    dict
        What was written and what the hygiene found: rows, symbols, first and last bar, gaps,
        missing bars, rejected, duplicates, unclosed candles dropped, requests and retries.

    Raises
    ------
    DataError
        Bad arguments, exchange refusals, retries exhausted, no candle at all, unwritable ``out``.
    """
    since_ms = parse_utc_ms(since, "since")
    until_ms = None if until is None else parse_utc_ms(until, "until")
    if until_ms is not None and until_ms <= since_ms:
        raise DataError(f"until ({iso_utc(until_ms)}) must be after since ({iso_utc(since_ms)})")
    if isinstance(symbols, str):
        symbols = [s.strip() for s in symbols.split(",") if s.strip()]
    out = Path(out)
    file_format = _file_format(out)  # fail on a bad name before paging through history

    source = CcxtOhlcvSource(
        exchange_id,
        symbols,
        timeframe,
        exchange=exchange,
        page_limit=page_limit,
        clock=clock,
        sleep=sleep,
    )
    with JobProgress("data_fetch", len(source.symbols), "symbol", exchange=exchange_id) as done:
        rows = source.history(since_ms, until_ms, done)
    frame = source.to_frame(rows)
    if frame.empty:
        window = f"{iso_utc(since_ms)} .. {iso_utc(until_ms) if until_ms is not None else 'now'}"
        raise DataError(
            f"{exchange_id}: no closed {timeframe} candles for {', '.join(source.symbols)} "
            f"in {window}; nothing written to {out}"
        )
    for symbol, candles in rows.items():
        if not candles:
            log.warning("data.no_candles", exchange=exchange_id, symbol=symbol, timeframe=timeframe)
    _write(frame, out, file_format)

    counts = source.counts
    summary: dict[str, Any] = {
        "exchange": exchange_id,
        "timeframe": timeframe,
        "out": str(out),
        "format": file_format,
        "since": iso_utc(since_ms),
        "until": None if until_ms is None else iso_utc(until_ms),
        "first": frame["timestamp"].iloc[0].isoformat().replace("+00:00", "Z"),
        "last": frame["timestamp"].iloc[-1].isoformat().replace("+00:00", "Z"),
        "rows": len(frame),
        "symbols": len(source.symbols),
        "rows_per_symbol": {symbol: len(candles) for symbol, candles in rows.items()},
        "gaps": counts.gaps,
        "missing_bars": counts.missing_bars,
        "rejected": counts.rejected,
        "duplicates": counts.duplicates,
        "unclosed_dropped": counts.unclosed,
        "requests": counts.requests,
        "retries": counts.retries,
    }
    log.info("data.fetched", **summary)
    return summary
