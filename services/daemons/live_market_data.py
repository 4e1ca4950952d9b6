"""Live market data: closed candles polled through ccxt become BarSets, one per timestamp.

A timestamp is published once every symbol has either delivered its candle for it or moved
past it (the exchange will not send that candle any more: a gap, logged by the source), so a
bar set is complete whenever the exchange has the data. A symbol that stops sending candles
(delisted, halted) is waited for only a bounded time: once a bar closed more than
``grace_bars`` timeframes ago, it is published with whatever symbols sent it, the silent ones
absent, and each silence is logged once (``data.symbol_silent``). Candles are published
strictly in time order and never twice: a candle arriving for a bar time already published is
dropped.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import structlog

from engine.bus import Bus
from engine.events import BarSet, make_event
from engine.timeframes import timeframe_delta, utc_from_ms

if TYPE_CHECKING:  # ccxt and pandas load only in a process that polls an exchange
    from engine.data.ccxt_source import Candle, CcxtOhlcvSource

log = structlog.get_logger("services.daemons.live_market_data")


class LiveMarketDataService:
    """Polls a ccxt source and publishes each complete timestamp's BarSet."""

    name = "market-data"

    def __init__(
        self,
        bus: Bus,
        source: CcxtOhlcvSource,
        since_ms: int,
        after_ms: int | None = None,
        *,
        grace_bars: int = 2,
        now: Callable[[], int] | None = None,
    ) -> None:
        """``after_ms``: open time of the last bar already published (a continued account);
        candles up to it are not published again.

        ``grace_bars``: how many timeframes after a bar closes it may wait for silent symbols;
        after that it is published without them. ``now``: the wall clock in epoch ms.
        """
        if grace_bars < 0:
            raise ValueError(f"grace_bars must be >= 0, received {grace_bars!r}")
        self.bus = bus
        self.source = source
        self.since_ms = since_ms
        self.timeframe = source.timeframe
        self.grace_bars = grace_bars
        self.bars_published = 0
        self._now = now or (lambda: int(time.time() * 1000))
        self._step_ms = int(timeframe_delta(self.timeframe).total_seconds() * 1000)
        self._pending: dict[int, dict[str, Candle]] = {}
        self._latest: dict[str, int] = {}
        self._silent: set[str] = set()  # symbols already reported silent, until they send again
        self._last_published_ms = -1 if after_ms is None else after_ms

    def poll_once(self) -> int:
        """Fetch newly closed candles and publish every timestamp now complete; return how many."""
        for symbol, candles in self.source.poll_closed(self.since_ms).items():
            for candle in candles:
                if candle.timestamp > self._last_published_ms:
                    self._pending.setdefault(candle.timestamp, {})[symbol] = candle
                self._latest[symbol] = max(self._latest.get(symbol, -1), candle.timestamp)
            if candles and symbol in self._silent:
                self._silent.discard(symbol)
                latest = utc_from_ms(candles[-1].timestamp).isoformat()
                log.info("data.symbol_resumed", symbol=symbol, latest=latest)
        now_ms = self._now()
        complete_up_to = -1  # until every symbol has sent something, only the grace applies
        if len(self._latest) == len(self.source.symbols):
            complete_up_to = min(self._latest.values())
        # Bars that closed more than grace_bars ago wait no longer for silent symbols.
        overdue_up_to = now_ms - (1 + self.grace_bars) * self._step_ms
        ready = sorted(t for t in self._pending if t <= max(complete_up_to, overdue_up_to))
        for timestamp in ready:
            candles = self._pending.pop(timestamp)
            if timestamp > complete_up_to:
                self._report_silent(timestamp, candles, now_ms)
            self._publish(timestamp, candles)
        return len(ready)

    def _report_silent(self, timestamp: int, candles: dict[str, Candle], now_ms: int) -> None:
        """Log each symbol newly silent at ``timestamp``: absent and not yet past it."""
        for symbol in self.source.symbols:
            latest = self._latest.get(symbol)
            if symbol in candles or symbol in self._silent:
                continue
            if latest is not None and latest >= timestamp:
                continue  # it moved past this bar: a gap, not a silence
            self._silent.add(symbol)
            silent_since = self.since_ms if latest is None else latest + self._step_ms
            log.warning(
                "data.symbol_silent",
                symbol=symbol,
                bar=utc_from_ms(timestamp).isoformat(),
                last_candle=None if latest is None else utc_from_ms(latest).isoformat(),
                silent_for_s=max(0, now_ms - silent_since) // 1000,
                grace_bars=self.grace_bars,
            )

    def _publish(self, timestamp: int, candles: dict[str, Candle]) -> None:
        symbols = tuple(s for s in self.source.symbols if s in candles)
        rows = [candles[s] for s in symbols]
        bars = BarSet(
            timeframe=self.timeframe,
            bar_open=utc_from_ms(timestamp),
            symbols=symbols,
            open=tuple(c.open for c in rows),
            high=tuple(c.high for c in rows),
            low=tuple(c.low for c in rows),
            close=tuple(c.close for c in rows),
            volume=tuple(c.volume for c in rows),
        )
        close_time = utc_from_ms(timestamp) + timeframe_delta(self.timeframe)
        corr = f"bar-{close_time:%Y%m%dT%H%M%SZ}"
        self.bus.publish(BarSet.TOPIC, make_event(bars, source=self.name, corr=corr, ts=close_time))
        self._last_published_ms = timestamp
        self.bars_published += 1
        # Symbols reported silent are logged once per silence, not here on every bar.
        missing = [s for s in self.source.symbols if s not in candles and s not in self._silent]
        if missing:
            log.warning(
                "data.partial_bar_set",
                timestamp=utc_from_ms(timestamp).isoformat(),
                missing=missing,
            )

    def run(
        self,
        stop: threading.Event,
        poll_interval_s: float,
        check: Callable[[], None] | None = None,
    ) -> None:
        """Poll until ``stop`` is set; ``check`` runs before each poll and stops the feed by
        raising (the account's Redis data lost)."""
        while not stop.is_set():
            if check is not None:
                check()
            published = self.poll_once()
            if published:
                log.info("data.published", bar_sets=published, total=self.bars_published)
            stop.wait(poll_interval_s)
