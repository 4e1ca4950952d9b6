"""Public OHLCV from any ccxt exchange: paged history and live polls of CLOSED candles only.

ccxt is the edge: its exceptions are translated into ``DataError`` here and nowhere else.
Every batch a caller receives has been through the same hygiene, per symbol: candles still
forming are dropped, the rest are sorted by open time, exact-duplicate open times keep the
last copy, malformed candles are rejected with a reason, and holes in the series are reported
as ``data.gap`` events. Nothing is filled in or invented; a rejected candle becomes a gap.
"""

from __future__ import annotations

import difflib
import random
import time
from calendar import monthrange
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any, NamedTuple, TypeVar

import ccxt
import numpy as np
import pandas as pd
import structlog

from engine.data.panel import Panel
from engine.errors import DataError
from engine.progress import JobProgress

log = structlog.get_logger("engine.data")
T = TypeVar("T")

# OperationFailed is ccxt's "may succeed if retried" family (its own maxRetriesOnFailure draws
# the same line): NetworkError (RequestTimeout, ExchangeNotAvailable, DDoSProtection,
# RateLimitExceeded, ...), BadResponse, and OperationFailed itself, which is what ccxt raises
# for Binance spot's -1008 SERVER_BUSY and -1000/-1001 internal errors. Everything else under
# BaseError (BadSymbol, BadRequest, ExchangeError, ...) would fail the same way twice.
RETRYABLE_ERRORS: tuple[type[Exception], ...] = (ccxt.OperationFailed,)
PRICE_FIELDS = ("open", "high", "low", "close")


class Candle(NamedTuple):
    """One OHLCV bar as ccxt returns it, stamped with its open time in UTC milliseconds."""

    timestamp: int
    open: float
    high: float
    low: float
    close: float
    volume: float


CandlesBySymbol = dict[str, list[Candle]]


@dataclass
class FetchCounts:
    """Running totals over the life of one source; ``summary()`` returns them as a dict."""

    requests: int = 0
    retries: int = 0
    candles: int = 0
    unclosed: int = 0
    out_of_order: int = 0
    duplicates: int = 0
    rejected: int = 0
    gaps: int = 0
    missing_bars: int = 0

    def summary(self) -> dict[str, int]:
        return asdict(self)


def iso_utc(ms: int) -> str:
    """``2024-01-01T05:00:00Z`` for a UTC millisecond timestamp."""
    return datetime.fromtimestamp(ms / 1000, tz=UTC).isoformat().replace("+00:00", "Z")


class _Timeframe:
    """A ccxt timeframe label with calendar-true arithmetic for months and years.

    ccxt's ``parse_timeframe`` counts '1M' as 30 days; a 31-day month would then look closed
    a day early, so closes and gaps for 'M' and 'y' step through the calendar instead.
    """

    def __init__(self, label: str) -> None:
        self.label = label
        self.ms = int(ccxt.Exchange.parse_timeframe(label)) * 1000
        self.months = {"M": 1, "y": 12}.get(label[-1], 0) * int(label[:-1])

    def after(self, open_ms: int, steps: int = 1) -> int:
        """Open time ``steps`` bars after ``open_ms`` (the close time of that bar for steps=1)."""
        if not self.months:
            return open_ms + steps * self.ms
        moment = datetime.fromtimestamp(open_ms / 1000, tz=UTC)
        month_index = moment.year * 12 + moment.month - 1 + steps * self.months
        year, month = divmod(month_index, 12)
        day = min(moment.day, monthrange(year, month + 1)[1])
        return int(moment.replace(year=year, month=month + 1, day=day).timestamp() * 1000)

    def bars_between(self, earlier_ms: int, later_ms: int) -> int:
        """How many whole bars fit strictly between two open times."""
        if not self.months:
            return max(0, (later_ms - earlier_ms) // self.ms - 1)
        missing = 0
        while self.after(earlier_ms, missing + 2) <= later_ms:
            missing += 1
        return missing


def _reject_reason(candle: Candle) -> str | None:
    values = dict(zip(Candle._fields[1:], candle[1:]))
    for name, value in values.items():
        if not np.isfinite(value):
            return f"{name} is missing or not finite ({value})"
    for name in PRICE_FIELDS:
        if values[name] <= 0:
            return f"{name} is not positive ({values[name]})"
    if candle.high < candle.low:
        return f"high {candle.high} is below low {candle.low}"
    if candle.high < max(candle.open, candle.close):
        return f"high {candle.high} is below max(open, close) {max(candle.open, candle.close)}"
    if candle.low > min(candle.open, candle.close):
        return f"low {candle.low} is above min(open, close) {min(candle.open, candle.close)}"
    if candle.volume < 0:
        return f"volume is negative ({candle.volume})"
    return None


def _describe(error: BaseException) -> str:
    text = f"{type(error).__name__}: {error}"
    cause = error.__cause__
    if cause is not None:  # ccxt's network messages name only the URL; the cause says what broke
        text += f" ({type(cause).__name__}: {str(cause)[:200]})"
    return text


class CcxtOhlcvSource:
    """Closed OHLCV candles for ``symbols`` at ``timeframe`` from the ccxt exchange ``exchange_id``.

    Building the source loads the exchange's markets and checks the request against them, so
    a typo fails before any history is paged.

    Parameters
    ----------
    exchange_id
        A ccxt exchange id (``ccxt.exchanges`` lists them), such as ``"binance"``.
    symbols
        Unified ccxt symbols, such as ``"BTC/USDT"``.
    timeframe
        A label from ``exchange.timeframes``, such as ``"1h"``.
    exchange
        A ready ccxt Exchange to use instead of building one (tests inject an offline one).
        A built exchange has ``enableRateLimit`` on, so ccxt spaces requests by the exchange's
        ``rateLimit``; this class adds no sleeps of its own beyond the retry backoff.
    page_limit
        Candles asked for per request; None leaves the exchange's default.
    max_retries
        Retries of a request that failed in a retryable way, before giving up with DataError.
    clock
        Seconds since the epoch, as ``time.time``; decides which candles are closed.
    sleep, jitter
        The backoff's sleep, and a source of uniform [0, 1) draws for its jitter.
    backoff_base_s, backoff_cap_s
        Retry ``n`` waits ``min(cap, base * 2**(n-1))`` seconds, times a jitter in [0.5, 1).
    """

    def __init__(
        self,
        exchange_id: str,
        symbols: Sequence[str],
        timeframe: str,
        *,
        exchange: ccxt.Exchange | None = None,
        page_limit: int | None = None,
        max_retries: int = 5,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
        jitter: Callable[[], float] = random.random,
        backoff_base_s: float = 1.0,
        backoff_cap_s: float = 30.0,
    ) -> None:
        if isinstance(symbols, str):
            raise DataError(
                f"symbols must be a sequence of ccxt symbols, received the string {symbols!r}"
            )
        if page_limit is not None and page_limit < 1:
            raise DataError(
                f"page_limit must be a positive number of candles or None, received {page_limit!r}"
            )
        if max_retries < 0:
            raise DataError(f"max_retries must be >= 0, received {max_retries!r}")
        self.exchange_id = exchange_id
        self.symbols = tuple(dict.fromkeys(symbols))
        self.timeframe = timeframe
        self.page_limit = page_limit
        self.max_retries = max_retries
        self.backoff_base_s = backoff_base_s
        self.backoff_cap_s = backoff_cap_s
        self.counts = FetchCounts()
        self._clock = clock
        self._sleep = sleep
        self._jitter = jitter
        self._last_published: dict[str, int] = {}
        if not self.symbols:
            raise DataError(f"{exchange_id}: no symbols to fetch")
        self.exchange = exchange if exchange is not None else self._build_exchange(exchange_id)
        self._check_request()
        self._timeframe = _Timeframe(timeframe)

    @staticmethod
    def _build_exchange(exchange_id: str) -> ccxt.Exchange:
        exchange_class = getattr(ccxt, exchange_id, None) if exchange_id in ccxt.exchanges else None
        if exchange_class is None:
            close = difflib.get_close_matches(exchange_id, ccxt.exchanges, n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise DataError(
                f"exchange {exchange_id!r} is not a ccxt exchange id; ccxt.exchanges lists "
                f"the {len(ccxt.exchanges)} supported ids{hint}"
            )
        return exchange_class({"enableRateLimit": True})

    def _check_request(self) -> None:
        if not self.exchange.has.get("fetchOHLCV"):
            raise DataError(
                f"exchange {self.exchange_id!r} does not offer OHLCV candles through ccxt "
                f"(has['fetchOHLCV'] is {self.exchange.has.get('fetchOHLCV')!r})"
            )
        markets = self._with_retries("load_markets", None, self.exchange.load_markets)
        for symbol in self.symbols:
            if symbol not in markets:
                close = difflib.get_close_matches(symbol, list(markets), n=3)
                hint = f"; did you mean {', '.join(close)}?" if close else ""
                raise DataError(f"exchange {self.exchange_id!r} has no market {symbol!r}{hint}")
        timeframes = self.exchange.timeframes or {}
        if self.timeframe not in timeframes:
            raise DataError(
                f"exchange {self.exchange_id!r} does not offer timeframe {self.timeframe!r}; "
                f"valid timeframes: {', '.join(timeframes) or 'none listed'}"
            )

    def history(
        self, since_ms: int, until_ms: int | None = None, progress: JobProgress | None = None
    ) -> CandlesBySymbol:
        """Return every closed candle opening in [since_ms, until_ms), per symbol, oldest first.

        ``until_ms`` None means up to now. Pages are requested from ``since_ms`` on, each
        starting 1 ms after the last candle received, until ``until_ms`` or the present is
        reached, or the exchange returns an empty page or one that does not move forward.
        ``progress`` counts the symbols done.

        Raises
        ------
        DataError
            When the exchange refuses a request, or a retryable failure outlasts ``max_retries``.
        """
        now_ms = self._now_ms()
        end_ms = now_ms + 1 if until_ms is None else min(until_ms, now_ms + 1)
        result: CandlesBySymbol = {}
        for symbol in self.symbols:
            raw = self._fetch_pages(symbol, since_ms, end_ms, now_ms)
            result[symbol] = self._clean(symbol, raw, since_ms, end_ms, now_ms, previous_ms=None)
            if progress is not None:
                progress.update(symbol=symbol, candles=len(result[symbol]))
        return result

    def poll_closed(self, since_ms: int) -> CandlesBySymbol:
        """Return the candles that closed since the last poll (or since ``since_ms`` on the first).

        Each candle is returned once per source: a candle still forming now comes back on a
        later poll, after it closes. A hole between polls is reported as a ``data.gap``.
        """
        now_ms = self._now_ms()
        result: CandlesBySymbol = {}
        for symbol in self.symbols:
            previous_ms = self._last_published.get(symbol)
            start_ms = since_ms if previous_ms is None else max(since_ms, previous_ms + 1)
            raw = self._fetch_pages(symbol, start_ms, now_ms + 1, now_ms)
            fresh = self._clean(symbol, raw, start_ms, now_ms + 1, now_ms, previous_ms=previous_ms)
            if fresh:
                self._last_published[symbol] = fresh[-1].timestamp
            result[symbol] = fresh
        return result

    def _now_ms(self) -> int:
        return int(self._clock() * 1000)

    def _fetch_pages(self, symbol: str, since_ms: int, end_ms: int, now_ms: int) -> list[list[Any]]:
        received: list[list[Any]] = []
        cursor = since_ms
        while cursor < end_ms:
            page = self._with_retries(
                "fetch_ohlcv",
                symbol,
                # Called at once, inside this iteration: cursor is current.
                lambda: self.exchange.fetch_ohlcv(
                    symbol,
                    self.timeframe,
                    since=cursor,  # noqa: B023
                    limit=self.page_limit,
                ),
            )
            self.counts.requests += 1
            times = [row[0] for row in page if row and row[0] is not None]
            if not times:
                break
            received.extend(page)
            newest = max(times)
            if newest < cursor:
                # An exchange that ignores `since` would serve this page forever.
                log.warning(
                    "data.page_stalled",
                    exchange=self.exchange_id,
                    symbol=symbol,
                    cursor=iso_utc(cursor),
                    newest=iso_utc(newest),
                )
                break
            cursor = newest + 1
            if self._timeframe.after(newest) > now_ms:
                break  # the page reached the bar still forming; nothing after it is closed
        return received

    def _with_retries(self, action: str, symbol: str | None, call: Callable[[], T]) -> T:
        what = f"{self.exchange_id} {action}" + (f" {symbol} {self.timeframe}" if symbol else "")
        attempt = 0
        while True:
            try:
                return call()
            except RETRYABLE_ERRORS as error:
                attempt += 1
                if attempt > self.max_retries:
                    raise DataError(
                        f"{what}: gave up after {self.max_retries} retries: {_describe(error)}"
                    ) from error
                delay = min(self.backoff_cap_s, self.backoff_base_s * 2 ** (attempt - 1))
                delay *= (
                    0.5 + 0.5 * self._jitter()
                )  # jitter keeps many clients from retrying in step
                self.counts.retries += 1
                log.warning(
                    "data.fetch_retry",
                    exchange=self.exchange_id,
                    action=action,
                    symbol=symbol,
                    attempt=attempt,
                    max_retries=self.max_retries,
                    delay=round(delay, 3),
                    error=_describe(error),
                )
                self._sleep(delay)
            except ccxt.BaseError as error:
                raise DataError(f"{what}: {_describe(error)}") from error

    def _clean(
        self,
        symbol: str,
        raw: list[list[Any]],
        since_ms: int,
        end_ms: int,
        now_ms: int,
        previous_ms: int | None,
    ) -> list[Candle]:
        candles: list[Candle] = []
        for row in raw:
            if not row or row[0] is None:
                self._reject(symbol, None, "timestamp is missing")
                continue
            values = [np.nan if v is None else float(v) for v in row[1:6]]
            candle = Candle(int(row[0]), *values, *[np.nan] * (5 - len(values)))  # short rows: NaN
            if since_ms <= candle.timestamp < end_ms:  # later pages may overshoot `until`
                candles.append(candle)
        closed = [c for c in candles if self._timeframe.after(c.timestamp) <= now_ms]
        if len(closed) < len(candles):
            self.counts.unclosed += len(candles) - len(closed)
            log.debug(
                "data.unclosed_dropped",
                exchange=self.exchange_id,
                symbol=symbol,
                count=len(candles) - len(closed),
            )
        newest, out_of_order = -1, 0
        for candle in closed:  # rows that arrive after a later bar has already arrived
            out_of_order += candle.timestamp < newest
            newest = max(newest, candle.timestamp)
        if out_of_order:
            self.counts.out_of_order += out_of_order
            log.info("data.reordered", exchange=self.exchange_id, symbol=symbol, count=out_of_order)
        by_time: dict[int, Candle] = {}
        for candle in sorted(
            closed, key=lambda c: c.timestamp
        ):  # stable: arrival order among equals
            by_time[candle.timestamp] = candle  # a later copy replaces an earlier one
        duplicates = len(closed) - len(by_time)
        if duplicates:
            self.counts.duplicates += duplicates
            log.warning(
                "data.duplicates_dropped",
                exchange=self.exchange_id,
                symbol=symbol,
                count=duplicates,
            )
        accepted: list[Candle] = []
        for candle in by_time.values():
            reason = _reject_reason(candle)
            if reason is None:
                accepted.append(candle)
            else:
                self._reject(symbol, candle.timestamp, reason)
        self._report_gaps(symbol, accepted, previous_ms)
        self.counts.candles += len(accepted)
        return accepted

    def _reject(self, symbol: str, timestamp_ms: int | None, reason: str) -> None:
        self.counts.rejected += 1
        log.warning(
            "data.rejected",
            exchange=self.exchange_id,
            symbol=symbol,
            bar_time=None if timestamp_ms is None else iso_utc(timestamp_ms),
            reason=reason,
        )

    def _report_gaps(self, symbol: str, candles: list[Candle], previous_ms: int | None) -> None:
        # A gap is reported as the half-open span [from, to) of the bars that are missing:
        # `from` opens the first missing bar, `to` opens the next bar present.
        earlier = previous_ms
        for candle in candles:
            if earlier is not None:
                missing = self._timeframe.bars_between(earlier, candle.timestamp)
                if missing:
                    self.counts.gaps += 1
                    self.counts.missing_bars += missing
                    span = {
                        "from": iso_utc(self._timeframe.after(earlier)),
                        "to": iso_utc(candle.timestamp),
                    }
                    log.warning(
                        "data.gap",
                        exchange=self.exchange_id,
                        symbol=symbol,
                        timeframe=self.timeframe,
                        missing=missing,
                        **span,
                    )
            earlier = candle.timestamp

    def to_frame(self, rows: Mapping[str, Sequence[Candle]]) -> pd.DataFrame:
        """Return ``rows`` in the long file format: timestamp (UTC), symbol, open, high, low,
        close, volume; sorted by timestamp, then symbol."""
        records = [
            (candle.timestamp, symbol, *candle[1:])
            for symbol, candles in rows.items()
            for candle in candles
        ]
        frame = pd.DataFrame.from_records(
            records, columns=["timestamp", "symbol", *Candle._fields[1:]]
        )
        frame["timestamp"] = pd.to_datetime(
            frame["timestamp"].astype("int64"), unit="ms", utc=True
        ).dt.as_unit("ms")
        frame = frame.astype({name: "float64" for name in Candle._fields[1:]})
        return frame.sort_values(["timestamp", "symbol"], kind="stable").reset_index(drop=True)

    def to_panel(self, rows: Mapping[str, Sequence[Candle]]) -> Panel:
        """Return ``rows`` as a Panel on the union of their open times, NaN where a symbol has
        no bar."""
        symbols = tuple(rows)
        times = np.array(
            sorted({c.timestamp for candles in rows.values() for c in candles}), dtype="int64"
        )
        position = {t: i for i, t in enumerate(times.tolist())}
        arrays = {name: np.full((len(times), len(symbols)), np.nan) for name in Candle._fields[1:]}
        for column, symbol in enumerate(symbols):
            for candle in rows[symbol]:
                row = position[candle.timestamp]
                for name in arrays:
                    arrays[name][row, column] = getattr(candle, name)
        return Panel(
            bar_open=times.astype("datetime64[ms]"),
            symbols=symbols,
            open=arrays["open"],
            high=arrays["high"],
            low=arrays["low"],
            close=arrays["close"],
            volume=arrays["volume"],
            timeframe=np.timedelta64(self._timeframe.ms, "ms"),
            source=f"ccxt:{self.exchange_id}:{self.timeframe}",
        )
